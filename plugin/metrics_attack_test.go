package plugin

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// Scrapes over the endpoint concurrent with CONNECTs, first sights, bans,
// disconnects and the CONNECT histogram, then Close while scrapes are under
// way: run under -race (issue 12's hostile review of the endpoint).
func TestAttackMetricsScrapesConcurrentWithConnectsAndClose(t *testing.T) {
	g, st, _ := metricsGuard(t, map[string]string{"fail_scopes": "ip,clientid,username"})
	url := "http://" + g.metricsSrv.Addr().String() + "/metrics"
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var n atomic.Int64
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				h := uintptr(w*1_000_000 + i + 1)
				id := fmt.Sprintf("c%d-%d", w, i)
				if i%5 == 0 {
					st.set("guard:block:clientid:"+id, "x")
				}
				g.Authenticate(cl(h, fmt.Sprintf("10.0.%d.%d", w, i%250), id, "alice", []string{"alice-pw", "bad"}[i%2]))
				g.ObserveConnect(time.Duration(i) * time.Microsecond)
				g.FirstSight(Client{Handle: h + 500_000, ClientID: id, Address: "10.1.0.1", CertID: keys.CertID([]byte(id))})
				g.metrics.banned(keys.IP)
				g.Disconnected(h)
				n.Add(1)
			}
		}(w)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	for i := 0; i < 40; i++ {
		resp, err := c.Get(url)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		assert.Contains(t, []int{200, 503}, resp.StatusCode)
	}
	// Close with scrapes in flight.
	var sw sync.WaitGroup
	for i := 0; i < 4; i++ {
		sw.Add(1)
		go func() {
			defer sw.Done()
			for j := 0; j < 20; j++ {
				if resp, err := c.Get(url); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	g.Close()
	sw.Wait()
	close(stop)
	wg.Wait()
	assert.Greater(t, n.Load(), int64(0))
}
