package replica

import (
	"fmt"
	"testing"
	"time"
)

// go test -run XXX -bench Lookup ./store/replica: a CONNECT's list lookup
// that matches nothing (the common case), with no list keys, with automatic
// bans of addresses only (the lists a fail_limit builds), and with keys of
// every scope.
func BenchmarkLookup(b *testing.B) {
	cases := []struct {
		name string
		keys []string
	}{
		{"empty", nil},
		{"ipbans", []string{"guard:block:ip:198.51.100.7", "guard:block:ip:198.51.100.8"}},
		{"every", []string{"guard:block:ip:198.51.100.7", "guard:allow:ip:198.51.100.9",
			"guard:block:clientid:x", "guard:allow:clientid:y", "guard:block:username:u", "guard:allow:username:v",
			"guard:block:cert:" + fmt.Sprintf("%064x", 1), "guard:allow:cert:" + fmt.Sprintf("%064x", 2)}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			r := New(kb)
			for _, k := range c.keys {
				if err := r.Put(k, "x", time.Time{}); err != nil {
					b.Fatal(err)
				}
			}
			qq := q("bench-w00", "127.1.0.1", "bench")
			now := time.Now()
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if a := r.Lookup(qq, now); a.Block != nil || a.Allow != nil {
					b.Fatal("a match")
				}
			}
		})
	}
}
