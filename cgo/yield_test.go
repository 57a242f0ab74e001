package main

import (
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// A CONNECT yields the broker thread's P to Go's scheduler at most once
// every yieldEvery (cgo/yield.go), and CONNECTs that keep coming do yield:
// 150 ms of cache-hit CONNECTs yield 31 times at most, and at least 10.
// Not with one P (setYield): the yield would cost more than it saves.
// e2e's TestYieldKeepsSysmonAsleep measures what it is for.
func TestBasicAuthYieldsAtMostEveryYieldEvery(t *testing.T) {
	testenv.Need(t, "redis-server", "mosquitto_passwd")
	if noYield {
		t.Skip("MOSQUITTO_GUARD_NO_YIELD is set")
	}
	defer setYield()
	yieldOn.Store(true) // as guardInit decides with GOMAXPROCS >= 2
	redis := testenv.StartRedis(t)
	dir := t.TempDir()
	ab := newAuthBench(t, redis, dir, passwdHash(t, dir), 1, "off")
	c := ab.client(0, "yield-w00")
	calls := 0
	gosched = func() { calls++ }
	defer func() { gosched = runtimeGosched }()
	const d = 150 * time.Millisecond
	connects := 0
	for start := time.Now(); time.Since(start) < d; connects++ {
		ab.connect(t, c)
		ab.disconnect(c)
	}
	t.Logf("%d CONNECTs, %d yields in %s", connects, calls, d)
	assert.LessOrEqual(t, calls, int(d/yieldEvery)+1)
	assert.GreaterOrEqual(t, calls, 10)
}

func TestYieldOnlyWithTwoPs(t *testing.T) {
	if noYield {
		t.Skip("MOSQUITTO_GUARD_NO_YIELD is set")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	defer setYield()
	runtime.GOMAXPROCS(1)
	setYield()
	assert.False(t, yieldOn.Load(), "GOMAXPROCS 1")
	runtime.GOMAXPROCS(2)
	setYield()
	assert.True(t, yieldOn.Load(), "GOMAXPROCS 2")
}
