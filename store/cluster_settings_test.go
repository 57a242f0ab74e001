package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// One node of a Redis Cluster that refuses the plugin's password (a
// rotation done on two nodes of three) is a wrong setting, not a Redis
// that answered: the start check's PING goes to one node, picked at
// random, and a cluster's pipeline carries a node's refused connection on
// that node's commands only, which checkKeys read as no refusal of a key
// and passed. The broker then started with a third of its keys (bans,
// counts, tracking) out of reach for good: Redis down for them, whatever
// redis_unavailable says, and no line at start naming redis_password.
// Each check must tell it, whichever node its PING met.
func TestClusterNodeRefusingThePasswordIsAFault(t *testing.T) {
	if testing.Short() {
		t.Skip("forms a Redis Cluster")
	}
	testenv.Need(t, "redis-server", "redis-cli")
	cl := testenv.StartRedisCluster(t, 3)
	addrs := []string{cl.Nodes[0].Addr, cl.Nodes[1].Addr, cl.Nodes[2].Addr}
	for i, n := range cl.Nodes {
		pass := "right-secret"
		if i == 2 {
			pass = "rotated-secret"
		}
		n.CLI("CONFIG", "SET", "requirepass", pass)
	}
	check := func(o Options) SettingsFault {
		o.Timeout = time.Second
		s := New(o, keys.Builder{Prefix: "guard:"})
		defer s.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		err := s.CheckSettings(ctx)
		if err != nil {
			assert.NotContains(t, err.Error(), "secret", "a password in the error")
			if o.Password != "" && strings.Contains(err.Error(), "(GET ") { // not the PING's refusal
				assert.Contains(t, err.Error(), cl.Nodes[2].Addr, "the line names the node that refused")
			}
		}
		var se *SettingsError
		if errors.As(err, &se) {
			return se.Fault
		}
		return 0
	}
	// Six checks: a PING met the refusing node in about one of three.
	for i := 0; i < 6; i++ {
		assert.Equal(t, SettingsWrongPass, check(Options{Addrs: addrs, Password: "right-secret"}), "check %d: one node refuses the password", i)
		assert.Equal(t, SettingsNoAuth, check(Options{Addrs: addrs}), "check %d: no password, which every node asks", i)
	}
	// The same cluster with every node agreeing starts.
	cl.Nodes[2].CLI("-a", "rotated-secret", "--no-auth-warning", "CONFIG", "SET", "requirepass", "right-secret")
	assert.Equal(t, SettingsFault(0), check(Options{Addrs: addrs, Password: "right-secret"}), "every node takes the password")
}
