package conflicts

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// The sweep runs in Run outside handleSafely, and its shrink maps a new
// table: when that mapping fails (offheap panics), the panic leaves Run,
// the worker is gone for the broker's life (spawn's recover logs one line)
// and no client ID is tracked any more. The worker must log it and go on.
func TestRevSweepMmapFailureKeepsWorker(t *testing.T) {
	testenv.InChild(t, func(t *testing.T) {
		was := sweepEvery
		sweepEvery = 20 * time.Millisecond
		defer func() { sweepEvery = was }()
		logged := make(chan string, 16)
		tr := New(testOptions(), Deps{Store: newMemStore(), Log: func(_ Level, msg string) {
			select {
			case logged <- msg:
			default:
			}
		}})
		// 150 000 forgettable memos and 40 000 young ones: the sweep
		// leaves 40 000, under a quarter of the peak, and shrink maps
		// 2^17 slots of 40 bytes (5 MiB) for them.
		now := time.Now().UnixMilli()
		for i := range 190_000 {
			e := idMemo{}
			if i < 40_000 {
				e.seenAt = stampOf(now)
			}
			tr.putMemo(tr.idKey("dev-"+strconv.Itoa(i)), e)
		}
		require.Equal(t, 190_000, tr.ids.Len())
		stop, done := make(chan struct{}), make(chan any, 1)
		lift := testenv.CapAddressSpace(t, 1<<20)
		go func() {
			defer func() { done <- recover() }()
			tr.Run(stop)
		}()
	wait:
		for {
			select {
			case p := <-done:
				lift()
				t.Fatalf("the worker returned (panic: %v): client IDs are no longer tracked", p)
			case msg := <-logged:
				if strings.Contains(msg, "mapping") {
					lift()
					t.Logf("logged: %s", msg)
					break wait
				}
			}
		}
		select {
		case p := <-done:
			t.Fatalf("the worker returned (panic: %v)", p)
		default:
		}
		close(stop)
		require.Nil(t, <-done)
	})
}
