package store

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
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

// A key refusal in each Redis's words, and a command or channel refusal
// that names a user whose name holds "key" (Redis 7.2; atk65).
func TestKeyRefusalForms(t *testing.T) {
	for msg, want := range map[string]bool{
		"NOPERM this user has no permissions to access one of the keys used as arguments":     true,
		"NOPERM No permissions to access a key":                                               true,
		"NOPERM this user has no permissions to run the 'hset' command":                       false,
		"NOPERM User keyring has no permissions to run the 'pexpire' command":                 false,
		"NOPERM User key has no permissions to run the 'keys' command":                        false,
		"NOPERM this user has no permissions to access one of the channels used as arguments": false,
		// A channel refusal for a user whose name holds " key": 69a6705's
		// parent took any " key" for a key refusal (atk68).
		"NOPERM User keyring has no permissions to access one of the channels used as arguments": false,
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
	ctx2, cancel2 := context.WithTimeout(context.Background(), 1500*time.Millisecond) // its own: the first check may have used up ctx (atk68)
	defer cancel2()
	require.Error(t, s2.CheckSettingsNeeds(ctx2, SettingsNeeds{Tracking: true}))
	time.Sleep(10 * time.Millisecond)
	assert.Equal(t, "0", r.CLI("EXISTS", "guard:settings-check"), "the cleanup's SET PX 1 replaced it")
}

// atk68: a probe pipeline whose replies come too late (Redis ran it, its
// answer slower than the check's bound) is taken as Redis down, and the
// start goes on; for a user refused DEL and PEXPIRE the cleanup must still
// reach Redis, or the probe's keys (tracking's stream and hash, the
// counts' string) stay: the README says nothing is left but for a user
// refused DEL, PEXPIRE and SET alike. Before, the cleanup was sent with
// the check's own context, already done: nothing was sent, and both keys
// stayed their 10 s.
func TestProbeCleanupSentWhenThePipelineTimedOut(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "nodel", "on", ">nd-pw", "~*", "&*", "+@all", "-del", "-pexpire")
	addr := lateRepliesProxy(t, r.Addr, "pexpire", 3*time.Second)
	s := New(Options{Addrs: []string{addr}, Username: "nodel", Password: "nd-pw", Timeout: time.Second}, keys.Builder{Prefix: "guard:"})
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.CheckSettingsNeeds(ctx, SettingsNeeds{Counts: true, Known: true, Tracking: true})
	took := time.Since(start)
	assert.NoError(t, err, "a late answer is Redis down, not a refusal")
	assert.Less(t, took, 1600*time.Millisecond, "the check's bound")
	time.Sleep(50 * time.Millisecond)
	for _, k := range []string{"guard:settings-check", "rate:guard:settings-check"} {
		assert.Equal(t, "0", r.CLI("EXISTS", k), "%s left (a %s, PTTL %s)", k, r.CLI("TYPE", k), r.CLI("PTTL", k))
	}
}

// lateRepliesProxy forwards connections to addr at once, but from the
// first request holding trigger (case-insensitive) on, holds each of
// Redis's answers late before it passes them on: a Redis that runs what
// it is sent but answers slowly.
func lateRepliesProxy(t *testing.T, addr, trigger string, late time.Duration) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	var triggered atomic.Bool
	pipe := func(from, to net.Conn, request bool) {
		defer from.Close()
		defer to.Close()
		buf := make([]byte, 1<<16)
		for {
			n, err := from.Read(buf)
			if err != nil {
				return
			}
			if request && strings.Contains(strings.ToLower(string(buf[:n])), trigger) {
				triggered.Store(true)
			}
			if !request && triggered.Load() {
				time.Sleep(late)
			}
			if _, err := to.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); s.Close() })
			go pipe(c, s, true)
			go pipe(s, c, false)
		}
	}()
	return l.Addr().String()
}
