package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// reply is a Redis error reply with the given text.
type reply string

func (r reply) Error() string { return string(r) }
func (reply) RedisError()     {}

// Redis 6.0 and before, and KeyDB, quote an unknown command with
// backquotes: a renamed EVAL or PING is told as such either way (atk66).
func TestUnknownCommandEitherQuote(t *testing.T) {
	s := &Store{}
	for _, q := range []string{"'", "`"} {
		f, _ := s.probeFault(reply("ERR unknown command "+q+"eval"+q+", with args beginning with: "), false, "EVAL", "k")
		assert.Equal(t, SettingsNoScripting, f, q)
		f, _ = s.probeFault(reply("ERR unknown command "+q+"xadd"+q+", with args beginning with: "), false, "XADD", "k")
		assert.Equal(t, SettingsNoCommand, f, q)
		assert.Equal(t, SettingsNoPingCommand, settingsFault(reply("ERR unknown command "+q+"ping"+q+", with args beginning with: "), false, false), q)
	}
}

// A key refusal in each Redis's words, and a command refusal that names a
// user whose name holds "key" (Redis 7.2; atk65).
func TestKeyRefusalForms(t *testing.T) {
	for msg, want := range map[string]bool{
		"NOPERM this user has no permissions to access one of the keys used as arguments":     true,
		"NOPERM No permissions to access a key":                                               true,
		"NOPERM this user has no permissions to run the 'hset' command":                       false,
		"NOPERM User keyring has no permissions to run the 'pexpire' command":                 false,
		"NOPERM User key has no permissions to run the 'keys' command":                        false,
		"NOPERM this user has no permissions to access one of the channels used as arguments": false,
	} {
		assert.Equal(t, want, keyRefusal(msg), msg)
	}
}

// The probe's cleanup runs only after a refused DEL or PEXPIRE: a user
// without SET, which conflict tracking alone never runs, passes the check
// without a refused SET in Redis's ACL LOG at every start (atk66).
func TestProbeCleanupOnlyWhenNeeded(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "noset", "on", ">ns-pw", "~*", "&*", "+@all", "-set")
	s := New(Options{Addrs: []string{r.Addr}, Username: "noset", Password: "ns-pw", Timeout: time.Second}, keys.Builder{Prefix: "guard:"})
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	require.NoError(t, s.CheckSettingsNeeds(ctx, SettingsNeeds{Tracking: true}))
	log := r.CLI("ACL", "LOG")
	assert.NotContains(t, strings.ToLower(log), "\nset\n", "a refused SET logged:\n%s", log)
	assert.Equal(t, "0", r.CLI("EXISTS", "guard:settings-check"), "nothing left")

	// Refused DEL and PEXPIRE: the cleanup's SET replaces what was left.
	r.CLI("ACL", "SETUSER", "nodel", "on", ">nd-pw", "~*", "&*", "+@all", "-del", "-pexpire")
	s2 := New(Options{Addrs: []string{r.Addr}, Username: "nodel", Password: "nd-pw", Timeout: time.Second}, keys.Builder{Prefix: "guard:"})
	defer s2.Close()
	require.Error(t, s2.CheckSettingsNeeds(ctx, SettingsNeeds{Tracking: true}))
	time.Sleep(10 * time.Millisecond)
	assert.Equal(t, "0", r.CLI("EXISTS", "guard:settings-check"), "the cleanup's SET PX 1 replaced it")
}
