package store

import (
	"strconv"
	"strings"
)

// clusterSlots is the number of a Redis Cluster's hash slots.
const clusterSlots = 16384

// slotKeyCount is how many keys slotKeys gives: one in each sixteenth of
// the slots.
const slotKeyCount = 16

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
		crc ^= uint16(key[k]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % clusterSlots
}

// slotKeyTries bounds slotKeys's search: some 55 tries fill the sixteen
// sixteenths; a prefix with a hash tag of its own fills one, at the first.
const slotKeyTries = 4096

// slotKeys are at most slotKeyCount keys under prefix whose slots fall one
// in each sixteenth of the slot space: a node that does not serve all 16384
// slots answers at least one of them MOVED unless the other shards hold
// only slots between them (the start check's one-node test). A prefix that
// holds a hash tag ("{...}") puts every key in its slot, as it does the
// plugin's own keys: then one key.
func slotKeys(prefix string) []string {
	var in [slotKeyCount]string
	var out []string
	for n := 0; n < slotKeyTries && len(out) < slotKeyCount; n++ {
		k := prefix + "settings-check:{" + strconv.Itoa(n) + "}"
		if b := keySlot(k) * slotKeyCount / clusterSlots; in[b] == "" {
			in[b] = k
			out = append(out, k)
		}
	}
	return out
}
