package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// A key of another type under the prefix: the store's error still says
// WRONGTYPE under its wrapping (IsWrongType), and names the key, which
// Redis's reply does not (atk68: the plugin took the wrapped reply for
// Redis down, and its line named no key).
func TestWrongTypeErrorsNameTheKey(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("HSET", "guard:block:username:bob", "f", "v")
	r.CLI("SET", "guard:conn:dev-1", "a string where a hash belongs")
	s := New(Options{Addrs: []string{r.Addr}, Timeout: time.Second}, keys.Builder{Prefix: "guard:"})
	defer s.Close()
	ctx := context.Background()

	// A lookup keeps the rest of its answer (atk70): the ban on the
	// address stands, the key of another type is absent, and told.
	r.CLI("SET", "guard:block:ip:127.0.0.1", "an operator's ban")
	a, err := s.Lookup(ctx, Query{ClientID: "x", IP: netip.MustParseAddr("127.0.0.1"), Username: "bob", HasUsername: true})
	require.NoError(t, err)
	if assert.NotNil(t, a.Block) {
		assert.Equal(t, "guard:block:ip:127.0.0.1", a.Block.Key)
	}
	assert.True(t, IsWrongType(a.KeyErr), "%v", a.KeyErr)
	assert.Contains(t, a.KeyErr.Error(), `"guard:block:username:bob"`)

	a, err = s.Lookup(ctx, Query{ClientID: "dev-1", IP: netip.MustParseAddr("127.0.0.2"), WantConns: true})
	require.NoError(t, err)
	assert.Nil(t, a.Block)
	assert.True(t, IsWrongType(a.KeyErr), "%v", a.KeyErr)
	assert.Contains(t, a.KeyErr.Error(), `"guard:conn:dev-1"`)

	_, err = s.LiveConns(ctx, "dev-1")
	assert.True(t, IsWrongType(err), "%v", err)
	assert.Contains(t, err.Error(), `"guard:conn:dev-1"`)

	assert.False(t, IsWrongType(context.DeadlineExceeded))
	assert.False(t, IsWrongType(nil))
}

// What a reply about one key's content looks like, and what it does not:
// an ACL refusal, even from inside a script, or a Redis that cannot serve
// (atk69: redis_rate's script on a stray string was taken for Redis down).
func TestIsKeyReplyForms(t *testing.T) {
	for msg, want := range map[string]bool{
		"WRONGTYPE Operation against a key holding the wrong kind of value":                                                            true,
		"ERR value is not an integer or out of range":                                                                                  true,
		"ERR user_script:34: bad argument #1 to 'max' script: 3c5a, on @user_script:34.":                                               true,
		"ERR Error running script (call to f_3c5a): @user_script:34: user_script:34: attempt to compare number with nil":               true,
		"ERR increment or decrement would overflow":                                                                                    true,
		"ERR The user executing the script can't run this command or subcommand script: 3c5a, on @user_script:1.":                      false,
		"NOPERM this user has no permissions to run the 'incr' command":                                                                false,
		"OOM command not allowed when used memory > 'maxmemory'.":                                                                      false,
		"LOADING Redis is loading the dataset in memory":                                                                               false,
		"ERR unknown command 'evalsha', with args beginning with: ":                                                                    false,
		"ERR Error running script (call to f_3c5a): @user_script:1: WRONGTYPE Operation against a key holding the wrong kind of value": true,  // Redis 6 (atk70)
		"ERR unknown command 'evalsha', with args beginning with: '1' 'guard:fail:clientid:not an integer' ":                           false, // a client's bytes echoed (atk70)
		"ERR unknown subcommand 'x'. Try CLIENT HELP., with args beginning with: attempt to compare":                                   false,
		"ERR Error running script: @user_script:1: NOPERM this user has no permissions to access one of the keys (not an integer)":     false,
	} {
		assert.Equal(t, want, IsKeyReply(fmt.Errorf("ratelimit: count failure %q: %w", "k", reply(msg))), msg)
	}
	assert.False(t, IsKeyReply(context.DeadlineExceeded))
	assert.False(t, IsKeyReply(errors.New("ERR value is not an integer")), "not a reply")
}

// A pipeline whose connection's set-up Redis refuses (WRONGPASS: the
// plugin's password rotated before its pool made a new connection) fails
// as a whole: go-redis leaves each command without an error, and the
// lookup read every GET's empty value as an entry (atk71: an allow entry
// on the client's address, which lifts every ban). It is an error now, as
// are the other pipelines that read their commands' own errors.
func TestPipelineRefusedAtSetUpIsAnError(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "guard", "on", ">old-pw", "~*", "&*", "+@all")
	r.CLI("SET", "guard:block:ip:127.0.0.1", "an operator's ban")
	s := New(Options{Addrs: []string{r.Addr}, Username: "guard", Password: "old-pw", Timeout: time.Second}, keys.Builder{Prefix: "guard:"})
	defer s.Close()
	r.CLI("ACL", "SETUSER", "guard", "resetpass", ">new-pw") // before the pool's first connection
	ctx := context.Background()
	a, err := s.Lookup(ctx, Query{ClientID: "x", IP: netip.MustParseAddr("127.0.0.1"), Username: "bob", HasUsername: true})
	require.Error(t, err, "allow %+v, block %+v", a.Allow, a.Block)
	assert.True(t, IsReply(err), "%v", err)
	_, err = s.LiveConns(ctx, "x")
	assert.Error(t, err)
}
