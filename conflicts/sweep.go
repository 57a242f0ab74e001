package conflicts

// sweepQuiet forgets the quiet marks older than quietFor, which isQuiet
// ignores anyway, by building the map again: a Go map keeps its table when
// entries are deleted, so this is what gives their memory back. Without it
// every client ID that connected once kept its mark (about 80 bytes) until
// seenMemoMax cleared them all; now a fleet of long-lived connections keeps
// none after quietFor. Worker goroutine only, every quietFor; it costs one
// pass over at most seenMemoMax marks.
//
// The seen memos are not swept: a live connection's memo tells its
// disconnect to record its end in Redis (Left), which the principal's last
// use, and so the conflict window, is reckoned from.
func (t *Tracker) sweepQuiet(now int64) {
	kept := 0
	for _, m := range t.quiet {
		if now-m.at < quietFor.Milliseconds() {
			kept++
		}
	}
	if kept == len(t.quiet) {
		return
	}
	q := make(map[memoKey]quietMark, kept)
	for k, m := range t.quiet {
		if now-m.at < quietFor.Milliseconds() {
			q[k] = m
		}
	}
	t.quiet = q
}
