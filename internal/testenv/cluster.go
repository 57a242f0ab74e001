package testenv

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Cluster is a Redis Cluster of masters started for one test.
type Cluster struct {
	Nodes []*Redis
	Addrs string // comma-separated, as redis_addr takes them
}

// StartRedisCluster starts n masters (n >= 2), splits the 16384 slots
// between them and waits (10 s) until every node reports the cluster ok.
// A new cluster accepts writes no sooner than about 2 s after it forms.
func StartRedisCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{}
	var addrs []string
	for i := 0; i < n; i++ {
		r := StartRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "200")
		lo, hi := i*16384/n, (i+1)*16384/n-1
		r.CLI("CLUSTER", "ADDSLOTSRANGE", fmt.Sprint(lo), fmt.Sprint(hi))
		c.Nodes = append(c.Nodes, r)
		addrs = append(addrs, r.Addr)
	}
	for _, r := range c.Nodes[1:] {
		c.Nodes[0].CLI("CLUSTER", "MEET", "127.0.0.1", fmt.Sprint(r.Port))
	}
	c.Addrs = strings.Join(addrs, ",")
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok := true
		for _, r := range c.Nodes {
			ok = ok && strings.Contains(r.CLI("CLUSTER", "INFO"), "cluster_state:ok")
		}
		if ok {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: the cluster did not form within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// CLI runs redis-cli in cluster mode (following redirections) against the first node.
func (c *Cluster) CLI(args ...string) string {
	return c.Nodes[0].CLI(append([]string{"-c"}, args...)...)
}
