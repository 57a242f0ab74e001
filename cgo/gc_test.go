package main

import (
	"runtime/debug"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
)

// The plugin runs Go's collector at GOGC gcPercent unless the operator set
// GOGC; GOMEMLIMIT is left to the runtime. Once per process.
func TestLowerGCPercent(t *testing.T) {
	was := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(was); gcOnce = sync.Once{} })
	env := func(gogc string) func(string) string {
		return func(k string) string {
			switch k {
			case "GOGC":
				return gogc
			case "GOMEMLIMIT":
				return "64MiB"
			}
			return ""
		}
	}
	for _, c := range []struct {
		name string
		env  string
		want int
	}{
		{"no GOGC", "", gcPercent},
		{"the operator's GOGC=100", "100", 100},
		{"the operator's GOGC=200", "200", 200},
	} {
		gcOnce = sync.Once{}
		debug.SetGCPercent(100)
		if c.env != "" {
			n, err := strconv.Atoi(c.env)
			assert.NoError(t, err)
			debug.SetGCPercent(n) // what the runtime read from the environment
		}
		assert.Equal(t, c.want, lowerGCPercent(env(c.env)), c.name)
		assert.Equal(t, c.want, gcPercentNow(), c.name)
	}
	// Once per process: a second instance changes nothing.
	debug.SetGCPercent(100)
	assert.Equal(t, 100, lowerGCPercent(env("")))
}
