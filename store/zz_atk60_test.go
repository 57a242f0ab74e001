package store

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// atk60Check runs CheckSettings as the plugin does at start (1.5 s) and
// returns its error and how long it took.
func atk60Check(o Options, prefix string) (time.Duration, error) {
	o.Timeout = time.Second
	s := New(o, keys.Builder{Prefix: prefix})
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.CheckSettings(ctx)
	return time.Since(start), err
}

// checkBound is what a test of the start check allows it: its context's
// 1.5 s, and 40 ms for the deadline's timer to fire and the check's
// goroutine to run on a loaded machine (CI, the store package under way
// beside others, measured 1.527 s where 1.515 s was allowed, and 1.517 s
// once before). A request ends at the context's deadline (go-redis's
// ContextTimeoutEnabled); what runs past it is work done without looking
// at the context, such as atk61's sweep (10 to 100 ms of CPU). Such work
// under 40 ms passes this bound: the sweep's own test measures it beside a
// control instead (TestAtk61BoundWhenHungBeforeTheSweep, 8 ms allowed).
const checkBound = 1500*time.Millisecond + 40*time.Millisecond

// checkWithin runs check up to three times while it overruns checkBound,
// and returns its best time: a loaded machine's pause lands in one run,
// work that runs on past the deadline in each. An error ends it at once.
func checkWithin(check func() (time.Duration, error)) (time.Duration, error) {
	best := time.Duration(1<<63 - 1)
	for i := 0; i < 3 && best >= checkBound; i++ {
		d, err := check()
		if err != nil {
			return d, err
		}
		best = min(best, d)
	}
	return best, nil
}

func atk60Fault(err error) SettingsFault {
	var se *SettingsError
	if errors.As(err, &se) {
		return se.Fault
	}
	return 0
}

// atk60Cluster starts one cluster-enabled redis-server per entry of slots
// (each a list of "lo-hi" or "n" slot ranges; an empty list is a master
// with no slots), joins them, and waits (10 s) for cluster_state:ok on
// every node.
func atk60Cluster(t *testing.T, slots ...[]string) []*testenv.Redis {
	t.Helper()
	var nodes []*testenv.Redis
	for _, ranges := range slots {
		r := testenv.StartRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "200")
		for _, rg := range ranges {
			if lo, hi, ok := strings.Cut(rg, "-"); ok {
				r.CLI("CLUSTER", "ADDSLOTSRANGE", lo, hi)
			} else {
				r.CLI("CLUSTER", "ADDSLOTS", rg)
			}
		}
		nodes = append(nodes, r)
	}
	for _, r := range nodes[1:] {
		nodes[0].CLI("CLUSTER", "MEET", "127.0.0.1", fmt.Sprint(r.Port))
	}
	atk60WaitClusterOK(t, nodes)
	return nodes
}

func atk60WaitClusterOK(t *testing.T, nodes []*testenv.Redis) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok := true
		for _, r := range nodes {
			ci := r.CLI("CLUSTER", "INFO")
			ok = ok && strings.Contains(ci, "cluster_state:ok") && strings.Contains(ci, fmt.Sprintf("cluster_known_nodes:%d", len(nodes)))
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cluster did not form within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func atk60Users(rs ...*testenv.Redis) {
	for _, r := range rs {
		r.CLI("ACL", "SETUSER", "noinfo", "on", ">ni-secret", "~*", "+@all", "-cluster", "-info")
	}
}

// DEFECT. redis_tls off against a Redis that speaks only TLS 1.2 and
// requires client certificates: the probe's handshake ends with the
// server's alert (handshake_failure) or a reset, which crypto/tls reports
// as a *net.OpError "remote error" wrapping its unexported alert type, not
// tls.AlertError; speaksTLS's errors.As(err, &tls.AlertError) never
// matches on TCP (AlertError is wrapped only by QUIC connections), so the
// broker starts silently, Redis down for good. Same Redis with TLS 1.3
// (the default) is found: the client's side of the handshake completes.
func TestAtk60PlainTextToTLS12ClientCertRedis(t *testing.T) {
	ca := testenv.NewCA(t)
	r := testenv.StartRedisTLS(t, &testenv.RedisTLS{CA: ca, AuthClients: true}, "--tls-protocols", "TLSv1.2")
	// What speaksTLS's handshake gets: a received alert, not tls.AlertError.
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}} //nolint:gosec // as speaksTLS
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	c, herr := d.DialContext(ctx, "tcp", r.Addr)
	cancel()
	if c != nil {
		c.Close()
	}
	var alert tls.AlertError
	var op *net.OpError
	t.Logf("handshake: %v (tls.AlertError: %v; *net.OpError %q: %v)", herr, errors.As(herr, &alert), func() string {
		if errors.As(herr, &op) {
			return op.Op
		}
		return ""
	}(), op != nil)
	took, err := atk60Check(Options{Addrs: []string{r.Addr}}, "s:")
	assert.Less(t, took, 2*time.Second)
	assert.Equal(t, SettingsWantsTLS, atk60Fault(err), "TLS 1.2 Redis asking client certificates, redis_tls off: %v", err)
}

// DEFECT. A server whose TLS port refuses a handshake with a TLS alert
// record (here written by hand: handshake_failure, as a server with no
// cipher or version in common, or TLS 1.2 asking client certificates,
// sends) after closing a plain-text connection: README says "a TLS alert
// names redis_tls" (commit f37295c), but the alert is not recognised
// (speaksTLS: tls.AlertError is not what crypto/tls returns for a
// received alert).
func TestAtk60TLSAlertNamesRedisTLS(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(3 * time.Second))
				var b [1]byte
				if _, err := c.Read(b[:]); err != nil || b[0] != 0x16 {
					return // plain text: closed without a word
				}
				// An alert record: fatal (2), handshake_failure (40).
				_, _ = c.Write([]byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28})
			}()
		}
	}()
	took, err := atk60Check(Options{Addrs: []string{ln.Addr().String()}}, "s:")
	assert.Less(t, took, 2*time.Second)
	assert.Equal(t, SettingsWantsTLS, atk60Fault(err), "%v", err)
}

// HOLDS. The TLS probe stays within the check's bound and leaves no
// goroutine behind: a listener that closes plain-text connections at once
// and holds TLS ones silent (a proxy) costs at most the 1.5 s, is no
// fault, and the probe's goroutines end with the check's context.
func TestAtk60TLSProbeBoundedNoLeak(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	// The held connections, closed at the end; a connection's goroutine
	// may still be reading then (closing a channel it sends on raced).
	var (
		mu     sync.Mutex
		held   []net.Conn
		closed bool
	)
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		closed = true
		for _, c := range held {
			c.Close()
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				var b [1]byte
				_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
				if _, err := c.Read(b[:]); err != nil || b[0] != 0x16 {
					c.Close()
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if closed {
					c.Close()
					return
				}
				held = append(held, c)
			}()
		}
	}()
	before := runtime.NumGoroutine()
	for i := 0; i < 2; i++ {
		took, err := atk60Check(Options{Addrs: []string{ln.Addr().String()}}, "s:")
		assert.NoError(t, err)
		assert.Less(t, took, 1700*time.Millisecond, "the check's bound is 1.5 s")
	}
	// Goroutines of the listener's held connections aside (they returned),
	// the count comes back to where it was.
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	assert.LessOrEqual(t, runtime.NumGoroutine(), before+2, "goroutines left by the check")
}

// HOLDS. A plain Redis that refuses a connection (maxclients reached: it
// answers "-ERR max number of clients reached" and closes) is no
// redis_tls fault, and the check returns at once (no TLS probe: an error
// reply, not an EOF).
func TestAtk60PlainRedisClosingIsNoTLSFault(t *testing.T) {
	r := testenv.StartRedis(t, "--maxclients", "1")
	// One client holds the only slot: Redis answers the next "-ERR max
	// number of clients reached" and closes.
	c, err := net.Dial("tcp", r.Addr)
	require.NoError(t, err)
	defer c.Close()
	_, _ = c.Write([]byte("PING\r\n"))
	var b [7]byte
	_, _ = c.Read(b[:])
	for i := 0; i < 2; i++ {
		took, err := atk60Check(Options{Addrs: []string{r.Addr}}, "s:")
		t.Logf("maxclients reached: %v (%v)", err, took)
		assert.NotEqual(t, SettingsWantsTLS, atk60Fault(err), "maxclients reached: %v", err)
		assert.Less(t, took, 1700*time.Millisecond)
	}
}

// HOLDS. A cluster of one shard whose master has a replica: the master as
// the one redis_addr serves every key (no MOVED), for a user with and
// without INFO/CLUSTER rights.
func TestAtk60OneShardMasterWithReplica(t *testing.T) {
	nodes := atk60Cluster(t, []string{"0-16383"})
	rep := atk60AddReplica(t, nodes[0])
	atk60Users(nodes[0], rep)
	for _, u := range [][2]string{{"", ""}, {"noinfo", "ni-secret"}} {
		_, err := atk60Check(Options{Addrs: []string{nodes[0].Addr}, Username: u[0], Password: u[1]}, "s:")
		assert.NoError(t, err, "user %q, master of a one-shard cluster with a replica", u[0])
	}
}

// atk60AddReplica starts a cluster-enabled redis-server, joins it to
// master's cluster as master's replica and waits (10 s) for its link.
func atk60AddReplica(t *testing.T, master *testenv.Redis) *testenv.Redis {
	t.Helper()
	rep := testenv.StartRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "200")
	master.CLI("CLUSTER", "MEET", "127.0.0.1", fmt.Sprint(rep.Port))
	id := master.CLI("CLUSTER", "MYID")
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := rep.TryCLI("CLUSTER", "REPLICATE", id)
		if out == "OK" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CLUSTER REPLICATE: %s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for !strings.Contains(rep.CLI("INFO", "replication"), "master_link_status:up") {
		if time.Now().After(deadline) {
			t.Fatalf("the replica did not sync within 10 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return rep
}

// DEFECT. The replica of a ONE-shard cluster as the one redis_addr: it
// answers every GET MOVED (no READONLY), so checkKeys now names it "a node
// of a Redis Cluster of several shards" (SettingsClusterNode) before the
// INFO check can say what it is, a read-only replica (role:slave,
// SettingsReplica, README: "the one redis_addr is a read-only replica").
// The message is false (one shard) and sends the operator to list two or
// more cluster nodes, when the fix is the master's address. Before
// f37295c the default user got SettingsReplica.
func TestAtk60OneShardReplicaNamedReplica(t *testing.T) {
	nodes := atk60Cluster(t, []string{"0-16383"})
	rep := atk60AddReplica(t, nodes[0])
	_, err := atk60Check(Options{Addrs: []string{rep.Addr}}, "s:")
	assert.Equal(t, SettingsReplica, atk60Fault(err), "%v", err)
	if err != nil {
		assert.NotContains(t, err.Error(), "several shards", "the cluster has one shard")
	}
}

// HOLDS. A cluster whose one shard serves all 16384 slots plus a master
// with no slot (just added, before resharding): that empty master as the
// one redis_addr answers every key MOVED, though CLUSTER INFO says
// cluster_size:1 (which the INFO check lets be). The 16 GETs refuse it,
// for users with and without INFO rights.
func TestAtk60EmptyMasterRefused(t *testing.T) {
	nodes := atk60Cluster(t, []string{"0-16383"}, nil)
	atk60Users(nodes...)
	require.Contains(t, nodes[1].CLI("CLUSTER", "INFO"), "cluster_size:1")
	for _, u := range [][2]string{{"", ""}, {"noinfo", "ni-secret"}} {
		_, err := atk60Check(Options{Addrs: []string{nodes[1].Addr}, Username: u[0], Password: u[1]}, "s:")
		assert.Equal(t, SettingsClusterNode, atk60Fault(err), "user %q: %v", u[0], err)
	}
}

// DEFECT (the limit the code comment of slotKeys states, but README's
// table does not). A cluster of two shards split unevenly: the second owns
// one slot, one none of the 16 keys falls in. Its node 0 as the one
// redis_addr, read by a user without INFO/CLUSTER rights: no GET meets a
// MOVED, the broker starts, and every plugin key hashed to that slot is
// answered MOVED for good (a ban there never applies). The default user
// is refused (INFO's cluster_size:2): the users this commit meant to
// cover are not.
func TestAtk60UnevenSplitOneSlotShard(t *testing.T) {
	used := map[int]bool{}
	for _, k := range slotKeys("s:", 16) {
		used[keySlot(k)] = true
	}
	slot := 8000
	for used[slot] {
		slot++
	}
	nodes := atk60Cluster(t, []string{"0-" + fmt.Sprint(slot-1), fmt.Sprint(slot+1) + "-16383"}, []string{fmt.Sprint(slot)})
	atk60Users(nodes...)
	// A plugin key in that slot is answered MOVED by node 0.
	key := ""
	for i := 0; key == ""; i++ {
		if k := fmt.Sprintf("s:ban:ip:10.0.%d.%d", i/256, i%256); keySlot(k) == slot {
			key = k
		}
	}
	out, _ := nodes[0].TryCLI("GET", key)
	require.Contains(t, out, "MOVED", "control: %s is in the other shard's slot", key)
	_, err := atk60Check(Options{Addrs: []string{nodes[0].Addr}}, "s:")
	require.Equal(t, SettingsClusterNode, atk60Fault(err), "control, default user: %v", err)
	_, err = atk60Check(Options{Addrs: []string{nodes[0].Addr}, Username: "noinfo", Password: "ni-secret"}, "s:")
	assert.Equal(t, SettingsClusterNode, atk60Fault(err), "user without INFO rights, one slot elsewhere: %v", err)
}

// HOLDS. A key_prefix with a hash tag of its own puts every key in one
// slot: on a two-shard cluster, the node that serves the tag's slot is let
// be for a user without INFO rights (its keys are all there), the node
// that does not is refused; odd braces ("g}{", "g{}") change no result
// and the check ends in time. A very long prefix (4 KiB) too.
func TestAtk60PrefixHashTags(t *testing.T) {
	nodes := atk60Cluster(t, []string{"0-8191"}, []string{"8192-16383"})
	atk60Users(nodes...)
	// A tag in each node's half.
	var tags [2]string
	for i := 0; tags[0] == "" || tags[1] == ""; i++ {
		tag := fmt.Sprint("fleet", i)
		if h := keySlot(tag) / 8192; tags[h] == "" {
			tags[h] = tag
		}
	}
	for n, node := range nodes {
		own := "g{" + tags[n] + "}:"
		other := "g{" + tags[1-n] + "}:"
		_, err := atk60Check(Options{Addrs: []string{node.Addr}, Username: "noinfo", Password: "ni-secret"}, own)
		assert.NoError(t, err, "node %d, prefix %q in its slot", n, own)
		_, err = atk60Check(Options{Addrs: []string{node.Addr}, Username: "noinfo", Password: "ni-secret"}, other)
		assert.Equal(t, SettingsClusterNode, atk60Fault(err), "node %d, prefix %q in the other's slot: %v", n, other, err)
	}
	for _, p := range []string{"g}{", "g{}", "g{", "}", strings.Repeat("p", 4096) + ":"} {
		assert.Len(t, slotKeys(p, 16), 16, "prefix %.10q", p)
		took, err := atk60Check(Options{Addrs: []string{nodes[0].Addr}, Username: "noinfo", Password: "ni-secret"}, p)
		assert.Equal(t, SettingsClusterNode, atk60Fault(err), "prefix %.10q: %v", p, err)
		assert.Less(t, took, time.Second)
	}
}

// HOLDS. redis_tls off against sentinels that speak only TLS (their master too),
// with redis_sentinel_master set: every sentinel closes the plain-text
// connection; they answer a TLS handshake, which names redis_tls.
func TestAtk60PlainTextToTLSSentinels(t *testing.T) {
	ca := testenv.NewCA(t)
	sn := testenv.StartSentinel(t, testenv.SentinelOptions{TLS: &testenv.RedisTLS{CA: ca}, Replicas: 1, Sentinels: 2, Quorum: 1})
	took, err := atk60Check(Options{Addrs: strings.Split(sn.Addrs, ","), SentinelMaster: sn.Name}, "s:")
	t.Logf("%v (%v)", err, took)
	assert.Less(t, took, 1700*time.Millisecond)
	assert.Equal(t, SettingsWantsTLS, atk60Fault(err), "%v", err)
}

// HOLDS. redis_tls off against a Redis Cluster whose nodes speak only TLS, given
// as two seeds: the seeds close the plain-text connection; they answer a
// TLS handshake, which names redis_tls.
func TestAtk60PlainTextToTLSCluster(t *testing.T) {
	ca := testenv.NewCA(t)
	o := &testenv.RedisTLS{CA: ca}
	var nodes []*testenv.Redis
	for i := 0; i < 2; i++ {
		r := testenv.StartRedisTLS(t, o, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "200", "--tls-cluster", "yes")
		r.CLI("CLUSTER", "ADDSLOTSRANGE", fmt.Sprint(i*8192), fmt.Sprint(i*8192+8191))
		nodes = append(nodes, r)
	}
	nodes[0].CLI("CLUSTER", "MEET", "127.0.0.1", fmt.Sprint(nodes[1].Port))
	atk60WaitClusterOK(t, nodes)
	took, err := atk60Check(Options{Addrs: []string{nodes[0].Addr, nodes[1].Addr}}, "s:")
	t.Logf("%v (%v)", err, took)
	assert.Less(t, took, 1700*time.Millisecond)
	assert.Equal(t, SettingsWantsTLS, atk60Fault(err), "%v", err)
}

// DEFECT (inconsistency f37295c left for tagged prefixes). A key_prefix with a hash tag
// ("g{fleetN}:") whose slot node 0 of a two-shard cluster serves: every
// key of the plugin (redis_rate's "rate:g{fleetN}:..." too) is served by
// node 0. The 16-GET check lets node 0 be (one key, in the tag's slot) for
// a user without INFO rights, but the same settings with a user that may
// run INFO and CLUSTER are refused by CLUSTER INFO's cluster_size:2
// (CheckSettings): the broker's start depends on the Redis user's rights,
// not on the setup. One answer or the other, not both.
func TestAtk60TaggedPrefixSameAnswerForEveryUser(t *testing.T) {
	nodes := atk60Cluster(t, []string{"0-8191"}, []string{"8192-16383"})
	atk60Users(nodes...)
	prefix := ""
	for i := 0; prefix == ""; i++ {
		if tag := fmt.Sprint("fleet", i); keySlot(tag) < 8192 {
			prefix = "g{" + tag + "}:"
		}
	}
	_, noinfo := atk60Check(Options{Addrs: []string{nodes[0].Addr}, Username: "noinfo", Password: "ni-secret"}, prefix)
	_, def := atk60Check(Options{Addrs: []string{nodes[0].Addr}}, prefix)
	assert.Equal(t, atk60Fault(noinfo), atk60Fault(def), "prefix %q on the node serving its slot: user noinfo: %v; default user: %v", prefix, noinfo, def)
}

// HOLDS. A cluster node while its one-shard cluster is still forming (half
// the slots assigned, cluster_state:fail): every GET answers CLUSTERDOWN,
// no MOVED, and CLUSTER INFO says cluster_size:1; a Redis not ready yet is
// no wrong setting, for a user with and without INFO rights.
func TestAtk60ClusterDownIsNoFault(t *testing.T) {
	r := testenv.StartRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "200")
	r.CLI("CLUSTER", "ADDSLOTSRANGE", "0", "8191")
	atk60Users(r)
	out, _ := r.TryCLI("GET", "s:x")
	require.Contains(t, out, "CLUSTERDOWN", "control")
	for _, u := range [][2]string{{"", ""}, {"noinfo", "ni-secret"}} {
		_, err := atk60Check(Options{Addrs: []string{r.Addr}, Username: u[0], Password: u[1]}, "s:")
		assert.NoError(t, err, "user %q", u[0])
	}
}
