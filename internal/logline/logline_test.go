package logline

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLineShape(t *testing.T) {
	now := time.Date(2026, 11, 21, 17, 30, 2, 0, time.UTC)
	l := Event("refused").Tok("ip", "203.0.113.7").Tok("rule", "guard:block:ip:203.0.113.7").
		Tok("origin", "operator").Expires(now, 5*time.Minute).
		Str("client_id", "sensor 17").Str("reason", `say "hi"`).String()
	assert.Equal(t, `mosquitto-guard: event=refused ip=203.0.113.7 rule=guard:block:ip:203.0.113.7 origin=operator expires=2026-11-21T17:35:02Z expires_in=5m0s client_id="sensor 17" reason="say \"hi\""`, l)
	f, err := Parse("1795281000: " + l)
	require.NoError(t, err)
	assert.Equal(t, []string{"event", "ip", "rule", "origin", "expires", "expires_in", "client_id", "reason"}, f.Keys)
	assert.Equal(t, `say "hi"`, f.Get("reason"))
	assert.Equal(t, "never", mustParse(t, Event("x").Expires(now, -1).String()).Get("expires"))
}

func TestTokenQuotedWhenNotPlain(t *testing.T) {
	for _, v := range []string{"", "a b", `a"b`, "a=b", `a\b`, "a\nb", "é", "\x00"} {
		f := mustParse(t, Event("x").Tok("k", v).String())
		assert.Equal(t, v, f.Get("k"), "%q", v)
	}
}

func TestStrCutWithFullLength(t *testing.T) {
	long := strings.Repeat("é", 150) // 300 bytes
	f := mustParse(t, Event("x").Str("client_id", long).Tok("rule", "r").String())
	assert.Equal(t, strings.Repeat("é", 100), f.Get("client_id"))
	assert.Equal(t, "300", f.Get("client_id_bytes"))
	assert.Equal(t, "r", f.Get("rule"))
}

// Cut writes what Str would have of a value of which only its start is at
// hand (a client ID kept as its hash and its first bytes).
func TestCutAsStr(t *testing.T) {
	long := strings.Repeat("é", 150) // 300 bytes
	want := Event("x").Str("client_id", long).String()
	assert.Equal(t, want, Event("x").Cut("client_id", long[:200], len(long), "sha256:…").String())
	short := "sha256:0123"
	assert.Equal(t, Event("x").Str("client_id", short).String(), Event("x").Cut("client_id", short, len(short), "sha256:other").String(),
		"a whole value: no _bytes")
	assert.Equal(t, Event("x").Str("client_id", "dev").String(), Event("x").Cut("client_id", "", 0, "dev").String(), "nothing shown: v")
	nothing := strings.Repeat("\x80", 300) // no character starts in its first 200 bytes
	assert.Equal(t, Event("x").Str("client_id", nothing).String(), Event("x").Cut("client_id", "", len(nothing), "sha256:…").String(),
		"an empty start of a long value: quoted, not v")
}

func TestPairsCompose(t *testing.T) {
	detail := Pairs().Tok("fail_scope", "ip").Str("fail_value", "1.2.3.4").Body()
	f := mustParse(t, Event("refused").Tok("ip", "1.2.3.4").Raw(detail).String())
	assert.Equal(t, []string{"event", "ip", "fail_scope", "fail_value"}, f.Keys)
	assert.Equal(t, "1.2.3.4", f.Get("fail_value"))
}

func TestParseRefusesWhatIsNotALine(t *testing.T) {
	for _, s := range []string{
		"nothing here",
		"mosquitto-guard: refused client_id=\"x\"",                         // no event first
		"mosquitto-guard: event=refused ip=1 ip=2",                         // repeated key
		"mosquitto-guard: event=refused client_id=\"x",                     // open quote
		"mosquitto-guard: event=refused expires=2026 (in 5m0s)",            // the old shape
		"mosquitto-guard: banned ip=\"127.0.0.1\": over 3 failed attempts", // the old shape
	} {
		_, err := Parse(s)
		assert.Error(t, err, s)
	}
}

// fail2banPrefix is the README's pattern for a log shipper that matches
// the start of a line rather than parsing it: anchored at the line's start
// (after Mosquitto's timestamp), since a quoted value may hold the same text.
var fail2banPrefix = regexp.MustCompile(`^(?:\d+: )?mosquitto-guard: event=refused ip=(\S+) `)

// FuzzHostileValues: whatever a client sends as its client ID and username,
// the line parses, gives them back (cut at 200 bytes), keeps the keys the
// plugin wrote and no other, and a pattern anchored at the line's start
// finds the real IP.
func FuzzHostileValues(f *testing.F) {
	f.Add("sensor-17", "alice")
	f.Add(`x" ip=10.9.9.9 rule="bad-password`, "u\nmosquitto-guard: event=refused ip=10.9.9.9 ")
	f.Add("\xff\xfe\x00", strings.Repeat("=", 300))
	f.Fuzz(func(t *testing.T, id, user string) {
		line := Event("refused").Tok("ip", "192.0.2.1").Tok("rule", "bad-password").
			Str("client_id", id).Str("username", user).String()
		require.NotContains(t, line, "\n")
		fl, err := Parse(line)
		require.NoError(t, err, line)
		want := []string{"event", "ip", "rule", "client_id"}
		if len(id) > 200 {
			want = append(want, "client_id_bytes")
		}
		want = append(want, "username")
		if len(user) > 200 {
			want = append(want, "username_bytes")
		}
		require.Equal(t, want, fl.Keys)
		if len(id) <= 200 {
			require.Equal(t, id, fl.Get("client_id"))
		}
		m := fail2banPrefix.FindStringSubmatch("1795281000: " + line)
		require.NotNil(t, m)
		require.Equal(t, "192.0.2.1", m[1])
	})
}

func mustParse(t *testing.T, line string) Fields {
	t.Helper()
	f, err := Parse(line)
	require.NoError(t, err, line)
	return f
}
