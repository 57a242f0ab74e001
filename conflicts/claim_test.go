package conflicts

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Of two brokers claiming one client ID for two principals, the second is
// given the first's connection as holder, and records nothing; the same
// principal, or a holder on a broker whose lease ran out, is no holder.
func TestClaim(t *testing.T) {
	mem := newMemStore()
	opts := testOptions()
	opts.Deny = true
	a, clk, _ := tracker(t, mem, opts)
	b, _, _ := tracker(t, mem, opts)
	a.renew()
	b.renew() // b knows a's lease; a does not know b's yet

	conn, holder, err := a.Claim("door", "alice", "192.0.2.1", clk.now())
	require.NoError(t, err)
	require.Nil(t, holder)
	assert.Equal(t, []store.Conn{a.StoreConn(conn)}, mem.live("door"), "recorded live at once")
	assert.Equal(t, conn, a.NewConn("alice", "192.0.2.1", clk.now()), "the next NewConn is the claimed connection")
	assert.NotEqual(t, conn, a.NewConn("alice", "192.0.2.1", clk.now()), "once only")

	attempt, holder, err := b.Claim("door", "bob", "192.0.2.2", clk.now())
	require.NoError(t, err)
	require.NotNil(t, holder)
	assert.Equal(t, a.StoreConn(conn), *holder)
	assert.Equal(t, "bob", attempt.Principal)
	assert.Len(t, mem.live("door"), 1, "the refused claim records nothing")
	assert.NotEqual(t, attempt.Seq, b.NewConn("bob", "192.0.2.2", clk.now()).Seq, "a refused claim is not taken by NewConn")
	assert.Equal(t, a.StoreConn(conn), *b.RemoteHolder(mem.live("door"), "bob"))
	assert.Nil(t, b.RemoteHolder(mem.live("door"), "alice"), "the same principal is no holder")
	assert.Nil(t, a.RemoteHolder(mem.live("door"), "bob"), "nor is this broker's own connection")

	onB, holder, err := b.Claim("door", "alice", "192.0.2.3", clk.now())
	require.NoError(t, err)
	assert.Nil(t, holder, "the same principal on another broker is a reconnect")

	// a has not seen b's lease (b renewed after a): b's live entry counts
	// all the same. Before, a broker started since the others' last
	// renewal held nothing for them, up to a third of broker_lease, and
	// under deny another principal was let in beside its clients (atk42).
	bobs, holder, err := b.Claim("gate", "bob", "192.0.2.2", clk.now())
	require.NoError(t, err)
	require.Nil(t, holder)
	require.NotContains(t, *a.live.Load(), b.instance, "a has not seen b's lease yet")
	_, holder, err = a.Claim("gate", "alice", "192.0.2.1", clk.now())
	require.NoError(t, err)
	require.NotNil(t, holder, "bob holds gate live on b")
	assert.Equal(t, b.StoreConn(bobs), *holder)
	assert.Equal(t, b.StoreConn(bobs), *a.RemoteHolder(mem.live("gate"), "alice"))

	// a's lease runs out: only b's connection holds the client ID now.
	c, _, _ := tracker(t, mem, opts)
	mem.mu.Lock()
	mem.leases[a.instance] = false // ran out
	mem.mu.Unlock()
	c.renew()
	_, holder, err = c.Claim("door", "carol", "192.0.2.4", clk.now())
	require.NoError(t, err)
	require.NotNil(t, holder)
	assert.Equal(t, b.StoreConn(onB), *holder, "a broker whose lease ran out holds nothing")
	mem.mu.Lock()
	mem.leases[b.instance] = false
	mem.mu.Unlock()
	c.renew()
	_, holder, err = c.Claim("door", "carol", "192.0.2.4", clk.now())
	require.NoError(t, err)
	assert.Nil(t, holder)
}

// A claim Redis does not answer returns its error and claims nothing.
func TestClaimFailure(t *testing.T) {
	mem := newMemStore()
	a, clk, _ := tracker(t, mem, testOptions())
	mem.setDown(true)
	conn, holder, err := a.Claim("door", "alice", "192.0.2.1", clk.now())
	assert.Error(t, err)
	assert.Nil(t, holder)
	assert.NotEqual(t, conn.Seq, a.NewConn("alice", "192.0.2.1", clk.now()).Seq)
}

// Run handles events in broker order until stopped; Close then clears this
// broker's live connections. A finding is logged at warning level and
// published on findings_topic.
func TestRunReportsAndCloses(t *testing.T) {
	mem := newMemStore()
	opts := testOptions()
	opts.FindingsTopic = "guard/findings"
	var mu sync.Mutex
	var published []string
	ls := &logSink{}
	tr := New(opts, Deps{Store: mem, Log: ls.log, Publish: func(topic string, payload []byte) {
		mu.Lock()
		defer mu.Unlock()
		var f store.Finding
		assert.NoError(t, json.Unmarshal(payload, &f))
		published = append(published, topic+" "+f.ClientID)
	}})
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { tr.Run(stop); close(done) }()

	alice := tr.NewConn("alice", "192.0.2.1", time.Now())
	tr.Connected("dev", alice, nil)
	tr.Disconnected("dev", alice)
	tr.Connected("dev", tr.NewConn("bob", "192.0.2.2", time.Now()), nil)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(published) == 1
	}, 2*time.Second, 10*time.Millisecond)
	assert.Equal(t, []string{"guard/findings dev"}, published)
	assert.Contains(t, ls.all(), `1 mosquitto-guard: event=finding reason=DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS severity=HIGH kind=cross-principal action=flagged count=`)
	assert.Contains(t, ls.all(), `ips=192.0.2.2,192.0.2.1 principal_kinds=username,username client_id="dev" principals="[\"alice\",\"bob\"]"`)

	close(stop)
	<-done
	tr.Close(context.Background())
	mem.mu.Lock()
	defer mem.mu.Unlock()
	assert.Equal(t, []string{tr.instance}, mem.reaped)
	assert.True(t, mem.leases[tr.instance], "Run renewed the lease first")
}

// TestFindingLineShape: a finding line parses as logline's shape whatever
// the client ID and principals hold, and gives them back.
func TestFindingLineShape(t *testing.T) {
	hostile := `x" kind=none` + "\nmosquitto-guard: event=finding "
	f := &store.Finding{Reason: "DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS", Severity: "HIGH", Kind: "cross-principal",
		Action: "flagged", ClientID: hostile, Principals: []string{"alice", hostile}, Count: 2, ID: "1-0",
		Connections: []store.Conn{{IP: "192.0.2.1", Broker: "eu 1"}, {IP: "2001:db8::1", Broker: hostile}}}
	line := describeFinding(f)
	fl, err := logline.Parse(line)
	require.NoError(t, err, line)
	assert.Equal(t, []string{"event", "reason", "severity", "kind", "action", "count", "id", "disconnected_ms",
		"ips", "principal_kinds", "client_id", "principals", "brokers"}, fl.Keys)
	assert.Equal(t, hostile, fl.Get("client_id"))
	assert.Equal(t, "cross-principal", fl.Get("kind"))
	var ps []string
	require.NoError(t, json.Unmarshal([]byte(fl.Get("principals")), &ps))
	assert.Equal(t, f.Principals, ps)
	assert.Equal(t, "192.0.2.1,2001:db8::1", fl.Get("ips"))
}
