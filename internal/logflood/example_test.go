package logflood_test

import (
	"fmt"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logflood"
)

func Example() {
	lim := logflood.New(0, 3, 10*time.Second) // up to 10 000 keys, 3 lines a window
	start := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for i := 0; i < 100; i++ { // a banned IP hammering the broker
		now := start.Add(time.Duration(i) * 50 * time.Millisecond)
		if lim.Allow("ip=203.0.113.7", "rule=guard:block:ip:203.0.113.7", now) {
			fmt.Println("event=refused ip=203.0.113.7 rule=guard:block:ip:203.0.113.7")
		}
	}
	for _, s := range lim.Flush(start.Add(10 * time.Second)) {
		if s.Overflow {
			fmt.Printf("event=refusals_suppressed source=other suppressed=%d period=%s\n", s.Suppressed, s.Period)
			continue
		}
		fmt.Printf("event=refusals_suppressed %s %s suppressed=%d period=%s\n", s.Source, s.Rule, s.Suppressed, s.Period)
	}
	// Output:
	// event=refused ip=203.0.113.7 rule=guard:block:ip:203.0.113.7
	// event=refused ip=203.0.113.7 rule=guard:block:ip:203.0.113.7
	// event=refused ip=203.0.113.7 rule=guard:block:ip:203.0.113.7
	// event=refusals_suppressed ip=203.0.113.7 rule=guard:block:ip:203.0.113.7 suppressed=97 period=10s
}
