package plugin

import (
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store/replica"
)

// A client of a use_identity_as_username listener is first seen at an ACL
// check: a banned certificate is refused there (and at every later check,
// flagged) and kicked; another is recorded, so a later ban kicks it too.
func TestFirstSight(t *testing.T) {
	cfg, err := config.Parse(map[string]string{"backend": "defer"})
	require.NoError(t, err)
	var kr kickRecorder
	var flagged atomic.Int64
	ls := &logSink{}
	st := newFakeStore()
	g, err := NewWith(cfg, Output{Log: ls.log, Kick: kr.kick, Flagged: func(d int) { flagged.Add(int64(d)) }},
		Deps{Store: st, Counter: &fakeCounter{}})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	g.replica = replica.New(keys.Builder{Prefix: "guard:"})

	banned := keys.CertID([]byte("banned"))
	st.set("guard:block:cert:"+banned, "stolen device")
	dev := certCl(1, "192.0.2.1", "dev-1", "CN=dev-1", "", "banned", "CN=dev-1")
	dev.Password = nil
	d := g.FirstSight(dev)
	assert.Equal(t, Deny, d.Result)
	assert.Equal(t, "guard:block:cert:"+banned, d.Rule)
	assert.True(t, g.Flagged(1), "its later ACL checks are refused until the kick")
	assert.EqualValues(t, 1, flagged.Load())
	assert.Equal(t, []string{"dev-1"}, kr.all(), "kicked")
	due, _ := g.KickDue(1, "dev-1")
	assert.True(t, due, "the kick is due when the queue runs it")
	assert.True(t, strings.Contains(ls.all(), `event=refused ip=192.0.2.1 rule="guard:block:`) && strings.Contains(ls.all(), `client_id="dev-1" username="CN=dev-1" cert_subject=`) &&
		strings.Contains(ls.all(), "seen=first-acl-check"), ls.all())
	g.Disconnected(1)
	assert.EqualValues(t, 0, flagged.Load(), "the flag ends with the connection")

	other := certCl(2, "192.0.2.2", "dev-2", "CN=dev-2", "", "other", "CN=dev-2")
	assert.Equal(t, Allow, g.FirstSight(other).Result)
	assert.False(t, g.Flagged(2))
	ban(t, g, keys.Cert, other.CertID)
	assert.Equal(t, []string{"dev-1", "dev-2"}, kr.all(), "recorded at first sight: a later ban kicks it")
}
