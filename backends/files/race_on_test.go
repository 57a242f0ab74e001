//go:build race

package files

// raceEnabled: the race detector is on; it slows a parse several times.
const raceEnabled = true
