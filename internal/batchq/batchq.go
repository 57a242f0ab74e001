package batchq

import (
	"sync"
	"time"
)

// Queue holds at most Max items of type T, in order.
type Queue[T any] struct {
	max   int
	batch int
	wake  chan struct{}

	mu    sync.Mutex
	items []T
	spare []T // the last batch handed out, reused once the consumer asks again
}

// keepMax is the most items' worth of buffer a queue keeps, in each of its
// two buffers (the one it fills, the batch handed out), once its load is
// light: a burst's larger arrays go when a batch of at most keepMax follows
// it (Take, Release), or when the consumer, idle, calls Trim. Under a steady
// load of larger batches they are kept and reused: dropping them after each
// batch cost the tracker an 800-item array per 100 ms at 8 000 CONNECTs/s
// (1.2 k more instructions per cache-hit CONNECT on the broker's other
// threads, callgrind). Without any of it a burst of connections left two
// batches' worth held while the broker sat idle (the conflict tracker's
// queue: 112 bytes an event, 4096 a batch, up to 920 KB).
const keepMax = 256

// New returns a queue of at most max items handed out in batches of at
// most batch. It panics unless 0 < batch <= max.
func New[T any](max, batch int) *Queue[T] {
	if batch <= 0 || batch > max {
		panic("batchq: need 0 < batch <= max")
	}
	return &Queue[T]{max: max, batch: batch, wake: make(chan struct{}, 1)}
}

// Put appends v and reports whether it did: a full queue drops v. It never
// blocks, and it signals the consumer only when the queue was empty.
func (q *Queue[T]) Put(v T) bool {
	q.mu.Lock()
	if len(q.items) >= q.max {
		q.mu.Unlock()
		return false
	}
	if n := len(q.items); n == cap(q.items) && n+n/4+256 > q.max {
		// append would grow past the bound (by a quarter and more, or
		// double while small): grow to the bound itself.
		grown := make([]T, n, q.max)
		copy(grown, q.items)
		q.items = grown
	}
	q.items = append(q.items, v)
	first := len(q.items) == 1
	q.mu.Unlock()
	if first {
		select {
		case q.wake <- struct{}{}:
		default: // a signal is pending already
		}
	}
	return true
}

// Ready is the consumer's signal: something was put into an empty queue.
// A signal may find the queue empty (taken meanwhile); Take then returns
// nothing.
func (q *Queue[T]) Ready() <-chan struct{} { return q.wake }

// Take returns up to the batch size of the oldest items, in order. The
// slice is the caller's until its next Take, which reuses it. Once Take
// returns a short batch (fewer than the batch size) the queue was emptied,
// and the next Put signals Ready; after a full batch the caller must Take
// again without waiting for a signal.
func (q *Queue[T]) Take() []T {
	q.mu.Lock()
	defer q.mu.Unlock()
	buf := q.spare
	clear(buf) // the consumer is done with them: no references kept for the GC
	if cap(buf) > q.batch {
		buf = nil // a burst's buffer is not kept past it
	}
	if len(q.items) <= q.batch {
		out := q.items
		if cap(out) > q.batch {
			// The last of a burst: hand it out in the batch buffer and let
			// the burst's array go now, not at the next Take (which only
			// comes with the next item, however long that takes).
			out = append(buf[:0], q.items...)
			q.items = nil
		} else if cap(buf) > keepMax && len(buf) <= keepMax {
			q.items = nil // drained after a light batch: the burst's buffer goes
		} else {
			q.items = buf[:0]
		}
		q.spare = out
		return out
	}
	out := append(buf[:0], q.items[:q.batch]...)
	n := copy(q.items, q.items[q.batch:])
	clear(q.items[n:])
	q.items = q.items[:n]
	q.spare = out
	return out
}

// Release tells the queue the consumer is done with the last batch Take
// returned, and waits for Ready: its references go now, not at the next
// Take, and its buffer too when it is larger than keepMax and the batch was
// not (the load is light: a burst is over). A consumer calls it after
// handling a short batch.
func (q *Queue[T]) Release() {
	q.mu.Lock()
	defer q.mu.Unlock()
	clear(q.spare)
	if cap(q.spare) > keepMax && len(q.spare) <= keepMax {
		q.spare = nil
	}
}

// Trim drops both buffers beyond keepMax, whatever the last batch, when
// nothing waits: a consumer calls it when idle (between batches, on a
// ticker), so that the buffers of a burst that ended with a large batch go
// too.
func (q *Queue[T]) Trim() {
	q.mu.Lock()
	defer q.mu.Unlock()
	clear(q.spare)
	if cap(q.spare) > keepMax {
		q.spare = nil
	}
	if len(q.items) == 0 && cap(q.items) > keepMax {
		q.items = nil
	}
}

// Caps returns the capacities of the two buffers, in items: the one being
// filled and the last batch handed out (tests of the consumers' Trim).
func (q *Queue[T]) Caps() (filling, handedOut int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return cap(q.items), cap(q.spare)
}

// Len returns how many items wait.
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// Linger waits d, or until stop is closed (it then reports false), without
// listening to the queue: the items Put meanwhile wake nobody.
func Linger(d time.Duration, stop <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}
