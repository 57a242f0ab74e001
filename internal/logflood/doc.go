// Package logflood keeps a flood of refusals from flooding the log.
//
// One client that keeps reconnecting after it is refused (an already banned
// IP hammering the broker) would otherwise write one log line per attempt:
// 179 MB of log in 70 seconds has been seen. A Limiter decides, per key
// (source, rule), which of those lines to write, and counts the others so
// that one summary line stands for them:
//
//	if lim.Allow("ip=203.0.113.7", `rule="guard:block:ip:203.0.113.7"`, time.Now()) {
//		log("event=refused ...")
//	}
//	// every second, from a goroutine:
//	for _, s := range lim.Flush(time.Now()) {
//		log(fmt.Sprintf("event=refusals_suppressed %s %s suppressed=%d period=%s", s.Source, s.Rule, s.Suppressed, s.Period))
//	}
//
// # Windows
//
// A key's first line opens a window of Period (default 10 s) for it. The
// first Burst lines of the window (default 10) are logged, the first always;
// the others are only counted. When the window has ended, the next Flush
// returns one Summary of the lines suppressed in it (none when there were
// none) and forgets the key; the key's next line opens a new window and is
// logged. So a source that is refused once an hour gets every refusal
// logged, and one refused a thousand times a second gets Burst lines and
// one summary every Period.
//
// # Bounds
//
//   - Lines: per key and window, at most Burst lines and one summary. A
//     key's windows do not overlap and each lasts at least Period, so over
//     any time T a key writes at most (Burst+1)·(T/Period+1) lines.
//   - Keys: at most Max (default 10 000) are held at once. A key that finds
//     the limiter full is counted in one overflow bucket, limited like a
//     single key and summarised with Overflow set (plugin's line:
//     "event=refusals_suppressed source=other suppressed=N"); its lines lose the first-line-always guarantee. So
//     over any time T the limiter writes at most
//     (Max+1)·(Burst+1)·(T/Period+1) lines, however many sources there are.
//   - Memory: a held key costs about 130 bytes (its map slot and state; the
//     tests hold it under 200) plus a copy of its source and rule, which the
//     caller keeps short: for the default 10 000 keys, under 2 MB plus the
//     strings (1.7 MB in all with an IP and a rule key name as in the
//     example). A key is held from its first line to the first Flush
//     after its window ends, so Flush must be called regularly: it is what
//     frees the room of idle keys. When a flood is over (no key held), the
//     map's memory is given back.
//   - Time: Allow is O(1) (a map lookup under a mutex) and does not allocate
//     for a key already held; Flush is O(keys held).
//
// Times should come from time.Now(): the limiter measures windows with
// their monotonic clock readings, so a wall clock step neither ends nor
// stretches a window. With times carrying no monotonic reading (as in
// tests), a wall clock stepped back keeps windows open longer.
package logflood
