//go:build race

package conflicts

// raceEnabled: the race detector is on; it changes what the heap holds.
const raceEnabled = true
