package main

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
)

func TestPasswdLine(t *testing.T) {
	line, err := passwdLine("u00001", "pw", []byte("0123456789ab"))
	if err != nil {
		t.Fatal(err)
	}
	user, enc, _ := strings.Cut(line, ":")
	if user != "u00001" || !strings.HasPrefix(enc, "$7$101$MDEyMzQ1Njc4OWFi$") || len(strings.Split(enc, "$")[4]) != 88 {
		t.Fatalf("unexpected line %q", line)
	}
	ok, err := hashes.Verifier{}.Verify(enc, []byte("pw"))
	if err != nil || !ok {
		t.Fatalf("backends/hashes: ok=%v err=%v", ok, err)
	}
	if ok, _ := (hashes.Verifier{}).Verify(enc, []byte("px")); ok {
		t.Fatal("wrong password accepted")
	}
	// Against the real mosquitto_passwd, when installed.
	if err := checkAgainstTool(); err != nil {
		t.Fatal(err)
	}
}

func TestBlockKeys(t *testing.T) {
	keys := blockKeys("guard:", 20000, 2000)
	if len(keys) != 20000 {
		t.Fatalf("%d keys", len(keys))
	}
	seen := map[string]bool{}
	ranges := 0
	loopback := netip.MustParsePrefix("127.0.0.0/8")
	for _, k := range keys {
		if seen[k] {
			t.Fatalf("duplicate %s", k)
		}
		seen[k] = true
		switch {
		case strings.HasPrefix(k, "guard:block:cidr:"):
			ranges++
			p, err := netip.ParsePrefix(strings.TrimPrefix(k, "guard:block:cidr:"))
			if err != nil || p != p.Masked() || p.String() != strings.TrimPrefix(k, "guard:block:cidr:") {
				t.Fatalf("range key %s is not canonical", k)
			}
			if p.Overlaps(loopback) {
				t.Fatalf("range key %s matches loopback clients", k)
			}
		case strings.HasPrefix(k, "guard:block:ip:"):
			a, err := netip.ParseAddr(strings.TrimPrefix(k, "guard:block:ip:"))
			if err != nil || a.String() != strings.TrimPrefix(k, "guard:block:ip:") || loopback.Contains(a) {
				t.Fatalf("bad ip key %s", k)
			}
		case strings.HasPrefix(k, "guard:block:clientid:blocked-client-"),
			strings.HasPrefix(k, "guard:block:username:blocked-user-"):
		default:
			t.Fatalf("unexpected key %s", k)
		}
	}
	if ranges != 2000 {
		t.Fatalf("%d ranges", ranges)
	}
}

func TestConnectPacket(t *testing.T) {
	u, p := "bench", "pw"
	got := connectPacket("id", &u, &p)
	want := []byte{0x10, 25, 0, 4, 'M', 'Q', 'T', 'T', 4, 0xc2, 0, 60, 0, 2, 'i', 'd', 0, 5, 'b', 'e', 'n', 'c', 'h', 0, 2, 'p', 'w'}
	if string(got) != string(want) {
		t.Fatalf("got % x\nwant % x", got, want)
	}
	long := connectPacket(strings.Repeat("x", 200), nil, nil)
	if long[1] != 0x80|(212%128) || long[2] != 1 || len(long) != 3+212 {
		t.Fatalf("long packet header % x, length %d", long[:3], len(long))
	}
}

func TestAddrPoolAndPercentile(t *testing.T) {
	pool, err := newAddrPool("127.2.0.0/16")
	if err != nil {
		t.Fatal(err)
	}
	if a := pool.tcpAddr(0).IP.String(); a != "127.2.0.1" {
		t.Fatalf("first address %s", a)
	}
	if a := pool.tcpAddr(65534).IP.String(); a != "127.2.0.1" {
		t.Fatalf("wrap-around address %s", a)
	}
	lat := []time.Duration{}
	for i := 1; i <= 100; i++ {
		lat = append(lat, time.Duration(101-i)*time.Millisecond)
	}
	p50, p99, pmax := latencyStats(lat)
	if *p50 != 50 || *p99 != 99 || *pmax != 100 {
		t.Fatalf("p50 %v p99 %v max %v", *p50, *p99, *pmax)
	}
}
