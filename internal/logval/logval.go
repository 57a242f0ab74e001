package logval

import (
	"strconv"
	"unicode/utf8"
)

// Max is how many bytes of a value a log line quotes.
const Max = 200

// Quote quotes s for a log line, cut at Max bytes.
func Quote(s string) string { return QuoteN(s, Max) }

// QuoteN quotes s, cut past n bytes (at a character boundary) with a note
// of its full size: "abc"...(20000 bytes).
func QuoteN(s string, n int) string {
	if len(s) <= n {
		return strconv.Quote(s)
	}
	cut := max(n, 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "...(" + strconv.Itoa(len(s)) + " bytes)"
}

// Fit quotes s so that the result takes at most width bytes: the quoted
// longest prefix of whole characters that fits in width-3, then "...".
// For table cells, whose width is fixed.
func Fit(s string, width int) string {
	if q := strconv.Quote(s); len(q) <= width {
		return q
	}
	q := `""`
	for i := 0; i < len(s); {
		_, n := utf8.DecodeRuneInString(s[i:])
		next := strconv.Quote(s[:i+n])
		if len(next) > width-3 {
			break
		}
		q, i = next, i+n
	}
	return q + "..."
}
