package testenv

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// pumps are one proxied connection's two directions: up is given each read
// from the client and down each read from Redis, and each writes it on (to)
// or not, and reports whether its direction goes on (false: both ends of
// the connection are closed).
type pumps struct {
	up, down func(b []byte, to net.Conn) bool
}

// proxy forwards connections to addr, each through the pumps conn makes
// for it, until the test ends; it returns the address to dial.
func proxy(t testing.TB, addr string, conn func() pumps) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	pump := func(from, to, other net.Conn, fn func([]byte, net.Conn) bool) {
		defer from.Close()
		defer to.Close()
		defer other.Close()
		buf := make([]byte, 1<<16)
		for {
			n, err := from.Read(buf)
			if err != nil || !fn(buf[:n], to) {
				return
			}
		}
	}
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
			p := conn()
			go pump(c, s, s, p.up)
			go pump(s, c, c, p.down)
		}
	}()
	return l.Addr().String()
}

// forward writes b to to, and reports whether it went.
func forward(b []byte, to net.Conn) bool {
	_, err := to.Write(b)
	return err == nil
}

func holds(b []byte, trigger string) bool {
	return strings.Contains(strings.ToLower(string(b)), trigger)
}

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
	var cut atomic.Bool // passOnce: the one cut is made
	return proxy(t, addr, func() pumps {
		var cutting atomic.Bool // this connection's replies are held back
		return pumps{
			up: func(b []byte, s net.Conn) bool {
				if holds(b, trigger) && (!passOnce || cut.CompareAndSwap(false, true)) {
					if passOnce {
						cutting.Store(true)
						_, _ = s.Write(b)
						time.Sleep(200 * time.Millisecond)
					}
					return false
				}
				return forward(b, s)
			},
			down: func(b []byte, c net.Conn) bool { return !cutting.Load() && forward(b, c) },
		}
	})
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
	return proxy(t, addr, func() pumps {
		var held atomic.Int32 // replies to hold back
		return pumps{
			up: func(b []byte, s net.Conn) bool {
				if holds(b, trigger) && (limit <= 0 || seen.Add(1) <= int64(limit)) {
					held.Add(1)
				}
				return forward(b, s)
			},
			down: func(b []byte, c net.Conn) bool {
				if held.Load() > 0 {
					held.Add(-1)
					time.Sleep(delay)
				}
				return forward(b, c)
			},
		}
	})
}

// HoldingProxy forwards connections to addr, and holds the first request
// holding trigger (lower case; on any connection) for hold before Redis
// gets it, and what its client sends after it: Redis runs it hold late,
// as a Redis stopped (SIGSTOP, a stalled fork, a hung disk) runs the
// commands waiting in its sockets when it resumes. It is passed on even
// if its client has given up waiting and closed meanwhile, and given
// 200 ms to run. ran is closed once it was passed on.
func HoldingProxy(t testing.TB, addr, trigger string, hold time.Duration) (proxyAddr string, ran <-chan struct{}) {
	t.Helper()
	var taken atomic.Bool
	done := make(chan struct{})
	return proxy(t, addr, func() pumps {
		return pumps{
			up: func(b []byte, s net.Conn) bool {
				if holds(b, trigger) && taken.CompareAndSwap(false, true) {
					time.Sleep(hold)
					ok := forward(b, s)
					time.Sleep(200 * time.Millisecond)
					close(done)
					return ok
				}
				return forward(b, s)
			},
			down: forward,
		}
	}), done
}

// SilencingProxy forwards connections to addr until silence is called:
// from then on, each connection open that had carried a request holding
// trigger (lower case) forwards nothing either way, and stays open, as a
// connection whose NAT or firewall state expired, or a proxy that stopped
// forwarding it: no FIN, no reset, no error, no reply. Other connections,
// and those made since, pass.
func SilencingProxy(t testing.TB, addr, trigger string) (proxyAddr string, silence func()) {
	t.Helper()
	var mu sync.Mutex
	var marked []*atomic.Bool // the quiet flags of the connections that carried trigger
	return proxy(t, addr, func() pumps {
			quiet := new(atomic.Bool)
			var registered bool // up's own
			return pumps{
				up: func(b []byte, s net.Conn) bool {
					if !registered && holds(b, trigger) {
						registered = true
						mu.Lock()
						marked = append(marked, quiet)
						mu.Unlock()
					}
					return quiet.Load() || forward(b, s)
				},
				down: func(b []byte, c net.Conn) bool { return quiet.Load() || forward(b, c) },
			}
		}), func() {
			mu.Lock()
			defer mu.Unlock()
			for _, q := range marked {
				q.Store(true)
			}
			marked = nil
		}
}
