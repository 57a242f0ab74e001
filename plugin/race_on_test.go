//go:build race

package plugin

// raceEnabled: the race detector is on. sync.Pool then drops items at
// random on purpose, so what it saves cannot be counted.
const raceEnabled = true
