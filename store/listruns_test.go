package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// saddCalls is how many SADDs Redis has run (INFO commandstats).
func saddCalls(t *testing.T, r *testenv.Redis) int {
	t.Helper()
	for _, line := range strings.Split(r.CLI("INFO", "commandstats"), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || k != "cmdstat_sadd" {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(v, "calls="), ",")
		n, err := strconv.Atoi(calls)
		require.NoError(t, err, line)
		return n
	}
	return 0
}

// A batch of connects lists its client IDs in Instance's brokerconns set
// with one SADD, not one per connect (a reconnect storm's batch: one
// command a device less, for Redis and for the worker). Before: 64 SADDs.
func TestWriteConnsListsABatchInOneSADD(t *testing.T) {
	for _, sole := range []bool{true, false} {
		t.Run(fmt.Sprintf("sole=%v", sole), func(t *testing.T) {
			s, r := newStore(t, "guard:")
			const batch = 64
			conns := make([]Conn, batch)
			ws := make([]ConnWrite, batch)
			for i := range conns {
				conns[i] = Conn{ID: "i1-" + strconv.Itoa(i+1), Instance: "i1", Broker: "b", Principal: "user-" + strconv.Itoa(i), IP: "192.0.2.1", ConnectedMs: 1000}
				ws[i] = ConnWrite{ClientID: "device-" + strconv.Itoa(i), Instance: "i1", Live: &conns[i], Seen: &conns[i], Read: true, Sole: sole}
			}
			before := saddCalls(t, r)
			states, err := s.WriteConns(context.Background(), ws, time.Hour)
			require.NoError(t, err)
			assert.Equal(t, 1, saddCalls(t, r)-before, "SADDs for a batch of %d connects", batch)
			assert.Equal(t, strconv.Itoa(batch), r.CLI("SCARD", "guard:brokerconns:i1"))
			for i, st := range states {
				require.Len(t, st.Live, 1, "device-%d's live entry read back", i)
			}
		})
	}
}

// listModel is the brokerconns sets after ws, each write applied in turn
// as its own SREM and SADD would (the order before the listings were
// batched): the reference the batched SADDs must agree with.
func listModel(ws []ConnWrite, sets map[string]map[string]bool) {
	for _, w := range ws {
		if w.Peek {
			continue
		}
		if sets[w.Instance] == nil {
			sets[w.Instance] = map[string]bool{}
		}
		if w.Unlist {
			delete(sets[w.Instance], w.ClientID)
		}
		if w.Live != nil && !w.Ended {
			sets[w.Instance][w.ClientID] = true
		}
	}
}

// Batches of connects, disconnects, connects that end in the same batch,
// writes that unlist and list one client ID at once, peeks, over three
// client IDs and two instances, in random order: the brokerconns sets
// after each batch are what each write's own SREM and SADD in turn made of
// them (listModel), under flag and deny alike.
func TestWriteConnsListingsKeepTheirOrder(t *testing.T) {
	for _, sole := range []bool{true, false} {
		t.Run(fmt.Sprintf("sole=%v", sole), func(t *testing.T) {
			s, r := newStore(t, "guard:")
			rng := rand.New(rand.NewPCG(1, uint64(len(fmt.Sprint(sole)))))
			ids, insts := []string{"a", "b", "c"}, []string{"i1", "i2"}
			want := map[string]map[string]bool{}
			seq := 0
			conn := func(inst string) *Conn {
				seq++
				return &Conn{ID: inst + "-" + strconv.Itoa(seq), Instance: inst, Broker: "b", Principal: "p", IP: "192.0.2.1", ConnectedMs: int64(seq)}
			}
			for round := 0; round < 150; round++ {
				var ws []ConnWrite
				for n := 1 + rng.IntN(8); n > 0; n-- {
					id, inst := ids[rng.IntN(len(ids))], insts[rng.IntN(len(insts))]
					w := ConnWrite{ClientID: id, Instance: inst}
					switch rng.IntN(5) {
					case 0: // a connect
						w.Live, w.Read = conn(inst), rng.IntN(2) == 0
						w.Seen, w.Sole = w.Live, sole
					case 1: // a connect that ended in the batch
						w.Live, w.Ended, w.Read = conn(inst), true, true
						w.Seen = w.Live
					case 2: // a disconnect
						c := conn(inst)
						c.DisconnectedMs = c.ConnectedMs + 1
						w.Gone, w.Unlist, w.Left = c, true, c
					case 3: // a relist's write: the old one gone, a new one live
						w.Gone, w.Unlist, w.Live = conn(inst), true, conn(inst)
					default:
						w.Peek = true
					}
					ws = append(ws, w)
				}
				_, err := s.WriteConns(context.Background(), ws, time.Hour)
				require.NoError(t, err)
				listModel(ws, want)
				for _, inst := range insts {
					var exp []string
					for id, in := range want[inst] {
						if in {
							exp = append(exp, id)
						}
					}
					sort.Strings(exp)
					got := strings.Fields(r.CLI("SMEMBERS", "guard:brokerconns:"+inst))
					sort.Strings(got)
					require.Equal(t, strings.Join(exp, " "), strings.Join(got, " "), "round %d, %s's set after %+v", round, inst, ws)
				}
			}
		})
	}
}

// orderHook records the commands of each pipeline, in the order sent.
type orderHook struct {
	mu   sync.Mutex
	cmds [][]any
}

func (h *orderHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *orderHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (h *orderHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.mu.Lock()
		for _, c := range cmds {
			h.cmds = append(h.cmds, slices.Clone(c.Args()))
		}
		h.mu.Unlock()
		return next(ctx, cmds)
	}
}

// Each live entry is listed before it is written, in the same pipeline:
// a pipeline that Redis runs in part (its connection lost midway) leaves
// members listed without an entry, which a reap removes, never an entry
// that no reap finds. Before: each connect's SADD came after its entry.
func TestWriteConnsListsBeforeTheEntry(t *testing.T) {
	for _, sole := range []bool{true, false} {
		t.Run(fmt.Sprintf("sole=%v", sole), func(t *testing.T) {
			s, _ := newStore(t, "guard:")
			h := &orderHook{}
			s.rdb.AddHook(h)
			var ws []ConnWrite
			for i := 0; i < 8; i++ {
				c := &Conn{ID: "i1-" + strconv.Itoa(i+1), Instance: "i1", Broker: "b", Principal: "p" + strconv.Itoa(i), IP: "192.0.2.1", ConnectedMs: 1000}
				ws = append(ws, ConnWrite{ClientID: "dev-" + strconv.Itoa(i), Instance: "i1", Live: c, Seen: c, Read: true, Sole: sole})
				if i == 3 { // a disconnect between: its SREM cuts the run
					g := &Conn{ID: "i1-99", Instance: "i1", Broker: "b", Principal: "p", IP: "192.0.2.1", ConnectedMs: 1, DisconnectedMs: 2}
					ws = append(ws, ConnWrite{ClientID: "dev-0", Instance: "i1", Gone: g, Unlist: true})
				}
			}
			_, err := s.WriteConns(context.Background(), ws, time.Hour)
			require.NoError(t, err)
			h.mu.Lock()
			defer h.mu.Unlock()
			listed := map[string]int{} // member: index of its last SADD
			unlisted := map[string]int{}
			writes := 0
			for i, args := range h.cmds {
				name := strings.ToLower(fmt.Sprint(args[0]))
				switch {
				case name == "sadd":
					for _, m := range args[2:] {
						listed[fmt.Sprint(m)] = i
					}
				case name == "srem":
					unlisted[fmt.Sprint(args[2])] = i
				case name == "hset" && strings.HasPrefix(fmt.Sprint(args[1]), "guard:conn:"),
					(name == "evalsha" && args[1] == liveArgs.sha) || (name == "eval" && args[1] == liveArgs.src):
					key := fmt.Sprint(args[1])
					if name != "hset" {
						key = fmt.Sprint(args[3])
					}
					m := strings.TrimPrefix(key, "guard:conn:")
					at, ok := listed[m]
					require.True(t, ok, "%s written (command %d) before any SADD of it: %v", m, i, h.cmds)
					if u, ok := unlisted[m]; ok {
						require.Greater(t, at, u, "%s's SADD before its SREM", m)
					}
					require.Less(t, at, i, "%s's SADD after its entry", m)
					writes++
				}
			}
			assert.Equal(t, 8, writes, "live entries seen in the pipeline")
		})
	}
}
