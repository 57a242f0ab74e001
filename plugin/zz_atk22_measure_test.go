package plugin

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/config"
)

// TestAtk22MeasureHold (ATK22_MEASURE=1; ATK22_IDLEN, default 65535)
// measures the longest wait of a goroutine taking g.mu, as the broker
// thread does, while confirmDue confirms 1024 deferred connections.
func TestAtk22MeasureHold(t *testing.T) {
	if os.Getenv("ATK22_MEASURE") == "" {
		t.Skip()
	}
	n := 256 * 4
	idLen := 65535
	if v := os.Getenv("ATK22_IDLEN"); v != "" {
		fmt.Sscan(v, &idLen)
	}
	cfg, _ := config.Parse(map[string]string{"backend": "defer", "clientid_conflict": "flag"})
	lw := &liveWrites{live: map[string]string{}}
	g, _ := NewWith(cfg, Output{Log: func(Level, string) {}}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}, Conflicts: lw})
	defer g.Close()
	var mu sync.Mutex
	now := time.Now().Add(time.Hour)
	g.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%06d", i) + strings.Repeat("x", idLen-6)
		admitRC(g, rc(uintptr(i+1000), id, "u"), true)
	}
	mu.Lock()
	now = now.Add(2 * confirmDelay)
	mu.Unlock()
	stop := make(chan struct{})
	var worst time.Duration
	done := make(chan struct{})
	go func() { // the broker thread: takes g.mu as a DISCONNECT would
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			s := time.Now()
			g.mu.Lock()
			n := len(g.pending) // as a DISCONNECT reads its record
			g.mu.Unlock()
			_ = n
			if d := time.Since(s); d > worst {
				worst = d
			}
			time.Sleep(20 * time.Microsecond)
		}
	}()
	time.Sleep(5 * time.Millisecond)
	s := time.Now()
	g.confirmDue()
	total := time.Since(s)
	close(stop)
	<-done
	t.Logf("n=%d idLen=%d confirmDue %s, worst wait for g.mu %s", n, idLen, total, worst)
}
