package plugin

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// certCl is cl with a client certificate, by its DER.
func certCl(h uintptr, ip, id, user, pass, der, subject string) Client {
	c := cl(h, ip, id, user, pass)
	c.CertID, c.CertSubject = keys.CertID([]byte(der)), subject
	return c
}

// A certificate is banned, allowed and named like the other scopes: a ban
// on it refuses that certificate only, an allow entry on it is proof (it
// lifts an ip ban), and a claim's allow entry does not lift its ban.
func TestCertDecisions(t *testing.T) {
	g, st, _, ls := newGuard(t, nil)
	banned, trusted := keys.CertID([]byte("banned")), keys.CertID([]byte("trusted"))
	st.set("guard:block:cert:"+banned, "stolen device")
	st.set("guard:allow:cert:"+trusted, "the gateway")
	st.set("guard:block:ip:192.0.2.66", "operator ban")
	st.set("guard:allow:clientid:vip", "claimed")

	cases := []struct {
		name string
		c    Client
		want Result
		rule string
	}{
		{"banned certificate", certCl(1, "192.0.2.1", "a", "alice", "alice-pw", "banned", "CN=dev-1"), Deny, "guard:block:cert:" + banned},
		{"banned certificate, anonymous", func() Client {
			c := certCl(2, "192.0.2.2", "b", "", "", "banned", "CN=dev-1")
			c.HasUsername = false
			return c
		}(), Deny, "guard:block:cert:" + banned},
		{"another certificate passes", certCl(3, "192.0.2.3", "c", "alice", "alice-pw", "other", "CN=dev-2"), Allow, ""},
		{"an allow on the certificate beats an ip ban", certCl(4, "192.0.2.66", "d", "alice", "alice-pw", "trusted", "CN=gw"), Allow, ""},
		{"without it the ip ban holds", certCl(5, "192.0.2.66", "e", "alice", "alice-pw", "other", "CN=dev-2"), Deny, "guard:block:ip:192.0.2.66"},
		{"a claimed client ID's allow does not lift a certificate ban", certCl(6, "192.0.2.6", "vip", "alice", "alice-pw", "banned", "CN=dev-1"), Deny, "guard:block:cert:" + banned},
	}
	for _, c := range cases {
		d := g.Authenticate(c.c)
		assert.Equal(t, c.want, d.Result, c.name)
		assert.Equal(t, c.rule, d.Rule, c.name)
	}
	logs := ls.all()
	assert.Contains(t, logs, fmt.Sprintf(`event=refused ip=192.0.2.1 rule="guard:block:cert:%s" origin=operator expires=never cert_id=%q client_id="a" username="alice" cert_subject="CN=dev-1" reason="stolen device"`, banned, banned))
	assert.Contains(t, logs, fmt.Sprintf(`cert_id=%q client_id="b" username=<none> cert_subject="CN=dev-1" reason=`, banned))
}

// The subject is hostile: quoted and cut like every client-supplied value.
func TestCertSubjectQuoted(t *testing.T) {
	g, st, _, ls := newGuard(t, nil)
	id := keys.CertID([]byte("banned"))
	st.set("guard:block:cert:"+id, "")
	subject := "CN=x\" rule=\"forged\n" + strings.Repeat("O", 500)
	require.Equal(t, Deny, g.Authenticate(certCl(1, "192.0.2.1", "a", "alice", "alice-pw", "banned", subject)).Result)
	var line string
	for _, l := range ls.lines {
		if strings.Contains(l, "refused") {
			line = l
		}
	}
	assert.Contains(t, line, `cert_subject="CN=x\" rule=\"forged\nOOO`)
	assert.Contains(t, line, fmt.Sprintf(`" cert_subject_bytes=%d reason=`, len(subject)))
	assert.NotContains(t, line, "\n", "one line")
}

// A new ban on a certificate kicks its connected holders, and only them;
// the kick line names the certificate.
func TestKickCertHolder(t *testing.T) {
	var kr kickRecorder
	ls := &logSink{}
	g := kickGuard(t, map[string]string{"backend": "defer"}, Output{Log: ls.log, Kick: kr.kick})
	dev := certCl(1, "192.0.2.1", "dev-1", "alice", "", "device", "CN=dev-1,O=Fleet")
	g.admit(&dev, netip.MustParseAddr("192.0.2.1"), false, false)
	g.admit(new(certCl(2, "192.0.2.2", "dev-2", "alice", "", "another", "CN=dev-2")), netip.MustParseAddr("192.0.2.2"), false, false)
	g.admit(new(cl(3, "192.0.2.3", "dev-3", "alice", "")), netip.MustParseAddr("192.0.2.3"), false, false)

	ban(t, g, keys.Cert, dev.CertID)
	assert.Equal(t, []string{"dev-1"}, kr.all(), "the holder of the banned certificate only")
	assert.True(t, g.Flagged(1))
	assert.False(t, g.Flagged(2))
	assert.Contains(t, ls.all(), fmt.Sprintf(`event=kicked ip=192.0.2.1 rule="guard:block:cert:%s" origin=operator cert_id=%q client_id="dev-1" username="alice" cert_subject="CN=dev-1,O=Fleet"`, dev.CertID, dev.CertID))

	// An allow entry on a certificate exempts its holder from a new ip ban.
	g.admit(new(certCl(4, "192.0.2.9", "gw", "", "", "gateway", "CN=gw")), netip.MustParseAddr("192.0.2.9"), false, false)
	require.NoError(t, g.replica.Put("guard:allow:cert:"+keys.CertID([]byte("gateway")), "", time.Time{}))
	ban(t, g, keys.IP, "192.0.2.9")
	assert.Equal(t, []string{"dev-1"}, kr.all(), "the allowed certificate is not kicked")
}

// A client with a certificate is, for conflict detection, the principal
// cert:<id>, even with a username: two certificates with one client ID
// conflict, whatever username they send.
func TestCertPrincipal(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"password_file": passwdFile(t), "clientid_conflict": "deny"})
	require.NoError(t, err)
	ls := &logSink{}
	g, err := NewWith(cfg, Output{Log: ls.log}, Deps{Store: newFakeStore(), Counter: &fakeCounter{}, Conflicts: failingClaims{}})
	require.NoError(t, err)
	t.Cleanup(g.Close)

	first := certCl(1, "192.0.2.1", "door", "alice", "alice-pw", "first", "CN=first")
	require.Equal(t, Allow, g.Authenticate(first).Result)
	g.mu.Lock()
	assert.Equal(t, "cert:"+first.CertID, g.connOf(g.conns.get(1)).Principal)
	g.mu.Unlock()

	// The same username with another certificate is another principal.
	second := certCl(2, "192.0.2.2", "door", "alice", "alice-pw", "second", "CN=second")
	d := g.Authenticate(second)
	assert.Equal(t, Deny, d.Result)
	assert.Equal(t, RuleClientIDConflict, d.Rule)
	assert.Contains(t, ls.all(), fmt.Sprintf(`event=refused ip=192.0.2.2 rule=clientid-conflict holder_ip=192.0.2.1 cert_id=%q client_id="door" username="alice" cert_subject="CN=second" holder_principal="cert:%s"`, second.CertID, first.CertID))

	// The same certificate reconnecting is the same principal.
	assert.Equal(t, Allow, g.Authenticate(certCl(3, "192.0.2.3", "door", "alice", "alice-pw", "first", "CN=first")).Result)
	// A username that spells a certificate principal is still a username.
	assert.Equal(t, "username:cert:"+first.CertID, principalOf(&Client{HasUsername: true, Username: "cert:" + first.CertID}))
	assert.Equal(t, "alice", principalOf(new(cl(4, "", "", "alice", ""))))
}
