package conflicts

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

func conn(id, instance, principal string, connected, disconnected int64) store.Conn {
	return store.Conn{ID: id, Instance: instance, Broker: "b-" + instance, Principal: principal,
		IP: "192.0.2.1", ConnectedMs: connected, DisconnectedMs: disconnected}
}

func TestEvaluateRules(t *testing.T) {
	const now = int64(100_000_000_000)
	window := 31 * 24 * time.Hour
	day := int64(24 * time.Hour / time.Millisecond)
	me := conn("A-9", "A", "bob", now, 0)
	alive := map[string]bool{"A": true, "B": true, "C": false} // C: its lease ran out

	cases := []struct {
		name            string
		other           *store.Conn
		live, seen      []store.Conn
		wantCross       []string // principals, nil for no finding
		wantDup         bool
		wantDisplacedMs int64
	}{
		{name: "first use", wantCross: nil},
		{name: "same principal reconnecting later",
			seen: []store.Conn{conn("A-1", "A", "bob", now-day, now-day+10)}},
		{name: "another principal within the window",
			seen:      []store.Conn{conn("A-1", "A", "alice", now-2*day, now-day)},
			wantCross: []string{"alice", "bob"}, wantDisplacedMs: now - day},
		{name: "another principal outside the window",
			seen: []store.Conn{conn("A-1", "A", "alice", now-40*day, now-40*day+5)}},
		{name: "takeover of another principal on this broker",
			other:     ptr(conn("A-1", "A", "alice", now-1000, 0)),
			seen:      []store.Conn{conn("A-1", "A", "alice", now-1000, 0)},
			wantCross: []string{"alice", "bob"}, wantDisplacedMs: now},
		{name: "another principal live on another broker",
			live:      []store.Conn{conn("B-1", "B", "alice", now-1000, 0)},
			seen:      []store.Conn{conn("B-1", "B", "alice", now-1000, 0)},
			wantCross: []string{"alice", "bob"}},
		{name: "live entry of a dead broker is a ghost, but the use is remembered",
			live:      []store.Conn{conn("C-1", "C", "alice", now-1000, 0)},
			seen:      []store.Conn{conn("C-1", "C", "alice", now-1000, 0)},
			wantCross: []string{"alice", "bob"}},
		{name: "same principal taking over on this broker",
			other:   ptr(conn("A-1", "A", "bob", now-1000, 0)),
			seen:    []store.Conn{conn("A-1", "A", "bob", now-1000, 0)},
			wantDup: true, wantDisplacedMs: now},
		{name: "same principal live on another broker",
			live:    []store.Conn{conn("B-1", "B", "bob", now-1000, 0)},
			wantDup: true},
		{name: "same principal on a dead broker: no duplicate",
			live: []store.Conn{conn("C-1", "C", "bob", now-1000, 0)}},
		{name: "a broker started since the last renewal (D, not in the view) counts: live there is live",
			live:      []store.Conn{conn("D-1", "D", "alice", now-1000, 0)},
			wantCross: []string{"alice", "bob"}},
		{name: "an entry of a broker never seen, older than broker_lease, is a ghost",
			live: []store.Conn{conn("E-1", "E", "alice", now-31_000, 0)}},
		{name: "three principals",
			seen:      []store.Conn{conn("A-1", "A", "alice", now-3*day, now-3*day+1), conn("B-7", "B", "carol", now-day, now-day+1)},
			wantCross: []string{"alice", "bob", "carol"}, wantDisplacedMs: now - day + 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cross, dup := evaluate("dev-1", me, c.other, c.live, c.seen, leaseView{alive: alive, since: now - 30_000}, now, window)
			if c.wantCross == nil {
				assert.Nil(t, cross)
			} else {
				require.NotNil(t, cross)
				assert.Equal(t, c.wantCross, cross.Principals)
				assert.Equal(t, store.KindCrossPrincipal, cross.Kind)
				assert.Equal(t, store.ReasonDuplicateClientID, cross.Reason)
				assert.Equal(t, store.SeverityHigh, cross.Severity)
				assert.Equal(t, "dev-1", cross.ClientID)
				assert.Equal(t, me, cross.Connections[0], "newest first")
				assert.Equal(t, c.wantDisplacedMs, cross.DisplacedDisconnectedMs)
			}
			if c.wantDup {
				require.NotNil(t, dup)
				assert.Equal(t, []string{"bob"}, dup.Principals)
				assert.Equal(t, store.KindDuplicate, dup.Kind)
				assert.Len(t, dup.Connections, 2)
				if c.wantCross == nil {
					assert.Equal(t, c.wantDisplacedMs, dup.DisplacedDisconnectedMs)
				}
			} else {
				assert.Nil(t, dup)
			}
		})
	}
}

func ptr(c store.Conn) *store.Conn { return &c }

func TestPrincipal(t *testing.T) {
	assert.Equal(t, "alice", Principal("", true, "alice"))
	assert.Equal(t, Anonymous, Principal("", false, ""))
	long := strings.Repeat("u", 70000)
	assert.Equal(t, keys.Tracking(long), Principal("", true, long), "in the form Redis holds")
	assert.LessOrEqual(t, len(Principal("", true, long)), keys.TrackingMax)

	id := keys.CertID([]byte("device"))
	assert.Equal(t, "cert:"+id, Principal(id, true, "alice"), "a certificate is the principal, even with a username")
	assert.Equal(t, "cert:"+id, Principal(id, false, ""))
	assert.Equal(t, "cert", principalKind(Principal(id, true, "alice")))
	assert.Equal(t, "username", principalKind(Principal("", true, "alice")))
	assert.Equal(t, "anonymous", principalKind(Principal("", false, "")))

	// No username poses as a certificate, as anonymous, or as another username.
	seen := map[string]string{}
	for _, u := range []string{"cert:" + id, "username:cert:" + id, "username:username:cert:" + id, Anonymous, "username:" + Anonymous, "alice", "username:alice"} {
		p := Principal("", true, u)
		assert.Equal(t, "username", principalKind(p), u)
		assert.NotEqual(t, Principal(id, false, ""), p, u)
		assert.NotEqual(t, Anonymous, p, u)
		prev, dup := seen[p]
		assert.False(t, dup, "%q and %q share principal %q", prev, u, p)
		seen[p] = u
	}
}
