package testenv

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// SentinelOptions configure StartSentinel. Zero values take the defaults.
type SentinelOptions struct {
	Name      string        // the master's name; default mymaster
	Replicas  int           // default 1
	Sentinels int           // default 3
	Quorum    int           // default 2
	DownAfter time.Duration // sentinel down-after-milliseconds; default 1s
	// FailoverTimeout is sentinel failover-timeout; default 5s. A second
	// failover of the same master waits twice this.
	FailoverTimeout time.Duration
	// TLS, when set, makes every node and sentinel speak TLS only, and
	// replicate and monitor over TLS (tls-replication yes).
	TLS *RedisTLS
	// Extra arguments for every data node (not the sentinels).
	Extra []string
}

// Sentinels is a Redis master, its replicas and the sentinels that watch
// them, each a process of its own on a free loopback port.
type Sentinels struct {
	Name      string
	Nodes     []*Redis // the master at start first, then the replicas
	Sentinels []*Redis
	// Addrs are the sentinels, comma-separated: redis_addr with
	// redis_sentinel_master Name.
	Addrs string
	t     testing.TB
}

// StartSentinel starts a master, o.Replicas replicas of it and o.Sentinels
// sentinels monitoring it (redis-server --sentinel, each with a
// sentinel.conf of its own), and waits (15 s) until every sentinel knows
// every replica and every other sentinel: from then on a failover can be
// ordered (Failover) or elected (after the master's death).
func StartSentinel(t testing.TB, o SentinelOptions) *Sentinels {
	t.Helper()
	Need(t, "redis-server", "redis-cli")
	if o.Name == "" {
		o.Name = "mymaster"
	}
	o.Replicas = orDefault(o.Replicas, 1)
	o.Sentinels = orDefault(o.Sentinels, 3)
	o.Quorum = orDefault(o.Quorum, 2)
	if o.DownAfter == 0 {
		o.DownAfter = time.Second
	}
	if o.FailoverTimeout == 0 {
		o.FailoverTimeout = 5 * time.Second
	}
	s := &Sentinels{Name: o.Name, t: t}
	node := func(extra ...string) *Redis {
		extra = append(append([]string{}, o.Extra...), extra...)
		if o.TLS != nil {
			return StartRedisTLS(t, o.TLS, append([]string{"--tls-replication", "yes"}, extra...)...)
		}
		return StartRedis(t, extra...)
	}
	master := node()
	s.Nodes = append(s.Nodes, master)
	for i := 0; i < o.Replicas; i++ {
		s.Nodes = append(s.Nodes, node("--replicaof", "127.0.0.1", fmt.Sprint(master.Port)))
	}
	var addrs []string
	for i := 0; i < o.Sentinels; i++ {
		sn := startSentinel(t, o, master.Port)
		s.Sentinels = append(s.Sentinels, sn)
		addrs = append(addrs, sn.Addr)
	}
	s.Addrs = strings.Join(addrs, ",")
	s.waitKnown(o, 15*time.Second)
	return s
}

func orDefault(n, def int) int {
	if n == 0 {
		return def
	}
	return n
}

// startSentinel writes a sentinel.conf (Sentinel rewrites it: it must be a
// file of its own) and starts redis-server --sentinel with it.
func startSentinel(t testing.TB, o SentinelOptions, masterPort int) *Redis {
	t.Helper()
	port := FreePort(t)
	dir := t.TempDir()
	var conf strings.Builder
	var cli []string
	if o.TLS != nil {
		settings, c := o.TLS.files(t)
		cli = c
		fmt.Fprintf(&conf, "port 0\ntls-port %d\ntls-replication yes\n", port)
		for _, s := range settings {
			fmt.Fprintf(&conf, "%s %s\n", s[0], s[1])
		}
	} else {
		fmt.Fprintf(&conf, "port %d\n", port)
	}
	fmt.Fprintf(&conf, "bind 127.0.0.1\ndir %s\n", dir)
	fmt.Fprintf(&conf, "sentinel monitor %s 127.0.0.1 %d %d\n", o.Name, masterPort, o.Quorum)
	fmt.Fprintf(&conf, "sentinel down-after-milliseconds %s %d\n", o.Name, o.DownAfter.Milliseconds())
	fmt.Fprintf(&conf, "sentinel failover-timeout %s %d\n", o.Name, o.FailoverTimeout.Milliseconds())
	fmt.Fprintf(&conf, "sentinel parallel-syncs %s 1\n", o.Name)
	path := WriteFile(t, dir, "sentinel.conf", conf.String())
	args := []string{filepath.Base(path), "--sentinel"}
	r := newRedis(t, port, dir, args, cli)
	r.Process = start(t, dir, "redis-server", args...)
	if err := r.WaitPort(r.Addr, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return r
}

// sentinelInfo matches the master's line of INFO sentinel.
var sentinelInfo = regexp.MustCompile(`status=(\w+),address=([^,]+),slaves=(\d+),sentinels=(\d+)`)

// waitKnown waits until every sentinel sees the master ok, every replica
// and every other sentinel, and every replica has synced.
func (s *Sentinels) waitKnown(o SentinelOptions, d time.Duration) {
	s.t.Helper()
	want := fmt.Sprintf("status=ok,address=%s,slaves=%d,sentinels=%d", s.Nodes[0].Addr, o.Replicas, o.Sentinels)
	deadline := time.Now().Add(d)
	for {
		ok := true
		var last string
		for _, sn := range s.Sentinels {
			m := sentinelInfo.FindString(sn.CLI("INFO", "sentinel"))
			if m != want {
				ok, last = false, m
			}
		}
		for _, r := range s.Nodes[1:] {
			if !strings.Contains(r.CLI("INFO", "replication"), "master_link_status:up") {
				ok, last = false, r.Addr+" not synced"
			}
		}
		// A replica says master_link_status:up once it has loaded the
		// RDB; after a diskless sync the master streams it commands only
		// from a REPLCONF ACK received once the RDB child is reaped, and
		// its first ACK often comes before: then the next, up to a second
		// later. A failover ordered meanwhile would promote a replica
		// without the writes made since StartSentinel returned.
		if ok && s.Nodes[0].WaitReplicas(o.Replicas, 2*time.Second) {
			return
		}
		if ok {
			last = "a replica has not acknowledged a write"
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("testenv: the sentinels did not settle within %s: want %q, got %q", d, want, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// MasterAddr returns the master's address as the first sentinel that
// answers names it.
func (s *Sentinels) MasterAddr() string {
	s.t.Helper()
	for _, sn := range s.Sentinels {
		if sn.Exited() {
			continue
		}
		f := strings.Fields(sn.CLI("SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.Name))
		if len(f) == 2 {
			return f[0] + ":" + f[1]
		}
	}
	s.t.Fatalf("testenv: no sentinel names master %s", s.Name)
	return ""
}

// Master returns the node the sentinels name master.
func (s *Sentinels) Master() *Redis {
	s.t.Helper()
	return s.Node(s.MasterAddr())
}

// Node returns the data node at addr.
func (s *Sentinels) Node(addr string) *Redis {
	s.t.Helper()
	for _, r := range s.Nodes {
		if r.Addr == addr {
			return r
		}
	}
	s.t.Fatalf("testenv: no node at %s", addr)
	return nil
}

// Failover orders a failover (SENTINEL FAILOVER, which asks no other
// sentinel's agreement) and returns the new master once it is promoted
// (WaitMaster).
func (s *Sentinels) Failover(d time.Duration) *Redis {
	s.t.Helper()
	old := s.MasterAddr()
	if out := s.Sentinels[0].CLI("SENTINEL", "FAILOVER", s.Name); out != "OK" {
		s.t.Fatalf("testenv: SENTINEL FAILOVER: %s", out)
	}
	return s.WaitMaster(old, d)
}

// WaitMaster waits up to d until every live sentinel names a master other
// than old, and that node says it is a master, and returns it.
func (s *Sentinels) WaitMaster(old string, d time.Duration) *Redis {
	s.t.Helper()
	deadline := time.Now().Add(d)
	for {
		addr := ""
		agreed := true
		for _, sn := range s.Sentinels {
			if sn.Exited() {
				continue
			}
			f := strings.Fields(sn.CLI("SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.Name))
			a := ""
			if len(f) == 2 {
				a = f[0] + ":" + f[1]
			}
			if a == old || a == "" || (addr != "" && a != addr) {
				agreed = false
			}
			addr = a
		}
		if agreed {
			n := s.Node(addr)
			if role, err := n.TryCLI("ROLE"); err == nil && strings.HasPrefix(role, "master") {
				return n
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("testenv: no new master of %s within %s (still %s)", s.Name, d, old)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
