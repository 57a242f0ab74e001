package metrics

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// serve listens on a free loopback port and serves a registry with one
// counter, up_total 7.
func serve(t *testing.T) (*Server, *Registry) {
	t.Helper()
	s, err := Listen("127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(s.Close)
	reg := NewRegistry()
	reg.Counter("up_total", "A test counter.").Add(7)
	s.Serve(reg, func(msg string) { t.Errorf("unexpected log line: %s", msg) })
	return s, reg
}

func get(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	require.NoError(t, err)
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

func TestServesOnlyGetMetrics(t *testing.T) {
	s, _ := serve(t)
	base := "http://" + s.Addr().String()
	code, body := get(t, "GET", base+"/metrics")
	assert.Equal(t, 200, code)
	assert.Contains(t, body, "up_total 7")
	code, _ = get(t, "HEAD", base+"/metrics")
	assert.Equal(t, 200, code)
	for _, c := range [][2]string{{"POST", "/metrics"}, {"PUT", "/metrics"}, {"DELETE", "/metrics"}, {"GET", "/"},
		{"GET", "/metrics/"}, {"GET", "/metricsx"}, {"GET", "/debug/pprof/"}, {"OPTIONS", "/metrics"}} {
		code, body := get(t, c[0], base+c[1])
		assert.Equal(t, 404, code, "%s %s", c[0], c[1])
		assert.NotContains(t, body, "up_total")
	}
}

// Close frees the port at once, also with a scraper's connection kept alive,
// and the serving goroutine ends.
func TestCloseFreesThePort(t *testing.T) {
	s, err := Listen("127.0.0.1:0")
	require.NoError(t, err)
	s.Serve(NewRegistry(), func(string) {})
	addr := s.Addr().String()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close() // kept alive in tr's pool
	s.Close()
	select {
	case <-s.done:
	default:
		t.Fatal("the serving goroutine is still running after Close")
	}
	s.Close() // twice: nothing
	again, err := Listen(addr)
	require.NoError(t, err, "the port is free after Close")
	again.Close()
	_, err = net.DialTimeout("tcp", addr, time.Second)
	assert.Error(t, err, "nothing listens after Close")
}

func TestListenErrorsSayWhy(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	_, err = Listen(busy.Addr().String())
	require.Error(t, err)
	assert.Equal(t, "address already in use", err.Error())

	_, err = Listen("192.0.2.1:9466") // TEST-NET-1: no interface of this machine has it
	require.Error(t, err)
	assert.Equal(t, "bind: cannot assign requested address", err.Error())

	// A second instance of the plugin in this process (per_listener_settings).
	s, err := Listen("127.0.0.1:0")
	require.NoError(t, err)
	_, err = Listen(s.Addr().String())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "already serves the metrics of another instance of this plugin in this broker: with per_listener_settings true each listener's plugin needs its own metrics_addr")
	// Another address with our port, held by someone else, is not ours.
	port := s.Addr().(*net.TCPAddr).Port
	other, err := net.Listen("tcp", fmt.Sprintf("127.0.0.2:%d", port))
	require.NoError(t, err)
	defer other.Close()
	_, err = Listen(other.Addr().String())
	assert.Equal(t, "address already in use", err.Error())
	s.Close()
	_, err = Listen(busy.Addr().String())
	assert.Equal(t, "address already in use", err.Error(), "another process's port is not ours")

	// An instance on every address holds the port on each of them.
	all, err := Listen(":0")
	require.NoError(t, err)
	defer all.Close()
	_, err = Listen(fmt.Sprintf("127.0.0.1:%d", all.Addr().(*net.TCPAddr).Port))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "another instance of this plugin")
}

// At most MaxConns connections are open at once: one more waits until one
// closes. A connection that sends no request is closed after
// readHeaderTimeout, so idle connections cannot hold the slots for ever.
func TestConnectionsBounded(t *testing.T) {
	readHeaderTimeout = 300 * time.Millisecond
	defer func() { readHeaderTimeout = ReadHeaderTimeout }()
	s, _ := serve(t)
	addr := s.Addr().String()
	var idle []net.Conn
	for i := 0; i < MaxConns; i++ {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		idle = append(idle, c)
	}
	// The slots are taken: a scrape on a new connection is not answered
	// while they are held (the kernel completes its handshake; nobody reads).
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(150*time.Millisecond)))
	_, err = bufio.NewReader(c).ReadByte()
	require.Error(t, err, "answered while %d connections were open", MaxConns)

	// The idle ones are closed by the server after readHeaderTimeout...
	for _, ic := range idle {
		require.NoError(t, ic.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, err := ic.Read(make([]byte, 1))
		assert.ErrorIs(t, err, io.EOF, "an idle connection is closed by the server")
		ic.Close()
	}
	// ...and the waiting scrape is answered.
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	line, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "HTTP/1.1 200 OK\r\n", line)
}

// At most MaxInFlight scrapes run at once; one more is answered 503 at once.
// Scrapes write the registry one at a time: the first blocks in a family's
// write, the second waits for it.
func TestScrapesInFlightBounded(t *testing.T) {
	s, reg := serve(t)
	entered, release := make(chan struct{}, 1), make(chan struct{})
	reg.Add("blocking", "gauge", "Blocks its scrape until released.", func(e *Emitter) {
		select {
		case entered <- struct{}{}:
			<-release
		default:
		}
		e.Sample("", 1)
	})
	url := "http://" + s.Addr().String() + "/metrics"
	var wg sync.WaitGroup
	for i := 0; i < MaxInFlight; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(url)
			if assert.NoError(t, err) {
				assert.Equal(t, 200, resp.StatusCode)
				resp.Body.Close()
			}
		}()
	}
	<-entered
	require.Eventually(t, func() bool { return len(s.inFlight) == MaxInFlight }, 5*time.Second, time.Millisecond)
	start := time.Now()
	code, body := get(t, "GET", url)
	assert.Equal(t, 503, code)
	assert.True(t, strings.Contains(body, "Limit of concurrent requests reached"), body)
	assert.Less(t, time.Since(start), time.Second)
	close(release)
	wg.Wait()
}

// raw sends req over a new connection, in pieces of size step (0: at once),
// and returns the whole answer.
func raw(t *testing.T, addr string, req string, step int) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	if step == 0 {
		step = len(req)
	}
	for i := 0; i < len(req); i += step {
		if _, err := c.Write([]byte(req[i:min(i+step, len(req))])); err != nil {
			break // the server answered and closed (431)
		}
	}
	b, _ := io.ReadAll(c)
	return string(b)
}

// What a hand-written HTTP/1.x server must get right, on the wire.
func TestRawRequests(t *testing.T) {
	s, _ := serve(t)
	addr := s.Addr().String()
	big := "GET /metrics HTTP/1.1\r\nX: " + strings.Repeat("a", MaxHeaderBytes) + "\r\n\r\n"
	for _, c := range []struct {
		req    string
		step   int
		status string
		body   bool // the exposition follows
	}{
		{"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n", 0, "200 OK", true},
		{"GET /metrics HTTP/1.0\r\n\r\n", 0, "200 OK", true},
		{"GET /metrics?x=1&y HTTP/1.1\r\n\r\n", 0, "200 OK", true},
		{"GET http://broker:9466/metrics HTTP/1.1\r\n\r\n", 0, "200 OK", true},
		{"GET /metrics HTTP/1.1\n\n", 0, "200 OK", true},
		{"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 1, "200 OK", true}, // a byte at a time
		{"HEAD /metrics HTTP/1.1\r\n\r\n", 0, "200 OK", false},
		{"GET http://broker:9466 HTTP/1.1\r\n\r\n", 0, "404 Not Found", false},
		{"GET /metrics/../metrics HTTP/1.1\r\n\r\n", 0, "404 Not Found", false},
		{"get /metrics HTTP/1.1\r\n\r\n", 0, "404 Not Found", false},
		{"GET /metrics HTTP/2.0\r\n\r\n", 0, "400 Bad Request", false},
		{"GET /metrics\r\n\r\n", 0, "400 Bad Request", false},
		{"GET  HTTP/1.1\r\n\r\n", 0, "400 Bad Request", false},
		{"\x00\xff\xfe garbage \x01\r\n\r\n", 0, "400 Bad Request", false},
		{"\r\n\r\n", 0, "400 Bad Request", false},
		{big, 0, "431 Request Header Fields Too Large", false},
		{big, 1000, "431 Request Header Fields Too Large", false},
	} {
		got := raw(t, addr, c.req, c.step)
		line, rest, _ := strings.Cut(got, "\r\n")
		assert.Equal(t, "HTTP/1.1 "+c.status, line, "%q", c.req)
		assert.Contains(t, rest, "Connection: close\r\n")
		assert.Equal(t, c.body, strings.Contains(rest, "up_total 7"), "%q: %q", c.req, got)
		if c.status == "200 OK" {
			assert.Contains(t, rest, "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n")
		}
	}
	// HEAD says the GET's length.
	getLen := regexp.MustCompile(`Content-Length: (\d+)`).FindStringSubmatch(raw(t, addr, "GET /metrics HTTP/1.1\r\n\r\n", 0))
	headLen := regexp.MustCompile(`Content-Length: (\d+)`).FindStringSubmatch(raw(t, addr, "HEAD /metrics HTTP/1.1\r\n\r\n", 0))
	require.Len(t, getLen, 2)
	assert.Equal(t, getLen, headLen)
}

// A client that closes before its headers end gets nothing, and its slot
// is free again.
func TestHalfRequestClosed(t *testing.T) {
	s, _ := serve(t)
	addr := s.Addr().String()
	for i := 0; i < 3*MaxConns; i++ {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		_, _ = c.Write([]byte("GET /metr"))
		c.Close()
	}
	code, _ := get(t, "GET", "http://"+addr+"/metrics")
	assert.Equal(t, 200, code)
}

// Whatever bytes a client sends, readRequest answers with one of its
// statuses, and never says 200 for a request that does not name Path.
func FuzzRequest(f *testing.F) {
	for _, s := range []string{"GET /metrics HTTP/1.1\r\n\r\n", "HEAD /metrics?a HTTP/1.0\n\n",
		"GET http://x/metrics HTTP/1.1\r\n\r\n", "\r\n\r\n", "GET / HTTP/1.1\r\n", "\n\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, status := readRequest(iotest.OneByteReader(bytes.NewReader(b)))
		switch status {
		case 0, 400, 404, 431:
		case 200:
			if !bytes.Contains(b, []byte(Path)) {
				t.Fatalf("200 for %q", b)
			}
			if req.head != bytes.HasPrefix(b, []byte("HEAD ")) {
				t.Fatalf("head %v for %q", req.head, b)
			}
		default:
			t.Fatalf("status %d for %q", status, b)
		}
		if _, s2 := readRequest(bytes.NewReader(b)); s2 != status {
			t.Fatalf("%d read at once, %d a byte at a time, for %q", s2, status, b)
		}
	})
}

// A client that goes on sending after its request holds its slot for at
// most LingerTimeout after the response: the server then closes.
func TestLingerBounded(t *testing.T) {
	s, _ := serve(t)
	c, err := net.Dial("tcp", s.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte("GET /metrics HTTP/1.1\r\n\r\n"))
	require.NoError(t, err)
	stop := make(chan struct{})
	defer close(stop)
	go func() { // a drip that never ends, well under LingerBytes
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				if _, err := c.Write([]byte("x")); err != nil {
					return
				}
			}
		}
	}()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "HTTP/1.1 200 OK\r\n", line)
	start := time.Now()
	_, err = io.Copy(io.Discard, r) // the response, then the server's FIN
	require.NoError(t, err)
	assert.Less(t, time.Since(start), LingerTimeout/2, "the response ends at once (the server's FIN)")
	// The slot (the accept loop holds one more, for the next connection):
	// still held while the server reads the drip, free within
	// LingerTimeout.
	assert.Equal(t, 2, len(s.ln.sem), "lingering")
	assert.Eventually(t, func() bool { return len(s.ln.sem) == 1 }, 2*LingerTimeout, 10*time.Millisecond,
		"the connection's slot is free within LingerTimeout")
	assert.GreaterOrEqual(t, time.Since(start), LingerTimeout/2, "it lingered")
}
