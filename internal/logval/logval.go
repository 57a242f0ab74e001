package logval

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Max is how many bytes of a value a log line quotes.
const Max = 200

// ArgsEcho starts Redis's echo of a refused command's arguments: "ERR
// unknown command 'auth', with args beginning with: '<password>' ". An AUTH
// or HELLO that a Redis renamed away is answered so, with the password;
// every line the plugin logs is cut from there to its end
// (store.RedactArgs). A quoted value never holds it (Go): its comma is
// written \x2c, so a client cannot cut its own line with it, and the cut
// needs no knowledge of where quotes begin or end (atk59: a key_prefix
// holding '"' turned the quote tracking inside out, and the password
// showed).
const ArgsEcho = ", with args beginning with:"

// Go quotes s with Go's escapes (strconv.Quote), ArgsEcho's comma escaped:
// strconv.Unquote gives s back.
func Go(s string) string {
	q := strconv.Quote(s)
	if strings.Contains(q, ArgsEcho) {
		q = strings.ReplaceAll(q, ArgsEcho, `\x2c`+ArgsEcho[1:])
	}
	return q
}

// Quote quotes s for a log line, cut at Max bytes.
func Quote(s string) string { return QuoteN(s, Max) }

// QuoteN quotes s, cut past n bytes (at a character boundary) with a note
// of its full size: "abc"...(20000 bytes).
func QuoteN(s string, n int) string {
	if len(s) <= n {
		return Go(s)
	}
	cut := max(n, 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return Go(s[:cut]) + "...(" + strconv.Itoa(len(s)) + " bytes)"
}

// Fit quotes s so that the result takes at most width bytes: the quoted
// longest prefix of whole characters that fits in width-3, then "...".
// For table cells, whose width is fixed.
func Fit(s string, width int) string {
	if q := Go(s); len(q) <= width {
		return q
	}
	q := `""`
	for i := 0; i < len(s); {
		_, n := utf8.DecodeRuneInString(s[i:])
		next := Go(s[:i+n])
		if len(next) > width-3 {
			break
		}
		q, i = next, i+n
	}
	return q + "..."
}
