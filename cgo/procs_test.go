package main

import (
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
)

// A broker given one CPU runs the plugin's Go with two Ps, unless the
// operator set GOMAXPROCS; more CPUs are left as Go found them.
func TestRaiseProcs(t *testing.T) {
	was := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(was); procsOnce = sync.Once{} })
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "GOMAXPROCS" {
				return v
			}
			return ""
		}
	}
	for _, c := range []struct {
		name  string
		start int
		env   string
		want  int
	}{
		{"one CPU", 1, "", 2},
		{"one CPU, the operator's GOMAXPROCS", 1, "1", 1},
		{"four CPUs", 4, "", 4},
	} {
		procsOnce = sync.Once{}
		runtime.GOMAXPROCS(c.start)
		assert.Equal(t, c.want, raiseProcs(env(c.env)), c.name)
		assert.Equal(t, c.want, runtime.GOMAXPROCS(0), c.name)
	}
	// Once per process: a second instance changes nothing.
	runtime.GOMAXPROCS(1)
	assert.Equal(t, 1, raiseProcs(env("")))
}
