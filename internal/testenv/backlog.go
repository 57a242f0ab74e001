package testenv

import (
	"net"
	"sync"
	"time"
)

// Handshakes dials n TCP connections to addr at once and counts those whose
// handshake completed within wait; it closes them all before it returns.
// Against a listener that accepts nothing meanwhile (a stopped broker), at
// most its listen backlog (+1) complete: the kernel drops the other SYNs,
// and TCP sends them again only after 1 s. Loopback only; bounded by wait.
func Handshakes(addr string, n int, wait time.Duration) int {
	var wg sync.WaitGroup
	conns := make(chan net.Conn, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c, err := net.DialTimeout("tcp", addr, wait); err == nil {
				conns <- c
			}
		}()
	}
	wg.Wait()
	close(conns)
	ok := 0
	for c := range conns {
		ok++
		c.Close()
	}
	return ok
}
