package testenv

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// ClosingProxy forwards connections to addr, and closes a client's
// connection (and its upstream) at the first request holding trigger
// (case-insensitive): a proxy or Redis-compatible server that drops the
// connection on a command it does not serve (twemproxy closes on INFO).
// With passOnce, only the first request holding trigger (on any
// connection) closes its connection, and only after it was passed on to
// Redis and given 200 ms to run, before its reply reaches the client: Redis ran it, and the client saw the connection end
// (EOF), as when a failover's CLIENT KILL drops it.
func ClosingProxy(t testing.TB, addr, trigger string, passOnce bool) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var cut atomic.Bool // passOnce: the one cut is made
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			var cutting atomic.Bool // this connection's replies are held back
			go func() {
				defer c.Close()
				defer s.Close()
				buf := make([]byte, 1<<16)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if strings.Contains(strings.ToLower(string(buf[:n])), trigger) && (!passOnce || cut.CompareAndSwap(false, true)) {
						if passOnce {
							cutting.Store(true)
							_, _ = s.Write(buf[:n])
							time.Sleep(200 * time.Millisecond)
						}
						return
					}
					if _, err := s.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
			go func() {
				defer c.Close()
				buf := make([]byte, 1<<16)
				for {
					n, err := s.Read(buf)
					if err != nil || cutting.Load() {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// DelayingProxy forwards connections to addr, and holds back by delay the
// reply to each request holding trigger (lower case): Redis ran the
// request at once, and the client reads its reply delay later, as over a
// slow or congested link. It serves clients that wait for each reply
// before they send again (a request's reply is the next one read).
func DelayingProxy(t testing.TB, addr, trigger string, delay time.Duration) string {
	t.Helper()
	return DelayingProxyN(t, addr, trigger, delay, 0)
}

// DelayingProxyN is DelayingProxy holding back only the replies to the
// first limit requests holding trigger (on any connection); limit <= 0:
// every one.
func DelayingProxyN(t testing.TB, addr, trigger string, delay time.Duration, limit int) string {
	t.Helper()
	var seen atomic.Int64
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			var held atomic.Int32 // replies to hold back
			go func() {
				defer c.Close()
				defer s.Close()
				buf := make([]byte, 1<<16)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if strings.Contains(strings.ToLower(string(buf[:n])), trigger) && (limit <= 0 || seen.Add(1) <= int64(limit)) {
						held.Add(1)
					}
					if _, err := s.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
			go func() {
				defer c.Close()
				buf := make([]byte, 1<<16)
				for {
					n, err := s.Read(buf)
					if err != nil {
						return
					}
					if held.Load() > 0 {
						held.Add(-1)
						time.Sleep(delay)
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}
