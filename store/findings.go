package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// Finding reason and severity, as AWS IoT Device Defender names them for its
// CONFLICTING_CLIENT_IDS_CHECK.
const (
	ReasonDuplicateClientID = "DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS"
	SeverityHigh            = "HIGH"
)

// Finding kinds.
const (
	KindCrossPrincipal = "cross-principal"      // another principal used the client ID within the window
	KindDuplicate      = "duplicate-connection" // one principal's connections keep displacing each other
)

// Finding is one client-ID conflict. Repeats of the same finding (same
// client ID, kind and principals) are folded: one stream entry per fold
// period, with the count and first/last time kept in the fold hash.
//
// ClientID is the client ID's keys.Tracking form when conflict tracking
// makes a finding (ClientIDTracked; its log line shows it): the client ID
// itself when at most keys.TrackingMax bytes. The stream stores that form,
// so that is what Findings returns. Principals, like Conn.Principal, are in their
// keys.Tracking form (longer ones are stored hashed).
type Finding struct {
	ID       string `json:"id"` // stream entry ID
	Reason   string `json:"reason"`
	Severity string `json:"severity"`
	Kind     string `json:"kind"`
	Action   string `json:"action"` // flagged, or refused (clientid_conflict deny)
	ClientID string `json:"clientid"`
	// ClientIDTracked: ClientID is in its keys.Tracking form already
	// (conflict tracking's findings).
	ClientIDTracked bool `json:"-"`
	// ClientIDShown, when ClientID is the hash of a client ID, is what a log
	// line needs to quote that client ID (logline.Kept of it), of
	// ClientIDBytes in all; "" otherwise.
	ClientIDShown string   `json:"-"`
	ClientIDBytes int      `json:"-"`
	Principals    []string `json:"principals"`
	Connections   []Conn   `json:"connections"` // newest first
	// DisplacedDisconnectedMs is when the displaced connection was
	// disconnected (unix ms); 0 when none was.
	DisplacedDisconnectedMs int64  `json:"disconnected_ms"`
	TimeMs                  int64  `json:"time_ms"`
	Count                   int64  `json:"count"` // occurrences folded into this finding
	FirstSeenMs             int64  `json:"first_seen_ms"`
	LastSeenMs              int64  `json:"last_seen_ms"`
	Fold                    string `json:"fold"`
	// token names this occurrence (AddFinding's call): the same in a
	// request go-redis sends again after its connection lost the reply,
	// so the fold counts it once and a stream entry written twice reads
	// as one (Findings).
	token string
}

// FoldID identifies the repeats of one finding. AddFinding passes the client
// ID in its keys.Tracking form, as the stream has it.
func FoldID(kind, clientID string, principals []string) string {
	// Each part is length-prefixed, so no two lists of parts hash alike.
	h := sha256.New()
	for _, part := range append([]string{kind, clientID}, principals...) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write([]byte(part))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// foldScript counts one occurrence in fold hash KEYS[1] (ARGV: now ms, fold
// period ms, ttl ms, the occurrence's token) and returns {1, count} when it
// must be reported (first time, or the last report is older than the fold
// period), else {0, count}. A token among the last 8 calls' (the
// hash's tokens field: "token:reported:count" words, newest first) is that call
// sent again (go-redis sends a command again on a new connection when its
// connection ended before the reply, though Redis ran it): its answer is
// given again, and nothing counted. Before, the call sent again found its
// own alerted_ms and answered {0, 2}: the finding was neither logged nor
// stored (atk91: 14 of 300 devices past takeover_limit while Redis's
// connections were reset). Kept for the last 8, not the last one: another
// broker's fold of the same finding between a call and its resend would
// have pushed the token out, and the occurrence gone unreported again
// (atk92).
var foldScript = redis.NewScript(`
local toks = redis.call('HGET', KEYS[1], 'tokens') or ''
for tok, was, n in string.gmatch(toks, '(%w+):(%d):(%d+)') do
  if tok == ARGV[4] then return {tonumber(was), tonumber(n)} end
end
local now = tonumber(ARGV[1])
local alerted = tonumber(redis.call('HGET', KEYS[1], 'alerted_ms') or '0')
local n = redis.call('HINCRBY', KEYS[1], 'count', 1)
if n == 1 then redis.call('HSET', KEYS[1], 'first_ms', ARGV[1]) end
redis.call('HSET', KEYS[1], 'last_ms', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local reported = 0
if now - alerted >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'alerted_ms', ARGV[1])
  reported = 1
end
local kept, k = ARGV[4] .. ':' .. reported .. ':' .. n, 1
for word in string.gmatch(toks, '%S+') do
  if k >= 8 then break end
  kept, k = kept .. ' ' .. word, k + 1
end
redis.call('HSET', KEYS[1], 'tokens', kept)
return {reported, n}`)

// AddFinding folds f into its repeats and, when it is to be reported, appends
// it to the findings stream (trimmed to about max entries). It returns
// whether f was reported, with its ID and Count set.
func (s *Store) AddFinding(ctx context.Context, f *Finding, period, ttl time.Duration, max int64) (bool, error) {
	f.Fold = FoldID(f.Kind, f.trackedID(), boundAll(f.Principals))
	f.token = strconv.FormatUint(rand.Uint64(), 36)
	res, err := foldScript.Run(ctx, s.rdb, []string{s.kb.Fold(f.Fold)}, f.TimeMs, period.Milliseconds(), ttl.Milliseconds(), f.token).Int64Slice()
	if err != nil || len(res) != 2 {
		return false, fmt.Errorf("store: add finding: %v", err)
	}
	f.Count = res[1]
	if res[0] == 0 {
		return false, nil
	}
	id, err := s.rdb.XAdd(ctx, &redis.XAddArgs{
		Stream: s.kb.Findings(), MaxLen: max, Approx: true, Values: f.values(),
	}).Result()
	if err != nil {
		return false, fmt.Errorf("store: add finding: %w", err)
	}
	f.ID = id
	return true, nil
}

func (f *Finding) values() []any {
	var ips, brokers, connected []any
	conns := make([]Conn, len(f.Connections))
	for i, c := range f.Connections {
		c = c.bounded()
		conns[i] = c
		ips = append(ips, c.IP)
		brokers = append(brokers, c.Broker)
		connected = append(connected, c.ConnectedMs)
	}
	return []any{
		"reason", f.Reason, "severity", f.Severity, "kind", f.Kind, "action", f.Action,
		"clientid", f.trackedID(), "principals", jsonString(boundAll(f.Principals)),
		"ips", jsonString(ips), "brokers", jsonString(brokers), "connected_ms", jsonString(connected),
		"disconnected_ms", f.DisplacedDisconnectedMs, "connections", jsonString(conns),
		"time_ms", f.TimeMs, "count", f.Count, "fold", f.Fold, "token", f.token,
	}
}

// boundAll returns values with each longer than keys.TrackingMax hashed (bound).
// trackedID is f's client ID in its keys.Tracking form.
func (f *Finding) trackedID() string {
	if f.ClientIDTracked {
		return f.ClientID
	}
	return keys.Tracking(f.ClientID)
}

func boundAll(values []string) []string {
	out := make([]string, len(values))
	for i, v := range values {
		out[i] = bound(v)
	}
	return out
}

// jsonString encodes v as JSON, with <, > and & as they are: the values are
// client-chosen, and escaping each as \u003c would make them six times larger.
func jsonString(v any) string {
	if s, ok := v.([]any); ok && s == nil {
		return "[]"
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // cannot fail: plain strings, numbers and Conns
	return strings.TrimSuffix(b.String(), "\n")
}

// Findings returns the findings reported since the given time, newest first,
// each with the count and first/last time of all its folded repeats.
func (s *Store) Findings(ctx context.Context, since time.Time) ([]Finding, error) {
	msgs, err := s.rdb.XRevRange(ctx, s.kb.Findings(), "+", strconv.FormatInt(since.UnixMilli(), 10)).Result()
	if err != nil {
		return nil, fmt.Errorf("store: findings: %w", err)
	}
	out := make([]Finding, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, parseFinding(m))
	}
	out = withoutResent(out)
	if err := s.addFolds(ctx, out); err != nil {
		return nil, fmt.Errorf("store: findings: %w", err)
	}
	return out, nil
}

// addFolds sets the count and first and last time of each finding from its
// fold hash (all its repeats), in one round trip.
func (s *Store) addFolds(ctx context.Context, fs []Finding) error {
	folds := map[string]*redis.MapStringStringCmd{}
	pipe := s.rdb.Pipeline()
	for _, f := range fs {
		if _, ok := folds[f.Fold]; !ok && f.Fold != "" {
			folds[f.Fold] = pipe.HGetAll(ctx, s.kb.Fold(f.Fold))
		}
	}
	if len(folds) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
	}
	for i := range fs {
		cmd, ok := folds[fs[i].Fold]
		if !ok {
			continue
		}
		m := cmd.Val()
		if n, err := strconv.ParseInt(m["count"], 10, 64); err == nil {
			fs[i].Count = n
			fs[i].FirstSeenMs, _ = strconv.ParseInt(m["first_ms"], 10, 64)
			fs[i].LastSeenMs, _ = strconv.ParseInt(m["last_ms"], 10, 64)
		}
	}
	return nil
}

func parseFinding(m redis.XMessage) Finding {
	str := func(k string) string { v, _ := m.Values[k].(string); return v }
	num := func(k string) int64 { n, _ := strconv.ParseInt(str(k), 10, 64); return n }
	f := Finding{
		ID: m.ID, Reason: str("reason"), Severity: str("severity"), Kind: str("kind"), Action: str("action"),
		ClientID: str("clientid"), DisplacedDisconnectedMs: num("disconnected_ms"), TimeMs: num("time_ms"),
		Count: num("count"), Fold: str("fold"), token: str("token"),
	}
	_ = json.Unmarshal([]byte(str("principals")), &f.Principals)
	_ = json.Unmarshal([]byte(str("connections")), &f.Connections)
	f.FirstSeenMs, f.LastSeenMs = f.TimeMs, f.TimeMs
	return f
}

// withoutResent drops from fs the stream entries that are another's
// XADD sent again by go-redis (its connection lost the reply, though Redis
// ran it): the same occurrence's token and fold. The first of each is
// kept. Entries without a token (written before it) are all kept.
func withoutResent(fs []Finding) []Finding {
	type occurrence struct{ fold, token string }
	var seen map[occurrence]bool
	out := fs[:0]
	for _, f := range fs {
		if f.token != "" {
			o := occurrence{f.Fold, f.token}
			if seen[o] {
				continue
			}
			if seen == nil {
				seen = map[occurrence]bool{}
			}
			seen[o] = true
		}
		out = append(out, f)
	}
	return out
}

// LastAudit returns the time of the previous audit recorded by MarkAudit.
func (s *Store) LastAudit(ctx context.Context) (time.Time, bool, error) {
	v, err := s.rdb.Get(ctx, s.kb.AuditLast()).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return time.Time{}, false, nil
	case err != nil:
		return time.Time{}, false, fmt.Errorf("store: last audit: %w", err)
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("store: last audit: bad value %q at %s", v, s.kb.AuditLast())
	}
	return time.UnixMilli(ms), true, nil
}

// MarkAudit records t as the time of the last audit.
func (s *Store) MarkAudit(ctx context.Context, t time.Time) error {
	if err := s.rdb.Set(ctx, s.kb.AuditLast(), t.UnixMilli(), 0).Err(); err != nil {
		return fmt.Errorf("store: mark audit: %w", err)
	}
	return nil
}
