package conflicts

import "time"

// forgettable reports whether e is as good as no entry at now: nothing
// listed, no connection owed its end, its marks older than they count.
func (e *idMemo) forgettable(now int64) bool {
	return e.cur == 0 && e.seenSeq == 0 && !e.quietLive(now) &&
		!young(e.seenAt, now, seenRefresh)
}

// sweep forgets what no longer counts: the quiet marks older than
// quietFor, which a connect ignores anyway (quietLive), and the entries of client IDs
// with nothing listed, no connection owed its end and no mark that counts
// (a later connect finds what it would have found in them: no mark; a
// later disconnect has another number). Worker goroutine only, every
// sweepEvery; one pass over the entries, those of listed client IDs
// included (the quiet marks' sweep before passed over at most seenMemoMax;
// the table is off the Go heap and holds no pointer, so the collector
// neither scans nor counts it, where current's strings were scanned at
// every cycle). The table keeps its mapping when entries go, so ids is
// built again once it holds under a quarter of its peak (shrink): a fleet
// gone leaves a quarter of its slots at most.
func (t *Tracker) sweep(now int64) {
	for id, p := range t.ids.All() {
		switch e := t.unpack(id, p); {
		case e.forgettable(now): // nothing listed: not in owed
			t.ids.Del(id)
		case e.quietAt != 0 && !e.quietLive(now):
			p.quietAt = 0
			t.ids.Put(id, p) // there already: no rebuild under the loop
		}
	}
	for pk, m := range t.others {
		if m.seq == 0 && !young(m.at, now, seenRefresh) {
			delete(t.others, pk)
		}
	}
	if len(t.others) == 0 {
		t.others = nil // its tables go
	}
	t.shrink()
}

// forgetMarks makes every quiet and seen mark made up to now (unix ms)
// count for nothing (RedisLost; a renewal that found this broker's lease
// lapsed): what they say Redis holds, a client ID read quiet, a
// principal's use recorded, it may hold no more. The marks themselves are
// kept: a quiet mark also tells readAt where a relist's or an end's check
// starts (atk43: dropping them made the relist that follows a notice
// start at a quiet reconnect, and miss a hit-and-run made before it). A
// mark counts only when made in a second after lostAt's (fresh): one of
// the notice's own second is taken as lost, one read more. No pass over
// the memo.
func (t *Tracker) forgetMarks(now int64) {
	t.lostAt = max(t.lostAt, stampOf(now))
}

// fresh reports whether mark at (a quiet or seen mark) is younger than d
// at now and was made after the last forgetMarks. A mark ahead of now
// (made before the clock went back) is not: lostAt may be ahead too, and
// is brought back to now (clockBack), so that the marks made since count
// (atk44: after a clock an hour ahead at a loss notice was set right, no
// mark counted for an hour, 5 Redis commands at every reconnect).
func (t *Tracker) fresh(at stamp, now int64, d time.Duration) bool {
	return at > t.lostAt && int64(at) <= secondOf(now) && young(at, now, d)
}

// clockBack brings lostAt back to now (unix ms) when the clock went back
// past it (fresh), and every mark made after that second back to it: the
// marks made before the loss stay spent when the clock passes them again
// (atk45: lowering lostAt alone revived them, and a reconnect after the
// loss skipped its read and its record). A quiet mark moved earlier only
// widens the check readAt starts (a repeat, never a miss). One pass over
// the memo, only when the clock went back past a loss notice. Worker
// goroutine, before a batch.
func (t *Tracker) clockBack(now int64) {
	s := stampOf(now)
	if s >= t.lostAt {
		return
	}
	t.lostAt = s
	for id, p := range t.ids.All() {
		if p.quietAt > s || p.seenAt > s {
			p.quietAt, p.seenAt = min(p.quietAt, s), min(p.seenAt, s)
			t.ids.Put(id, p) // there already: no rebuild under the loop
		}
	}
	for pk, m := range t.others {
		if m.at > s {
			m.at = s
			t.others[pk] = m
		}
	}
}

// pruneUnlisted drops the entries of client IDs with nothing listed here
// (seenMemoMax of them reached: a flood of new client IDs). Before, the
// seen and the quiet memos were each dropped whole at seenMemoMax,
// connections listed or not; the listed ones' are kept now, so more ends
// are recorded, never fewer.
func (t *Tracker) pruneUnlisted() {
	for id, p := range t.ids.All() {
		if t.unpack(id, p).cur == 0 { // nothing listed: not in owed
			t.ids.Del(id)
		}
	}
	t.shrink()
}

// shrink builds ids again when it holds under a quarter of its peak: a
// mapping sized for what it holds (none when empty), the old one unmapped.
func (t *Tracker) shrink() {
	if t.peak < memoShrinkMin || t.ids.Len() >= t.peak/4 {
		return
	}
	t.ids.Rehash(t.ids.Len())
	t.peak = t.ids.Len()
}
