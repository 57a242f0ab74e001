package e2e

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// atk18Conn is a connection record as Redis and the findings hold it.
type atk18Conn struct {
	ID        string `json:"id"`
	Instance  string `json:"instance"`
	Principal string `json:"principal"`
	IP        string `json:"ip"`
}

// Issue 12 (21a8a39): the worker names only the connections a write or a
// finding shows. On a real broker, a device reconnecting in a loop (its
// pairs folded away within the worker's linger), taking over its own held
// connection again and again (folded takeovers: duplicate findings), and
// another principal taking the client ID after it (a cross-principal
// finding): every record in guard:conn and guard:seen, and every
// connection of every finding, carries its connection's ID
// (<instance>-<seq>) and the IP it came from.
func TestAtk18ReconnectLoopRecordsNamed(t *testing.T) {
	e := newEnv(t, "auth_opt_takeover_limit 3", "auth_opt_takeover_window 1m")
	for i := range 40 { // a reconnect loop: pairs folded within one linger
		require.EqualValues(t, accepted, e.connect(as("127.0.22."+strconv.Itoa(1+i%3), "loop-1", "alice", "alice-pw")))
	}
	time.Sleep(300 * time.Millisecond)
	held, code := e.dial(as("127.0.22.9", "loop-1", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	time.Sleep(300 * time.Millisecond) // held recorded, in a batch of its own
	for i := range 4 {                 // each takes the one before over, and is taken over within the linger
		c, code := e.dial(as("127.0.22."+strconv.Itoa(10+i), "loop-1", "alice", "alice-pw"))
		require.EqualValues(t, accepted, code)
		assert.True(t, held.Closed(3*time.Second), "takeover closes the old connection")
		held = c
	}
	held.Disconnect()
	time.Sleep(300 * time.Millisecond)
	require.EqualValues(t, accepted, e.connect(as("127.0.22.99", "loop-1", "bob", "bob-pw")))
	fs := e.waitFindings(2)

	idRE := regexp.MustCompile(`^[0-9a-f]{12}-[0-9]+$`)
	ipRE := regexp.MustCompile(`^127\.0\.22\.[0-9]+$`)
	checkConn := func(where string, c atk18Conn) {
		t.Helper()
		assert.Regexp(t, idRE, c.ID, where)
		assert.Equal(t, c.Instance, strings.SplitN(c.ID, "-", 2)[0], where)
		assert.Regexp(t, ipRE, c.IP, where)
	}
	kinds := map[string]int{}
	for _, f := range fs {
		kinds[f["kind"]]++
		var cs []atk18Conn
		require.NoError(t, json.Unmarshal([]byte(f["connections"]), &cs), f["connections"])
		require.NotEmpty(t, cs)
		for _, c := range cs {
			checkConn("finding "+f["kind"], c)
		}
		var ips []string
		require.NoError(t, json.Unmarshal([]byte(f["ips"]), &ips))
		for _, ip := range ips {
			assert.Regexp(t, ipRE, ip, "finding ips")
		}
	}
	assert.Equal(t, 1, kinds["duplicate-connection"], "the folded takeovers' duplicate finding: %v", fs)
	assert.Equal(t, 1, kinds["cross-principal"], "bob after alice: %v", fs)
	for _, k := range []string{"guard:conn:loop-1", "guard:seen:loop-1"} {
		lines := strings.Split(strings.TrimSpace(e.redis.CLI("HGETALL", k)), "\n")
		for i := 1; i < len(lines); i += 2 {
			var c atk18Conn
			require.NoError(t, json.Unmarshal([]byte(lines[i]), &c), "%s %q", k, lines[i])
			checkConn(k, c)
		}
	}
	e.logLine("event=finding", "kind=duplicate-connection", "ips=127.0.22.")
}
