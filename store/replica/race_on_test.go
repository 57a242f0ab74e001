//go:build race

package replica

// raceEnabled: the race detector is on. It makes the reload's chunks several
// times slower, so a wait for the P they hold is not what it is without.
const raceEnabled = true
