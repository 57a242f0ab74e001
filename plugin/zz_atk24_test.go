package plugin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// A hostile tester's attacks on 648cb9a (the cache hit's one clock read,
// recentKeyIn) and b6cbe47 (branch atk24).

// slowClaimStore is a guard's broker-thread store whose throttle claim is
// a round trip that takes wait of the guard's clock (advance moves it),
// answered by the real store, or failed (fail: a Redis that timed out).
type slowClaimStore struct {
	Store
	advance func(time.Duration)
	wait    time.Duration
	fail    bool
}

func (s *slowClaimStore) ClaimThrottle(ctx context.Context, username, reason string, ttl time.Duration) (bool, error) {
	s.advance(s.wait)
	if s.fail {
		return false, errors.New("i/o timeout")
	}
	return s.Store.ClaimThrottle(ctx, username, reason, ttl)
}

// A cache hit keeps the clock read before the limit checks (648cb9a), but
// those checks may wait for Redis: a source that is not known claims a
// lapsed throttle's guess there (lapsedThrottle), a round trip of up to
// redis_timeout (10 s at most), or all of it when Redis does not answer.
// What the hit then records, its connection's admission (conflict
// tracking's ConnectedMs, sinceMs) and its known sources' stamps, must be
// the time after that wait, as a miss records it, not the time before.
// A new device of a fleet (its password in the cache from the fleet's
// other devices) after a throttle of the fleet's username lapsed.
func TestAtk24CacheHitAfterALapseClaimRecordsItsTime(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail bool
	}{
		{"claimed", false},
		{"Redis timed out", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, _, _, _ := revGuard(t, 1, map[string]string{"redis_timeout": "10s"})
			require.NotNil(t, g.known)
			base := time.Now()
			var off atomic.Int64
			g.now = func() time.Time { return base.Add(time.Duration(off.Load())) }
			const wait = 5 * time.Second
			g.store = &slowClaimStore{Store: g.store, advance: func(d time.Duration) { off.Add(int64(d)) }, wait: wait, fail: tc.fail}

			// The fleet's first device: a miss, its password cached.
			require.Equal(t, Allow, g.Authenticate(Client{Handle: 0x100, ClientID: "dev-a", Address: "127.7.0.1",
				Username: "u0", HasUsername: true, Password: []byte("pw")}).Result)
			// A throttle of u0 met here, lapsed since.
			g.known.noteEpisode(keys.Tracking("u0"), g.now())

			// A new device: not a known source, so its guess is claimed in
			// Redis first, then its password hits the cache.
			dev := Client{Handle: 0x200, ClientID: "dev-b", Address: "127.7.0.2", Username: "u0", HasUsername: true, Password: []byte("pw")}
			d := g.Authenticate(dev)
			require.Equal(t, Allow, d.Result, d.Rule)
			require.Equal(t, int64(wait), off.Load(), "the claim's round trip was made")
			admitted := g.now().UnixMilli()

			g.mu.Lock()
			lc := g.conns.get(dev.Handle)
			require.NotNil(t, lc)
			since := lc.sinceMs
			g.mu.Unlock()
			require.Equal(t, admitted, since, "admitted %v after the clock read before the claim, recorded as at that read", time.Duration(admitted-since)*time.Millisecond)

			g.known.mu.Lock()
			st, ok := g.known.recent.Get(recentKey("u0", sourceIP(netip.MustParseAddr(dev.Address))))
			g.known.mu.Unlock()
			require.True(t, ok)
			require.Equal(t, knownStampOf(admitted), st, "the known source stamped before the claim")
		})
	}
}

// addrString is the address text conflict tracking records for c
// (connAddr's, as the tracker's worker formats it).
func addrString(c *Client, ip netip.Addr) string {
	text, addr := connAddr(c, ip)
	if text == "" && addr.IsValid() {
		return addr.String()
	}
	return text
}

// Deny mode's claim and admit describe a connection by the same address
// whatever form the broker gives it in (connAddr: the IP, its text made by
// the worker, when the broker's is not canonical): the connection claimed
// is the one admitted, recorded with the IP's canonical text.
func TestAtk24DenyClaimsMappedAddresses(t *testing.T) {
	r := testenv.StartRedis(t)
	st := store.New(store.Options{Addrs: []string{r.Addr}, Timeout: time.Second}, keys.Builder{Prefix: "guard:"})
	t.Cleanup(func() { st.Close() })
	a, _ := denyBroker(t, st, "broker-a")
	tracking(t, a, st, 100, "warm-up-a")
	for i, addr := range []string{"::ffff:192.0.2.9", "2001:DB8:0:0:0:0:0:9", "fe80::9%eth0", "192.0.2.9"} {
		h := uintptr(1 + i)
		id := fmt.Sprintf("door-%d", i)
		require.Equal(t, Allow, a.Authenticate(cl(h, addr, id, "alice", "alice-pw")).Result, addr)
		live, err := st.LiveConns(context.Background(), id)
		require.NoError(t, err)
		require.Len(t, live, 1, addr)
		a.mu.Lock()
		admitted := a.tracker.StoreConn(a.connOf(a.conns.get(h)))
		a.mu.Unlock()
		require.Equal(t, admitted, live[0], "%s: admit records the claimed connection", addr)
		require.Equal(t, netip.MustParseAddr(addr).Unmap().WithZone("").String(), live[0].IP, addr)
	}
}

// The known sources' keys as succeededFrom stores them (recentKeyIn: the
// source's kind apart, the IP's text taken from the broker's address when
// it is canonical, the client ID's Tracking form) against those known()
// looks up (recentKey of sourceIP(ip) and sourceClientID(id)), for what
// authenticate hands over (ownTracked): every address form the broker may
// give (IPv4, IPv4-mapped in both cases and in hex, IPv6 compressed or not,
// upper case, zones, not an IP), usernames and client IDs empty, around
// recentKeyBuf, at and over keys.TrackingMax (hashed forms), not UTF-8.
// A mismatch would make a known device unknown under a throttle, and
// write its source to Redis at every CONNECT. Each pair is also written
// once: its second success queues nothing.
func TestAtk24KnownKeysStoredAsLookedUp(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	k := newKnownSources(knownDeps{max: 100, window: time.Hour, failWindow: time.Minute,
		spawn: func(string, func()) {}, stop: stop})
	now := time.Now()
	str := func(n int, b byte) string {
		s := make([]byte, n)
		for i := range s {
			s[i] = b + byte(i%7)
		}
		return string(s)
	}
	lens := []int{0, 1, 50, 55, 56, 64, 100, 111, 119, 120, 121, keys.TrackingMax, keys.TrackingMax + 1, 3000}
	addrs := []string{"192.0.2.1", "0.0.0.0", "::ffff:192.0.2.1", "::FFFF:192.0.2.1", "::ffff:c000:201",
		"::1", "2001:db8::1", "2001:DB8:0:0:0:0:0:1", "2001:0db8:0000:0000:0000:0000:0000:0001",
		"fe80::1%eth0", "fe80::1%25", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "64:ff9b::192.0.2.1", "::",
		"", "host.example", "/tmp/mosquitto.sock"}
	pairs := 0
	for _, ul := range lens {
		for _, il := range lens {
			for _, addr := range addrs {
				u, id := str(ul, 'a'), str(il, 0xf0)
				ids := id + u // one object, as cgo makes them
				c := Client{Address: addr, ClientID: ids[:len(id)], Username: ids[len(id):], IDs: ids, HasUsername: true}
				ip := c.ip()
				k.mu.Lock()
				k.recent.Clear() // each form on its own: no earlier form's key answers for it
				k.mu.Unlock()
				// With the username throttled, after a success.
				idsLen := len(c.ClientID) + len(c.Username)
				k.succeededFrom(ownTracked(idsLen, c.Username), ip, c.Address, ownTracked(idsLen, c.ClientID), now)
				// What is queued for Redis names the sources as known()
				// looks them up in a loaded set.
				ws := k.queue.Take()
				require.Len(t, ws, map[bool]int{true: 2, false: 1}[ip.IsValid()], "address %q", addr)
				for _, w := range ws {
					require.Equal(t, keys.Tracking(c.Username), w.username)
					if w.kind == sourceIPAddr {
						require.Equal(t, sourceIP(ip), w.source(), "address %q", addr)
					} else {
						require.Equal(t, sourceClientID(c.ClientID), w.source(), "client ID %d bytes", il)
					}
				}
				k.queue.Release()
				queued := k.queue.Len()
				byIP, byID := k.known(c.Username, ip, c.ClientID, now)
				require.Equal(t, ip.IsValid(), byIP, "username %d bytes, client ID %d, address %q: IP source", ul, il, addr)
				require.True(t, byID, "username %d bytes, client ID %d, address %q: client-ID source", ul, il, addr)
				k.succeededFrom(ownTracked(idsLen, c.Username), ip, c.Address, ownTracked(idsLen, c.ClientID), now.Add(time.Second))
				require.Equal(t, queued, k.queue.Len(), "username %d bytes, client ID %d, address %q: written again", ul, il, addr)
				pairs++
			}
		}
	}
	t.Logf("%d (username, client ID, address) tried", pairs)
}
