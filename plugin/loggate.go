package plugin

import (
	"sync/atomic"
	"time"
)

// logGate lets a line through at most once per interval: for lines a
// fault can repeat at every event (a refused publish, a WRONGTYPE key,
// known sources refused, a cheap user hash). It reads the monotonic clock,
// so a wall clock set back does not silence it.
type logGate struct{ at atomic.Int64 } // ns since gateBase of the last line let through; 0 none

var gateBase = time.Now()

// allow reports whether a line may be logged now, and if so takes the
// interval's turn.
func (l *logGate) allow(every time.Duration) bool { return l.allowAt(time.Now(), every) }

// allowAt is allow at now, for a caller with a clock of its own (Guard.now):
// a time from time.Now is read on its monotonic clock.
func (l *logGate) allowAt(now time.Time, every time.Duration) bool {
	at := int64(now.Sub(gateBase)) | 1 // never 0
	last := l.at.Load()
	if last != 0 && at-last < int64(every) {
		return false
	}
	return l.at.CompareAndSwap(last, at)
}

// idle says whether no line went through l within every before now: its
// turn is free again, and a table of gates may drop it.
func (l *logGate) idle(now time.Time, every time.Duration) bool {
	last := l.at.Load()
	return last == 0 || int64(now.Sub(gateBase))-last >= int64(every)
}
