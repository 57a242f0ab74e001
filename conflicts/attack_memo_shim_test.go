package conflicts

// sweepMemos is the worker's periodic sweep (sweep on 00fadc0, sweepQuiet before).
func sweepMemos(t *Tracker, now int64) { t.sweep(now) }

var attackDebug = false

// memoEntries counts what the memos keep of client IDs.
func memoEntries(t *Tracker) int { return t.ids.Len() + len(t.others) }
