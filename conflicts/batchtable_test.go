package conflicts

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// batchTable against a Go map over many batches: sizes from 0 to
// batchMax, keys sequential (connection numbers, whose multiplicative
// hash must still spread) and random (idKey's), a key put twice, and the
// generation's wrap, after which no slot of an earlier batch may count.
func TestBatchTableAsMap(t *testing.T) {
	var b batchTable
	rng := rand.New(rand.NewPCG(3, 4))
	sizes := []int{0, 1, 7, 8, 9, 100, trimAbove + 1, batchMax}
	for round := 0; round < 200; round++ {
		if round == 100 {
			b.gen = math.MaxUint32 - 1 // the next resets wrap
		}
		n := sizes[rng.IntN(len(sizes))]
		b.reset(n)
		want := map[uint64]int32{}
		base := rng.Uint64N(1 << 40)
		for i := 0; i < n; i++ {
			k := base + uint64(i) // a batch's connection numbers
			if rng.IntN(2) == 0 {
				k = rng.Uint64() | 1
			}
			if len(want) > 0 && rng.IntN(8) == 0 {
				for k = range want { // a key again: replaced
					break
				}
			}
			if _, ok := want[k]; !ok && len(want) == n {
				continue
			}
			b.put(k, int32(i))
			want[k] = int32(i)
		}
		for k, v := range want {
			got, ok := b.get(k)
			require.True(t, ok, "round %d: key %d lost", round, k)
			require.Equal(t, v, got)
		}
		for i := 0; i < 64; i++ {
			k := rng.Uint64()
			if _, ok := want[k]; !ok {
				_, ok := b.get(k)
				require.False(t, ok, "round %d: a key of no batch, or of an earlier one", round)
			}
		}
		require.LessOrEqual(t, 2*len(want), len(b.slots), "half full at most")
	}
	require.NotZero(t, b.gen, "the wrap skips 0, every slot's empty mark")
}

// A batch of batchMax pairs, each folded: the tables grow once, and the
// worker's scratch is trimmed after it (trimScratch) like its arrays.
func TestPairBatchGrowsAndTrims(t *testing.T) {
	tr, clk, _ := tracker(t, newMemStore(), testOptions())
	var batch []event
	for i := 0; i < batchMax/2; i++ {
		c := tr.NewConn("alice", "192.0.2.1", clk.now())
		batch = append(batch, event{kind: evConnect, clientID: "d", conn: c}, event{kind: evDisconnect, clientID: "d", conn: c})
	}
	ids, mate, mark := tr.pairBatch(batch)
	require.Len(t, ids, batchMax)
	for i := 0; i < len(batch); i += 2 {
		require.EqualValues(t, i+1, mate[i], "connect %d's end", i)
		require.EqualValues(t, i, mate[i+1])
		require.NotZero(t, mark[i]&markAlone, "no other connect of d between")
	}
	require.True(t, tr.sc.bySeq.big())
	tr.trimScratch()
	require.Nil(t, tr.sc.bySeq.slots)
	require.Nil(t, tr.sc.ids)
}

// The generation's wrap: the slots of the batch that had generation 1
// must not count again when it comes round.
func TestBatchTableWrap(t *testing.T) {
	var b batchTable
	b.reset(4)
	require.EqualValues(t, 1, b.gen)
	for k := uint64(1); k <= 4; k++ {
		b.put(k, int32(k))
	}
	b.gen = math.MaxUint32
	b.reset(4)
	require.EqualValues(t, 1, b.gen)
	for k := uint64(1); k <= 4; k++ {
		_, ok := b.get(k)
		require.False(t, ok, "key %d of 2^32 batches ago", k)
	}
}
