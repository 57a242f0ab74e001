package store

import (
	"context"
	"strconv"
	"strings"
)

// clusterSlots is the number of a Redis Cluster's hash slots.
const clusterSlots = 16384

// slotKeyCount is how many keys slotKeys gives: one in each sixteenth of
// the slots.
const slotKeyCount = 16

// crcTable is CRC16 (XMODEM, polynomial 0x1021) one byte at a time.
var crcTable = func() (t [256]uint16) {
	for i := range t {
		crc := uint16(i) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
		t[i] = crc
	}
	return t
}()

// keySlot is key's hash slot as a Redis Cluster computes it: CRC16
// (XMODEM) of the key, or of its hash tag (the bytes between the first
// '{' and the '}' after it, when there are any), modulo 16384.
func keySlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for k := 0; k < len(key); k++ {
		crc = crc<<8 ^ crcTable[byte(crc>>8)^key[k]]
	}
	return int(crc) % clusterSlots
}

// slotKeys are at most parts keys under prefix whose slots fall one in each
// parts-th of the slot space (parts divides 16384): with 16, a node that
// does not serve all 16384 slots answers at least one of them MOVED unless
// the other shards hold only slots between them (the start check's quick
// test); with 16384, one key in every slot the plugin's keys can take (the
// whole test). A prefix that holds a hash tag ("{...}") puts every key in
// its slot, as it does the plugin's own keys: then one key. The search is
// bounded: some 3.4 tries per part fill 16 parts, 10.3 fill 16384 (the
// coupon collector's n·H(n)); 24 per part are allowed.
func slotKeys(prefix string, parts int) []string {
	return slotKeysWithin(context.Background(), prefix, parts)
}

// slotKeysWithin is slotKeys, cut short (nil) when ctx ends: the 16 384
// keys take some 17 ms to find, which must not run past the start check's
// bound (atk61).
func slotKeysWithin(ctx context.Context, prefix string, parts int) []string {
	in := make([]bool, parts)
	var out []string
	for n := 0; n < 24*parts && len(out) < parts; n++ {
		if n%1024 == 1023 && ctx.Err() != nil {
			return nil
		}
		k := prefix + "settings-check:{" + strconv.Itoa(n) + "}"
		if b := keySlot(k) * parts / clusterSlots; !in[b] {
			in[b] = true
			out = append(out, k)
		}
	}
	return out
}
