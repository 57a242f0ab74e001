package replica

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// A fetch whose connection Redis refuses at its set-up (WRONGPASS: the
// plugin's password rotated before its pool made a new connection) is an
// error: go-redis leaves each GET without an error there, and fetch read
// their empty values as entries (atk71): an allow key changed in that
// window became an allow entry with an empty reason, a ban's expiry was
// lost.
func TestFetchRefusedAtSetUpIsAnError(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "guard", "on", ">old-pw", "~*", "&*", "+@all")
	r.CLI("SET", "guard:block:ip:192.0.2.1", "a ban", "PX", "60000")
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, Username: "guard", Password: "old-pw"})
	t.Cleanup(func() { rdb.Close() })
	s := NewSync(New(keys.Builder{Prefix: "guard:"}), rdb, Options{ResyncEvery: time.Hour})
	r.CLI("ACL", "SETUSER", "guard", "resetpass", ">new-pw") // before the pool's first connection
	out, _, err := s.fetch(context.Background(), []string{"guard:allow:ip:192.0.2.9", "guard:block:ip:192.0.2.1"})
	require.Error(t, err, "entries read: %+v", out)
	assert.Contains(t, err.Error(), "WRONGPASS")
}
