package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"net/netip"
	"time"

	"github.com/redis/go-redis/v9"
)

// LoadKeysResult is the JSON line of `loadgen loadkeys`.
type LoadKeysResult struct {
	Cmd     string  `json:"cmd"`
	Label   string  `json:"label"`
	Keys    int     `json:"keys"`
	Ranges  int     `json:"ranges"`
	Seconds float64 `json:"seconds"`
	DBSize  int64   `json:"dbsize"`
}

// cmdLoadKeys writes n block keys with a pipeline: ranges of them
// guard:block:cidr:<network> (IPv4 in 10.0.0.0/8, one in ten IPv6 in
// 2001:db8::/32), the rest split between ip (100.64.0.0/10, one in ten
// IPv6), clientid and username keys. Half carry a TTL of a week, half none.
// Nothing matches a client from 127.0.0.0/8 or the benchmark's client IDs
// and usernames.
func cmdLoadKeys(args []string) error {
	fs := flag.NewFlagSet("loadkeys", flag.ContinueOnError)
	addr := fs.String("redis", "", "Redis host:port")
	label := fs.String("label", "", "label, echoed")
	prefix := fs.String("key-prefix", "guard:", "the plugin's key_prefix")
	n := fs.Int("n", 100000, "block keys in all")
	ranges := fs.Int("ranges", 10000, "of which guard:block:cidr:... ranges")
	flush := fs.Bool("flush", false, "FLUSHDB first")
	batch := fs.Int("batch", 2000, "commands per pipeline")
	timeout := fs.Duration("timeout", 120*time.Second, "bound on the whole load")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *n < 0 || *n > 20_000_000 || *ranges < 0 || *ranges > *n || *batch < 1 {
		return fmt.Errorf("need -redis, 0 <= -ranges <= -n <= 20000000, -batch >= 1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	rdb := redis.NewClient(&redis.Options{Addr: *addr, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second})
	defer rdb.Close()
	t0 := time.Now()
	if *flush {
		if err := rdb.FlushDB(ctx).Err(); err != nil {
			return fmt.Errorf("FLUSHDB: %w", err)
		}
	}
	keys := blockKeys(*prefix, *n, *ranges)
	pipe := rdb.Pipeline()
	for i, k := range keys {
		ttl := time.Duration(0)
		if i%2 == 1 {
			ttl = 7 * 24 * time.Hour
		}
		pipe.Set(ctx, k, "bench: loadkeys", ttl)
		if pipe.Len() >= *batch || i == len(keys)-1 {
			if _, err := pipe.Exec(ctx); err != nil {
				return fmt.Errorf("pipeline: %w", err)
			}
		}
	}
	size, err := rdb.DBSize(ctx).Result()
	if err != nil {
		return err
	}
	return emit(LoadKeysResult{Cmd: "loadkeys", Label: *label, Keys: len(keys), Ranges: *ranges, Seconds: round3(time.Since(t0).Seconds()), DBSize: size})
}

// blockKeys returns n distinct key names, ranges of them ranges.
func blockKeys(prefix string, n, ranges int) []string {
	keys := make([]string, 0, n)
	seen := make(map[netip.Prefix]bool, ranges)
	// Ranges: IPv4 /16 to /32 inside 10.0.0.0/8; every tenth IPv6 /32 to
	// /128 inside 2001:db8::/32. Distinct after masking.
	for i := uint64(0); len(keys) < ranges && i < 100*uint64(ranges)+1000; i++ {
		var p netip.Prefix
		h := mix(i)
		if i%10 == 9 {
			var a [16]byte
			binary.BigEndian.PutUint32(a[:4], 0x20010db8)
			binary.BigEndian.PutUint64(a[4:12], h)
			binary.BigEndian.PutUint32(a[12:], uint32(h>>17))
			p = netip.PrefixFrom(netip.AddrFrom16(a), 32+int(h%97))
		} else {
			var a [4]byte
			binary.BigEndian.PutUint32(a[:], 0x0a000000|uint32(h)&0x00ffffff)
			p = netip.PrefixFrom(netip.AddrFrom4(a), 16+int(h>>40)%17)
		}
		p = p.Masked()
		if seen[p] {
			continue
		}
		seen[p] = true
		keys = append(keys, prefix+"block:cidr:"+p.String())
	}
	// The rest: ip (half), clientid and username (a quarter each).
	for i := 0; len(keys) < n; i++ {
		switch i % 4 {
		case 0, 2:
			j := uint32(i / 2)
			if i%20 == 0 {
				var a [16]byte
				binary.BigEndian.PutUint32(a[:4], 0x20010db8)
				binary.BigEndian.PutUint32(a[12:], j)
				a[4] = 0xff
				keys = append(keys, prefix+"block:ip:"+netip.AddrFrom16(a).String())
			} else {
				var a [4]byte
				binary.BigEndian.PutUint32(a[:], 0x64400000+j%(1<<22)) // 100.64.0.0/10
				if j >= 1<<22 {
					a[0] = 198 // 198.18.0.0/15 and beyond, for very large n
				}
				keys = append(keys, prefix+"block:ip:"+netip.AddrFrom4(a).String())
			}
		case 1:
			keys = append(keys, fmt.Sprintf("%sblock:clientid:blocked-client-%d", prefix, i))
		case 3:
			keys = append(keys, fmt.Sprintf("%sblock:username:blocked-user-%d", prefix, i))
		}
	}
	return dedupe(keys)
}

// dedupe drops repeats (only possible for very large n), keeping order.
func dedupe(keys []string) []string {
	seen := make(map[string]bool, len(keys))
	out := keys[:0]
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

// mix is splitmix64: well-spread bits from a counter.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
