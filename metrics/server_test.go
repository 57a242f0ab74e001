package metrics

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// serve listens on a free loopback port and serves a registry with one
// counter, up_total 7.
func serve(t *testing.T) (*Server, *prometheus.Registry) {
	t.Helper()
	s, err := Listen("127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(s.Close)
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "up_total", Help: "A test counter."})
	c.Add(7)
	reg.MustRegister(c)
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
	s.Serve(prometheus.NewRegistry(), func(string) {})
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
	readHeaderTimeout, idleTimeout = 300*time.Millisecond, 300*time.Millisecond
	defer func() { readHeaderTimeout, idleTimeout = ReadHeaderTimeout, IdleTimeout }()
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

// blocking is a collector whose Collect waits for release.
type blocking struct {
	entered chan struct{}
	release chan struct{}
}

func (b *blocking) Describe(ch chan<- *prometheus.Desc) {}
func (b *blocking) Collect(ch chan<- prometheus.Metric) {
	b.entered <- struct{}{}
	<-b.release
}

// At most MaxInFlight scrapes run at once; one more is answered 503 at once.
func TestScrapesInFlightBounded(t *testing.T) {
	s, reg := serve(t)
	b := &blocking{entered: make(chan struct{}), release: make(chan struct{})}
	reg.MustRegister(b)
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
		<-b.entered
	}
	start := time.Now()
	code, body := get(t, "GET", url)
	assert.Equal(t, 503, code)
	assert.True(t, strings.Contains(body, "Limit of concurrent requests reached"), body)
	assert.Less(t, time.Since(start), time.Second)
	close(b.release)
	wg.Wait()
}
