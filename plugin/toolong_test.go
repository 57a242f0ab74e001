package plugin

import (
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store/replica"
)

// clientid_max_bytes and username_max_bytes: a CONNECT over either bound
// is refused before its password is checked, at the bound's next byte and
// not at the bound itself; the refusal is logged with its rule and bound,
// and nothing is counted as a failed authentication (a wrong password over
// the bound was never checked).
func TestTooLongClientIDAndUsername(t *testing.T) {
	g, _, ct, ls := newGuard(t, map[string]string{
		"clientid_max_bytes": "16", "username_max_bytes": "5", "fail_scopes": "ip,username,clientid",
	})
	id16, id17 := strings.Repeat("i", 16), strings.Repeat("i", 17)
	cases := []struct {
		name string
		c    Client
		want Result
		rule string
	}{
		{"client ID at the bound", cl(1, "192.0.2.1", id16, "alice", "alice-pw"), Allow, ""},
		{"client ID over the bound", cl(2, "192.0.2.2", id17, "alice", "alice-pw"), Deny, RuleClientIDTooLong},
		{"over the bound, wrong password: never checked", cl(3, "192.0.2.3", id17, "alice", "nope"), Deny, RuleClientIDTooLong},
		{"username over the bound", cl(4, "192.0.2.4", "c", "alice6", "nope"), Deny, RuleUsernameTooLong},
		{"username at the bound, wrong password: checked and counted", cl(5, "192.0.2.5", "d", "alice", "nope"), Deny, RuleBadPassword},
	}
	for _, c := range cases {
		d := g.Authenticate(c.c)
		assert.Equal(t, c.want, d.Result, c.name)
		assert.Equal(t, c.rule, d.Rule, c.name)
	}
	assert.ElementsMatch(t, []string{"ip=192.0.2.5", "username=alice", "clientid=d"}, waitCounted(t, ct, 3),
		"only the checked password's failure counts")
	logs := ls.all()
	assert.Contains(t, logs, `event=refused ip=192.0.2.2 rule=clientid-too-long client_id="`+id17+`" username="alice" max_bytes=16`)
	assert.Contains(t, logs, `event=refused ip=192.0.2.4 rule=username-too-long client_id="c" username="alice6" max_bytes=5`)
	assert.Equal(t, ruleClientIDTooLong, refusedBy(Decision{Rule: RuleClientIDTooLong}))
	assert.Equal(t, "username-too-long", ruleNames[refusedBy(Decision{Rule: RuleUsernameTooLong})])
}

// The defaults bound nothing of their own: MQTT's longest client ID and
// username (65 535 bytes) get their password checked.
func TestTooLongDefaultsBoundNothing(t *testing.T) {
	g, _, _, _ := newGuard(t, nil)
	long := strings.Repeat("i", 65535)
	assert.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.1", long, "alice", "alice-pw")).Result)
	assert.Equal(t, RuleUnknownUser, g.Authenticate(cl(2, "192.0.2.2", "c", strings.Repeat("u", 65535), "x")).Rule)
}

// A client first seen at an ACL check (no BASIC_AUTH on its listener) over
// the bound is refused there and kicked, as a banned one is.
func TestTooLongAtFirstSight(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"backend": "defer", "clientid_max_bytes": "8"})
	require.NoError(t, err)
	var kr kickRecorder
	var flagged atomic.Int64
	ls := &logSink{}
	g, err := NewWith(cfg, Output{Log: ls.log, Kick: kr.kick, Flagged: func(d int) { flagged.Add(int64(d)) }},
		Deps{Store: newFakeStore(), Counter: &fakeCounter{}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	g.replica = replica.New(keys.Builder{Prefix: "guard:"})

	dev := certCl(1, "192.0.2.1", "device-09", "CN=dev", "", "c1", "CN=dev")
	dev.Password = nil
	d := g.FirstSight(dev)
	assert.Equal(t, Deny, d.Result)
	assert.Equal(t, RuleClientIDTooLong, d.Rule)
	assert.True(t, g.Flagged(1))
	assert.Equal(t, []string{"device-09"}, kr.all(), "kicked")
	assert.Contains(t, ls.all(), "max_bytes=8 seen=first-acl-check")
	ok := certCl(2, "192.0.2.2", "device-1", "CN=dev1", "", "c2", "CN=dev1")
	ok.Password = nil
	assert.Equal(t, Allow, g.FirstSight(ok).Result)
}

// A CONNECT the cgo layer cut (only logline.Kept of its client ID and
// username, with their sizes in ClientIDBytes and UsernameBytes) is
// refused and logged exactly as the whole one: the same rule, the same
// line, a character cut across the 200-byte mark included.
func TestTooLongCutClientLogsAsWhole(t *testing.T) {
	g, _, _, ls := newGuard(t, map[string]string{"clientid_max_bytes": "16", "username_max_bytes": "16"})
	id := "x" + strings.Repeat("é", 150) // 301 bytes: the 200-byte mark falls inside a character
	user := strings.Repeat("ü", 120)
	for _, c := range []Client{
		cl(1, "192.0.2.1", id, "alice", "alice-pw"),
		{Handle: 2, Address: "192.0.2.1", ClientID: logline.Kept(id), ClientIDBytes: len(id), Username: "alice", HasUsername: true},
		cl(3, "192.0.2.1", "dev", user, "x"),
		{Handle: 4, Address: "192.0.2.1", ClientID: "dev", Username: logline.Kept(user), UsernameBytes: len(user), HasUsername: true},
	} {
		g.Authenticate(c)
	}
	var lines []string
	for _, l := range strings.Split(ls.all(), "\n") {
		if strings.Contains(l, "event=refused") {
			lines = append(lines, l)
		}
	}
	require.Len(t, lines, 4)
	assert.Equal(t, lines[0], lines[1], "a cut client ID's line")
	assert.Equal(t, lines[2], lines[3], "a cut username's line")
	assert.Contains(t, lines[1], "rule=clientid-too-long")
	assert.Contains(t, lines[1], "client_id_bytes=301")
	assert.Contains(t, lines[3], "rule=username-too-long")
}

// A password file whose usernames are longer than username_max_bytes is
// said so at its load: those users can never connect. Without a bound of
// its own (the default), nothing is said.
func TestTooLongUsersInPasswordFileWarned(t *testing.T) {
	_, _, _, ls := newGuard(t, map[string]string{"username_max_bytes": "4"})
	assert.Contains(t, ls.all(), "1 users have a username longer than username_max_bytes (4 bytes): they can never connect")
	_, _, _, ls = newGuard(t, nil)
	assert.NotContains(t, ls.all(), "username_max_bytes")
}
