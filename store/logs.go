package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
)

// LogEvery is the most often go-redis's own lines reach Options.Log: one
// line per LogEvery, then one line with the count of those left out.
const LogEvery = 10 * time.Second

// router receives go-redis's log lines. redis.SetLogger is process-wide,
// and with per_listener_settings true one broker runs several plugin
// instances, each with its own Store: every Store with a Log registers it
// here, and each line goes to one of them (the oldest still open), since
// they all write to the same broker log. Without any registered, lines are
// dropped: the plugin reports Redis's state itself (the health probe).
var router = &logRouter{every: LogEvery}

var installRouter sync.Once

// routeLogs makes go-redis's lines go to log (rate-limited) until the
// returned function is called.
func routeLogs(log func(msg string)) (stop func()) {
	installRouter.Do(func() { redis.SetLogger(router) })
	return router.add(log)
}

// logRouter passes at most one line per every to the oldest sink; the lines
// it holds back are counted, and the count written (with the latest of
// them) when the period ends.
type logRouter struct {
	every time.Duration

	mu     sync.Mutex
	sinks  []*sink // oldest first
	last   time.Time
	held   int    // lines held back since last
	latest string // the latest of them
	timer  *time.Timer
}

type sink struct{ log func(string) }

func (r *logRouter) add(log func(string)) (stop func()) {
	s := &sink{log}
	r.mu.Lock()
	r.sinks = append(r.sinks, s)
	r.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			for i, x := range r.sinks {
				if x == s {
					r.sinks = append(r.sinks[:i:i], r.sinks[i+1:]...)
					break
				}
			}
		})
	}
}

// Printf implements go-redis's logger interface.
func (r *logRouter) Printf(_ context.Context, format string, v ...any) {
	// One line of printable text: go-redis names keys and channels, which
	// may hold a client's bytes (atk61).
	msg := controlEscaped(strings.TrimPrefix(oneLineText(fmt.Sprintf(format, v...)), "redis: "))
	r.mu.Lock()
	if len(r.sinks) == 0 {
		r.mu.Unlock()
		return
	}
	now := time.Now()
	if r.timer == nil && now.Sub(r.last) >= r.every {
		r.last = now
		log := r.sinks[0].log
		r.mu.Unlock()
		log(msg)
		return
	}
	r.held++
	r.latest = msg
	if r.timer == nil {
		r.timer = time.AfterFunc(r.every-now.Sub(r.last), r.flush)
	}
	r.mu.Unlock()
}

// flush writes the count of the lines held back in the period just ended.
func (r *logRouter) flush() {
	r.mu.Lock()
	r.timer = nil
	n, latest := r.held, r.latest
	r.held, r.latest = 0, ""
	if n == 0 || len(r.sinks) == 0 {
		r.mu.Unlock()
		return
	}
	r.last = time.Now()
	log := r.sinks[0].log
	r.mu.Unlock()
	line := latest
	if n > 1 {
		line = fmt.Sprintf("%s (and %d more such lines in the last %s)", latest, n-1, r.every)
	}
	log(line)
}

// controlEscaped writes what is not printable text in s as Go escapes,
// as logval.Go does within its quotes: control bytes and DEL (\xNN), the
// line and paragraph separators, NEL and the other C1 controls (\uNNNN),
// invalid UTF-8 (\xNN), and a backslash doubled, so that an escape in the
// line is always the plugin's (atk63: U+2028, U+0085 and the C1 CSI
// U+009B were kept raw).
func controlEscaped(s string) string {
	if !strings.ContainsFunc(s, func(r rune) bool { return r == '\\' || r == utf8.RuneError || (r != ' ' && !unicode.IsPrint(r)) }) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case r == '\\':
			b.WriteString(`\\`)
		case r < utf8.RuneSelf && (r < 0x20 || r == 0x7f):
			fmt.Fprintf(&b, "\\x%02x", r)
		case r != ' ' && !unicode.IsPrint(r):
			q := strconv.QuoteRune(r) // '\u2028'
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}
