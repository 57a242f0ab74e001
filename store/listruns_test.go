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

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// A batch of connects lists its client IDs in Instance's brokerconns set
// with two SADDs for every listRunMax (listRuns), not one per connect (a
// reconnect storm's batch: almost one command a device less, for Redis and
// for the worker). Before: 64 SADDs.
func TestWriteConnsListsABatchInTwoSADDsARun(t *testing.T) {
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
			before := commandCalls(t, r)["sadd"]
			states, err := s.WriteConns(context.Background(), ws, time.Hour)
			require.NoError(t, err)
			assert.EqualValues(t, 2*batch/listRunMax, commandCalls(t, r)["sadd"]-before, "SADDs for a batch of %d connects", batch)
			assert.Equal(t, strconv.Itoa(batch), r.CLI("SCARD", "guard:brokerconns:i1"))
			for i, st := range states {
				require.Len(t, st.Live, 1, "device-%d's live entry read back", i)
			}
			// Connects and disconnects in turn (runs of one): one SADD a
			// connect, as before, never two.
			ws = ws[:0]
			for i := range conns {
				c := conns[i]
				c.ID, c.ConnectedMs = "i1-"+strconv.Itoa(100+i), 2000
				ws = append(ws, ConnWrite{ClientID: "other-" + strconv.Itoa(i), Instance: "i1", Live: &c, Seen: &c, Read: true, Sole: sole},
					ConnWrite{ClientID: "device-" + strconv.Itoa(i), Instance: "i1", Gone: &conns[i], Unlist: true})
			}
			before = commandCalls(t, r)["sadd"]
			_, err = s.WriteConns(context.Background(), ws, time.Hour)
			require.NoError(t, err)
			assert.EqualValues(t, batch, commandCalls(t, r)["sadd"]-before, "SADDs for %d connects between disconnects", batch)
			assert.Equal(t, strconv.Itoa(batch), r.CLI("SCARD", "guard:brokerconns:i1"))
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
			delete(sets[w.Instance], keys.Tracking(w.ClientID))
		}
		if w.Live != nil && !w.Ended {
			sets[w.Instance][keys.Tracking(w.ClientID)] = true
		}
	}
}

// Batches of connects, disconnects, connects that end in the same batch,
// writes that unlist and list one client ID at once, peeks, over three
// client IDs (one longer than keys.TrackingMax: listed hashed) and two
// instances, in random order, every tenth after SCRIPT FLUSH (the batch
// sent again): the brokerconns sets
// after each batch are what each write's own SREM and SADD in turn made of
// them (listModel), under flag and deny alike.
func TestWriteConnsListingsKeepTheirOrder(t *testing.T) {
	for _, sole := range []bool{true, false} {
		t.Run(fmt.Sprintf("sole=%v", sole), func(t *testing.T) {
			s, r := newStore(t, "guard:")
			rng := rand.New(rand.NewPCG(1, uint64(len(fmt.Sprint(sole)))))
			ids, insts := []string{"a", "b", strings.Repeat("c", keys.TrackingMax+1)}, []string{"i1", "i2"}
			want := map[string]map[string]bool{}
			seq := 0
			var replays int64 // EVALs sent after a flush
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
				flushed := round%10 == 9
				var evals int64
				if flushed {
					// A flushed script cache: EVALSHA meets NOSCRIPT and
					// WriteConns sends the batch again (its runs again),
					// its scripts by their source (EVAL).
					r.CLI("SCRIPT", "FLUSH")
					evals = commandCalls(t, r)["eval"]
				}
				_, err := s.WriteConns(context.Background(), ws, time.Hour)
				require.NoError(t, err)
				if flushed {
					replays += commandCalls(t, r)["eval"] - evals
				}
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
			assert.Positive(t, replays, "no batch sent again after SCRIPT FLUSH")
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

// Each live entry is listed before it is written and again after it, each
// SADD between the SREMs of its member on either side: a pipeline that
// Redis runs in part (its connection lost midway) leaves members listed
// without an entry, never an entry no reap finds; and whatever runs
// between (another broker's reap of the set, a later batch's SREM) leaves
// the member listed wherever a SADD right after the entry left it. The
// batch relists dev-0 after its SREM (a write with Gone, Unlist and Live),
// and ends with dev-8 alone between a disconnect and the end: a run of
// one, listed once, right after its entry. Before: each connect's one SADD
// came after its entry.
func TestWriteConnsListsBeforeAndAfterTheEntry(t *testing.T) {
	for _, sole := range []bool{true, false} {
		t.Run(fmt.Sprintf("sole=%v", sole), func(t *testing.T) {
			s, _ := newStore(t, "guard:")
			h := &orderHook{}
			s.rdb.AddHook(h)
			conn := func(i int) *Conn {
				return &Conn{ID: "i1-" + strconv.Itoa(i), Instance: "i1", Broker: "b", Principal: "p" + strconv.Itoa(i), IP: "192.0.2.1", ConnectedMs: 1000 + int64(i)}
			}
			var ws []ConnWrite
			for i := 0; i < 8; i++ {
				if i == 4 { // a run longer than listRunMax: cut by size, each part listed twice
					for j := 0; j < 2*listRunMax+3; j++ {
						c := conn(200 + j)
						ws = append(ws, ConnWrite{ClientID: "fleet-" + strconv.Itoa(j), Instance: "i1", Live: c, Seen: c, Read: true, Sole: sole})
					}
				}
				c := conn(i + 1)
				ws = append(ws, ConnWrite{ClientID: "dev-" + strconv.Itoa(i), Instance: "i1", Live: c, Seen: c, Read: true, Sole: sole})
				if i == 3 { // dev-0's connection replaced: its SREM cuts the run, its new entry starts the next
					ws = append(ws, ConnWrite{ClientID: "dev-0", Instance: "i1", Gone: ws[0].Live, Unlist: true, Live: conn(99)})
				}
			}
			ws = append(ws, ConnWrite{ClientID: "dev-1", Instance: "i1", Gone: ws[1].Live, Unlist: true})
			ws = append(ws, ConnWrite{ClientID: "dev-8", Instance: "i1", Live: conn(9), Seen: conn(9), Read: true, Sole: sole})
			_, err := s.WriteConns(context.Background(), ws, time.Hour)
			require.NoError(t, err)
			h.mu.Lock()
			defer h.mu.Unlock()
			type op struct {
				at   int
				kind string // "sadd", "srem", "entry"
			}
			ops := map[string][]op{} // per member, in pipeline order
			var entryAt []int        // every entry's command, in order
			for i, args := range h.cmds {
				name := strings.ToLower(fmt.Sprint(args[0]))
				switch {
				case name == "sadd":
					for _, m := range args[2:] {
						ops[fmt.Sprint(m)] = append(ops[fmt.Sprint(m)], op{i, "sadd"})
					}
				case name == "srem":
					ops[fmt.Sprint(args[2])] = append(ops[fmt.Sprint(args[2])], op{i, "srem"})
				case name == "hset" && strings.HasPrefix(fmt.Sprint(args[1]), "guard:conn:"):
					m := strings.TrimPrefix(fmt.Sprint(args[1]), "guard:conn:")
					ops[m] = append(ops[m], op{i, "entry"})
					entryAt = append(entryAt, i)
				case (name == "evalsha" && args[1] == liveArgs.sha) || (name == "eval" && args[1] == liveArgs.src):
					m := strings.TrimPrefix(fmt.Sprint(args[3]), "guard:conn:")
					ops[m] = append(ops[m], op{i, "entry"})
					entryAt = append(entryAt, i)
				}
			}
			entries := 0
			for m, seq := range ops {
				for k, o := range seq {
					if o.kind != "entry" {
						continue
					}
					entries++
					before, after := false, false
					for j := k - 1; j >= 0 && seq[j].kind != "srem"; j-- {
						before = before || seq[j].kind == "sadd"
					}
					for j := k + 1; j < len(seq) && seq[j].kind != "srem"; j++ {
						if seq[j].kind == "sadd" {
							after = true
							// Entries of any member written between this
							// one and its SADD after it: at most the rest
							// of its run.
							between := 0
							for _, e := range entryAt {
								if e > o.at && e < seq[j].at {
									between++
								}
							}
							assert.Less(t, between, listRunMax, "%s's entry (command %d) listed after %d more entries", m, o.at, between)
							break
						}
					}
					if m == "dev-8" {
						assert.False(t, before, "dev-8, a run of one, listed before its entry: %v", seq)
						require.Greater(t, len(seq), k+1, "dev-8 not listed after its entry")
						assert.Equal(t, "sadd", seq[k+1].kind, "dev-8's next set command: %v", seq)
						assert.LessOrEqual(t, seq[k+1].at-o.at, 2, "dev-8's SADD right after its entry and its read (HSET, HGETALL; or the live script): %v", seq)
					} else {
						assert.True(t, before, "%s's entry (command %d) has no SADD before it since its last SREM: %v", m, o.at, seq)
					}
					assert.True(t, after, "%s's entry (command %d) has no SADD after it before its next SREM: %v", m, o.at, seq)
				}
			}
			assert.Equal(t, 10+2*listRunMax+3, entries, "live entries seen in the pipeline")
		})
	}
}
