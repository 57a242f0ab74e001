package testenv

import (
	"strconv"
	"strings"
	"syscall"
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
	if !old.WaitReplicas(1, 2*time.Second) {
		t.Fatal("the replica has not acknowledged k")
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

// WaitReplicas waits for the replicas to have every write made on the
// master so far: with the replica frozen (SIGSTOP) after a write, it says
// false once its bound is spent; thawed, true. A WAIT from CLI's new
// redis-cli, which wrote nothing, said 1 at once with the replica frozen,
// and TestSyncFollowsSentinelFailover (store/replica) failed when a
// failover promoted a replica that had not yet received its write.
func TestWaitReplicasWaitsForTheWrites(t *testing.T) {
	m := StartRedis(t)
	rep := StartRedis(t, "--replicaof", "127.0.0.1", strconv.Itoa(m.Port))
	if !m.WaitReplicas(1, 15*time.Second) {
		t.Fatal("the replica never acknowledged")
	}
	if err := rep.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	m.CLI("SET", "k", "v")
	start := time.Now()
	if m.WaitReplicas(1, 500*time.Millisecond) {
		t.Fatal("WaitReplicas said the frozen replica has k")
	}
	if took := time.Since(start); took < 450*time.Millisecond {
		t.Fatalf("WaitReplicas gave up after %s, before its 500ms", took)
	}
	if err := rep.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if !m.WaitReplicas(1, 5*time.Second) {
		t.Fatal("the thawed replica never acknowledged k")
	}
	if got := rep.CLI("GET", "k"); got != "v" {
		t.Fatalf("replica's k = %q", got)
	}
}
