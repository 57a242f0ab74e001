package e2e

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// TestAtk44FirstRenewalFailedDenyLetsIn: DEFECT (f05c243, 2a96c50; not a
// regression), with real brokers: conflicts'
// TestAtk44NoRenewalYetDenyLetsIn/firstFailed. README: "A broker's live
// connections count for the others from its start: each broker ignores
// the live entries of brokers whose lease it saw run out at its last
// renewal, and counts those of a broker it has not seen yet when they are
// younger than broker_lease"; "With clientid_conflict deny ... exactly
// one of the two is refused". alice has held the client ID on broker-b
// for 31 s (broker_lease 30s, its default). Redis stops answering for 6 s
// (CLIENT PAUSE: a restart, a failover, a stall) just as broker-a starts:
// its first lease renewal fails (bounded by 5 s), and its next is
// broker_lease/3 after its start. Redis answers again; bob connects to
// broker-a with alice's client ID. Expected: refused (alice holds it live
// on broker-b, whose lease runs; broker-b refuses bob, the control).
// Observed: let in (CONNACK 0) on broker-a, after it logged Redis back
// (its claim ran: flagged, not refused), 3 of 3 runs (the first before
// the test waited for that line): its lease view
// is empty (no renewal yet), so alice's entry, older than broker_lease,
// counts for nothing until its next renewal.
func TestAtk44FirstRenewalFailedDenyLetsIn(t *testing.T) {
	id := "atk44-first-renewal"
	e := envWithoutBroker(t)
	opts := []string{"auth_opt_clientid_conflict deny"}
	b := &env{t: t, dir: e.dir, redis: e.redis, passwd: e.passwd}
	b.broker = startBroker(t, b.conf(append([]string{"auth_opt_broker_name broker-b"}, opts...)...))
	alice, code := atk29Dial(b, as("127.0.144.1", id, "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	t.Cleanup(func() { alice.Close() })
	b.waitLive(id, 1)
	time.Sleep(31 * time.Second) // longer than broker_lease
	e.redis.CLI("CLIENT", "PAUSE", "6000", "ALL")
	paused := time.Now()
	a := &env{t: t, dir: e.dir, redis: e.redis, passwd: e.passwd}
	a.broker = testenv.StartMosquitto(t, a.conf(append([]string{"auth_opt_broker_name broker-a"}, opts...)...))
	require.True(t, a.broker.WaitOutput("mosquitto-guard: ready", 10*time.Second), "plugin did not report ready")
	time.Sleep(time.Until(paused.Add(6000 * time.Millisecond)))
	// Redis answers again: broker-a's health probe says so (the claims
	// run again: before, redis_unavailable allow skips them)
	require.True(t, a.broker.WaitOutput("is back: list checks resume", 3*time.Second), "broker-a sees Redis back")
	var bobCode byte = 255
	deadline := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(deadline) {
		bob, c := atk29Dial(a, as("127.0.144.2", id, "bob", "bob-pw"))
		if bob != nil {
			bob.Close()
		}
		bobCode = c
		if c == accepted || c == refused {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("bob on broker-a %.1f s after its start: CONNACK %d; conn=%q", time.Since(paused).Seconds(), bobCode, e.redis.CLI("HGETALL", "guard:conn:"+id))
	assert.EqualValues(t, refused, b.connect(as("127.0.144.2", id, "bob", "bob-pw")), "control: broker-b refuses bob")
	assert.EqualValues(t, refused, bobCode, "alice holds the client ID live on broker-b, whose lease runs: broker-a must refuse bob")
}
