package plugin

import (
	"fmt"
	"strconv"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// relistRoomWait bounds how long a relist waits for the tracker's queue to
// take its next connections (Redis slow or hung): past it the relist stops,
// and starts over after relistGap (relistLoop).
var relistRoomWait = 10 * time.Second // a test shortens it

// relistNow asks relistLoop to record this broker's connections live in
// Redis again (never blocks; nothing without conflict tracking). Called
// when they may have gone from Redis, or some were never written there:
// the tracker found this broker's lease lapsed (another broker may have
// reaped it while it was paused past broker_lease, or Redis lost its
// keys), Redis did not take a batch of its writes, or its full queue
// dropped a connect (conflicts.Deps.Relist); or the replica found Redis
// flushed or lost its session (Redis restarted, perhaps from an older
// snapshot).
func (g *Guard) relistNow() {
	if g.relistReq == nil {
		return
	}
	select {
	case g.relistReq <- struct{}{}:
	default:
	}
}

// relistLoop runs relistConns at each relistNow, once Redis answers (a
// relist Redis does not take asks for another, as do other writes of the
// worker's that fail). Asks that come while one runs, or within relistGap
// after it, make one more after that; so does an incomplete relist.
func (g *Guard) relistLoop() {
	failing := false // the last relist was not complete
	for {
		select {
		case <-g.stop:
			return
		case <-g.relistReq:
		}
		for !g.health.up() {
			select {
			case <-g.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
		if !g.relistSafely(failing) {
			failing = true
			g.relistNow() // again after the gap
		} else {
			failing = false
		}
		// At most one relist per relistGap: a Redis whose sessions break
		// over and over (each break asks for one) costs it at most the
		// held connections' writes once a second.
		select {
		case <-g.stop:
			return
		case <-time.After(relistGap):
		}
	}
}

// relistGap is the least time between two relists (relistLoop).
const relistGap = time.Second

// relistSafely is relistConns, a panic in it logged; it reports whether
// the relist was complete. Only the first of a series of incomplete ones
// is logged (failing: the one before was incomplete).
func (g *Guard) relistSafely(failing bool) (complete bool) {
	defer func() {
		if p := recover(); p != nil {
			g.log(LevelError, fmt.Sprintf("mosquitto-guard: internal error in the relist of live connections: %v", p))
			complete = false
		}
	}()
	n, complete := g.relistConns()
	switch {
	case !complete && !failing:
		g.log(LevelWarning, "mosquitto-guard: recording this broker's live connections in redis again stopped after "+strconv.Itoa(n)+
			": the client ID tracking queue stayed full (redis slow or not answering); it starts over every second or more until it is done")
	case complete && n > 0:
		g.log(LevelNotice, "mosquitto-guard: recording this broker's "+strconv.Itoa(n)+
			" live connections in redis again: its lease had lapsed, or redis lost them or did not take them")
	}
	return complete
}

// relistConns hands every connection this broker holds and the tracker
// recorded (admitted, not deferred, not an offline session) to
// conflicts.Tracker.Relisted, then tells the tracker it is done
// (RelistDone: the worker removes this broker's other live entries), and
// reports how many, and whether all were taken. Each is handed under
// g.mu, while it is still in g.conns: its DISCONNECT removes it under g.mu
// before queuing its end, so the relist is queued before the end, and the
// worker never writes live a connection that ended. g.mu is held for at most kickScan entries of the table, and
// hashes (keys.Tracking) at most about confirmHashMax bytes of client IDs
// and usernames (as confirmDue: the last one counted may pass it by its
// two, 128 KB); released between, while the tracker's queue makes room for
// the next (at most relistRoomWait).
func (g *Guard) relistConns() (n int, complete bool) {
	if g.tracker == nil {
		return 0, true
	}
	if !g.waitRelistRoom() {
		return 0, false
	}
	// Every connection numbered up to maxSeq is in g.conns by the walk,
	// or ended, or (admitted this very moment) has its connect queued,
	// which writes its entry again.
	maxSeq := g.tracker.LastSeq()
	visited, hashed, taken := 0, 0, true
	g.walkConns(nil, func(lc *liveConn) bool {
		// A record the walk still holds may have left the table since
		// (ended): only one that is there is a connection held.
		if taken && !lc.offline && !lc.pending && lc.seq != 0 && g.conns.get(lc.handle) == lc {
			if len(lc.clientID) > keys.TrackingMax {
				hashed += len(lc.clientID)
			}
			if lc.certID == "" && lc.hasUsername && int(lc.userLen) > keys.TrackingMax {
				hashed += int(lc.userLen)
			}
			if taken = g.tracker.Relisted(ownTracked(len(lc.clientID)+int(lc.userLen), lc.clientID), g.connOf(lc)); !taken {
				return true // the queue is full: stop at once
			}
			n++
		}
		visited++
		return visited%kickScan == 0 || hashed >= confirmHashMax
	}, func() bool {
		hashed = 0
		taken = taken && g.waitRelistRoom()
		return taken
	})
	if !taken {
		return n, false
	}
	// The rest of this broker's entries in Redis, numbered up to maxSeq,
	// are ghosts (conflicts.Tracker.RelistDone).
	return n, g.tracker.RelistDone(maxSeq)
}

// waitRelistRoom waits until the tracker's queue takes a hold's worth of
// relists and the events of the broker thread besides (at most
// relistRoomWait; false past it, or when the guard stops); g.mu not held.
func (g *Guard) waitRelistRoom() bool {
	deadline := time.Now().Add(relistRoomWait)
	for g.tracker.Room() < 4*kickScan {
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-g.stop:
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
	return true
}
