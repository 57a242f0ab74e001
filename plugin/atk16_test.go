package plugin

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store/replica"
)

// A certificate holder leaving unseen (no ACL check yet) with a client ID
// or username over its bound is refused its will, as one refused at its
// first sight is (atk16: its will was delivered; e2e
// TestZZAtk16IdentityTooLongWillRefused).
func TestAtk16LeftUnseenTooLong(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"backend": "defer", "clientid_max_bytes": "8", "username_max_bytes": "6"})
	require.NoError(t, err)
	ls := &logSink{}
	g, err := NewWith(cfg, Output{Log: ls.log, Kick: func(uintptr, string) {}}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	g.replica = replica.New(keys.Builder{Prefix: "guard:"})

	long := certCl(1, "192.0.2.1", "device-09", "CN=dev", "", "c1", "CN=dev")
	assert.True(t, g.LeftUnseen(long), "a client ID over the bound: its will must be refused")
	assert.Contains(t, ls.all(), "rule=clientid-too-long")
	assert.Contains(t, ls.all(), "max_bytes=8 seen=disconnect")
	user := certCl(2, "192.0.2.2", "dev-1", "CN=long-subject", "", "c2", "CN=long-subject")
	user.Username, user.HasUsername = "CN=long-subject", true
	assert.True(t, g.LeftUnseen(user), "a username over the bound: its will must be refused")
	ok := certCl(3, "192.0.2.3", "dev-2", "CN=d", "", "c3", "CN=d")
	ok.Username, ok.HasUsername = "d", true
	assert.False(t, g.LeftUnseen(ok))
}
