//go:build !race

package conflicts

const raceEnabled = false
