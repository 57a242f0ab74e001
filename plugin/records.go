package plugin

// A connection's record (liveConn) is recycled when it ends, so that a
// CONNECT of a cached client allocates nothing. Records are compared by
// pointer (g.conns.get(lc.handle) == lc) and read without g.mu by the scans
// (kickMatching, recheckConns), so a record goes back into use only once
// nothing can still hold it:
//   - it left g.conns (releaseLocked is called where it is deleted);
//   - it is not in g.pending (a deferred record, with conflict tracking, is
//     never recycled: the garbage collector takes it);
//   - no record's displaced (g.displaced) names it (the one that can is the
//     newest record of its client ID, byID: cleared at release);
//   - no scan holds record pointers outside g.mu (g.recs.scans): records
//     ended during a scan wait in limbo until the last scan is over.
//
// At most recMax records are kept (free and limbo together); more that end
// are left to the garbage collector.

// recMax bounds the records kept for reuse: 1024 records of 80 bytes
// (TestLiveConnBytes), 80 KiB, and the two lists' 16 KiB of pointers
// (allocated at the first release, TestRecordsBound). A
// broker whose connections come and go at a few thousand a second reuses
// them; a mass disconnect keeps no more than this.
const recMax = 1024

// records are the ended records kept for reuse; g.mu guards them.
type records struct {
	free  []*liveConn // zeroed, referenced by nothing: ready for admit
	limbo []*liveConn // ended while a scan ran: a scan may still read them
	scans int         // scans holding record pointers outside g.mu
	// pause, when set (tests), is called by a scan while it holds record
	// pointers outside g.mu, where a DISCONNECT and a CONNECT can run.
	pause func()
}

// newRecLocked returns a zeroed record, a kept one if any; g.mu held.
func (g *Guard) newRecLocked() *liveConn {
	if n := len(g.recs.free); n > 0 {
		lc := g.recs.free[n-1]
		g.recs.free[n-1] = nil
		g.recs.free = g.recs.free[:n-1]
		return lc
	}
	return new(liveConn)
}

// releaseLocked is told that lc left g.conns for good; g.mu held. It keeps
// lc for reuse when nothing can hold it any more (see above). lc's fields
// stay as they are until no scan can read them.
func (g *Guard) releaseLocked(lc *liveConn) {
	g.releaseHolderLocked(lc, g.byID.get(lc.clientID))
}

// releaseHolderLocked is releaseLocked where the caller has h, lc's client
// ID's entry in g.byID (nil: none), at hand.
func (g *Guard) releaseHolderLocked(lc *liveConn, h *liveConn) {
	if h != nil {
		if h == lc {
			return // still the newest of its client ID (cannot be): never reused
		}
		if g.displacedBy(h) == lc {
			g.setDisplaced(h, nil) // it cannot name its client ID again: it ended
		}
	}
	if lc.pending && g.tracker != nil {
		return // in g.pending until confirmDue passes it
	}
	if len(g.recs.free)+len(g.recs.limbo) >= recMax {
		return
	}
	if g.recs.free == nil { // once: the lists never grow past recMax
		g.recs.free = make([]*liveConn, 0, recMax)
		g.recs.limbo = make([]*liveConn, 0, recMax)
	}
	if g.recs.scans > 0 {
		g.recs.limbo = append(g.recs.limbo, lc)
		return
	}
	*lc = liveConn{} // its strings are not kept alive
	g.recs.free = append(g.recs.free, lc)
}

// scanStartLocked raises the count of scans that read records outside g.mu
// (g.mu held); scanDone, called without g.mu, lowers it and, after the last
// one, makes the records ended meanwhile reusable. ban: the scan kicks for
// a list entry, and a CONNECT that overlaps it reads the lists again
// (g.scans, banRaced); the other scans (a password file's changed users,
// the known-source rewrite) spare it that.
func (g *Guard) scanStartLocked(ban bool) {
	g.recs.scans++
	if ban {
		g.scans.Add(1) // after the replica has the ban the scan is for (banRaced)
	}
}

func (g *Guard) scanDone() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.recs.scans--; g.recs.scans > 0 {
		return
	}
	for i, lc := range g.recs.limbo {
		*lc = liveConn{}
		g.recs.free = append(g.recs.free, lc)
		g.recs.limbo[i] = nil
	}
	g.recs.limbo = g.recs.limbo[:0]
}

// scanPause calls the test hook, if any; g.mu not held.
func (g *Guard) scanPause() {
	if g.recs.pause != nil {
		g.recs.pause()
	}
}
