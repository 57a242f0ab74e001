//go:build race

package main

// raceEnabled: the race detector is on; it allocates, and sync.Pool drops
// items at random on purpose, so allocations cannot be counted.
const raceEnabled = true
