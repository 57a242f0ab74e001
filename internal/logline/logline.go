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
func (l *Line) StrN(key, v string, n int) *Line {
	l.key(key)
	if len(v) <= n {
		l.b.WriteString(strconv.Quote(v))
		return l
	}
	cut := max(n, 0)
	for cut > 0 && !utf8.RuneStart(v[cut]) {
		cut--
	}
	l.b.WriteString(strconv.Quote(v[:cut]))
	return l.Int(key+"_bytes", int64(len(v)))
}

// Cut is Str for a value of which only shown, its first bytes (at most
// logval.Max, cut at a character boundary), is at hand, n bytes in all:
// shown quoted, then KEY_bytes=N when it is cut. With n 0 (nothing at
// hand), Cut is Str(key, v). An empty shown of n bytes is quoted as it is
// ("" and KEY_bytes=N, as Str has a value whose first logval.Max bytes hold
// no character's start): taken for nothing at hand, it quoted v, a long
// client ID's hash, as a client whose ID is that very string reads.
func (l *Line) Cut(key, shown string, n int, v string) *Line {
	if n <= 0 {
		return l.Str(key, v)
	}
	shown = shown[:min(len(shown), logval.Max)]
	l.key(key)
	l.b.WriteString(strconv.Quote(shown))
	if n > len(shown) {
		return l.Int(key+"_bytes", int64(n))
	}
	return l
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
			return strconv.Quote(v)
		}
	}
	return v
}
