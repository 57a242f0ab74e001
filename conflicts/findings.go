package conflicts

import (
	"context"
	"encoding/json"
	"strings"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// report stores f (folding repeats) and, unless it was folded into an
// earlier report, logs it and publishes it on findings_topic.
func (t *Tracker) report(ctx context.Context, f *store.Finding) {
	reported, err := t.store.AddFinding(ctx, f, t.opts.Fold, t.opts.Window, t.opts.FindingsMax)
	note := ""
	if err != nil {
		reported, note = true, " (not stored: "+err.Error()+")"
	}
	if !reported {
		return
	}
	t.log(LevelWarning, describeFinding(f)+note)
	if t.reported != nil {
		t.reported(f.Kind)
	}
	if t.opts.FindingsTopic != "" && t.publish != nil {
		payload, _ := json.Marshal(f)
		t.publish(t.opts.FindingsTopic, payload)
	}
}

// describeFinding is a finding's log line: the fields the plugin decides
// first, then what clients chose (the client ID, the principals), quoted.
// Lists are JSON arrays in one quoted value; ips is comma-separated.
func describeFinding(f *store.Finding) string {
	ips := make([]string, 0, len(f.Connections))
	brokers := make([]string, 0, len(f.Connections))
	for _, c := range f.Connections {
		ips = append(ips, c.IP)
		brokers = append(brokers, c.Broker)
	}
	kinds := make([]string, len(f.Principals))
	for i, p := range f.Principals {
		kinds[i] = principalKind(p)
	}
	l := logline.Event("finding").Tok("reason", f.Reason).Tok("severity", f.Severity).Tok("kind", f.Kind).
		Tok("action", f.Action).Int("count", f.Count).Tok("id", f.ID).Int("disconnected_ms", f.DisplacedDisconnectedMs).
		Tok("ips", strings.Join(ips, ",")).Tok("principal_kinds", strings.Join(kinds, ","))
	if f.ClientIDShown != "" {
		// ClientID is its hash: the client ID as Str writes it, from
		// what the event kept of it.
		l.StrKept("client_id", f.ClientIDShown, f.ClientIDBytes)
	} else {
		l.Str("client_id", f.ClientID)
	}
	return l.StrN("principals", jsonList(f.Principals), findingListMax).
		StrN("brokers", jsonList(brokers), findingListMax).String()
}

// findingListMax bounds the principals and brokers of a finding's log line
// (each principal is at most 256 bytes in its tracking form).
const findingListMax = 2000

func jsonList(v []string) string {
	b, _ := json.Marshal(v) // strings always marshal
	return string(b)
}
