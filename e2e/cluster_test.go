package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// The plugin on a Redis Cluster of three masters: the replica loads from and
// follows every master, automatic bans and findings are written across slots.
func TestRedisCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("forms a Redis Cluster")
	}
	testenv.Need(t, "mosquitto", "mosquitto_passwd", "redis-server", "redis-cli")
	cl := testenv.StartRedisCluster(t, 3)
	e := &env{t: t, dir: t.TempDir()}
	e.passwd = e.dir + "/passwd"
	for u, p := range users {
		e.addUser(u, p)
	}
	conf := strings.Replace(e.conf("auth_opt_fail_limit 1"), "auth_opt_redis_addr 127.0.0.1:1", "auth_opt_redis_addr "+cl.Addrs, 1)
	e.broker = startBroker(t, conf)
	e.logLine("replica loaded")

	// Keys whose slots fall on every master: each master's notifications reach the replica.
	masters := map[string]bool{}
	for i := 0; i < 12; i++ {
		id := "cl-" + strconv.Itoa(i)
		key := "guard:block:clientid:" + id
		slot, _ := strconv.Atoi(cl.CLI("CLUSTER", "KEYSLOT", key))
		masters[fmt.Sprint(slot*3/16384)] = true
		cl.CLI("SET", key, "cluster ban")
		e.expect(as("127.0.50.1", id, "alice", "alice-pw"), refused, "ban of %s (slot %d)", id, slot)
	}
	assert.Len(t, masters, 3, "the keys covered every master")

	// An automatic ban, counted by redis_rate and written with SET NX on the cluster.
	e.connect(as("127.0.50.2", "x", "alice", "bad1"))
	e.connect(as("127.0.50.2", "x", "alice", "bad2"))
	eventually(t, 3*time.Second, func() bool { return cl.CLI("EXISTS", "guard:block:ip:127.0.50.2") == "1" }, "no automatic ban on the cluster")
	e.expect(as("127.0.50.2", "y", "alice", "alice-pw"), refused)

	// Client-ID conflict findings across slots.
	require.EqualValues(t, accepted, e.connect(as("127.0.50.3", "shared-cl", "alice", "alice-pw")))
	eventually(t, 3*time.Second, func() bool { return cl.CLI("HLEN", "guard:seen:shared-cl") == "1" }, "alice not remembered")
	require.EqualValues(t, accepted, e.connect(as("127.0.50.4", "shared-cl", "bob", "bob-pw")))
	eventually(t, 3*time.Second, func() bool { return cl.CLI("XLEN", "guard:findings") == "1" }, "no finding on the cluster")

	// An operator's ban kicks a connected client.
	conn := e.dialWill(as("127.0.50.5", "cl-kick", "bob", "bob-pw"))
	cl.CLI("SET", "guard:block:username:bob", "revoked")
	assert.True(t, conn.Closed(time.Second))
}
