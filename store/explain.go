package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/internal/rediserr"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// The reads of guardctl explain: everything Redis holds about one client,
// read and never written.

// Matching is every allow and block entry a client matches, each list most
// specific first (client ID, username, certificate, IP, then every range
// containing the IP, narrowest first), and its username's throttle.
// store.Resolve(m.Allows, m.Blocks) is the plugin's decision on them.
type Matching struct {
	Allows, Blocks []*Match // TTL negative: the entry never expires
	Throttle       *Match   // the username's throttle key, when it is throttled
	// Ignored are the keys among those read that hold another type than a
	// string: the plugin's replica skips such a key (and logs it), so it
	// allows, bans or throttles nothing.
	Ignored []Ignored
}

// Ignored is a key of another type than string where an entry would be.
type Ignored struct {
	Kind keys.Kind // the list it is under; a throttle key is under block
	Key  string
	Type string // what TYPE answers: "set", "hash", "list", ...
	// Throttle: the key is the username's throttle key.
	Throttle bool
}

// Matching reads the entries q matches, each with its remaining lifetime,
// in one pipelined round trip of GET and PTTL. The candidates are those
// Lookup asks for a CONNECT (a long client ID or username also under its
// tracking form, where its automatic bans are: block keys only); withClientID false leaves
// out the client ID, which a CONNECT always has.
func (s *Store) Matching(ctx context.Context, q Query, withClientID bool) (Matching, error) {
	var cands []candidate
	for _, c := range candidates(q) {
		if c.scope != keys.ClientID || withClientID {
			cands = append(cands, c)
		}
	}
	type read struct {
		get *redis.StringCmd
		ttl *redis.DurationCmd
	}
	get := func(pipe redis.Pipeliner, key string) read {
		return read{pipe.Get(ctx, key), pipe.PTTL(ctx, key)}
	}
	allow := make([]read, len(cands))
	block := make([]read, len(cands))
	var throttle read
	pipe := s.rdb.Pipeline()
	for i, c := range cands {
		if !c.blockOnly {
			allow[i] = get(pipe, s.kb.List(keys.Allow, c.scope, c.value))
		}
		block[i] = get(pipe, s.kb.List(keys.Block, c.scope, c.value))
	}
	if q.HasUsername {
		throttle = get(pipe, s.kb.Throttle(q.Username))
	}
	cmds, err := pipe.Exec(ctx) // each GET's own error is looked at below (a WRONGTYPE is no entry)
	if perr := rediserr.PipelineErr(cmds, err); perr != nil {
		return Matching{}, fmt.Errorf("store: matching: %w", perr)
	}
	var m Matching
	match := func(kind keys.Kind, scope keys.Scope, value string, r read) (*Match, error) {
		if r.get == nil {
			return nil, nil // blockOnly: no allow key by a tracking form
		}
		key := r.get.Args()[1].(string)
		v, err := r.get.Result()
		switch {
		case errors.Is(err, redis.Nil):
			return nil, nil
		case redis.HasErrorPrefix(err, "WRONGTYPE"):
			// As the replica (replica.Sync.fetch): no entry.
			m.Ignored = append(m.Ignored, Ignored{Kind: kind, Key: key})
			return nil, nil
		case err != nil:
			return nil, fmt.Errorf("store: matching: %s: %w", key, err)
		}
		return &Match{Kind: kind, Scope: scope, Value: value, Key: key, Reason: v, TTL: remaining(r.ttl)}, nil
	}
	for i, c := range cands {
		a, err := match(keys.Allow, c.scope, c.value, allow[i])
		if err != nil {
			return Matching{}, err
		}
		b, err := match(keys.Block, c.scope, c.value, block[i])
		if err != nil {
			return Matching{}, err
		}
		if a != nil {
			m.Allows = append(m.Allows, a)
		}
		if b != nil {
			m.Blocks = append(m.Blocks, b)
		}
	}
	if q.HasUsername {
		th, err := match(keys.Block, keys.Username, q.Username, throttle)
		if err != nil {
			return Matching{}, err
		}
		m.Throttle = th
		if n := len(m.Ignored); n > 0 && m.Ignored[n-1].Key == s.kb.Throttle(q.Username) {
			m.Ignored[n-1].Throttle = true
		}
	}
	if err := s.typesOf(ctx, m.Ignored); err != nil {
		return Matching{}, err
	}
	return m, nil
}

// typesOf fills in the type of each ignored key, in one round trip.
func (s *Store) typesOf(ctx context.Context, ign []Ignored) error {
	if len(ign) == 0 {
		return nil
	}
	pipe := s.rdb.Pipeline()
	types := make([]*redis.StatusCmd, len(ign))
	for i, g := range ign {
		types[i] = pipe.Type(ctx, g.Key)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("store: matching: type: %w", err)
	}
	for i := range ign {
		ign[i].Type = types[i].Val() // "none" if it went meanwhile
	}
	return nil
}

// ClientIDState is what Redis holds about one client ID's use.
type ClientIDState struct {
	Live []Conn // live connections on every broker, newest first
	// LeaseRuns says, per broker instance in Live, whether its lease runs: an
	// instance whose lease ran out crashed, and its entries are cleared by
	// the next broker to notice; the plugin ignores them meanwhile.
	LeaseRuns map[string]bool
	Seen      []Conn // each principal's latest use within the window, newest first
	SeenOlder int    // principals whose latest use is older than the window (ignored by the plugin)
	// Findings are the client ID's findings among the newest FindingsScanned
	// entries of the findings stream (FindingsTotal long), newest first.
	Findings        []Finding
	FindingsScanned int
	FindingsTotal   int64
}

// findingsPage is how many stream entries one XREVRANGE of ClientIDState reads.
const findingsPage = 500

// ClientIDState reads the live connections of clientID, the principals
// that used it within window before now, and its findings among the newest
// scanMax entries of the findings stream (scanned newest first in pages,
// so that a long stream costs at most scanMax entries). A principal's last
// use is as the conflict rules count it: now while it is live on a broker
// whose lease runs, else when it disconnected, else when it connected.
// Every command is a read.
func (s *Store) ClientIDState(ctx context.Context, clientID string, window time.Duration, now time.Time, scanMax int) (ClientIDState, error) {
	fail := func(err error) (ClientIDState, error) {
		return ClientIDState{}, fmt.Errorf("store: client id state: %w", err)
	}
	pipe := s.rdb.Pipeline()
	live := pipe.HGetAll(ctx, s.kb.Conn(clientID))
	seen := pipe.HGetAll(ctx, s.kb.Seen(clientID))
	xlen := pipe.XLen(ctx, s.kb.Findings())
	if _, err := pipe.Exec(ctx); err != nil {
		return fail(err)
	}
	st := ClientIDState{Live: decodeConns(live.Val()), LeaseRuns: map[string]bool{}, FindingsTotal: xlen.Val()}
	if len(st.Live) > 0 {
		instances := make([]string, len(st.Live))
		for i, c := range st.Live {
			instances[i] = c.Instance
		}
		scores, err := s.rdb.ZMScore(ctx, s.kb.Brokers(), instances...).Result()
		if err != nil {
			return fail(err)
		}
		for i, sc := range scores {
			st.LeaseRuns[instances[i]] = sc >= float64(now.UnixMilli())
		}
	}
	since := now.Add(-window).UnixMilli()
	for _, c := range decodeConns(seen.Val()) {
		last := c.ConnectedMs
		if c.DisconnectedMs > 0 {
			last = c.DisconnectedMs
		}
		if last < since && !st.holds(c.ID) {
			st.SeenOlder++
			continue
		}
		st.Seen = append(st.Seen, c)
	}
	found, scanned, err := s.findingsOf(ctx, keys.Tracking(clientID), scanMax)
	if err != nil {
		return fail(err)
	}
	st.Findings, st.FindingsScanned = found, scanned
	return st, nil
}

// holds says whether connection id is live on a broker whose lease runs:
// the conflict rules count such a use as now, and ignore the others' entries.
func (st ClientIDState) holds(id string) bool {
	for _, c := range st.Live {
		if c.ID == id && st.LeaseRuns[c.Instance] {
			return true
		}
	}
	return false
}

// findingsOf returns the findings of the client ID in its tracking form
// among the newest scanMax stream entries, newest first, with their folds'
// counts, and how many entries were read.
func (s *Store) findingsOf(ctx context.Context, tracked string, scanMax int) ([]Finding, int, error) {
	var out []Finding
	scanned, end := 0, "+"
	for scanned < scanMax {
		msgs, err := s.rdb.XRevRangeN(ctx, s.kb.Findings(), end, "-", int64(min(findingsPage, scanMax-scanned))).Result()
		if err != nil {
			return nil, 0, err
		}
		for _, m := range msgs {
			if f := parseFinding(m); f.ClientID == tracked {
				out = append(out, f)
			}
		}
		scanned += len(msgs)
		if len(msgs) < findingsPage {
			break
		}
		end = "(" + msgs[len(msgs)-1].ID
	}
	out = withoutResent(out)
	if err := s.addFolds(ctx, out); err != nil {
		return nil, 0, err
	}
	return out, scanned, nil
}
