package main

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The seen set agrees with a map under random adds and deletes, and its
// size follows its live entries, not its history: a million connections
// coming and going, at most 8 at a time, leave it at its minimum of 1024
// slots (before: it doubled with every half-full of tombstones).
func TestSeenSet(t *testing.T) {
	model := map[uintptr]bool{}
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200000; i++ {
		p := uintptr(0x10000 + 16*r.IntN(5000))
		if r.IntN(2) == 0 {
			require.True(t, seenAdd(p))
			model[p] = true
		} else {
			seenDel(p)
			delete(model, p)
		}
		if i%997 == 0 {
			q := uintptr(0x10000 + 16*r.IntN(5000))
			require.Equal(t, model[q], seenHas(q), "pointer %#x", q)
		}
	}
	live, _ := seenSize()
	require.Equal(t, len(model), live)
	for p := range model {
		seenDel(p)
	}

	for i := 0; i < 1_000_000; i++ {
		p := uintptr(0x100000 + 16*i)
		seenAdd(p)
		if i >= 8 {
			seenDel(p - 8*16)
		}
	}
	live, slots := seenSize()
	assert.Equal(t, 8, live)
	assert.Equal(t, 1024, slots, "slots follow the live entries, not the churn")
}
