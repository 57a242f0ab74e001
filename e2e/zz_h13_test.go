package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
)

// h13IDs are client IDs whose tracking form is not themselves: over 256
// bytes (300 and 60 000), and a short one that reads like a hash.
func h13IDs() map[string]string {
	return map[string]string{
		"300":    "door-" + strings.Repeat("L", 295),
		"60000":  "door-" + strings.Repeat("H", 59995),
		"sha256": "sha256:door-short",
	}
}

// Hostile test of c714a05 (tracking forms in the queue): under
// clientid_conflict deny across two brokers sharing Redis, the broker
// thread's claim takes the client ID itself and the worker's writes its
// tracking form; both must name one key, so a long (or "sha256:") client ID
// held on broker-a is refused to another principal on broker-b, the
// refusal's finding names the tracking form, a takeover is counted under
// guard:takeoverconns:<form>, a clean disconnect clears the live entry, and a
// killed broker's entry is reaped after its lease.
func TestZZH13DenyLongIDsAcrossBrokers(t *testing.T) {
	a, b := twoBrokers(t, "auth_opt_clientid_conflict deny", "auth_opt_broker_lease 2s")
	ips := 0
	ip := func() string { ips++; return "127.0.113." + strconv.Itoa(ips) }
	for name, id := range h13IDs() {
		tr := tracked(id)
		holder, code := a.dial(as(ip(), id, "alice", "alice-pw"))
		require.EqualValues(t, accepted, code, name)
		a.waitLive(tr, 1)
		assert.EqualValues(t, refused, b.connect(as(ip(), id, "bob", "bob-pw")), "%s: live on broker-a under alice", name)
		var f map[string]string
		eventually(t, 5*time.Second, func() bool {
			for _, x := range a.findings() {
				if x["clientid"] == tr && x["action"] == "refused" {
					f = x
					return true
				}
			}
			return false
		}, "%s: no refusal finding under the tracking form", name)
		assert.JSONEq(t, `["alice","bob"]`, f["principals"], name)
		b.logLine("event=finding", "action=refused", `client_id="`+id[:min(len(id), 40)])

		// alice again on broker-a: a takeover, counted under the form's key.
		again, code := a.dial(as(ip(), id, "alice", "alice-pw"))
		require.EqualValues(t, accepted, code, name)
		assert.True(t, holder.Closed(3*time.Second), name)
		eventually(t, 5*time.Second, func() bool { return a.redis.CLI("EXISTS", "guard:takeoverconns:"+tr) == "1" },
			"%s: takeover not counted under guard:takeoverconns:<form>", name)
		assert.Equal(t, "0", a.redis.CLI("EXISTS", "guard:takeoverconns:"+tracked(tr)), "%s: hashed twice", name)
		assert.Equal(t, "0", a.redis.CLI("EXISTS", "guard:conn:"+tracked(tr)), "%s: hashed twice", name)
		assert.Equal(t, "0", a.redis.CLI("EXISTS", "guard:seen:"+tracked(tr)), "%s: hashed twice", name)
		a.waitLive(tr, 1)

		// A clean disconnect clears the live entry: bob may use it then.
		again.Disconnect()
		a.waitLive(tr, 0)
		c, code := b.dial(as(ip(), id, "bob", "bob-pw"))
		require.EqualValues(t, accepted, code, "%s: alice gone", name)
		a.waitLive(tr, 1)
		c.Disconnect()
		a.waitLive(tr, 0)
	}

	// A long ID left live on broker-a, which dies: reaped after its lease.
	id := h13IDs()["60000"]
	_, code := a.dial(as(ip(), id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive(tracked(id), 1)
	assert.EqualValues(t, refused, b.connect(as(ip(), id, "bob", "bob-pw")))
	a.broker.Kill()
	a.waitLive(tracked(id), 0)
	assert.EqualValues(t, accepted, b.connect(as(ip(), id, "bob", "bob-pw")), "no ghost after the lease")
}

// A short client ID equal to a long one's tracking form is another client
// ID: no finding between them, their live entries apart; and a
// findings_topic subscriber of a long one's finding gets its tracking form.
func TestZZH13ShortIDAsLongIDsForm(t *testing.T) {
	e := newEnv(t, "auth_opt_findings_topic guard/findings")
	sub, code := e.dial(as("127.0.114.9", "watcher", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, sub.Subscribe(ctx, "guard/findings", 0))

	long := "pose-" + strings.Repeat("P", 400)
	form := tracked(long)
	la, code := e.dial(as("127.0.114.1", long, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	e.waitLive(form, 1)
	lb, code := e.dial(as("127.0.114.2", form, "bob", "bob-pw"))
	require.EqualValues(t, accepted, code)
	e.waitLive(tracked(form), 1)
	e.waitLive(form, 1)
	time.Sleep(500 * time.Millisecond)
	assert.Empty(t, e.findings(), "a short ID equal to a long one's form confused with it")
	la.Disconnect()
	lb.Disconnect()

	// A real conflict on the long ID: the topic's message names its form.
	e.waitLive(form, 0)
	require.EqualValues(t, accepted, e.connect(as("127.0.114.3", long, "bob", "bob-pw")))
	_, payload, err := sub.Next(ctx)
	require.NoError(t, err)
	var f map[string]any
	require.NoError(t, json.Unmarshal(payload, &f))
	assert.Equal(t, form, f["clientid"])
	assert.Equal(t, []any{"alice", "bob"}, f["principals"])
	fs := e.findings()
	require.Len(t, fs, 1)
	assert.Equal(t, form, fs[0]["clientid"])

	// A conflict on the short ID that poses as that form: its message must
	// not read as the long one's (the ID itself would: it is the form), so
	// it carries its own tracking form, as a short ID starting with
	// "sha256:" always is in Redis.
	require.EqualValues(t, accepted, e.connect(as("127.0.114.4", form, "alice", "alice-pw")))
	e.waitLive(tracked(form), 0)
	require.EqualValues(t, accepted, e.connect(as("127.0.114.5", form, "bob", "bob-pw")))
	_, payload, err = sub.Next(ctx)
	require.NoError(t, err)
	f = nil
	require.NoError(t, json.Unmarshal(payload, &f))
	assert.Equal(t, tracked(form), f["clientid"], "the poser's finding reads as the long ID's")
	e.logLine("event=finding", `client_id="`+form+`"`)
}

// Known sources by a long (or "sha256:") client ID under the username
// throttle: the writer keeps the ID's tracking form (c714a05) and the
// throttle's check forms it from the ID itself; the known device roaming
// to a new IP is let in, a stranger's CONNECT with a long ID and the
// password is refused, and the refusals are logged once per episode
// (throttleLog keyed by the username's tracking form now).
func TestZZH13ThrottleKnownByLongID(t *testing.T) {
	e := newEnv(t, "auth_opt_fail_limit 50", "auth_opt_fail_window 3s", "auth_opt_username_fail_limit 5")
	ids := h13IDs()
	for _, id := range ids {
		require.EqualValues(t, accepted, e.connect(as("127.3.13.1", id, "bob", "bob-pw")))
	}
	for _, id := range ids {
		eventually(t, 3*time.Second, func() bool { return e.redis.CLI("ZSCORE", "guard:known:bob", "clientid:"+tracked(id)) != "" },
			"known source by client ID %.20q... not recorded under its tracking form", id)
	}
	for i := 0; i < 40; i++ {
		e.connect(as("127.3.14."+strconv.Itoa(1+i), "x"+strconv.Itoa(i), "bob", "guess"+strconv.Itoa(i)))
	}
	e.waitKey("guard:throttle:username:bob", true, 2*time.Second)
	for name, id := range ids {
		assert.EqualValues(t, accepted, e.connect(as("127.3.15.1", id, "bob", "bob-pw")), "%s: a known client ID from a new IP", name)
		assert.EqualValues(t, refused, e.connect(as("127.3.15.2", id+"x", "bob", "bob-pw")), "%s: another client ID", name)
	}
	assert.EqualValues(t, refused, e.connect(as("127.3.15.3", tracked(ids["60000"]), "bob", "bob-pw")),
		"the long ID's tracking form as a client ID is another client ID")
	assert.Equal(t, 1, e.countLines("event=refused", "rule=username-throttled"), "refusals logged once per episode")
}

// TestZZH13LongIDStrangerHoldsTheRelease: 155da76's slow rule lets a
// release through a stranger's trickle of refused CONNECTs when it
// allocates under releaseSlow (1 MB) every quarter second. A stranger
// sending a 60 000-byte client ID and username with each refused CONNECT,
// every 50 ms, allocated 320 KB a CONNECT in cgo's strings alone (a
// buffer grown by append, then the strings, then the buffer dropped): 6 MB
// a second, a burst, and the release after the devices' burst did not come
// while it went on. Made in one copy (123 KB), the trickle is slow and the
// release comes. About 40 s: H13=1 or ATK_LOAD=1.
func TestZZH13LongIDStrangerHoldsTheRelease(t *testing.T) {
	if os.Getenv("H13") == "" && os.Getenv("ATK_LOAD") == "" {
		t.Skip("about 40 s: H13=1 or ATK_LOAD=1")
	}
	const n = 3000
	e := envWithoutBroker(t)
	addDevices(t, e, n)
	b := atkRelBroker(t, e.conf("log_type all"), true)
	time.Sleep(1500 * time.Millisecond)
	ok, _ := r13Hold(t, b, n, func(i int) string { return fmt.Sprintf("t-%d", i) }, -1, nil)
	before := strings.Count(b.Output(), "heap released")
	end := time.Now()
	long := strings.Repeat("q", 59990)
	stop := make(chan struct{})
	var sent atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			c, _, err := mqttc.Dial(ctx, mqttc.Options{Addr: b.Addr, SourceIP: "127.15.0.1",
				ClientID: fmt.Sprintf("s%08d", i) + long, Username: str(fmt.Sprintf("n%08d", i) + long), Password: str("pw")})
			cancel()
			sent.Add(1)
			if err == nil && c != nil {
				c.Close()
			}
		}
	}()
	const window = 18 * time.Second
	relAt := r13ReleaseAfter(b, before, end, window)
	close(stop)
	<-done
	t.Logf("%d/%d devices; stranger: %d CONNECTs with a 60 000-byte client ID and username; release %v after the burst (0: none in %v)",
		ok, n, sent.Load(), relAt, window)
	require.False(t, b.Exited())
	assert.NotZero(t, relAt, "no release in %v after the devices' burst while a stranger sends long client IDs and usernames at 20/s", window)
}
