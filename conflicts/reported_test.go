package conflicts

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// folding is a memStore whose AddFinding folds every finding after the first.
type folding struct {
	*memStore
	n int
}

func (f *folding) AddFinding(ctx context.Context, fd *store.Finding, p, ttl time.Duration, max int64) (bool, error) {
	f.n++
	_, _ = f.memStore.AddFinding(ctx, fd, p, ttl, max)
	return f.n == 1, nil
}

// Deps.Reported hears the kind of each finding reported (logged), not of
// those folded into an earlier report: a count of it matches the log lines.
func TestReportedKinds(t *testing.T) {
	st := &folding{memStore: newMemStore()}
	var mu sync.Mutex
	var kinds []string
	clk, ls := newClock(), &logSink{}
	tr := New(testOptions(), Deps{Store: st, Log: ls.log, Now: clk.now,
		Reported: func(kind string) { mu.Lock(); kinds = append(kinds, kind); mu.Unlock() }})
	for i := 0; i < 3; i++ {
		alice := tr.NewConn("alice", "192.0.2.1", clk.now())
		require.NoError(t, tr.handle(context.Background(), []event{
			{kind: evConnect, clientID: "dev", conn: alice},
			{kind: evDisconnect, clientID: "dev", conn: alice},
			{kind: evConnect, clientID: "dev", conn: tr.NewConn("bob", "192.0.2.2", clk.now())},
		}))
	}
	assert.GreaterOrEqual(t, st.n, 3, "a finding made each time")
	assert.Equal(t, []string{store.KindCrossPrincipal}, kinds, "one reported, two folded")
	assert.Equal(t, 1, strings.Count(ls.all(), "mosquitto-guard: event=finding "))
}
