package logline

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
)

// Prefix starts every line the plugin writes.
const Prefix = "mosquitto-guard: "

// Line builds one event line. The zero Line is not usable: start with Event.
type Line struct{ b strings.Builder }

// Event starts a line of the given event kind (a plain token).
func Event(name string) *Line {
	l := &Line{}
	l.b.Grow(160)
	l.b.WriteString(Prefix)
	l.b.WriteString("event=")
	l.b.WriteString(token(name))
	return l
}

// Tok adds a value the plugin decided: written bare when it is a plain
// token, quoted otherwise; never cut.
func (l *Line) Tok(key, v string) *Line {
	l.key(key)
	l.b.WriteString(token(v))
	return l
}

// Str adds a value a client (or an operator's reason) chose: always quoted,
// cut at logval.Max bytes; a cut value is followed by KEY_bytes=N.
func (l *Line) Str(key, v string) *Line { return l.StrN(key, v, logval.Max) }

// StrN is Str cut at n bytes.
func (l *Line) StrN(key, v string, n int) *Line { return l.strOf(key, v, len(v), n) }

// Kept is what Str needs of v to write it as it writes v: its first
// logval.Max+1 bytes (the byte past the cut tells where a character
// starts). Str(key, v) and StrKept(key, Kept(v), len(v)) write the same.
// A value kept for a line written later need not be kept whole.
func Kept(v string) string { return v[:min(len(v), logval.Max+1)] }

// StrKept is Str of a value of size bytes of which only kept, its start
// (Kept), is at hand.
func (l *Line) StrKept(key, kept string, size int) *Line {
	return l.strOf(key, kept, size, logval.Max)
}

// strOf writes a value of size bytes cut at n bytes; v is the value, or
// its start when that is at least n+1 bytes.
func (l *Line) strOf(key, v string, size, n int) *Line {
	l.key(key)
	if size <= n {
		l.b.WriteString(logval.Go(v))
		return l
	}
	cut := min(max(n, 0), len(v))
	for cut > 0 && cut < len(v) && !utf8.RuneStart(v[cut]) {
		cut--
	}
	l.b.WriteString(logval.Go(v[:cut]))
	return l.Int(key+"_bytes", int64(size))
}

// Int adds a whole number.
func (l *Line) Int(key string, v int64) *Line {
	l.key(key)
	l.b.WriteString(strconv.FormatInt(v, 10))
	return l
}

// Dur adds a duration, rounded to the second (e.g. 1m0s), bare.
func (l *Line) Dur(key string, d time.Duration) *Line {
	return l.Tok(key, d.Round(time.Second).String())
}

// Expires adds when an entry ends, from its remaining lifetime ttl (< 0:
// none): expires=RFC3339 and expires_in=DURATION, or expires=never.
func (l *Line) Expires(now time.Time, ttl time.Duration) *Line {
	if ttl < 0 {
		return l.Tok("expires", "never")
	}
	return l.Tok("expires", now.Add(ttl).UTC().Format(time.RFC3339)).Dur("expires_in", ttl)
}

// Raw adds pairs already rendered by another Line's rules (Pairs).
func (l *Line) Raw(pairs string) *Line {
	if pairs != "" {
		l.b.WriteByte(' ')
		l.b.WriteString(pairs)
	}
	return l
}

// String returns the line.
func (l *Line) String() string { return l.b.String() }

func (l *Line) key(k string) {
	l.b.WriteByte(' ')
	l.b.WriteString(k)
	l.b.WriteByte('=')
}

// Pairs renders key=value pairs without the prefix and event, for a caller
// that composes part of a line elsewhere (plugin.Decision.Detail).
func Pairs() *Line { return &Line{} }

// Body returns what a Pairs line holds, without its leading space.
func (l *Line) Body() string { return strings.TrimPrefix(l.b.String(), " ") }

// token returns v bare when it is a plain token, else quoted.
func token(v string) string {
	if v == "" {
		return `""`
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c <= ' ' || c >= 0x7f || c == '"' || c == '=' || c == '\\' {
			return logval.Go(v)
		}
	}
	return v
}
