package store

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The plugin's connections speak RESP2 (universal's Protocol), on both
// clients: with RESP3, go-redis looks for push notifications before every
// reply it reads, which the plugin never uses (8 to 11 % of the conflict
// tracker's Go CPU: BenchmarkWorkerRestartStorm, ./conflicts).
func TestClientsSpeakRESP2(t *testing.T) {
	s, _ := newStore(t, "guard:")
	ctx := context.Background()
	for _, c := range []*Store{s, s.Background()} {
		info, err := c.Client().Do(ctx, "CLIENT", "INFO").Text()
		require.NoError(t, err)
		assert.Contains(t, strings.TrimSpace(info)+" ", " resp=2 ", info)
	}
}
