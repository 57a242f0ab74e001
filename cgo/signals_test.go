package main

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
)

// Handlers installed as the broker installs them (signal(), no
// SA_ONSTACK) get SA_ONSTACK, and nothing else of them changes; with all
// five there the work is done, and a second call is one atomic load.
func TestSignalsOnstack(t *testing.T) {
	signalsPlain()
	defer signalsRestore()
	before := map[int]int{}
	for _, s := range brokerSignals() {
		f := signalFlags(s)
		before[int(s)] = f
		assert.Zero(t, f&saOnstack(), "signal %d: installed without SA_ONSTACK, as the broker does", s)
	}
	assert.True(t, signalsOnstack(), "all five handlers are there")
	for _, s := range brokerSignals() {
		f := signalFlags(s)
		assert.NotZero(t, f&saOnstack(), "signal %d: SA_ONSTACK added", s)
		assert.Equal(t, before[int(s)], f&^saOnstack(), "signal %d: its other flags kept", s)
	}
	assert.True(t, signalsOnstack())
}

// An idle broker makes no callback for a while: the goroutine watchSignals
// starts at plugin_init gives the handlers SA_ONSTACK within a few of its
// periods of their installation, without any callback.
func TestWatchSignalsWithoutCallbacks(t *testing.T) {
	signalsPlain()
	defer signalsRestore()
	signalsOnce = sync.Once{}
	defer func() { signalsOnce = sync.Once{} }()
	watchSignals()
	assert.Eventually(t, func() bool {
		for _, s := range brokerSignals() {
			if signalFlags(s)&saOnstack() == 0 {
				return false
			}
		}
		return true
	}, 20*signalsEvery, signalsEvery/2, "the handlers got SA_ONSTACK from the watcher")
}
