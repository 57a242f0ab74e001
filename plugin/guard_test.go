package plugin

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/backends/redisstore"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
)

// fakeStore answers lookups from a map of keys, like Redis would; pure unit
// tests only (the e2e tests use a real redis-server).
type fakeStore struct {
	mu   sync.Mutex
	kb   keys.Builder
	keys map[string]string
	down bool
	asks int
}

func newFakeStore() *fakeStore {
	return &fakeStore{kb: keys.Builder{Prefix: "guard:"}, keys: map[string]string{}}
}

func (f *fakeStore) set(k, v string) { f.mu.Lock(); f.keys[k] = v; f.mu.Unlock() }

func (f *fakeStore) Lookup(ctx context.Context, q redisstore.Query) (redisstore.Answer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asks++
	if f.down {
		return redisstore.Answer{}, errors.New("connection refused")
	}
	var a redisstore.Answer
	try := func(kind keys.Kind, scope keys.Scope, v string) *redisstore.Match {
		k := f.kb.List(kind, scope, v)
		if r, ok := f.keys[k]; ok {
			return &redisstore.Match{Kind: kind, Scope: scope, Value: v, Key: k, Reason: r, TTL: -1}
		}
		return nil
	}
	var cands [][2]string
	cands = append(cands, [2]string{string(keys.ClientID), q.ClientID})
	if q.HasUsername {
		cands = append(cands, [2]string{string(keys.Username), q.Username})
	}
	if q.IP.IsValid() {
		cands = append(cands, [2]string{string(keys.IP), q.IP.String()})
		for _, p := range keys.Prefixes(q.IP) {
			cands = append(cands, [2]string{string(keys.CIDR), p.String()})
		}
	}
	for _, c := range cands {
		if a.Allow == nil {
			a.Allow = try(keys.Allow, keys.Scope(c[0]), c[1])
		}
		if a.Block == nil {
			a.Block = try(keys.Block, keys.Scope(c[0]), c[1])
		}
	}
	if q.WantUser {
		a.UserHash, a.HasUser = f.keys[f.kb.User(q.Username)]
	}
	return a, nil
}

func (f *fakeStore) Ping(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errors.New("connection refused")
	}
	return nil
}

func (f *fakeStore) LiveConns(context.Context, string) ([]redisstore.Conn, error) { return nil, nil }
func (f *fakeStore) PublishChange(context.Context, string) error                  { return nil }
func (f *fakeStore) Close() error                                                 { return nil }

type fakeCounter struct {
	mu    sync.Mutex
	fails []string
}

func (f *fakeCounter) Fail(_ context.Context, scope keys.Scope, value string) (*ratelimit.Ban, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fails = append(f.fails, string(scope)+"="+value)
	return nil, nil
}

func (f *fakeCounter) counted() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.fails...)
}

type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (l *logSink) log(_ Level, msg string) {
	l.mu.Lock()
	l.lines = append(l.lines, msg)
	l.mu.Unlock()
}
func (l *logSink) all() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// $7$ hash of "alice-pw" as mosquitto_passwd 2.0.11 writes it.
func passwdFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "passwd")
	if _, err := exec.LookPath("mosquitto_passwd"); err != nil {
		t.Skip("mosquitto_passwd not installed")
	}
	out, err := exec.Command("mosquitto_passwd", "-c", "-b", path, "alice", "alice-pw").CombinedOutput()
	require.NoError(t, err, "%s", out)
	return path
}

func newGuard(t *testing.T, opts map[string]string) (*Guard, *fakeStore, *fakeCounter, *logSink) {
	t.Helper()
	if opts == nil {
		opts = map[string]string{}
	}
	if _, ok := opts["backend"]; !ok {
		opts["password_file"] = passwdFile(t)
	}
	cfg, err := Parse(opts)
	require.NoError(t, err)
	st, ct, ls := newFakeStore(), &fakeCounter{}, &logSink{}
	g, err := NewWith(cfg, Output{Log: ls.log}, Deps{Store: st, Counter: ct})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	return g, st, ct, ls
}

func cl(h uintptr, ip, id, user, pass string) Client {
	return Client{Handle: h, Address: ip, ClientID: id, Username: user, HasUsername: true, Password: []byte(pass)}
}

func waitCounted(t *testing.T, ct *fakeCounter, n int) []string {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && len(ct.counted()) < n {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	return ct.counted()
}

func TestDecisions(t *testing.T) {
	g, st, ct, ls := newGuard(t, map[string]string{"fail_scopes": "ip,username,clientid"})
	st.set("guard:block:ip:192.0.2.66", "operator ban")
	st.set("guard:block:cidr:198.51.100.0/24", "auto: brute force")
	st.set("guard:allow:clientid:vip", "")

	cases := []struct {
		name string
		c    Client
		want Result
		rule string
	}{
		{"good password", cl(1, "192.0.2.1", "a", "alice", "alice-pw"), Allow, ""},
		{"bad password", cl(2, "192.0.2.2", "b", "alice", "nope"), Deny, RuleBadPassword},
		{"unknown user", cl(3, "192.0.2.3", "c", "zed", "x"), Deny, RuleUnknownUser},
		{"blocked ip", cl(4, "192.0.2.66", "d", "alice", "alice-pw"), Deny, "guard:block:ip:192.0.2.66"},
		{"blocked mapped ip", cl(5, "::ffff:192.0.2.66", "d", "alice", "alice-pw"), Deny, "guard:block:ip:192.0.2.66"},
		{"blocked range", cl(6, "198.51.100.9", "e", "alice", "alice-pw"), Deny, "guard:block:cidr:198.51.100.0/24"},
		{"allow wins", cl(7, "192.0.2.66", "vip", "alice", "alice-pw"), Allow, ""},
		{"allow still checks password", cl(8, "192.0.2.66", "vip", "alice", "bad"), Deny, RuleBadPassword},
		{"anonymous defers", Client{Handle: 9, Address: "192.0.2.9", ClientID: "anon"}, Defer, ""},
		{"anonymous blocked", Client{Handle: 10, Address: "192.0.2.66", ClientID: "anon"}, Deny, "guard:block:ip:192.0.2.66"},
	}
	for _, c := range cases {
		d := g.Authenticate(c.c)
		assert.Equal(t, c.want, d.Result, c.name)
		assert.Equal(t, c.rule, d.Rule, c.name)
	}
	// Only credential failures of non-exempt clients are counted.
	got := waitCounted(t, ct, 6)
	assert.ElementsMatch(t, []string{
		"ip=192.0.2.2", "username=alice", "clientid=b",
		"ip=192.0.2.3", "username=zed", "clientid=c",
	}, got)
	logs := ls.all()
	assert.Contains(t, logs, `refused client_id="d" ip=192.0.2.66 username="alice" rule="guard:block:ip:192.0.2.66" origin=operator expires=never reason="operator ban"`)
	assert.Contains(t, logs, `origin=auto`)
	assert.NotContains(t, logs, "alice-pw")
	assert.NotContains(t, logs, "nope")
}

func TestReauthAfterReloadIsNotCounted(t *testing.T) {
	g, _, ct, ls := newGuard(t, nil)
	require.Equal(t, Allow, g.Authenticate(cl(42, "192.0.2.1", "a", "alice", "alice-pw")).Result)
	// The broker re-checks connection 42 after a reload: the password changed.
	assert.Equal(t, Deny, g.Authenticate(cl(42, "192.0.2.1", "a", "alice", "old")).Result)
	assert.Empty(t, waitCounted(t, ct, 1))
	assert.Contains(t, ls.all(), "not counted")
	// After DISCONNECT the pointer may be reused by a new client: counted then.
	g.Disconnected(42)
	assert.Equal(t, Deny, g.Authenticate(cl(42, "192.0.2.1", "a", "alice", "old")).Result)
	assert.Equal(t, []string{"ip=192.0.2.1"}, waitCounted(t, ct, 1))
}

func TestRedisDownAllow(t *testing.T) {
	g, st, ct, ls := newGuard(t, nil)
	st.set("guard:block:ip:192.0.2.66", "x")
	st.down = true
	assert.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.66", "a", "alice", "alice-pw")).Result)
	asks := st.asks
	assert.Equal(t, Deny, g.Authenticate(cl(2, "192.0.2.66", "a", "alice", "bad")).Result)
	assert.Equal(t, asks, st.asks, "a Redis known to be down is not asked on the hot path")
	assert.Empty(t, waitCounted(t, ct, 1), "nothing to count with")
	assert.Contains(t, ls.all(), "unreachable")
	st.mu.Lock()
	st.down = false
	st.mu.Unlock()
	require.Eventually(t, g.health.up, 3*time.Second, 10*time.Millisecond)
	assert.Equal(t, Deny, g.Authenticate(cl(3, "192.0.2.66", "a", "alice", "alice-pw")).Result)
}

func TestRedisDownDeny(t *testing.T) {
	g, st, _, _ := newGuard(t, map[string]string{"redis_unavailable": "deny"})
	st.down = true
	d := g.Authenticate(cl(1, "192.0.2.1", "a", "alice", "alice-pw"))
	assert.Equal(t, Deny, d.Result)
	assert.Equal(t, RuleRedisUnavailable, d.Rule)
}

func TestRedisBackendUsers(t *testing.T) {
	path := passwdFile(t)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	hash := strings.TrimSpace(strings.SplitN(string(data), ":", 2)[1])
	g, st, _, _ := newGuard(t, map[string]string{"backend": "redis"})
	st.set("guard:user:carol", hash)
	assert.Equal(t, Allow, g.Authenticate(cl(1, "192.0.2.1", "c", "carol", "alice-pw")).Result)
	assert.Equal(t, RuleBadPassword, g.Authenticate(cl(2, "192.0.2.1", "c", "carol", "x")).Rule)
	assert.Equal(t, RuleUnknownUser, g.Authenticate(cl(3, "192.0.2.1", "c", "dave", "x")).Rule)
	st.set("guard:user:erin", "$7$broken")
	assert.Equal(t, RuleBadStoredHash, g.Authenticate(cl(4, "192.0.2.1", "c", "erin", "x")).Rule)
}

func TestDeferBackend(t *testing.T) {
	g, st, ct, _ := newGuard(t, map[string]string{"backend": "defer"})
	assert.Equal(t, Defer, g.Authenticate(cl(1, "192.0.2.1", "a", "anyone", "anything")).Result)
	st.set("guard:block:username:anyone", "x")
	assert.Equal(t, Deny, g.Authenticate(cl(2, "192.0.2.1", "a", "anyone", "anything")).Result)
	assert.Empty(t, waitCounted(t, ct, 1))
}

func TestQuoteCutsHostileValues(t *testing.T) {
	assert.Equal(t, `"a\nb\"c"`, quote("a\nb\"c"))
	q := quote(strings.Repeat("x", 20000))
	assert.Less(t, len(q), 300)
	assert.Contains(t, q, "(20000 bytes)")
	assert.Equal(t, "ip=192.0.2.1", strings.Fields(describeClient(Client{Address: "192.0.2.1"}, netip.MustParseAddr("192.0.2.1")))[1])
}
