package metrics

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The bounds on what scrapers can take. A scrape reads counters and a few
// O(1) gauges: it needs little time, and Prometheus makes one at a time.
const (
	MaxConns          = 8                // connections open at once; more wait in the kernel's backlog
	MaxInFlight       = 2                // scrapes at once; more are answered 503
	ReadHeaderTimeout = 5 * time.Second  // a request's headers, from its connection's start
	WriteTimeout      = 10 * time.Second // its whole response
	MaxHeaderBytes    = 8 << 10          // its request line and headers
)

// The timeouts a test shortens: read by Listen, so a test restoring them
// races with no handler of a server already made.
var (
	readHeaderTimeout = ReadHeaderTimeout
)

// Path is the one path served.
const Path = "/metrics"

// Server is one metrics endpoint.
type Server struct {
	ln       *limitListener
	done     chan struct{} // closed when the serving goroutine returns
	once     sync.Once
	inFlight chan struct{} // MaxInFlight slots
	served   atomic.Bool   // Serve was called: done will be closed

	headerTimeout time.Duration // readHeaderTimeout when made

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // open connections, closed by Close
	closed bool
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
	s := &Server{ln: newLimitListener(ln, MaxConns), done: make(chan struct{}), inFlight: make(chan struct{}, MaxInFlight),
		conns: map[net.Conn]struct{}{}, headerTimeout: readHeaderTimeout}
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

// Serve serves reg on GET (and HEAD) /metrics, and 404 on anything else, on
// a goroutine, until Close. log gets the one line said should serving stop
// by itself; nothing a client sends reaches it.
//
// It speaks just enough HTTP/1.x for a scraper, by hand rather than with
// net/http (which, with its HTTP/2 code, is most of the 5.2 MB the shared
// object lost with client_golang; see Registry): one
// request per connection, answered with Connection: close; a request line
// and headers of at most MaxHeaderBytes, read within readHeaderTimeout; no
// request body is read (GET and HEAD have none; the connection is closed
// after the response). FuzzRequest feeds it hostile bytes.
func (s *Server) Serve(reg *Registry, log func(msg string)) {
	s.served.Store(true)
	go func() {
		defer close(s.done)
		defer func() {
			if r := recover(); r != nil { // a panic here would kill the broker
				log(fmt.Sprintf("internal error in the metrics endpoint, which stopped: %v", r))
			}
		}()
		var backoff time.Duration
		for {
			c, err := s.ln.Accept()
			if err != nil {
				if s.isClosed() || errors.Is(err, net.ErrClosed) {
					return
				}
				// Out of descriptors and the like: wait and try again, as
				// net/http does (5 ms doubling to 1 s), without logging what
				// a flood of connections would repeat.
				if backoff = min(max(2*backoff, 5*time.Millisecond), time.Second); !s.sleep(backoff) {
					return
				}
				continue
			}
			backoff = 0
			if !s.track(c) {
				c.Close()
				return
			}
			go s.handle(c, reg)
		}
	}()
}

// sleep waits d, or until Close: false then.
func (s *Server) sleep(d time.Duration) bool {
	select {
	case <-time.After(d):
		return true
	case <-s.ln.closed:
		return false
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track records an open connection for Close; false once closed.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// bufs are the scrapes' buffers (the exposition is some 10 KB).
var bufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// handle answers the one request of connection c and closes it. Nothing
// here panics on what a client sends (FuzzRequest); a panic all the same is
// recovered and costs this connection only.
func (s *Server) handle(c net.Conn, reg *Registry) {
	defer s.untrack(c)
	defer func() { _ = recover() }()
	_ = c.SetReadDeadline(time.Now().Add(s.headerTimeout))
	req, status := readRequest(c)
	if status == 0 {
		return // nothing to answer: the client went, or sent nothing in time
	}
	_ = c.SetWriteDeadline(time.Now().Add(WriteTimeout))
	defer linger(c)
	if status != 200 {
		_, _ = c.Write(response(status, "text/plain; charset=utf-8", statusText[status]+"\n", req.head))
		return
	}
	select {
	case s.inFlight <- struct{}{}:
		defer func() { <-s.inFlight }()
	default:
		_, _ = c.Write(response(503, "text/plain; charset=utf-8", busyText, req.head))
		return
	}
	b := bufs.Get().(*bytes.Buffer)
	defer bufs.Put(b)
	b.Reset()
	reg.WriteTo(b)
	_, _ = c.Write(response(200, contentType, b.String(), req.head))
}

// The bounds of linger: what a client still sends after its response.
const (
	LingerTimeout = 500 * time.Millisecond
	LingerBytes   = 256 << 10
)

// linger ends c's sending side and reads and discards what the client still
// sends (a body, pipelined requests), up to LingerBytes or LingerTimeout,
// before c is closed: closing a socket with unread bytes makes the kernel
// reset the connection, and the client loses the part of the response not
// yet sent. net/http does the same.
func linger(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(LingerTimeout))
	_, _ = io.CopyN(io.Discard, c, LingerBytes)
}

// busyText is the 503's body, promhttp's words.
var busyText = fmt.Sprintf("Limit of concurrent requests reached (%d), try again later.\n", MaxInFlight)

// contentType is the text format's, version 0.0.4.
const contentType = "text/plain; version=0.0.4; charset=utf-8"

var statusText = map[int]string{200: "OK", 400: "Bad Request", 404: "Not Found",
	431: "Request Header Fields Too Large", 503: "Service Unavailable"}

// response is a whole HTTP/1.1 response; the body left out for HEAD.
func response(status int, ctype, body string, head bool) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n",
		status, statusText[status], ctype, len(body))
	if !head {
		b.WriteString(body)
	}
	return b.Bytes()
}

type request struct {
	head bool // HEAD: the headers only, whatever the status
}

// readRequest reads a request's line and headers from r, at most
// MaxHeaderBytes of them, and says how to answer: 200 for GET or HEAD of
// Path (a query string allowed), 404 for any other method or path, 400 for
// what is not an HTTP/1.x request, 431 for headers over the bound, and 0
// when the client closed or timed out before its headers ended (nothing is
// answered then).
func readRequest(r io.Reader) (request, int) {
	buf := make([]byte, MaxHeaderBytes)
	n, end := 0, -1
	for end < 0 {
		if n == len(buf) {
			return request{head: isHead(buf)}, 431
		}
		m, err := r.Read(buf[n:])
		from := max(n-3, 0) // the end may straddle two reads
		n += m
		end = headerEnd(buf[from:n])
		if end >= 0 {
			end += from
		} else if err != nil {
			return request{}, 0
		}
	}
	line, _, _ := bytes.Cut(buf[:end], []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	method, rest, ok1 := bytes.Cut(line, []byte(" "))
	target, proto, ok2 := bytes.Cut(rest, []byte(" "))
	if !ok1 || !ok2 || (string(proto) != "HTTP/1.1" && string(proto) != "HTTP/1.0") || len(target) == 0 {
		return request{head: isHead(buf)}, 400
	}
	path, _, _ := bytes.Cut(target, []byte("?"))
	if p, ok := bytes.CutPrefix(path, []byte("http://")); ok { // absolute form
		if i := bytes.IndexByte(p, '/'); i >= 0 {
			path = p[i:]
		} else {
			path = []byte("/")
		}
	}
	m := string(method)
	if string(path) != Path || (m != "GET" && m != "HEAD") {
		return request{head: m == "HEAD"}, 404
	}
	return request{head: m == "HEAD"}, 200
}

// isHead says whether a request starts as a HEAD's: its answer, whatever
// its status, has no body.
func isHead(b []byte) bool { return bytes.HasPrefix(b, []byte("HEAD ")) }

// headerEnd is where b's headers end (the blank line), or -1: CRLF CRLF,
// or LF LF (bare LF line ends, which HTTP/1.1 servers tolerate).
func headerEnd(b []byte) int {
	for i := 0; i+1 < len(b); i++ {
		if b[i] == '\n' && (b[i+1] == '\n' || (b[i+1] == '\r' && i+2 < len(b) && b[i+2] == '\n')) {
			return i
		}
	}
	return -1
}

// Close stops serving: the listener and every connection are closed at
// once (the port is free again when Close returns), without waiting for
// scrapes under way: one may still read the registry's gauge functions
// after Close returns (their state must stay readable: the guard's does).
// Calling it again does nothing.
func (s *Server) Close() {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		conns := s.conns
		s.conns = nil
		s.mu.Unlock()
		_ = s.ln.Close()
		for c := range conns {
			c.Close()
		}
		if s.served.Load() {
			<-s.done
		}
		live.Lock()
		delete(live.addrs, s)
		live.Unlock()
	})
}
