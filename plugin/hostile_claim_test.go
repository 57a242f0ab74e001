package plugin

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// TestHostileClaimBadHashLinesPastTheirBound: README: an unusable stored
// hash is "logged as an error, at most once per 10 minutes per user". A
// migration leaves 5 000 users with hashes of a format the plugin cannot
// use, and a client (or the fleet itself) cycles through them twice within
// a minute. Measured on 2f1a7be: 10 000 lines, not 5 000; the remembered
// usernames (badHashMax, 4 096) are forgotten all at once when full, so
// past them every attempt writes a line again, without end.
func TestHostileClaimBadHashLinesPastTheirBound(t *testing.T) {
	var b badHashLines
	now := time.Unix(1_800_000_000, 0)
	lines := 0
	for pass := 0; pass < 2; pass++ {
		for i := 0; i < 5000; i++ {
			if b.due(fmt.Sprint("device-", i), now.Add(time.Duration(pass)*30*time.Second)) {
				lines++
			}
		}
	}
	if lines > 5000 {
		t.Fatalf("%d lines for 5000 users in a minute, want at most one per user", lines)
	}
	if len(b.last) > badHashMax {
		t.Fatalf("%d usernames remembered, bound %d", len(b.last), badHashMax)
	}
	// Ten minutes on, the lines are due again (up to the bound).
	later := 0
	for i := 0; i < 5000; i++ {
		if b.due(fmt.Sprint("device-", i), now.Add(11*time.Minute)) {
			later++
		}
	}
	if later != badHashMax {
		t.Fatalf("%d lines 11 minutes later, want %d", later, badHashMax)
	}
}

// The episodes on record (knownSources.episodes) are bounded: episodesMax
// entries of 16 bytes, made-up usernames included; a full record takes a new
// episode only once old ones have expired, expired ones are swept, and with
// none on record a CONNECT reads one atomic counter. A long username's
// episode is found by its Tracking form, as its throttle key names it.
func TestEpisodesBounded(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	k := newKnownSources(knownDeps{max: 100, window: time.Hour, failWindow: time.Minute,
		spawn: func(string, func()) {}, stop: stop})
	now := time.Now()
	assert.False(t, k.episode("bob", now))
	for i := 0; i < episodesMax; i++ {
		k.noteEpisode(fmt.Sprint("made-up-", i), now)
	}
	assert.Equal(t, int32(episodesMax), k.nEpisodes.Load())
	k.noteEpisode("bob", now.Add(time.Second))
	assert.False(t, k.episode("bob", now.Add(time.Second)), "full: a new episode waits for old ones to expire")
	assert.True(t, k.episode("made-up-7", now.Add(time.Second)))

	later := now.Add(k.episodeFor() + time.Second)
	assert.False(t, k.episode("made-up-7", later), "expired")
	k.noteEpisode("bob", later)
	assert.True(t, k.episode("bob", later), "the expired ones went to make room")
	assert.Equal(t, int32(1), k.nEpisodes.Load())

	long := strings.Repeat("x", 300)
	k.noteEpisode(keys.Tracking(long), later)
	assert.True(t, k.episode(long, later), "a long username by its Tracking form")
	k.forgetLoaded(later.Add(k.episodeFor() + time.Second))
	assert.Zero(t, k.nEpisodes.Load(), "swept: a CONNECT reads one counter again")
	if !raceEnabled {
		assert.Zero(t, testing.AllocsPerRun(100, func() { k.episode("alice", later) }))
	}
}
