package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// t0 is when the test findings happened (their TimeMs); Redis stamps the
// stream entries, which the audit window applies to, with the real time.
var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func openStore(t *testing.T, addr, prefix, password string) *store.Store {
	t.Helper()
	s := store.New(store.Options{Addrs: []string{addr}, Password: password, Timeout: time.Second}, keys.Builder{Prefix: prefix})
	t.Cleanup(func() { s.Close() })
	return s
}

// testFinding is a finding at t0+at between the given principals, one
// connection each, from the given IPs and brokers.
func testFinding(kind, action, clientID string, at time.Duration, principals, ips, brokers []string) *store.Finding {
	ms := t0.Add(at).UnixMilli()
	f := &store.Finding{
		Reason: store.ReasonDuplicateClientID, Severity: store.SeverityHigh,
		Kind: kind, Action: action, ClientID: clientID, Principals: principals, TimeMs: ms,
	}
	for i := range ips {
		f.Connections = append(f.Connections, store.Conn{
			ID: brokers[i] + "-1", Instance: brokers[i], Broker: brokers[i],
			Principal: principals[i%len(principals)], IP: ips[i], ConnectedMs: ms - int64(i)*1000,
		})
	}
	return f
}

// addFindings stores the test findings. It returns a millisecond later,
// since an audit leaves entries of its own millisecond to the next one.
func addFindings(t *testing.T, s *store.Store, fs ...*store.Finding) {
	t.Helper()
	for _, f := range fs {
		_, err := s.AddFinding(context.Background(), f, time.Minute, time.Hour, 1000)
		require.NoError(t, err)
	}
	time.Sleep(2 * time.Millisecond)
}

// fixture stores six occurrences, four of them reported:
//
//	sensor-1  cross-principal alice+mallory  at 0s (reported), 10s, 20s (folded), 2m (reported)
//	pump-7    duplicate-connection carol     at 30s (reported, refused)
//	evil\nid  cross-principal                at 1m (reported)
func fixture(t *testing.T, s *store.Store) {
	t.Helper()
	sensor := func(at time.Duration) *store.Finding {
		return testFinding(store.KindCrossPrincipal, "flagged", "sensor-1", at,
			[]string{"alice", "mallory"}, []string{"203.0.113.5", "192.0.2.10"}, []string{"broker-b", "broker-a"})
	}
	addFindings(t, s,
		sensor(0), sensor(10*time.Second), sensor(20*time.Second),
		testFinding(store.KindDuplicate, "refused", "pump-7", 30*time.Second,
			[]string{"carol"}, []string{"198.51.100.7", "198.51.100.7"}, []string{"broker-a", "broker-a"}),
		testFinding(store.KindCrossPrincipal, "flagged", "evil\nid\x00"+strings.Repeat("A", 100), time.Minute,
			[]string{"alice", "eve,admin"}, []string{"2001:db8::1"}, []string{"broker-a"}),
		sensor(2*time.Minute),
	)
}

// audit runs guardctl audit with args against addr and prefix.
func audit(t *testing.T, addr, prefix string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = runAudit(append([]string{"--redis-addr", addr, "--key-prefix", prefix}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

const wantTable = `TIME                  CLIENT ID                                                     KIND                  ACTION   PRINCIPALS         COUNT  FIRST SEEN            LAST SEEN             IPS                     BROKERS
2026-01-01T00:02:00Z  "sensor-1"                                                    cross-principal       flagged  alice,mallory      4      2026-01-01T00:00:00Z  2026-01-01T00:02:00Z  203.0.113.5,192.0.2.10  broker-b,broker-a
2026-01-01T00:00:00Z  "sensor-1"                                                    cross-principal       flagged  alice,mallory      4      2026-01-01T00:00:00Z  2026-01-01T00:02:00Z  203.0.113.5,192.0.2.10  broker-b,broker-a
2026-01-01T00:01:00Z  "evil\nid\x00AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"...  cross-principal       flagged  alice,"eve,admin"  1      2026-01-01T00:01:00Z  2026-01-01T00:01:00Z  2001:db8::1             broker-a
2026-01-01T00:00:30Z  "pump-7"                                                      duplicate-connection  refused  carol              1      2026-01-01T00:00:30Z  2026-01-01T00:00:30Z  198.51.100.7            broker-a
`

func TestAuditTable(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	s := openStore(t, r.Addr, "t:", "")
	fixture(t, s)

	before := time.Now()
	code, out, errOut := audit(t, r.Addr, "t:")
	require.Equal(t, exitOK, code, errOut)
	assert.Empty(t, errOut)
	head, table, _ := strings.Cut(out, "\n")
	assert.Equal(t, wantTable, table)
	since, ok := strings.CutPrefix(head, "4 findings for 3 client IDs since ")
	require.True(t, ok, head)
	ts, err := time.Parse(time.RFC3339, since)
	require.NoError(t, err)
	assert.WithinDuration(t, before.Add(-defaultSince), ts, 2*time.Second, "the last 31 days by default")

	_, ok, err = s.LastAudit(context.Background())
	require.NoError(t, err)
	assert.False(t, ok, "an audit without --since-last leaves no mark")

	code, out, _ = audit(t, r.Addr, "other:")
	require.Equal(t, exitOK, code)
	assert.Regexp(t, `^no findings since \S+Z\n$`, out, "another prefix")
}

func TestAuditJSON(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	s := openStore(t, r.Addr, "t:", "")
	fixture(t, s)

	before := time.Now()
	code, out, errOut := audit(t, r.Addr, "t:", "--json", "--since", "12h")
	require.Equal(t, exitOK, code, errOut)
	var doc struct {
		Since, Until int64
		Clients      []struct {
			ClientID string          `json:"clientid"`
			Findings []store.Finding `json:"findings"`
		}
	}
	require.NoError(t, json.Unmarshal([]byte(out), &doc))
	assert.InDelta(t, before.Add(-12*time.Hour).UnixMilli(), doc.Since, 2000)
	assert.Equal(t, int64(12*time.Hour/time.Millisecond), doc.Until-doc.Since)

	type row struct {
		client string
		at     time.Duration
		count  int64
	}
	var got []row
	for _, c := range doc.Clients {
		for _, f := range c.Findings {
			assert.Equal(t, c.ClientID, f.ClientID)
			assert.Equal(t, store.ReasonDuplicateClientID, f.Reason)
			assert.Equal(t, store.SeverityHigh, f.Severity)
			assert.NotEmpty(t, f.ID)
			got = append(got, row{c.ClientID, time.UnixMilli(f.TimeMs).Sub(t0), f.Count})
		}
	}
	evil := "evil\nid\x00" + strings.Repeat("A", 100)
	assert.Equal(t, []row{
		{"sensor-1", 2 * time.Minute, 4}, {"sensor-1", 0, 4},
		{evil, time.Minute, 1},
		{"pump-7", 30 * time.Second, 1},
	}, got, "the client ID exact, grouped and newest first")
	f := doc.Clients[0].Findings[0]
	assert.Equal(t, []string{"alice", "mallory"}, f.Principals)
	assert.Equal(t, t0.UnixMilli(), f.FirstSeenMs)
	assert.Equal(t, t0.Add(2*time.Minute).UnixMilli(), f.LastSeenMs)
	require.Len(t, f.Connections, 2)
	assert.Equal(t, "203.0.113.5", f.Connections[0].IP)

	code, out, _ = audit(t, r.Addr, "empty:", "--json")
	require.Equal(t, exitOK, code)
	assert.Contains(t, out, `"clients": []`)
}

func TestAuditSinceLast(t *testing.T) {
	t.Setenv(passwordEnv, "")
	r := testenv.StartRedis(t)
	s := openStore(t, r.Addr, "t:", "")
	ctx := context.Background()
	fixture(t, s)

	code, out, errOut := audit(t, r.Addr, "t:", "--since-last")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "guardctl: no previous audit recorded (t:audit:last); auditing the last 31d\n", errOut)
	assert.True(t, strings.HasPrefix(out, "4 findings for 3 client IDs since "), out)
	mark1, ok, err := s.LastAudit(ctx)
	require.NoError(t, err)
	require.True(t, ok, "a --since-last audit marks its time")
	assert.WithinDuration(t, time.Now(), mark1, 2*time.Second)

	time.Sleep(2 * time.Millisecond) // a later stream entry than the mark
	addFindings(t, s, testFinding(store.KindCrossPrincipal, "flagged", "late", 3*time.Minute,
		[]string{"dave", "erin"}, []string{"192.0.2.99"}, []string{"broker-c"}))
	code, out, errOut = audit(t, r.Addr, "t:", "--since-last")
	require.Equal(t, exitOK, code, errOut)
	assert.Empty(t, errOut)
	assert.Equal(t, "1 finding for 1 client ID since "+mark1.UTC().Format(time.RFC3339)+"\n"+
		"TIME                  CLIENT ID  KIND             ACTION   PRINCIPALS  COUNT  FIRST SEEN            LAST SEEN             IPS         BROKERS\n"+
		"2026-01-01T00:03:00Z  \"late\"     cross-principal  flagged  dave,erin   1      2026-01-01T00:03:00Z  2026-01-01T00:03:00Z  192.0.2.99  broker-c\n", out,
		"only what was reported since the mark")
	mark2, _, err := s.LastAudit(ctx)
	require.NoError(t, err)
	assert.True(t, mark2.After(mark1))

	code, out, _ = audit(t, r.Addr, "t:", "--since-last", "--json")
	require.Equal(t, exitOK, code)
	assert.JSONEq(t, `{"since": `+jsonInt(mark2.UnixMilli())+`, "until": `+jsonInt(mustLast(t, s).UnixMilli())+`, "clients": []}`, out)

	// An ad-hoc audit neither reads nor moves the mark.
	mark3 := mustLast(t, s)
	code, out, _ = audit(t, r.Addr, "t:", "--since", "1h")
	require.Equal(t, exitOK, code)
	assert.True(t, strings.HasPrefix(out, "5 findings for 4 client IDs since "), out)
	assert.Equal(t, mark3, mustLast(t, s))
}

func mustLast(t *testing.T, s *store.Store) time.Time {
	t.Helper()
	at, ok, err := s.LastAudit(context.Background())
	require.NoError(t, err)
	require.True(t, ok)
	return at
}

func jsonInt(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestAuditPassword(t *testing.T) {
	r := testenv.StartRedis(t, "--requirepass", "s3cret")
	fixture(t, openStore(t, r.Addr, "t:", "s3cret"))

	t.Setenv(passwordEnv, "")
	code, _, errOut := audit(t, r.Addr, "t:")
	assert.Equal(t, exitError, code)
	assert.Regexp(t, `^guardctl: redis at 127\.0\.0\.1:\d+: NOAUTH.*\n$`, errOut)

	t.Setenv(passwordEnv, "s3cret")
	code, out, errOut := audit(t, r.Addr, "t:")
	assert.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "4 findings")

	t.Setenv(passwordEnv, "wrong")
	code, _, errOut = audit(t, r.Addr, "t:", "--redis-password", "s3cret")
	assert.Equal(t, exitOK, code, "the flag beats the environment: %s", errOut)
}

func TestAuditRedisDown(t *testing.T) {
	t.Setenv(passwordEnv, "")
	addr := "127.0.0.1:" + jsonInt(int64(testenv.FreePort(t)))
	start := time.Now()
	code, out, errOut := audit(t, addr, "t:", "--since-last")
	assert.Equal(t, exitError, code)
	assert.Empty(t, out)
	assert.Regexp(t, `^guardctl: redis at 127\.0\.0\.1:\d+: dial tcp .*connection refused\n$`, errOut, "one line")
	assert.Less(t, time.Since(start), 3*time.Second)
}
