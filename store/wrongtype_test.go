package store

import (
	"context"
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

	_, err := s.Lookup(ctx, Query{ClientID: "x", IP: netip.MustParseAddr("127.0.0.1"), Username: "bob", HasUsername: true})
	require.Error(t, err)
	assert.True(t, IsWrongType(err), "%v", err)
	assert.Contains(t, err.Error(), `"guard:block:username:bob"`)

	_, err = s.Lookup(ctx, Query{ClientID: "dev-1", IP: netip.MustParseAddr("127.0.0.1"), WantConns: true})
	require.Error(t, err)
	assert.True(t, IsWrongType(err), "%v", err)
	assert.Contains(t, err.Error(), `"guard:conn:dev-1"`)

	_, err = s.LiveConns(ctx, "dev-1")
	assert.True(t, IsWrongType(err), "%v", err)
	assert.Contains(t, err.Error(), `"guard:conn:dev-1"`)

	assert.False(t, IsWrongType(context.DeadlineExceeded))
	assert.False(t, IsWrongType(nil))
}
