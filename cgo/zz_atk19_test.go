package main

import (
	"fmt"
	"hash/maphash"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// atk19: the address getIP gives with a slot's strings is always the
// address text of this CONNECT parsed (keys.NormalizeIP), never the one
// a slot kept for another: the same client ID and username from another
// address (a device that roams, or one whose ID an attacker claims from
// elsewhere) in turn, addresses whose text differs but parses alike
// (mapped, zones), a forced 64-bit hash collision whose slot holds the
// same client ID and username with another address and its IP, the same
// bytes split otherwise between username and address, and over internMax.
func TestAtk19SlotIPIsThisConnectsAddress(t *testing.T) {
	cs := &connectStrings{seed: maphash.MakeSeed()}
	check := func(id, user, addr, what string) {
		t.Helper()
		want, _ := keys.NormalizeIP(addr)
		_, a, _, _, ip := cs.getIP([]byte(id), []byte(addr), []byte(user), true)
		require.Equal(t, addr, a, what)
		require.Equal(t, want, ip, "%s: %q from %q", what, id, addr)
	}
	long := strings.Repeat("L", internMax)
	addrs := []string{"127.0.0.1", "127.0.0.2", "::ffff:127.0.0.2", "::ffff:127.0.0.1", "::1", "fe80::1%eth0", "fe80::1%eth1",
		"fe80::2%eth0", "", "/run/mosquitto.sock", "127.0.0.01", "2001:db8::1", "2001:DB8::1", "10.0.0.1"}
	for round := 0; round < 3; round++ {
		for _, id := range []string{"dev", long} {
			for i, addr := range addrs {
				check(id, "alice", addr, fmt.Sprintf("round %d, %d", round, i))
				check(id, "alice", addr, fmt.Sprintf("round %d, %d again", round, i))
			}
			for i := len(addrs) - 1; i >= 0; i-- {
				check(id, "alice", addrs[i], fmt.Sprintf("round %d, back %d", round, i))
			}
		}
	}
	// Forced collision: the slot under this CONNECT's hash holds the same
	// client ID and username, same lengths, from another address with
	// that address's IP.
	for _, p := range [][2]string{{"127.0.0.9", "127.0.0.2"}, {"127.0.0.2", "::ffff:127.0.0.3"}, {"10.0.0.1", ""}, {"", "10.0.0.1"}, {"fe80::1%a", "fe80::2%a"}} {
		sum := maphash.Bytes(cs.seed, []byte("dev"+"alice"+p[1]))
		old, _ := keys.NormalizeIP(p[0])
		cs.slots[sum%internSlots] = internSlot{s: "devalice", addr: p[0], ip: old, sum: sum, idLen: 3, hasUsername: true}
		check("dev", "alice", p[1], "collision "+p[0]+" -> "+p[1])
	}
	// The same bytes split otherwise between username and address: same
	// hash, same client ID length.
	check("a", "b1", "27.0.0.1", "split 1")
	check("a", "b", "127.0.0.1", "split 2")
	check("a", "b1", "27.0.0.1", "split 1 again")
	// Many devices through the slots, each from an address of its own
	// that changes every round: each gets its own IP back.
	for round := 0; round < 3; round++ {
		for d := 0; d < 3000; d++ {
			addr := fmt.Sprintf("10.%d.%d.%d", round, d/250, d%250)
			want := netip.MustParseAddr(addr)
			_, _, _, _, ip := cs.getIP([]byte(fmt.Sprintf("d%d", d)), []byte(addr), []byte("u"), true)
			if ip != want {
				t.Fatalf("device %d from %s got %s", d, addr, ip)
			}
		}
	}
}
