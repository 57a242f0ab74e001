package conflicts

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// memStore is an in-memory Store for unit tests of the worker's batching
// and of claims (store's own tests and the e2e tests use a real Redis).
type memStore struct {
	mu       sync.Mutex
	writes   int // ConnWrites received
	states   map[string]*store.State
	findings []*store.Finding
	takeover map[string]int64
	leases   map[string]bool // instances that renewed their lease
	reaped   []string
	down     bool // every call fails, as with Redis unreachable
}

func newMemStore() *memStore {
	return &memStore{states: map[string]*store.State{}, takeover: map[string]int64{}, leases: map[string]bool{}}
}

var errDown = errors.New("connection refused")

func (m *memStore) setDown(down bool) { m.mu.Lock(); m.down = down; m.mu.Unlock() }

// WriteConns applies each write atomically, in order, as Redis does.
func (m *memStore) WriteConns(_ context.Context, ws []store.ConnWrite, _ time.Duration) ([]store.State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return nil, errDown
	}
	out := make([]store.State, len(ws))
	m.writes += len(ws)
	for i, w := range ws {
		id := w.ClientID
		if !w.Tracked {
			id = keys.Tracking(id)
		}
		st := m.state(id)
		if w.Gone != nil {
			st.Live = removeBy(st.Live, func(x store.Conn) bool { return x.ID == w.Gone.ID })
		}
		if w.Live != nil && !w.Ended {
			st.Live = replaceBy(st.Live, *w.Live, func(x store.Conn) bool { return x.Instance == w.Instance })
		}
		if w.Seen != nil {
			st.Seen = replaceBy(st.Seen, *w.Seen, func(x store.Conn) bool { return x.Principal == w.Seen.Principal })
		}
		if w.Read && w.Live != nil {
			out[i] = store.State{Live: append([]store.Conn(nil), st.Live...), Seen: append([]store.Conn(nil), st.Seen...)}
		} else if w.ReadLive && w.Live != nil && !w.Ended {
			out[i] = store.State{Live: append([]store.Conn(nil), st.Live...)}
		}
		if w.Left != nil { // store's leftScript
			i := indexBy(st.Seen, func(x store.Conn) bool { return x.Principal == w.Left.Principal })
			switch {
			case i < 0:
				st.Seen = append(st.Seen, *w.Left) // expired meanwhile: the end recorded
			case st.Seen[i].ID == w.Left.ID,
				st.Seen[i].DisconnectedMs != 0 && st.Seen[i].DisconnectedMs < w.Left.DisconnectedMs:
				st.Seen[i] = *w.Left // its own, or an end before this one
			}
		}
	}
	return out, nil
}

func (m *memStore) state(id string) *store.State {
	st := m.states[id]
	if st == nil {
		st = &store.State{}
		m.states[id] = st
	}
	return st
}

// live returns a copy of id's live connections (id the client ID itself).
func (m *memStore) live(id string) []store.Conn {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st := m.states[keys.Tracking(id)]; st != nil {
		return append([]store.Conn(nil), st.Live...)
	}
	return nil
}

// Claim records c unless another principal holds id live on an instance in alive.
func (m *memStore) Claim(_ context.Context, id string, c store.Conn, b store.Brokers) (*store.Conn, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return nil, errDown
	}
	st := m.state(keys.Tracking(id)) // keyed as Redis keys it (WriteConns)
	for _, x := range st.Live {
		counts := slices.Contains(b.Alive, x.Instance) || !slices.Contains(b.Dead, x.Instance) && x.ConnectedMs >= b.Since
		if x.Instance != c.Instance && x.Principal != c.Principal && counts {
			h := x
			return &h, nil
		}
	}
	st.Live = replaceBy(st.Live, c, func(x store.Conn) bool { return x.Instance == c.Instance })
	return nil, nil
}

func (m *memStore) CountTakeovers(_ context.Context, ts []store.Takeover, _ time.Duration, _ int) ([]int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]int64, len(ts))
	for i, tk := range ts {
		m.takeover[tk.Tracked]++
		out[i] = m.takeover[tk.Tracked]
	}
	return out, nil
}

func (m *memStore) RenewLease(_ context.Context, instance string, _ time.Duration) (store.Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return store.Lease{}, errDown
	}
	l := store.Lease{Live: map[string]bool{}, Lapsed: !m.leases[instance]}
	m.leases[instance] = true
	for in, runs := range m.leases {
		if runs {
			l.Live[in] = true
		} else {
			l.Dead = append(l.Dead, in) // a lease that ran out (false), not reaped
		}
	}
	return l, nil
}

func (m *memStore) LeaseEnds(_ context.Context, instances []string) (map[string]int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]int64{}
	for _, in := range instances {
		if runs, ok := m.leases[in]; ok {
			out[in] = math.MinInt64
			if runs {
				out[in] = math.MaxInt64
			}
		}
	}
	return out, nil
}

func (m *memStore) ReapCount(_ context.Context, instance string, _ int64, _, _ time.Duration) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reaped = append(m.reaped, instance)
	return 0, nil
}

func (m *memStore) AddFinding(_ context.Context, f *store.Finding, _, _ time.Duration, _ int64) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.findings = append(m.findings, f)
	return true, nil
}

// indexBy, replaceBy and removeBy edit memStore's lists.
func indexBy(cs []store.Conn, match func(store.Conn) bool) int {
	for i, x := range cs {
		if match(x) {
			return i
		}
	}
	return -1
}

func replaceBy(cs []store.Conn, c store.Conn, match func(store.Conn) bool) []store.Conn {
	if i := indexBy(cs, match); i >= 0 {
		cs[i] = c
		return cs
	}
	return append(cs, c)
}

func removeBy(cs []store.Conn, match func(store.Conn) bool) []store.Conn {
	if i := indexBy(cs, match); i >= 0 {
		return append(cs[:i], cs[i+1:]...)
	}
	return cs
}

// clock is a fake clock, moved by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Unix(1_700_000_000, 0)} }

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// logSink keeps log lines with their level.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (l *logSink) log(lv Level, msg string) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf("%d %s", lv, msg))
	l.mu.Unlock()
}

func (l *logSink) all() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// testOptions are the option defaults of clientid_conflict flag.
func testOptions() Options {
	return Options{
		Window: 31 * 24 * time.Hour, TakeoverLimit: 3, TakeoverWindow: time.Minute,
		FindingsMax: 10000, Fold: time.Hour, BrokerName: "test", Lease: 30 * time.Second,
		ClaimTimeout: 100 * time.Millisecond,
	}
}

// tracker is a Tracker on st with a fake clock, its worker not running:
// tests drive handle and renew directly.
func tracker(t *testing.T, st Store, opts Options) (*Tracker, *clock, *logSink) {
	t.Helper()
	clk, ls := newClock(), &logSink{}
	return New(opts, Deps{Store: st, Log: ls.log, Now: clk.now}), clk, ls
}

// claimAll is a claim's Brokers under which no other broker's live entry
// counts: the claim always records (tests that claim to write the live
// field as the broker thread does, not to be refused).
var claimAll = store.Brokers{Since: math.MaxInt64}
