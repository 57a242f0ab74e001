package batchq

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// After a flood, a consumer that drains as the workers do (Take until a
// short batch, then wait for Ready) leaves the queue holding at most one
// batch's buffer: the flood's backing array is given back at once, not
// kept (with the references of its last batch) until the next event.
func TestAttackI12FloodGivenBackWithoutAnotherTake(t *testing.T) {
	const max, batch = 65536, 4096
	q := New[*[64]byte](max, batch)
	for i := 0; i < max-100; i++ { // a last batch short of full
		q.Put(new([64]byte))
	}
	for {
		b := q.Take()
		if len(b) < batch {
			break
		}
	}
	// The consumer now parks on Ready: nothing else runs Take.
	assert.LessOrEqual(t, cap(q.items), batch, "queue's buffer after the flood")
	assert.LessOrEqual(t, cap(q.spare), batch, "kept batch buffer after the flood (the flood's array)")
}
