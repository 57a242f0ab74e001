package main

import (
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Issue 12: a CONNECT's password goes into the buffer the last one used,
// even after collections (a sync.Pool dropped it at each, and the next
// CONNECT allocated); the buffer is cleared when released, and one grown
// past passwordMaxKept is not kept.
func TestPasswordBufReused(t *testing.T) {
	pb := copyPassword(cChars("hunter2"))
	require.Equal(t, "hunter2", string(pb.b))
	b := pb.b
	pb.release()
	assert.Equal(t, make([]byte, 7), b, "cleared")
	runtime.GC()
	runtime.GC()
	again := copyPassword(cChars("pw"))
	assert.Same(t, pb, again, "the spare buffer, after two collections")
	assert.Equal(t, "pw", string(again.b))
	long := copyPassword(cChars(strings.Repeat("x", passwordMaxKept+1)))
	again.release()
	long.release()
	assert.Same(t, again, copyPassword(cChars("pw")), "a buffer over passwordMaxKept is dropped")
	if !raceEnabled {
		pw := cChars("device-secret")
		assert.Zero(t, testing.AllocsPerRun(100, func() { copyPassword(pw).release() }))
		// MQTT's longest password (65 535 bytes) too: a stranger's long
		// passwords allocated 60 KB each and kept the heap's release away.
		longest := cChars(strings.Repeat("z", 65535))
		copyPassword(longest).release() // the spare grown once
		assert.Zero(t, testing.AllocsPerRun(100, func() { copyPassword(longest).release() }))
	}
}

// The registry finds each instance by its handle, forgets a removed one,
// and is read while instances come and go (go test -race).
func TestRegistry(t *testing.T) {
	r := &registry{}
	assert.Nil(t, r.get(1))
	a, b := &instance{}, &instance{}
	ha, hb := r.add(a), r.add(b)
	assert.NotEqual(t, ha, hb)
	assert.Same(t, a, r.get(ha))
	assert.Same(t, b, r.get(hb))
	assert.Same(t, a, r.remove(ha))
	assert.Nil(t, r.get(ha))
	assert.Nil(t, r.remove(ha))
	assert.Same(t, b, r.get(hb))
	c := &instance{}
	hc := r.add(c)
	var seen []*instance // each visits every instance: guardTick ticks them all
	r.each(func(in *instance) { seen = append(seen, in) })
	assert.Equal(t, []*instance{b, c}, seen)
	r.remove(hc)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				assert.Same(t, b, r.get(hb))
			}
		}
	}()
	for i := 0; i < 100; i++ {
		r.remove(r.add(&instance{}))
	}
	close(stop)
	wg.Wait()
	if !raceEnabled {
		assert.Zero(t, testing.AllocsPerRun(100, func() { r.get(hb) }))
	}
}
