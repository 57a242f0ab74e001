package conflicts

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
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

// describeFinding is a finding's log line; every client-supplied value quoted.
func describeFinding(f *store.Finding) string {
	var ips, brokers []string
	for _, c := range f.Connections {
		ips = append(ips, c.IP)
		brokers = append(brokers, logval.Quote(c.Broker))
	}
	ps := make([]string, len(f.Principals))
	kinds := make([]string, len(f.Principals))
	for i, p := range f.Principals {
		ps[i] = logval.Quote(p)
		kinds[i] = principalKind(p)
	}
	return fmt.Sprintf("mosquitto-guard: finding %s severity=%s kind=%s action=%s client_id=%s principals=[%s] principal_kinds=[%s] ips=[%s] brokers=[%s] disconnected_ms=%d count=%d id=%s",
		f.Reason, f.Severity, f.Kind, f.Action, logval.Quote(f.ClientID), strings.Join(ps, ","), strings.Join(kinds, ","), strings.Join(ips, ","),
		strings.Join(brokers, ","), f.DisplacedDisconnectedMs, f.Count, f.ID)
}
