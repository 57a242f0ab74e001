package store

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
)

// HOLDS (passed 3 of 3). 50b92ff: RedactArgsInLine keeps a client's own
// quoted values whole and cuts Redis's unquoted echo. Event lines built as
// the plugin builds them (logline.Str, StrN's cut at 200 bytes,
// logval.Quote and Fit) from client IDs and usernames crafted against the
// quote state: the marker itself, lone and escaped quotes, trailing
// backslashes, a cut that falls inside an escape, invalid UTF-8, newlines.
// Each line is kept byte for byte (no field after the client's value is
// hidden), and an unquoted echo of a password appended after it is cut.
func TestAtk59RedactArgsInLineHostileClientValues(t *testing.T) {
	m := argsEcho
	values := []string{
		m, `"` + m, `\"` + m, `\` + m + `\`, `"""`, `\\\"`, m + `"`, "a\nb" + m, "\xff\"" + m,
		strings.Repeat(`"`, 199) + m, strings.Repeat(`\`, 200) + m, strings.Repeat("é", 99) + `"` + m,
		strings.Repeat("x", 199) + `\` + m, `rule=guard:block:ip:1.2.3.4 ` + m + ` ip=6.6.6.6`,
	}
	for _, id := range values {
		for _, user := range values {
			l := logline.Event("refused").Tok("ip", "192.0.2.7").Tok("rule", "bad-password").
				Str("client_id", id).Str("username", user).Str("reason", m+`"`).String()
			assert.Equal(t, l, RedactArgsInLine(l), "a client's line changed: %q", l)
			for _, tail := range []string{
				" after: ERR unknown command 'auth', with args beginning with: 'Sekr3t-59' ",
				" " + logval.Quote(id) + " " + logval.Fit(user, 40) + " ERR unknown command 'auth', with args beginning with: 'Sekr3t-59' ",
			} {
				got := RedactArgsInLine(l + tail)
				assert.NotContains(t, got, "Sekr3t-59", "the echo after a client's line kept: %q", l+tail)
				assert.True(t, strings.HasPrefix(got, l), "the client's fields cut: %q", got)
			}
		}
	}
}
