package main

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkHitSources is make bench's row b from the cgo boundary: one user
// (its verification cached), 8 client IDs (the load generator's workers),
// each CONNECT from the next address of 127.1.0.0/16 in turn, each followed
// by its DISCONNECT; both timed (the broker thread runs both). The known
// sources (plugin/known.go) hold every address once the first pass is
// over, as in a row past its first 65 534 CONNECTs: a CONNECT's address is
// a known source that a table of 65 534 of them must find, which misses the
// CPU's caches (perf on the broker thread under row b: the table's find,
// the guard's top symbol). -benchtime 200000x or more; clientid_conflict=off: at this rate (no
// broker is this fast) the tracker's worker falls behind its queue.
func BenchmarkHitSources(b *testing.B) {
	redis, dir, hash := benchSetup(b)
	for _, conflict := range []string{"flag", "off"} {
		b.Run("clientid_conflict="+conflict, func(b *testing.B) {
			ab := newAuthBench(b, redis, dir, hash, 1, conflict)
			const hosts, workers = 65534, 8
			clients := make([]authClient, workers)
			for w := range clients {
				clients[w] = ab.client(w, fmt.Sprintf("b-w%02d", w))
				clients[w].username = cChars("u0000000")
			}
			addrs := make([]*_Ctype_char, hosts)
			for i := range addrs {
				v := 1 + i
				addrs[i] = cChars(fmt.Sprintf("127.1.%d.%d", v>>8, v&0xff))
			}
			cycle := func(i int) {
				c := clients[i%workers]
				c.addr = addrs[i%hosts]
				ab.connect(b, c)
				ab.disconnect(c)
			}
			// Every address a known source, at a pace the known sources'
			// writer keeps up with (a batch a 100 ms linger, of at most
			// 4096): a full queue would make every source count as not
			// written (forgetWritten), and each CONNECT write again.
			for i := 0; i < hosts; i++ {
				cycle(i)
				if i%2048 == 2047 {
					time.Sleep(150 * time.Millisecond)
				}
			}
			time.Sleep(300 * time.Millisecond)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				cycle(i)
			}
		})
	}
	// new: each CONNECT from an address not seen before (10.0.0.0/8 in
	// turn), as row b's first 65 534: each a new known source, queued for
	// the writer. Paced as above, the pauses out of the measured time.
	b.Run("new/clientid_conflict=off", func(b *testing.B) {
		ab := newAuthBench(b, redis, dir, hash, 1, "off")
		const workers = 8
		clients := make([]authClient, workers)
		for w := range clients {
			clients[w] = ab.client(w, fmt.Sprintf("b-w%02d", w))
			clients[w].username = cChars("u0000000")
		}
		addrs := make([]*_Ctype_char, b.N)
		for i := range addrs {
			v := 1 + i
			addrs[i] = cChars(fmt.Sprintf("10.%d.%d.%d", v>>16&0xff, v>>8&0xff, v&0xff))
		}
		for i := 0; i < workers; i++ { // the client IDs known
			c := clients[i]
			c.addr = cChars("192.0.2.1")
			ab.connect(b, c)
			ab.disconnect(c)
		}
		time.Sleep(300 * time.Millisecond)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			c := clients[i%workers]
			c.addr = addrs[i]
			ab.connect(b, c)
			ab.disconnect(c)
			if i%2048 == 2047 {
				b.StopTimer()
				time.Sleep(150 * time.Millisecond)
				b.StartTimer()
			}
		}
	})
}
