package testenv

import (
	"strings"
	"testing"
	"time"
)

// A master, a replica and three sentinels: an ordered failover promotes the
// replica with the data replicated before it, and the old master follows it.
func TestSentinelFailover(t *testing.T) {
	start := time.Now()
	s := StartSentinel(t, SentinelOptions{})
	t.Logf("settled in %s", time.Since(start).Round(time.Millisecond))
	old := s.Master()
	if old != s.Nodes[0] {
		t.Fatalf("master at start is %s, want %s", old.Addr, s.Nodes[0].Addr)
	}
	old.CLI("SET", "k", "v")
	if got := old.CLI("WAIT", "1", "2000"); got != "1" {
		t.Fatalf("WAIT 1: %s", got)
	}
	start = time.Now()
	next := s.Failover(15 * time.Second)
	t.Logf("failover in %s", time.Since(start).Round(time.Millisecond))
	if next == old {
		t.Fatal("the master did not change")
	}
	if got := next.CLI("GET", "k"); got != "v" {
		t.Fatalf("GET k on the new master: %q", got)
	}
	// The sentinels turn the old master into a replica when its INFO next
	// says it is a master: they ask a master every 10 s, so up to about 20 s
	// (seen on CI: more than 10).
	deadline := time.Now().Add(30 * time.Second)
	for {
		// The old master drops its clients as it turns into a replica.
		role, err := old.TryCLI("ROLE")
		if err == nil && strings.HasPrefix(role, "slave") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the old master is not a replica: %s %v", role, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
