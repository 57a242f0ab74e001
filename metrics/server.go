package metrics

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The bounds on what scrapers can take. A scrape reads counters and a few
// O(1) gauges: it needs little time, and Prometheus makes one at a time.
const (
	MaxConns          = 8                // connections open at once; more wait in the kernel's backlog
	MaxInFlight       = 2                // scrapes at once; more are answered 503
	ReadHeaderTimeout = 5 * time.Second  // a request's headers, from its connection's start
	ReadTimeout       = 10 * time.Second // its whole request
	WriteTimeout      = 10 * time.Second // its whole response
	IdleTimeout       = 30 * time.Second // a kept-alive connection between requests
	MaxHeaderBytes    = 8 << 10
)

// The timeouts a test shortens.
var (
	readHeaderTimeout = ReadHeaderTimeout
	idleTimeout       = IdleTimeout
)

// Path is the one path served.
const Path = "/metrics"

// Server is one metrics endpoint.
type Server struct {
	ln   *limitListener
	srv  *http.Server
	done chan struct{} // closed when the serving goroutine returns
	once sync.Once
}

// live holds the addresses this process serves metrics on: with
// per_listener_settings true the broker starts the plugin once per listener,
// and a second instance given the same metrics_addr is told so.
var live = struct {
	sync.Mutex
	addrs map[*Server]*net.TCPAddr
}{addrs: map[*Server]*net.TCPAddr{}}

// Listen opens a TCP listener on addr (host:port), at once, so that an
// address that cannot be listened on is an error now, not in a goroutine
// later. The error says why, in a few words, for the option's error line.
func Listen(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, listenError(addr, err)
	}
	s := &Server{ln: newLimitListener(ln, MaxConns), done: make(chan struct{})}
	live.Lock()
	live.addrs[s] = ln.Addr().(*net.TCPAddr)
	live.Unlock()
	return s, nil
}

// listenError says why addr cannot be listened on.
func listenError(addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		if a, rerr := net.ResolveTCPAddr("tcp", addr); rerr == nil && servedHere(a) {
			return fmt.Errorf("port %d already serves the metrics of another instance of this plugin in this broker: with per_listener_settings true each listener's plugin needs its own metrics_addr, or none", a.Port)
		}
		return errors.New("address already in use")
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err // bind: cannot assign requested address; lookup x: no such host; ...
	}
	return err
}

// servedHere says whether a server of this process listens where a would:
// the same port on the same address, or on every address.
func servedHere(a *net.TCPAddr) bool {
	live.Lock()
	defer live.Unlock()
	for _, b := range live.addrs {
		if b.Port == a.Port && (b.IP.Equal(a.IP) || b.IP.IsUnspecified() || a.IP == nil || a.IP.IsUnspecified()) {
			return true
		}
	}
	return false
}

// Addr returns the address listened on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves g on GET (and HEAD) /metrics, and 404 on anything else, on a
// goroutine, until Close. log gets the one line said should serving stop
// by itself; nothing a client sends reaches it.
func (s *Server) Serve(g prometheus.Gatherer, log func(msg string)) {
	prom := promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError, // a failing collector costs its own series only
		MaxRequestsInFlight: MaxInFlight,
	})
	s.srv = &http.Server{
		Handler:           onlyMetrics(prom),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          discard, // scrapers' mistakes must not write to the broker's log
	}
	go func() {
		defer close(s.done)
		defer func() {
			if r := recover(); r != nil { // a panic here would kill the broker
				log(fmt.Sprintf("metrics endpoint stopped: internal error: %v", r))
			}
		}()
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log(fmt.Sprintf("metrics endpoint on %s stopped: %v", s.ln.Addr(), err))
		}
	}()
}

var discard = log.New(io.Discard, "", 0)

// onlyMetrics serves GET and HEAD of Path with h, and 404 for anything else.
func onlyMetrics(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != Path || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
			http.NotFound(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Close stops serving: the listener and every connection are closed at
// once (the port is free again when Close returns), without waiting for
// scrapes under way. Calling it again does nothing.
func (s *Server) Close() {
	s.once.Do(func() {
		if s.srv != nil {
			_ = s.srv.Close() // closes the listener too
			<-s.done
		} else {
			_ = s.ln.Close()
		}
		live.Lock()
		delete(live.addrs, s)
		live.Unlock()
	})
}
