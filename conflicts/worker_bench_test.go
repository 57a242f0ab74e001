package conflicts

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// BenchmarkWorkerNewClientIDs is the worker's cost per new client ID: one
// op is one connect and one disconnect of a client ID Redis never saw,
// through Tracker.handle against a real redis-server, in batches of the
// given number of events (half connects of new client IDs, half the
// disconnects of the previous batch's connections). Beside Go's ns/op,
// B/op and allocs/op it reports Redis's CPU per op (INFO cpu) and the
// commands Redis ran per op (INFO commandstats, those run by scripts
// included), and this process's CPU per op (getrusage: the worker, go-redis
// and the GC, without the wait for Redis that ns/op includes). With
// short: each disconnect in the batch of its connect, right after it (a
// device that connects and leaves within the worker's linger).
func BenchmarkWorkerNewClientIDs(b *testing.B) {
	for _, short := range []bool{false, true} {
		for _, size := range []int{64, 256} {
			b.Run(fmt.Sprintf("short=%v/batch=%d", short, size), func(b *testing.B) { benchWorker(b, size, short) })
		}
	}
}

// benchStore is a redis-server of the benchmark's own and a store on it.
func benchStore(b *testing.B) (*testenv.Redis, *store.Store) {
	r := testenv.StartRedis(b)
	s := store.New(store.Options{Addrs: []string{r.Addr}, Timeout: 5 * time.Second}, keys.Builder{Prefix: "guard:"})
	b.Cleanup(func() { s.Close() })
	return r, s
}

func benchWorker(b *testing.B, size int, short bool) {
	r, s := benchStore(b)
	tr := New(testOptions(), Deps{Store: s})
	now := time.Now()

	// Every batch, built beforehand: what the broker thread does (NewConn) is not the worker's.
	half := size / 2
	var batches [][]event
	var prev []event
	for done := 0; done < b.N+half; done += half {
		batch := make([]event, 0, size)
		for _, ev := range prev {
			batch = append(batch, event{kind: evDisconnect, clientID: ev.clientID, conn: ev.conn})
		}
		prev = prev[:0:0]
		for i := 0; i < half && done+i < b.N; i++ {
			id := "device-" + strconv.Itoa(done+i) + "-" + strconv.FormatInt(now.UnixNano(), 36)
			ev := event{kind: evConnect, clientID: id, conn: tr.NewConn("user-"+strconv.Itoa(done+i), "192.0.2.7", now)}
			batch = append(batch, ev)
			if short {
				batch = append(batch, event{kind: evDisconnect, clientID: ev.clientID, conn: ev.conn})
			} else {
				prev = append(prev, ev)
			}
		}
		if len(batch) > 0 {
			batches = append(batches, batch)
		}
	}
	ctx := context.Background()
	// Warm the script cache (the disconnect in a batch of its own: a pair
	// in one batch is folded, its end's script not loaded) and the
	// connection pool.
	warm := tr.NewConn("warm", "192.0.2.7", now)
	for _, ev := range []event{{kind: evConnect, clientID: "warm", conn: warm}, {kind: evDisconnect, clientID: "warm", conn: warm}} {
		if err := tr.handle(ctx, []event{ev}); err != nil {
			b.Fatal(err)
		}
	}
	handleMeasured(b, r, tr, batches)
}

// handleMeasured runs the batches through tr.handle as the benchmark's
// timed part and reports, beside ns/op, B/op and allocs/op, this process's
// CPU, Redis's CPU and the commands Redis ran, per op.
func handleMeasured(b *testing.B, r *testenv.Redis, tr *Tracker, batches [][]event) {
	ctx := context.Background()
	cpu0, cmds0 := redisCost(b, r)
	self0 := selfCPU(b)
	b.ReportAllocs()
	b.ResetTimer()
	for _, batch := range batches {
		if err := tr.handle(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	self1 := selfCPU(b)
	cpu1, cmds1 := redisCost(b, r)
	b.ReportMetric((self1-self0)*1e6/float64(b.N), "go-cpu-us/op")
	b.ReportMetric((cpu1-cpu0)*1e6/float64(b.N), "redis-us/op")
	b.ReportMetric(float64(cmds1-cmds0)/float64(b.N), "redis-cmds/op")
}

// redisCost returns Redis's CPU time so far (user and system, seconds) and
// the commands it ran, INFO's own left out.
func redisCost(b *testing.B, r *testenv.Redis) (cpu float64, cmds int64) {
	for _, line := range strings.Split(r.CLI("INFO", "cpu"), "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		if k == "used_cpu_user" || k == "used_cpu_sys" {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatalf("INFO cpu: %q", line)
			}
			cpu += f
		}
	}
	for _, line := range strings.Split(r.CLI("INFO", "commandstats"), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(k, "cmdstat_") || k == "cmdstat_info" {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(v, "calls="), ",")
		n, err := strconv.ParseInt(calls, 10, 64)
		if err != nil {
			b.Fatalf("INFO commandstats: %q", line)
		}
		cmds += n
	}
	return cpu, cmds
}

// selfCPU returns this process's CPU time so far, user and system, in seconds.
func selfCPU(b *testing.B) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// BenchmarkWorkerReconnects is the worker's cost per reconnect of a known
// device: one op is one connect and one disconnect of one of 32 client IDs
// (make bench's b row: 32 workers, each its own client ID, reconnecting),
// through Tracker.handle against a real redis-server, in batches of the
// given number of events (a batch is what 100 ms of the worker's linger
// gathers: 800 events at b's 4 000 reconnects/s), each connect followed by
// its disconnect in the same batch, as the b row's devices do.
func BenchmarkWorkerReconnects(b *testing.B) {
	for _, size := range []int{64, 800} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			r, s := benchStore(b)
			tr := New(testOptions(), Deps{Store: s})
			ctx := context.Background()
			const devices = 32
			mk := func(n int, now time.Time) []event {
				batch := make([]event, 0, size)
				for i := 0; i < n; i++ {
					d := i % devices
					id := "device-" + strconv.Itoa(d)
					ev := event{kind: evConnect, clientID: id, conn: tr.NewConn("user", "192.0.2.7", now)}
					batch = append(batch, ev, event{kind: evDisconnect, clientID: id, conn: ev.conn})
				}
				return batch
			}
			// Warm: every device seen, its records written.
			now := time.Now()
			for i := 0; i < 3; i++ {
				if err := tr.handle(ctx, mk(devices, now)); err != nil {
					b.Fatal(err)
				}
			}
			// Each batch 100 ms after the one before it (the worker's linger),
			// its connections stamped so, as in a broker.
			var batches [][]event
			for done := 0; done < b.N; done += size / 2 {
				now = now.Add(100 * time.Millisecond)
				batches = append(batches, mk(min(size/2, b.N-done), now))
			}
			handleMeasured(b, r, tr, batches)
		})
	}
}

// BenchmarkWorkerRestartStorm is the worker's cost per reconnect of a
// fleet after its broker's restart: one op is one device, each its own
// client ID and user, connecting to a new instance after the old one's
// stop ended its connection (Tracker.Close, store.Reap), in batches of the
// given number of connects (the devices stay connected): make bench's
// storm rows, for the worker and Redis alone.
func BenchmarkWorkerRestartStorm(b *testing.B) {
	for _, size := range []int{256} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			r, s := benchStore(b)
			ctx := context.Background()
			now := time.Now()
			mk := func(tr *Tracker, from, to int, now time.Time) []event {
				batch := make([]event, 0, to-from)
				for i := from; i < to; i++ {
					batch = append(batch, event{kind: evConnect, clientID: "device-" + strconv.Itoa(i), conn: tr.NewConn("user-"+strconv.Itoa(i), "192.0.2.7", now)})
				}
				return batch
			}
			// Before the restart: every device connected on the old
			// instance, then its stop.
			old := New(testOptions(), Deps{Store: s})
			old.renew() // its lease, as its worker's first step wrote it
			for i := 0; i < b.N; i += size {
				if err := old.handle(ctx, mk(old, i, min(i+size, b.N), now)); err != nil {
					b.Fatal(err)
				}
			}
			old.Close(ctx)
			now = now.Add(2 * time.Second)
			tr := New(testOptions(), Deps{Store: s})
			// Run's first step: the lease view, and the reap of what the
			// old instance's stop did not reach (past about 65 000
			// devices here). first-renewal-ms is how long it held the
			// worker, reap-ms how long the reap took (beside the worker
			// past reapInline: it ends here, before the measured part).
			reapInline = reapInlineDefault // the production wait, not the tests' (TestMain)
			defer func() { reapInline = renewBound }()
			at := time.Now()
			tr.renew()
			held := time.Since(at)
			tr.reaps.Wait()
			reaped := time.Since(at)
			warm := tr.NewConn("warm", "192.0.2.7", now)
			if err := tr.handle(ctx, []event{{kind: evConnect, clientID: "warm", conn: warm}}); err != nil {
				b.Fatal(err)
			}
			var batches [][]event
			for i := 0; i < b.N; i += size {
				batches = append(batches, mk(tr, i, min(i+size, b.N), now))
			}
			handleMeasured(b, r, tr, batches)
			// After handleMeasured: its ResetTimer drops metrics reported before.
			b.ReportMetric(float64(held.Milliseconds()), "first-renewal-ms")
			b.ReportMetric(float64(reaped.Milliseconds()), "reap-ms")
		})
	}
}

// BenchmarkWorkerTakeoverStorm is the worker's cost per takeover of a
// fleet's own connections on one broker: one op is one device, each its
// own client ID and user, reconnecting while the broker still holds its
// connection (a NAT or load balancer that dropped every flow: each
// CONNECT takes over a half-open connection), the takeover's connect and
// the old connection's disconnect, in batches of the given number of
// devices. Each is a duplicate connection whose takeover is counted in
// Redis (takeover_limit).
func BenchmarkWorkerTakeoverStorm(b *testing.B) {
	for _, size := range []int{256} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			r, s := benchStore(b)
			ctx := context.Background()
			tr := New(testOptions(), Deps{Store: s})
			tr.renew()
			now := time.Now()
			held := make([]Conn, b.N)
			for i := 0; i < b.N; i += size {
				batch := make([]event, 0, size)
				for j := i; j < min(i+size, b.N); j++ {
					held[j] = tr.NewConn("user-"+strconv.Itoa(j), "192.0.2.7", now)
					batch = append(batch, event{kind: evConnect, clientID: "device-" + strconv.Itoa(j), conn: held[j]})
				}
				if err := tr.handle(ctx, batch); err != nil {
					b.Fatal(err)
				}
			}
			now = now.Add(2 * time.Second)
			var batches [][]event
			for i := 0; i < b.N; i += size {
				batch := make([]event, 0, 2*size)
				for j := i; j < min(i+size, b.N); j++ {
					id := "device-" + strconv.Itoa(j)
					batch = append(batch,
						event{kind: evConnect, clientID: id, conn: tr.NewConn("user-"+strconv.Itoa(j), "192.0.2.7", now), other: &held[j]},
						event{kind: evDisconnect, clientID: id, conn: held[j]})
				}
				batches = append(batches, batch)
			}
			handleMeasured(b, r, tr, batches)
		})
	}
}
