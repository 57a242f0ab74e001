package plugin

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// DEFECT. publishChange (4b34709) logs any error reply to PUBLISH as a
// refusal of rights, with the advice to give the plugin's Redis user the
// channel: a Redis busy with a long script (BUSY, past
// busy-reply-threshold), which refuses every command for a moment and
// has nothing to do with ACLs, gets that line too, and it takes the one
// line of the next 10 minutes, so a real NOPERM after it (the user
// without the channel) is never said. Cause: plugin/publish.go
// publishChange (store.IsReply alone; NOPERM is not asked for).
func TestAtk63PublishBusyReportedAsRights(t *testing.T) {
	r := testenv.StartRedis(t, "--busy-reply-threshold", "50")
	var mu sync.Mutex
	var lines []string
	g := &Guard{cfg: config.Options{KeyPrefix: "guard:"},
		bgStore: store.New(store.Options{Addrs: []string{r.Addr}, Timeout: time.Second}, keys.Builder{Prefix: "guard:"}),
		log: func(_ Level, s string) {
			mu.Lock()
			lines = append(lines, s)
			mu.Unlock()
		}}
	t.Cleanup(func() { g.bgStore.Close() })

	busy := redis.NewClient(&redis.Options{Addr: r.Addr, ReadTimeout: 20 * time.Second})
	defer busy.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_ = busy.Eval(ctx, "local i = 0 while true do i = i + 1 end", nil).Err()
	}()
	deadline := time.Now().Add(5 * time.Second)
	out, _ := r.TryCLI("PING")
	for ; !strings.Contains(out, "BUSY") && time.Now().Before(deadline); out, _ = r.TryCLI("PING") {
		time.Sleep(20 * time.Millisecond)
	}
	require.Contains(t, out, "BUSY", "control: Redis busy with a script")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	g.publishChange(ctx, "guard:block:ip:192.0.2.1")
	cancel()
	r.CLI("SCRIPT", "KILL")
	<-done
	// Then the user loses the channel: the refusal the line is for.
	r.CLI("ACL", "SETUSER", "default", "resetchannels")
	ctx, cancel = context.WithTimeout(context.Background(), time.Second)
	g.publishChange(ctx, "guard:block:ip:192.0.2.2")
	cancel()
	var fresh []string // control: a Guard with no line said yet says it
	g2 := &Guard{cfg: g.cfg, bgStore: g.bgStore, log: func(_ Level, s string) { fresh = append(fresh, s) }}
	g2.publishChange(context.Background(), "guard:block:ip:192.0.2.3")
	require.Len(t, fresh, 1, "control")
	require.Contains(t, fresh[0], "NOPERM", "control")

	mu.Lock()
	defer mu.Unlock()
	for _, l := range lines {
		assert.NotContains(t, l, "BUSY", "a BUSY Redis reported as an ACL refusal: %q", l)
	}
	assert.True(t, len(lines) > 0 && strings.Contains(lines[len(lines)-1], "NOPERM"), "the real refusal of rights was never said: %q", lines)
}
