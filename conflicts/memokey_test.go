package conflicts

import (
	"encoding/binary"
	"hash/maphash"
)

// The tests' keys of (client ID, principal) pairs: the worker keys its
// memo by the client ID alone (idKey); the equivalence tests' old model and
// the table's tests still name pairs.

// memo is the memoKey of clientID and principal; with principal "", the
// client ID's own, idKey's.
func (t *Tracker) memo(clientID, principal string) memoKey {
	if principal == "" {
		return t.idKey(clientID)
	}
	// a's low bit set: no key is one of ids's marks (a 0: empty, tombstone).
	return memoKey{memoSum(t.seeds[0], clientID, principal) | 1, memoSum(t.seeds[1], clientID, principal)}
}

// memoSum hashes the pair, the client ID with its length so that no pair
// runs into another.
func memoSum(seed maphash.Seed, clientID, principal string) uint64 {
	var h maphash.Hash
	h.SetSeed(seed)
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(clientID)))
	_, _ = h.Write(n[:])
	_, _ = h.WriteString(clientID)
	_, _ = h.WriteString(principal)
	return h.Sum64()
}
