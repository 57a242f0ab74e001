package metrics

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Attacks on the endpoint by a hostile client of the metrics port (issue 12's
// hostile review of the hand-written server).

// bigRegistry serves an exposition of about size bytes, so that a response
// outgrows the sockets' buffers.
func bigRegistry(size int) *Registry {
	reg := NewRegistry()
	reg.Counter("up_total", "A test counter.").Add(7)
	n := size / 40
	reg.Add("filler", "gauge", "Many series.", func(e *Emitter) {
		for i := 0; i < n; i++ {
			e.Sample("", float64(i), "i", strconv.Itoa(i))
		}
	})
	return reg
}

func serveReg(t *testing.T, reg *Registry) *Server {
	t.Helper()
	s, err := Listen("127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(s.Close)
	s.Serve(reg, func(msg string) { t.Errorf("unexpected log line: %s", msg) })
	return s
}

// dialSmallWindow connects with a tiny receive buffer, set before the
// handshake, so that the window it offers is a few KB: what the server
// writes stays in the server's send buffer until the client reads.
func dialSmallWindow(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 2 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	return c
}

// inFlightNow is how many scrapes hold a slot.
func inFlightNow(s *Server) int { return len(s.inFlight) }

// A client that asks and never reads, with a response that does not fit
// the sockets' buffers, holds its scrape slot for WriteTimeout at most:
// then its connection is closed and the slot is free.
func TestAttackZeroWindowFreesSlotAfterWriteTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("waits WriteTimeout")
	}
	s := serveReg(t, bigRegistry(8<<20))
	addr := s.Addr().String()
	for i := 0; i < MaxInFlight; i++ {
		c := dialSmallWindow(t, addr)
		defer c.Close()
		_, err := c.Write([]byte("GET /metrics HTTP/1.1\r\n\r\n"))
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { return inFlightNow(s) == MaxInFlight }, 5*time.Second, 5*time.Millisecond)
	start := time.Now()
	require.Eventually(t, func() bool { return inFlightNow(s) == 0 }, WriteTimeout+5*time.Second, 50*time.Millisecond,
		"scrape slots still held %s after the stalled clients asked", time.Since(start))
	held := time.Since(start)
	assert.Less(t, held, WriteTimeout+3*time.Second)
	assert.Greater(t, held, WriteTimeout-3*time.Second, "the stalled writes ended before WriteTimeout: the test did not stall them")
	// A scraper that reads is answered.
	got := raw(t, addr, "GET /metrics HTTP/1.1\r\n\r\n", 0)
	assert.True(t, strings.HasPrefix(got, "HTTP/1.1 200 OK\r\n"), got[:min(len(got), 100)])
}

// readResponse reads one HTTP response from c slowly (a WAN scraper: a
// small window, reads in small pieces) and returns its status line, the
// Content-Length it announced and the body bytes received.
func readResponse(t *testing.T, c net.Conn) (status string, length int, body []byte, err error) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	br := bufio.NewReaderSize(c, 512)
	status, err = br.ReadString('\n')
	if err != nil {
		return status, -1, nil, err
	}
	length = -1
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return status, length, nil, err
		}
		if line == "\r\n" {
			break
		}
		if v, ok := strings.CutPrefix(line, "Content-Length: "); ok {
			length, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	buf := make([]byte, 512)
	for {
		time.Sleep(time.Millisecond)
		n, rerr := br.Read(buf)
		body = append(body, buf[:n]...)
		if rerr != nil {
			if rerr != io.EOF {
				err = rerr
			}
			return status, length, body, err
		}
	}
}

// A GET with a body the server does not read (Content-Length, or a second
// pipelined request): closing a socket with unread bytes makes the kernel
// reset the connection and drop what the server had not yet sent. The
// response must still arrive whole, as net/http's did (it reads and
// discards up to 256 KB of a request's remains before closing).
func TestAttackUnreadRequestBytesKeepResponseWhole(t *testing.T) {
	reg := bigRegistry(12 << 10) // about the guard's own exposition
	s := serveReg(t, reg)
	addr := s.Addr().String()
	for _, c := range []struct{ name, req string }{
		{"body", "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 16384\r\n\r\n" + strings.Repeat("b", 16384)},
		{"pipelined", strings.Repeat("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400)},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn := dialSmallWindow(t, addr)
			defer conn.Close()
			_, err := conn.Write([]byte(c.req))
			require.NoError(t, err)
			status, length, body, err := readResponse(t, conn)
			assert.Equal(t, "HTTP/1.1 200 OK\r\n", status)
			assert.NoError(t, err, "reading the response (got %d of %d body bytes)", len(body), length)
			assert.Equal(t, length, len(body), "the body is cut short")
		})
	}
}

// Headers over the bound are answered 431, also when the client goes on
// sending (the bytes over the bound are not read: see above).
func TestAttackOversizedHeadersGet431(t *testing.T) {
	s := serveReg(t, bigRegistry(0))
	addr := s.Addr().String()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	req := "GET /metrics HTTP/1.1\r\nX: " + strings.Repeat("a", 64<<10) + "\r\n\r\n"
	go func() { _, _ = conn.Write([]byte(req)) }()
	time.Sleep(200 * time.Millisecond) // the server has answered and closed
	status, _, _, err := readResponse(t, conn)
	assert.Equal(t, "HTTP/1.1 431 Request Header Fields Too Large\r\n", status, "err %v", err)
}

// A client dripping its headers a byte at a time is closed
// readHeaderTimeout after it connected, however often it sends.
func TestAttackSlowlorisDripClosedAtHeaderTimeout(t *testing.T) {
	readHeaderTimeout = 500 * time.Millisecond
	defer func() { readHeaderTimeout = ReadHeaderTimeout }()
	s := serveReg(t, bigRegistry(0))
	c, err := net.Dial("tcp", s.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	start := time.Now()
	req := "GET /metrics HTTP/1.1\r\nX: " + strings.Repeat("a", 200)
	closed := false
	for i := 0; i < len(req) && time.Since(start) < 3*time.Second; i++ {
		if _, err := c.Write([]byte{req[i]}); err != nil {
			closed = true
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(t, c.SetReadDeadline(time.Now().Add(3*time.Second)))
	_, err = c.Read(make([]byte, 1))
	assert.True(t, closed || err != nil, "still open")
	assert.Less(t, time.Since(start), 3*time.Second)
	// And the server let go of the connection.
	require.Eventually(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.conns) == 0
	}, 3*time.Second, 5*time.Millisecond)
}

// Close with every kind of client attached (stalled writers, dripping
// headers, idle) leaves no goroutine of the server behind, at once.
func TestAttackCloseLeavesNoGoroutines(t *testing.T) {
	s, err := Listen("127.0.0.1:0")
	require.NoError(t, err)
	s.Serve(bigRegistry(8<<20), func(string) {})
	addr := s.Addr().String()
	var conns []net.Conn
	for i := 0; i < MaxInFlight; i++ {
		c := dialSmallWindow(t, addr)
		_, err := c.Write([]byte("GET /metrics HTTP/1.1\r\n\r\n"))
		require.NoError(t, err)
		conns = append(conns, c)
	}
	require.Eventually(t, func() bool { return inFlightNow(s) == MaxInFlight }, 5*time.Second, 5*time.Millisecond)
	for i := MaxInFlight; i < MaxConns+4; i++ { // more than the bound: some wait in the backlog
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		_, _ = c.Write([]byte("GET /met"))
		conns = append(conns, c)
	}
	time.Sleep(100 * time.Millisecond)
	s.Close()
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// Close does not wait for a scrape composing its exposition (8 MB here,
	// seconds under -race; the guard's ~10 KB takes microseconds): those end
	// once composed, their connections closed.
	assert.Eventually(t, func() bool { return serverGoroutines() == 0 }, 10*time.Second, 10*time.Millisecond,
		"the server's goroutines after Close:\n%s", serverStacks())
}

// A flood of connections, bounded in count, that connect and go (with and
// without a request), leaves no goroutine or slot behind.
func TestAttackConnectFloodLeavesNothing(t *testing.T) {
	s := serveReg(t, bigRegistry(0))
	addr := s.Addr().String()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 150; i++ {
				c, err := net.DialTimeout("tcp", addr, 2*time.Second)
				if err != nil {
					continue
				}
				switch (w + i) % 4 {
				case 0:
					_, _ = c.Write([]byte("GET /metrics HTTP/1.1\r\n\r\n"))
				case 1:
					_, _ = c.Write([]byte("GET /met"))
				case 2:
					_, _ = c.Write([]byte("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")) // a TLS ClientHello
				}
				if tc, ok := c.(*net.TCPConn); ok && i%2 == 0 {
					_ = tc.SetLinger(0) // a reset, not a FIN
				}
				c.Close()
			}
		}(w)
	}
	wg.Wait()
	assert.Eventually(t, func() bool { return serverGoroutines() == 1 && inFlightNow(s) == 0 && len(s.ln.sem) <= 1 }, // Accept holds one while it waits
		3*time.Second, 10*time.Millisecond, "in flight %d, slots %d, the server's goroutines:\n%s",
		inFlightNow(s), len(s.ln.sem), serverStacks())
	// The flood's last connections may still wait in the kernel's accept
	// queue when the counts above read zero between two accepts; those that
	// sent a whole GET are scrapes the server answers, and with two of them
	// in flight it answers a third 503 (MaxInFlight), as it should. So a
	// 503 is tried again, 20 ms apart, for 3 s at most (the queue can hold
	// hundreds of the flood's connections); any other answer fails. That a
	// slot is free once its response is sent, not held through the
	// connection's linger, is TestScrapeSlotFreeDuringLinger's. (A local
	// CI run, 2026-12-05, failed the single scrape here once in 0.44 s;
	// its answer was not kept.)
	var got string
	busy := 0
	for deadline := time.Now().Add(3 * time.Second); ; {
		got = raw(t, addr, "GET /metrics HTTP/1.1\r\n\r\n", 0)
		if !strings.HasPrefix(got, "HTTP/1.1 503 ") || time.Now().After(deadline) {
			break
		}
		busy++
		time.Sleep(20 * time.Millisecond)
	}
	if busy > 0 {
		t.Logf("the scrape after the flood: %d 503s before its last answer", busy)
	}
	assert.True(t, strings.HasPrefix(got, "HTTP/1.1 200 OK\r\n"), "the scrape after the flood (after %d 503s) got %q", busy, got[:min(len(got), 200)])
}

// A scrape's slot is free once its response is written: a scraper that
// reads its answer and keeps the connection open holds the server's
// linger (LingerTimeout), not one of the MaxInFlight slots.
func TestScrapeSlotFreeDuringLinger(t *testing.T) {
	s := serveReg(t, bigRegistry(0))
	c, err := net.Dial("tcp", s.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	_, err = c.Write([]byte("GET /metrics HTTP/1.1\r\n\r\n"))
	require.NoError(t, err)
	b, err := io.ReadAll(c) // to the server's CloseWrite; this side stays open
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(b), "HTTP/1.1 200 OK\r\n"))
	assert.Eventually(t, func() bool { return inFlightNow(s) == 0 }, LingerTimeout/2, time.Millisecond,
		"a slot held while the server lingers on an open connection")
}

// Scrapes concurrent with the counting (as CONNECTs count while Prometheus
// scrapes): run under -race; every exposition parses and its histogram is
// consistent (cumulative buckets, count = +Inf bucket).
func TestAttackScrapesConcurrentWithCounting(t *testing.T) {
	reg := NewRegistry()
	reg.Runtime()
	c := reg.Counter("c_total", "Counted.")
	h := reg.Histogram("h_seconds", "Observed.", []float64{1e-6, 1e-3, 1})
	s := serveReg(t, reg)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c.Inc()
				h.Observe(time.Duration(i%2000) * time.Microsecond)
			}
		}()
	}
	addr := s.Addr().String()
	for i := 0; i < 50; i++ {
		got := raw(t, addr, "GET /metrics HTTP/1.1\r\n\r\n", 0)
		_, body, ok := strings.Cut(got, "\r\n\r\n")
		require.True(t, ok)
		fams := parseText(t, body)
		hist := fams["h_seconds"].Metric[0].GetHistogram()
		var prev uint64
		for _, bk := range hist.Bucket {
			assert.GreaterOrEqual(t, bk.GetCumulativeCount(), prev)
			prev = bk.GetCumulativeCount()
		}
		assert.Equal(t, prev, hist.GetSampleCount(), fmt.Sprintf("scrape %d", i))
	}
	close(stop)
	wg.Wait()
}

func parseText(t *testing.T, body string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	require.NoError(t, err, body)
	return fams
}

// serverStacks are the stacks of the goroutines running the server's code.
func serverStacks() string {
	buf := make([]byte, 1<<20)
	var out []string
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, "metrics.(*Server)") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

func serverGoroutines() int {
	s := serverStacks()
	if s == "" {
		return 0
	}
	return strings.Count(s, "\n\n") + 1
}

// A response to HEAD has no body, whatever its status (RFC 9110 9.3.2):
// net/http sent none for the 404 and 503 either.
func TestAttackHeadAnswersHaveNoBody(t *testing.T) {
	s := serveReg(t, bigRegistry(0))
	addr := s.Addr().String()
	for _, req := range []string{"HEAD /metrics HTTP/1.1\r\n\r\n", "HEAD /nothing HTTP/1.1\r\n\r\n", "HEAD /metrics/ HTTP/1.0\r\n\r\n"} {
		got := raw(t, addr, req, 0)
		_, body, ok := strings.Cut(got, "\r\n\r\n")
		assert.True(t, ok, "%q", got)
		assert.Empty(t, body, "%q answered with a body", req)
	}
}
