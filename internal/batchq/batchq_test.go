package batchq

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func signalled(q *Queue[int]) bool {
	select {
	case <-q.Ready():
		return true
	default:
		return false
	}
}

// The consumer is signalled once per batch: only the Put into an empty
// queue signals, however many follow.
func TestPutSignalsOncePerBatch(t *testing.T) {
	q := New[int](100, 10)
	for i := 0; i < 50; i++ {
		require.True(t, q.Put(i))
	}
	assert.True(t, signalled(q))
	assert.False(t, signalled(q), "49 more Puts into a non-empty queue signalled")
	for i := 0; i < 5; i++ {
		got := q.Take()
		assert.Len(t, got, 10)
		assert.Equal(t, i*10, got[0], "in order")
		assert.Equal(t, i*10+9, got[9])
	}
	assert.Empty(t, q.Take())
	require.True(t, q.Put(50))
	assert.True(t, signalled(q), "a Put into the emptied queue signals")
	assert.Equal(t, []int{50}, q.Take())
}

// A full queue drops, and says so; Take makes room.
func TestBounded(t *testing.T) {
	q := New[int](4, 2)
	for i := 0; i < 4; i++ {
		require.True(t, q.Put(i))
	}
	assert.False(t, q.Put(4))
	assert.Equal(t, 4, q.Len())
	assert.Equal(t, []int{0, 1}, q.Take())
	assert.True(t, q.Put(5))
	assert.Equal(t, []int{2, 3}, q.Take())
	assert.Equal(t, []int{5}, q.Take())
}

// After a burst the queue keeps no more than one batch's buffer, and the
// buffers it keeps hold no references.
func TestBurstMemoryGivenBack(t *testing.T) {
	q := New[*int](100000, 100)
	for i := 0; i < 100000; i++ {
		v := i
		q.Put(&v)
	}
	for len(q.Take()) == 100 {
	}
	q.Take()
	assert.LessOrEqual(t, cap(q.items), 100)
	assert.LessOrEqual(t, cap(q.spare), 100)
	for _, p := range q.spare[:cap(q.spare)] {
		assert.Nil(t, p)
	}
}

// Concurrent producers and one consumer: nothing lost, nothing twice,
// each producer's items in its order.
func TestConcurrent(t *testing.T) {
	const producers, each = 4, 20000
	q := New[[2]int](producers*each, 256)
	stop := make(chan struct{})
	got := make(chan [][2]int)
	go func() {
		var all [][2]int
		for {
			select {
			case <-q.Ready():
			case <-stop:
				for b := q.Take(); len(b) > 0; b = q.Take() {
					all = append(all, b...)
				}
				got <- all
				return
			}
			for {
				b := q.Take()
				all = append(all, b...)
				if len(b) < 256 {
					break
				}
			}
		}
	}()
	var wg sync.WaitGroup
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if !q.Put([2]int{p, i}) {
					t.Error("dropped below the bound")
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	all := <-got
	require.Len(t, all, producers*each)
	next := make([]int, producers)
	for _, v := range all {
		require.Equal(t, next[v[0]], v[1], "producer %d out of order", v[0])
		next[v[0]]++
	}
}

func TestLinger(t *testing.T) {
	start := time.Now()
	assert.True(t, Linger(20*time.Millisecond, nil))
	assert.GreaterOrEqual(t, time.Since(start), 20*time.Millisecond)
	stop := make(chan struct{})
	close(stop)
	assert.False(t, Linger(time.Hour, stop))
}

// Issue 12: once its load is light (a batch of at most keepMax) or its
// consumer idle (Trim), the queue keeps at most keepMax items' worth in
// each buffer, whatever the bursts before. Before: a burst of connections
// (3000 events, a batch short of full) left two arrays of 3000 slots held
// until the next burst.
func TestDrainedQueueKeepsLittle(t *testing.T) {
	q := New[*int](65536, 4096)
	burst := func() {
		for i := 0; i < 3000; i++ {
			v := i
			q.Put(&v)
		}
		require.Len(t, q.Take(), 3000)
		q.Release()
	}
	for round := 0; round < 3; round++ {
		burst()
		for i := 0; i < 2; i++ { // light load: two small batches
			q.Put(nil)
			q.Take()
			q.Release()
		}
		assert.LessOrEqual(t, cap(q.items), keepMax, "round %d: the buffer being filled", round)
		assert.LessOrEqual(t, cap(q.spare), keepMax, "round %d: the batch handed out", round)
	}
	// A burst, then nothing: the idle consumer's Trim.
	burst()
	q.Trim()
	assert.LessOrEqual(t, cap(q.items), keepMax, "trimmed: the buffer being filled")
	assert.LessOrEqual(t, cap(q.spare), keepMax, "trimmed: the batch handed out")
	// A trickle reuses its buffers: no allocation once they are there.
	v := 1
	assert.Zero(t, testing.AllocsPerRun(100, func() {
		for i := 0; i < 10; i++ {
			q.Put(&v)
		}
		q.Take()
		q.Release()
	}))
	for _, p := range q.spare[:cap(q.spare)] {
		assert.Nil(t, p, "released: no references kept")
	}
}

// A steady load of batches larger than keepMax (the tracker at 8 000
// CONNECTs/s: some 800 events per 100 ms) reuses its buffers: nothing is
// allocated per batch. Dropping them after every short batch allocated
// them again each time.
func TestSteadyLoadReusesBuffers(t *testing.T) {
	q := New[*int](65536, 4096)
	v := 1
	round := func() {
		for i := 0; i < 800; i++ {
			q.Put(&v)
		}
		q.Take()
		q.Release()
	}
	round()
	round()
	assert.Zero(t, testing.AllocsPerRun(50, round))
}
