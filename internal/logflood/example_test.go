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
			fmt.Println("refused ip=203.0.113.7 rule=guard:block:ip:203.0.113.7")
		}
	}
	for _, s := range lim.Flush(start.Add(10 * time.Second)) {
		if s.Overflow {
			fmt.Printf("%d more refusals from other sources in the last %s\n", s.Suppressed, s.Period)
			continue
		}
		fmt.Printf("%d more refusals from %s %s in the last %s\n", s.Suppressed, s.Source, s.Rule, s.Period)
	}
	// Output:
	// refused ip=203.0.113.7 rule=guard:block:ip:203.0.113.7
	// refused ip=203.0.113.7 rule=guard:block:ip:203.0.113.7
	// refused ip=203.0.113.7 rule=guard:block:ip:203.0.113.7
	// 97 more refusals from ip=203.0.113.7 rule=guard:block:ip:203.0.113.7 in the last 10s
}
