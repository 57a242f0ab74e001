package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
)

// atk29ConnectAtStop dials n clients of alice with distinct client IDs,
// back to back, and sends SIGTERM after the fifth CONNACK, while the rest
// still connect. It returns the client IDs whose CONNECT was accepted.
func atk29ConnectAtStop(t *testing.T, e *env, prefix string, n int) []string {
	t.Helper()
	var mu sync.Mutex
	var ok []string
	var conns []*mqttc.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		c, code := atk29Dial(e, as(fmt.Sprintf("127.0.95.%d", i+1), id, "alice", "alice-pw"))
		if c != nil {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
		if c != nil && code == accepted {
			ok = append(ok, id)
		}
		if i == 4 {
			require.NoError(t, e.broker.Signal(syscall.SIGTERM))
		}
	}
	_, done := e.broker.Wait(5 * time.Second)
	require.True(t, done, "mosquitto did not stop")
	return ok
}

// atk29Dial is e.dial without failing the test when the broker is gone.
func atk29Dial(e *env, c client) (*mqttc.Conn, byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, code, err := mqttc.Dial(ctx, mqttc.Options{
		Addr: e.broker.Addr, SourceIP: c.ip, ClientID: c.id, Username: c.user, Password: c.pass,
	})
	if err != nil {
		return nil, 255
	}
	return conn, code
}

// atk29CheckStop checks, for every client ID accepted just before or at
// the stop: the README's "a connection still held when its broker stops
// is ended in Redis as its DISCONNECT would have been" (live entry gone,
// the principal's seen record carrying an end), or, failing that, the
// broker's lease is still there for another broker's reap.
func atk29CheckStop(t *testing.T, e *env, ids []string) {
	t.Helper()
	require.NotEmpty(t, ids)
	lease := e.redis.CLI("ZCARD", "guard:brokers")
	for _, id := range ids {
		live := e.redis.CLI("HLEN", "guard:conn:"+id)
		rec := e.seenRecord(id, "alice")
		if live != "0" {
			assert.NotEqual(t, "0", lease, "%s: live entry left after a clean stop with no lease to reap it (a ghost for ever)", id)
			continue
		}
		if assert.NotNil(t, rec, "%s: accepted before the stop, but alice's use is not recorded at all", id) {
			_, ended := rec["disconnected_ms"].(float64)
			assert.True(t, ended, "%s: no live entry and no end: %v", id, rec)
		}
	}
}

// Pins (or breaks) the README's "A connection still held when its broker
// stops is ended in Redis as its DISCONNECT would have been", for clients
// that connect just before and during the stop, under flag (the worker's
// 100 ms batch) and deny (the claim on the broker thread).
func TestAtk29ConnectAtStopFlag(t *testing.T) {
	e := newEnv(t)
	ids := atk29ConnectAtStop(t, e, "atstop-f", 12)
	t.Logf("accepted: %v; brokers: %q", ids, e.redis.CLI("ZRANGE", "guard:brokers", "0", "-1"))
	atk29CheckStop(t, e, ids)
}

func TestAtk29ConnectAtStopDeny(t *testing.T) {
	e := newEnv(t, "auth_opt_clientid_conflict deny")
	ids := atk29ConnectAtStop(t, e, "atstop-d", 12)
	t.Logf("accepted: %v; brokers: %q", ids, e.redis.CLI("ZRANGE", "guard:brokers", "0", "-1"))
	atk29CheckStop(t, e, ids)
}

// Long (hashed) and "sha256:"-looking client IDs held at the stop are
// ended under their tracking keys like any other.
func TestAtk29StopEndsHashedClientIDs(t *testing.T) {
	e := newEnv(t)
	long := strings.Repeat("L", 300)
	fake := "sha256:" + strings.Repeat("0", 64)
	for i, id := range []string{long, fake} {
		_, code := e.dial(as(fmt.Sprintf("127.0.96.%d", i+1), id, "alice", "alice-pw"))
		require.EqualValues(t, accepted, code)
	}
	key := func(id string) string {
		if len(id) > 256 || strings.HasPrefix(id, "sha256:") {
			s := sha256.Sum256([]byte(id))
			return "sha256:" + hex.EncodeToString(s[:])
		}
		return id
	}
	for _, id := range []string{long, fake} {
		e.waitLive(key(id), 1)
	}
	require.NoError(t, e.broker.Signal(syscall.SIGTERM))
	_, done := e.broker.Wait(5 * time.Second)
	require.True(t, done)
	for _, id := range []string{long, fake} {
		assert.Equal(t, "0", e.redis.CLI("HLEN", "guard:conn:"+key(id)))
		rec := e.seenRecord(key(id), "alice")
		if assert.NotNil(t, rec) {
			_, ok := rec["disconnected_ms"].(float64)
			assert.True(t, ok, "ended: %v", rec)
		}
	}
	assert.Equal(t, "0", e.redis.CLI("EXISTS", "guard:conn:"+fake), "the raw sha256: ID is not a key of its own")
}

// A stop whose cleanup Redis lets through only part way (CLIENT PAUSE
// WRITE ending around the 1.5 s bound): every held connection must be
// either ended or still backed by this broker's lease, so that a reap ends
// it later (README: "the rest ... keep their live entries until the lease
// runs out and another broker, or this one's next start, ends them"). A
// live entry left with no lease is never reaped.
func TestAtk29PartialStopKeepsLease(t *testing.T) {
	for _, pause := range []int{1300, 1400, 1450, 1500} {
		t.Run(fmt.Sprint(pause), func(t *testing.T) {
			e := newEnv(t)
			var ids []string
			for i := 0; i < 150; i++ {
				id := fmt.Sprintf("part-%d-%d", pause, i)
				_, code := e.dial(as(fmt.Sprintf("127.0.97.%d", i+1), id, "alice", "alice-pw"))
				require.EqualValues(t, accepted, code)
				ids = append(ids, id)
			}
			for _, id := range ids {
				e.waitLive(id, 1)
			}
			e.redis.CLI("CLIENT", "PAUSE", fmt.Sprint(pause), "WRITE")
			start := time.Now()
			require.NoError(t, e.broker.Signal(syscall.SIGTERM))
			_, done := e.broker.Wait(5 * time.Second)
			require.True(t, done)
			t.Logf("stopped in %v", time.Since(start))
			time.Sleep(time.Until(start.Add(time.Duration(pause+300) * time.Millisecond)))
			lease := e.redis.CLI("ZCARD", "guard:brokers")
			left := 0
			for _, id := range ids {
				if e.redis.CLI("HLEN", "guard:conn:"+id) != "0" {
					left++
				}
			}
			t.Logf("lease %s, live entries left %d of %d", lease, left, len(ids))
			if left > 0 {
				assert.NotEqual(t, "0", lease, "live entries left with no lease to reap them")
			}
		})
	}
}

// KNOWN LIMIT, skipped (atk29; older than the reap's ends; README Known limits; real brokers, about 5 s): Redis flushed (FLUSHALL; an
// empty restart is the same loss) while alice holds a client ID on
// broker-a, clientid_conflict deny on both brokers. The plugin notices the
// flush (its flush mark, logged) and writes the held connections' known
// sources again (README, Automatic bans), and broker-a's lease comes back
// at its next renewal, but alice's live entry and her brokerconns
// membership are never written again: bob taking the client ID on
// broker-b is let in while alice holds it (deny admits a conflict, and no
// finding: her seen record went with the flush too), and broker-a's stop
// does not end her use (README: "A connection still held when its broker
// stops is ended in Redis"): no seen record of alice at all. Known limits
// names only a broker reaped while paused, not a flush or an empty Redis
// restart, which the README says the plugin recovers from.
func TestAtk29FlushWhileHeld(t *testing.T) {
	// Was a KNOWN LIMIT (skipped); fixed: the flush found, the broker records its live connections again (relist).
	a, b := twoBrokers(t, "auth_opt_clientid_conflict deny", "auth_opt_broker_lease 3s")
	_, code := a.dial(as("127.0.98.1", "flush-29", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive("flush-29", 1)
	time.Sleep(time.Second)

	a.redis.CLI("FLUSHALL")
	time.Sleep(3 * time.Second) // the flush mark (0.5 s) and at least one lease renewal
	t.Logf("after flush: brokers %q, conn %q, brokerconns keys %q", a.redis.CLI("ZRANGE", "guard:brokers", "0", "-1"),
		a.redis.CLI("HLEN", "guard:conn:flush-29"), a.redis.CLI("KEYS", "guard:brokerconns:*"))
	assert.EqualValues(t, refused, b.connect(as("127.0.98.2", "flush-29", "bob", "bob-pw")),
		"DEFECT if let in: alice holds flush-29 on broker-a, but her live entry is gone with the flush and never written again")

	require.NoError(t, a.broker.Signal(syscall.SIGTERM))
	_, done := a.broker.Wait(5 * time.Second)
	require.True(t, done)
	t.Logf("findings: %d", len(b.findings()))
	rec := b.seenRecord("flush-29", "alice")
	t.Logf("alice's seen record after broker-a's stop: %v", rec)
	assert.NotNil(t, rec, "DEFECT if nil: alice held flush-29 until broker-a's stop, but her use is not recorded")
}

// SIGHUP to a broker holding a connection (Mosquitto runs the plugin's
// security cleanup and init again on reload): the connection stays live in
// Redis, deny still refuses another principal, and the later stop still
// ends alice's use.
func TestAtk29SighupKeepsHeldLive(t *testing.T) {
	e := newEnv(t, "auth_opt_clientid_conflict deny")
	_, code := e.dial(as("127.0.99.1", "hup-29", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	e.waitLive("hup-29", 1)
	for i := 0; i < 3; i++ {
		require.NoError(t, e.broker.Signal(syscall.SIGHUP))
		time.Sleep(300 * time.Millisecond)
	}
	time.Sleep(time.Second)
	assert.Equal(t, "1", e.redis.CLI("HLEN", "guard:conn:hup-29"), "alice's live entry after SIGHUP")
	assert.EqualValues(t, refused, e.connect(as("127.0.99.2", "hup-29", "bob", "bob-pw")))
	stop := time.Now().UnixMilli()
	require.NoError(t, e.broker.Signal(syscall.SIGTERM))
	_, done := e.broker.Wait(5 * time.Second)
	require.True(t, done)
	rec := e.seenRecord("hup-29", "alice")
	require.NotNil(t, rec)
	end, _ := rec["disconnected_ms"].(float64)
	assert.GreaterOrEqual(t, int64(end), stop, "alice's use ends at the stop: %v", rec)
	assert.Equal(t, "0", e.redis.CLI("HLEN", "guard:conn:hup-29"))
}

// A broker killed (no cleanup) and started again at once; alice's device
// reconnects to the new instance with the same client ID before the dead
// instance's lease runs out. The reap of the dead instance (at the new
// one's renewal after the lease's end) must leave her new connection live
// and her record unended ("as are a live record and one ended later").
func TestAtk29ReconnectDuringRestartSurvivesReap(t *testing.T) {
	extra := []string{"auth_opt_clientid_conflict deny", "auth_opt_broker_lease 2s", "auth_opt_broker_name broker-a"}
	e := newEnv(t, extra...)
	_, code := e.dial(as("127.0.99.11", "restart-29", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	e.waitLive("restart-29", 1)
	time.Sleep(500 * time.Millisecond)
	require.NoError(t, e.broker.Signal(syscall.SIGKILL))
	_, done := e.broker.Wait(5 * time.Second)
	require.True(t, done)

	e.broker = startBroker(t, e.conf(extra...))
	_, code = e.dial(as("127.0.99.11", "restart-29", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code, "alice's own device, back after the restart")
	eventually(t, 10*time.Second, func() bool { return e.redis.CLI("ZCARD", "guard:brokers") == "1" }, "the dead instance is reaped")
	time.Sleep(time.Second)
	assert.Equal(t, "1", e.redis.CLI("HLEN", "guard:conn:restart-29"), "alice's new connection stays live")
	rec := e.seenRecord("restart-29", "alice")
	require.NotNil(t, rec)
	assert.Nil(t, rec["disconnected_ms"], "alice is connected: no end: %v", rec)
	assert.EqualValues(t, refused, e.connect(as("127.0.99.12", "restart-29", "bob", "bob-pw")), "deny: alice holds it")
}

// Alice's device takes over her own connection (same client ID, same
// broker) right before the stop: the displaced connection's DISCONNECT and
// the new CONNECT are both still in the tracker's batch. After the stop
// nothing is left live and her use carries the stop's end.
func TestAtk29TakeoverAtStop(t *testing.T) {
	for _, mode := range []string{"flag", "deny"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, "auth_opt_clientid_conflict "+mode)
			_, code := e.dial(as("127.0.99.21", "take-29", "alice", "alice-pw"))
			require.EqualValues(t, accepted, code)
			e.waitLive("take-29", 1)
			_, code = e.dial(as("127.0.99.22", "take-29", "alice", "alice-pw"))
			require.EqualValues(t, accepted, code)
			stop := time.Now().UnixMilli()
			require.NoError(t, e.broker.Signal(syscall.SIGTERM))
			_, done := e.broker.Wait(5 * time.Second)
			require.True(t, done)
			assert.Equal(t, "0", e.redis.CLI("HLEN", "guard:conn:take-29"), "nothing left live")
			rec := e.seenRecord("take-29", "alice")
			require.NotNil(t, rec)
			end, _ := rec["disconnected_ms"].(float64)
			assert.GreaterOrEqual(t, int64(end), stop, "ended at the stop: %v", rec)
		})
	}
}

// As TestAtk29ReconnectDuringRestartSurvivesReap, under flag (the new
// connection written by the tracker's batch, not the claim).
func TestAtk29ReconnectDuringRestartSurvivesReapFlag(t *testing.T) {
	extra := []string{"auth_opt_broker_lease 2s", "auth_opt_broker_name broker-a"}
	e := newEnv(t, extra...)
	_, code := e.dial(as("127.0.99.31", "restartf-29", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	e.waitLive("restartf-29", 1)
	time.Sleep(500 * time.Millisecond)
	require.NoError(t, e.broker.Signal(syscall.SIGKILL))
	_, done := e.broker.Wait(5 * time.Second)
	require.True(t, done)

	e.broker = startBroker(t, e.conf(extra...))
	_, code = e.dial(as("127.0.99.31", "restartf-29", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	eventually(t, 10*time.Second, func() bool { return e.redis.CLI("ZCARD", "guard:brokers") == "1" }, "the dead instance is reaped")
	time.Sleep(time.Second)
	assert.Equal(t, "1", e.redis.CLI("HLEN", "guard:conn:restartf-29"), "alice's new connection stays live")
	rec := e.seenRecord("restartf-29", "alice")
	require.NotNil(t, rec)
	assert.Nil(t, rec["disconnected_ms"], "alice is connected: no end: %v", rec)
}

// SIGHUP right before SIGTERM (a reload still running at the stop): the
// stop stays bounded and still ends the held connection.
func TestAtk29SighupThenStop(t *testing.T) {
	e := newEnv(t)
	_, code := e.dial(as("127.0.99.41", "hupstop-29", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	e.waitLive("hupstop-29", 1)
	require.NoError(t, e.broker.Signal(syscall.SIGHUP))
	start := time.Now()
	require.NoError(t, e.broker.Signal(syscall.SIGTERM))
	_, done := e.broker.Wait(5 * time.Second)
	require.True(t, done)
	assert.Less(t, time.Since(start), 2500*time.Millisecond)
	assert.Equal(t, "0", e.redis.CLI("HLEN", "guard:conn:hupstop-29"))
	rec := e.seenRecord("hupstop-29", "alice")
	require.NotNil(t, rec)
	_, ok := rec["disconnected_ms"].(float64)
	assert.True(t, ok, "ended: %v", rec)
}

// A long username (tracked by its hash, like a long client ID) held at the
// stop: its use is ended like any other.
func TestAtk29StopEndsLongUsername(t *testing.T) {
	e := newEnv(t)
	user := strings.Repeat("u", 300)
	e.addUser(user, "long-pw")
	require.NoError(t, e.broker.Signal(syscall.SIGHUP)) // re-read the password file
	time.Sleep(time.Second)
	_, code := e.dial(as("127.0.99.51", "longuser-29", user, "long-pw"))
	require.EqualValues(t, accepted, code)
	e.waitLive("longuser-29", 1)
	require.NoError(t, e.broker.Signal(syscall.SIGTERM))
	_, done := e.broker.Wait(5 * time.Second)
	require.True(t, done)
	assert.Equal(t, "0", e.redis.CLI("HLEN", "guard:conn:longuser-29"))
	all := e.redis.CLI("HGETALL", "guard:seen:longuser-29")
	t.Logf("seen: %.300s", all)
	lines := strings.Split(all, "\n")
	require.Len(t, lines, 2, "one principal")
	assert.Contains(t, lines[1], "disconnected_ms", "ended at the stop")
}

// snapshotEntryBack waits until Redis, restarted from its snapshot, holds
// client ID cid's live entry again (the one Redis lost when the client left),
// or e's broker has already removed it (its line): a running broker can
// relist and remove it within 200 ms of Redis's start, before a look here
// (CI, TestAtk29SnapshotGhostWhileBrokerRuns: Redis ready and the removal in
// the same second, the entry never seen).
func snapshotEntryBack(t *testing.T, e *env, cid string) {
	t.Helper()
	eventually(t, 5*time.Second, func() bool {
		return e.redis.CLI("HLEN", "guard:conn:"+cid) == "1" ||
			hasLine(e.broker.Output(), "removed 1 live entries of this broker")
	}, "the snapshot's entry of %s is back", cid)
}

// ghostEntry is a live entry of client ID cid as Redis holds it: its field,
// its value and its broker instance.
type ghostEntry struct{ field, value, instance string }

// liveEntry reads cid's one live entry.
func liveEntry(t *testing.T, e *env, cid string) ghostEntry {
	t.Helper()
	fv := strings.Split(e.redis.CLI("HGETALL", "guard:conn:"+cid), "\n")
	require.Len(t, fv, 2, "one live entry of %s", cid)
	var v struct{ Instance string }
	require.NoError(t, json.Unmarshal([]byte(fv[1]), &v))
	require.NotEmpty(t, v.Instance)
	return ghostEntry{fv[0], fv[1], v.Instance}
}

// putBack makes g cid's live entry again, where the running broker has
// removed the snapshot's ghost (it relists its connections when Redis comes
// back, within about 200 ms): what follows tests a ghost that outlived the
// broker's run, as before the relist, not an empty key.
func putBack(t *testing.T, e *env, cid string, g ghostEntry) {
	t.Helper()
	if e.redis.CLI("HLEN", "guard:conn:"+cid) == "1" {
		return
	}
	t.Logf("the broker removed the snapshot's ghost of %s: put back", cid)
	e.redis.CLI("HSET", "guard:conn:"+cid, g.field, g.value)
	e.redis.CLI("SADD", "guard:brokerconns:"+g.instance, cid)
}

// Redis restarted from an older snapshot (a SAVE taken while alice was
// connected; she left after it): her live entry comes back, although
// nobody holds the client ID, and the flush mark in the snapshot is the
// same, so nothing tells the brokers. HOLDS: on the broker that listed it,
// the ghost refuses nobody (bob let in under deny while the broker runs,
// logged), and after that broker's stop and a lease nothing is left that
// refuses bob. (Before the fix of such a defect, a ghost of a broker that
// no longer has a lease would never be reaped.)
func TestAtk29SnapshotGhostOutlivesStop(t *testing.T) {
	extra := []string{"auth_opt_clientid_conflict deny", "auth_opt_broker_lease 2s"}
	e := newEnv(t, extra...)
	alice, code := e.dial(as("127.0.99.61", "snap-29", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	e.waitLive("snap-29", 1)
	time.Sleep(500 * time.Millisecond)
	e.redis.CLI("SAVE")
	ghost := liveEntry(t, e, "snap-29")
	alice.Disconnect()
	e.waitLive("snap-29", 0)

	e.redis.Kill()
	e.redis.Restart()
	snapshotEntryBack(t, e, "snap-29")
	time.Sleep(3 * time.Second) // the broker sees Redis again, renews its lease
	putBack(t, e, "snap-29", ghost)
	t.Logf("ttl of guard:conn:snap-29: %s", e.redis.CLI("TTL", "guard:conn:snap-29"))
	first := e.connect(as("127.0.99.62", "snap-29", "bob", "bob-pw"))
	t.Logf("bob while the broker runs: %d (5: refused by the snapshot's ghost)", first)

	require.NoError(t, e.broker.Signal(syscall.SIGTERM))
	_, done := e.broker.Wait(5 * time.Second)
	require.True(t, done)
	e.broker = startBroker(t, e.conf(extra...))
	time.Sleep(4 * time.Second) // more than the lease: a reap of anything left
	t.Logf("after stop and restart: conn %q, brokers %q", e.redis.CLI("HGETALL", "guard:conn:snap-29"), e.redis.CLI("ZRANGE", "guard:brokers", "0", "-1"))
	assert.EqualValues(t, accepted, e.connect(as("127.0.99.62", "snap-29", "bob", "bob-pw")),
		"DEFECT: nobody has held snap-29 for seconds, the broker that listed it has stopped, yet bob is refused")
}

// As TestAtk29SnapshotGhostOutlivesStop, across two brokers: the snapshot
// brings back alice's live entry on broker-a (she has left); bob takes the
// client ID on broker-b under deny. Refused while broker-a runs is what
// deny does with what Redis says (logged, not asserted); after broker-a's
// stop (its cleanup, its lease removed) bob must be let in. DEFECT if he
// is refused: a live entry of a broker with no lease that no reap ends,
// a legitimate device refused for ever.
func TestAtk29SnapshotGhostAcrossBrokers(t *testing.T) {
	a, b := twoBrokers(t, "auth_opt_clientid_conflict deny", "auth_opt_broker_lease 2s")
	alice, code := a.dial(as("127.0.99.71", "snap2-29", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive("snap2-29", 1)
	time.Sleep(500 * time.Millisecond)
	a.redis.CLI("SAVE")
	ghost := liveEntry(t, a, "snap2-29")
	alice.Disconnect()
	a.waitLive("snap2-29", 0)

	a.redis.Kill()
	a.redis.Restart()
	snapshotEntryBack(t, a, "snap2-29")
	time.Sleep(3 * time.Second)
	putBack(t, a, "snap2-29", ghost)
	t.Logf("bob on broker-b while broker-a runs: %d", b.connect(as("127.0.99.72", "snap2-29", "bob", "bob-pw")))

	require.NoError(t, a.broker.Signal(syscall.SIGTERM))
	_, done := a.broker.Wait(5 * time.Second)
	require.True(t, done)
	time.Sleep(4 * time.Second) // more than the lease
	t.Logf("after broker-a's stop: conn %q, brokers %q", a.redis.CLI("HGETALL", "guard:conn:snap2-29"), a.redis.CLI("ZRANGE", "guard:brokers", "0", "-1"))
	assert.EqualValues(t, accepted, b.connect(as("127.0.99.72", "snap2-29", "bob", "bob-pw")),
		"DEFECT: nobody holds snap2-29 and broker-a has stopped, yet bob is refused")
}

// KNOWN LIMIT, skipped (atk29; older than the reap's ends; README Known limits; about 45 s; needs Redis restarted from a snapshot older
// than the last disconnect, which the README neither promises nor rules
// out): the snapshot's ghost of TestAtk29SnapshotGhostAcrossBrokers, while
// broker-a keeps running. Alice left broker-a before Redis restarted from
// the older snapshot; her live entry came back under broker-a's live lease
// (the flush mark is in the snapshot too, so no loss is noticed). README
// (Bounds): "no ended connection stays live in guard:conn:<id>"; deny
// refuses a client ID "live under another principal". Yet bob, the client
// ID's next legitimate holder, is refused on broker-b for 40 s and more
// (for as long as broker-a runs and alice does not come back to it),
// while broker-a itself lets him in (TestAtk29SnapshotGhostOutlivesStop):
// nothing checks a broker's listed entries against what it holds.
func TestAtk29SnapshotGhostWhileBrokerRuns(t *testing.T) {
	// Was a KNOWN LIMIT (skipped); fixed: the broker records its connections again once Redis is back, and removes its other entries (relist, RelistDone).
	a, b := twoBrokers(t, "auth_opt_clientid_conflict deny", "auth_opt_broker_lease 2s")
	alice, code := a.dial(as("127.0.99.81", "snap3-29", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive("snap3-29", 1)
	time.Sleep(500 * time.Millisecond)
	a.redis.CLI("SAVE")
	alice.Disconnect()
	a.waitLive("snap3-29", 0)

	a.redis.Kill()
	a.redis.Restart()
	snapshotEntryBack(t, a, "snap3-29")
	start := time.Now()
	var got byte = refused
	for time.Since(start) < 40*time.Second && got != accepted {
		time.Sleep(2 * time.Second)
		got = b.connect(as("127.0.99.82", "snap3-29", "bob", "bob-pw"))
	}
	t.Logf("bob: %d after %v; conn %q", got, time.Since(start).Round(time.Second), a.redis.CLI("HGETALL", "guard:conn:snap3-29"))
	assert.EqualValues(t, accepted, got, "DEFECT: nobody has held snap3-29 for 40 s, yet bob is refused")
}

// HOLDS (README: a dead broker's connections end "with the time its lease
// ran out as the end: at most broker_lease after its last renewal, however
// late the reap runs"): broker-a is killed holding alice's connection and
// Redis takes no writes for 5 s right after (CLIENT PAUSE WRITE), so
// broker-b's reap runs seconds after the lease ran out. Alice's end is
// still within broker_lease (plus a renewal period) of the kill.
func TestAtk29LateReapAfterRedisPause(t *testing.T) {
	a, b := twoBrokers(t, "auth_opt_broker_lease 2s")
	_, code := a.dial(as("127.0.99.91", "late-29", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	a.waitLive("late-29", 1)
	time.Sleep(500 * time.Millisecond)
	require.NoError(t, a.broker.Signal(syscall.SIGKILL))
	_, done := a.broker.Wait(5 * time.Second)
	require.True(t, done)
	killed := time.Now().UnixMilli()
	a.redis.CLI("CLIENT", "PAUSE", "5000", "WRITE")
	eventually(t, 15*time.Second, func() bool { return b.redis.CLI("HLEN", "guard:conn:late-29") == "0" }, "broker-b reaps broker-a")
	reaped := time.Now().UnixMilli()
	rec := b.seenRecord("late-29", "alice")
	require.NotNil(t, rec)
	end, ok := rec["disconnected_ms"].(float64)
	require.True(t, ok, "ended: %v", rec)
	t.Logf("end %d ms after the kill; reaped %d ms after it", int64(end)-killed, reaped-killed)
	assert.LessOrEqual(t, int64(end), killed+2000, "the lease's end, not the reap's time")
	assert.GreaterOrEqual(t, int64(end), killed-2000)
}
