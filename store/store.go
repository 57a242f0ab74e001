package store

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/internal/rediserr"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// Options say how to reach Redis.
type Options struct {
	// Addrs is one address, or several seeds of a Redis Cluster; with
	// SentinelMaster, the sentinels.
	Addrs    []string
	Username string
	Password string
	DB       int
	// TLS, when set, is used for every connection: to Redis, to a
	// cluster's nodes, and to the sentinels too (go-redis dials them with
	// the same configuration).
	TLS *tls.Config
	// SentinelMaster, when set, is the name the sentinels at Addrs monitor
	// the master by: both clients follow that master through failovers
	// (go-redis's failover client, writes and reads on the master only).
	// SentinelUsername and SentinelPassword are the sentinels' own.
	SentinelMaster   string
	SentinelUsername string
	SentinelPassword string
	// Timeout bounds every wait of the broker thread's client (Lookup,
	// LiveConns): dialling, reading, writing, waiting for a pooled
	// connection. That client never retries: a retry would double the wait.
	Timeout time.Duration
	// BackgroundTimeout bounds one call of the background client (every
	// other method, and Background().Client()); the caller's context may
	// bound it further. Zero: DefaultBackgroundTimeout; never below Timeout.
	BackgroundTimeout time.Duration
	// Log, when set, receives go-redis's own log lines, which would
	// otherwise go to stderr, at most one per LogEvery (see routeLogs).
	Log func(msg string)
	// ClientIDsMax is conflict_clientids_max: how many client IDs' seen
	// hashes may hold one principal's use (keys.Builder.ClientIDs); zero:
	// DefaultClientIDsMax.
	ClientIDsMax int
	// Tracking: client-ID conflict tracking runs (clientid_conflict not
	// off): each new connection of the background client loads its
	// scripts first (loadScripts). Without it the plugin may run no script
	// at all, and a user without EVAL would see a refusal at each.
	Tracking bool
}

// DefaultClientIDsMax is conflict_clientids_max's default.
const DefaultClientIDsMax = 10000

// DefaultBackgroundTimeout is the default Options.BackgroundTimeout: longer
// than any stall Redis has in normal operation (a BGSAVE fork of a large
// dataset, a failover), so that background work outlasts it.
const DefaultBackgroundTimeout = 10 * time.Second

// Store reads and writes mosquitto-guard's keys. It is safe for concurrent use.
//
// A Store holds two clients with separate connection pools. The broker
// thread's (Lookup, LiveConns) waits at most Options.Timeout and never
// retries. The background client serves everything else: conflict batches,
// failure counting, replica loads, the health probe. Its calls are bounded
// by their context and by Options.BackgroundTimeout, and retried by go-redis
// when the command surely did not run (a failed dial, a pool timeout, a
// Redis still loading): a Redis stall longer than redis_timeout then fails
// no background work, and background work never holds a connection the
// broker thread waits for.
type Store struct {
	rdb     redis.UniversalClient // this view's client: the broker thread's, or the background one
	clients *clients
	kb      keys.Builder
}

type clients struct {
	fast, bg redis.UniversalClient
	o        Options
	unroute  func() // stops routing go-redis's lines to Options.Log
	idsMax   any    // Options.ClientIDsMax (or its default) as idsScript takes it
	// refusedUses counts the uses removed for a full index (RefusedUses).
	refusedUses atomic.Uint64
	// sent: the scripts Redis compiled a call by source of, since the start
	// or since a new connection's loading call of it was refused (by
	// scriptArgs.id); bySource: the calls eval sent by source for want of
	// it and markSent has not seen answered yet (0: it has nothing to look
	// for).
	sent     [evalScripts]atomic.Bool
	bySource atomic.Int64
	once     sync.Once
}

// New returns a Store; it does not connect until first used, and reconnects
// by itself after Redis comes back.
func New(o Options, kb keys.Builder) *Store {
	bgTimeout := o.BackgroundTimeout
	if bgTimeout <= 0 {
		bgTimeout = DefaultBackgroundTimeout
	}
	bgTimeout = max(bgTimeout, o.Timeout)
	idsMax := o.ClientIDsMax
	if idsMax <= 0 {
		idsMax = DefaultClientIDsMax
	}
	c := &clients{o: o, unroute: func() {}, idsMax: strconv.Itoa(idsMax)}
	if o.Log != nil {
		c.unroute = routeLogs(o.Log)
	}
	fast := o.universal(o.Timeout)
	fast.ContextTimeoutEnabled = true // a caller's shorter deadline counts too
	fast.MaxRetries = -1              // a retry would double the wait on the broker thread
	fast.DialerRetries = 1            // one dial attempt: fail fast, the health probe retries
	c.fast = redis.NewUniversalClient(fast)
	bg := o.universal(bgTimeout)
	// The caller's context bounds each call: the read deadline is the
	// earlier of it and bgTimeout. So a read timeout means the context
	// has expired, and go-redis does not retry it (a command that timed
	// out may still run: retrying it could count a failure twice).
	// What it does retry, with backoff inside the context: what surely
	// did not run (a refused dial, a pool timeout, LOADING), and a
	// command whose connection ended before its reply (EOF, a reset),
	// which Redis may have run. Writes that must count once say which
	// call they are: the takeovers' connection IDs (CountTakeovers), the
	// findings' tokens (AddFinding), the automatic bans' and throttles'
	// values (ratelimit's setOwn); an offence's count is given the count
	// read before it. Not redis_rate's count of a failure: sent again, it
	// counts that failure twice.
	bg.ContextTimeoutEnabled = true
	bg.MaxRetries = 3
	if o.Tracking {
		bg.OnConnect = c.loadScripts
	}
	c.bg = redis.NewUniversalClient(bg)
	return &Store{rdb: c.fast, clients: c, kb: kb}
}

// universal returns go-redis's options for o, every wait bounded by
// timeout. With SentinelMaster, go-redis makes a failover client: commands
// go to the master only (ReadOnly and RouteRandomly stay off: a replica may
// lag a ban).
func (o Options) universal(timeout time.Duration) *redis.UniversalOptions {
	return &redis.UniversalOptions{
		Addrs:            o.Addrs,
		Username:         o.Username,
		Password:         o.Password,
		DB:               o.DB,
		TLSConfig:        o.TLS,
		MasterName:       o.SentinelMaster,
		SentinelUsername: o.SentinelUsername,
		SentinelPassword: o.SentinelPassword,
		DialTimeout:      timeout,
		ReadTimeout:      timeout,
		WriteTimeout:     timeout,
		PoolTimeout:      timeout,
		DisableIdentity:  true, // no CLIENT SETINFO: some Redis-compatible servers refuse it
		// RESP2, not go-redis's default RESP3: the plugin uses none of
		// RESP3's push notifications, and go-redis looks for them before
		// every reply it reads (a handler context built per command): the
		// conflict tracker's writes took 8 to 11 % more of Go's CPU with
		// it (go test -run XXX -bench 'WorkerRestartStorm|WorkerNewClientIDs'
		// ./conflicts, the two alternated). Every reply the plugin reads
		// raw is decoded in either form (connsOf).
		Protocol: 2,
		// A pipeline's connection gets the same 32 KiB buffers as any
		// other, not go-redis's 128 KiB each way (issue 12: memory per
		// connection). The plugin's large pipelines run off the broker
		// thread (the one on it, store.Lookup while the replica is not in
		// step, reads a few small replies), and the pool keeps their
		// connections: an idle broker held one
		// (256 KiB of buffers), one that had just taken 8 000 devices two
		// (the conflict tracker's and the known-sources writer's batches
		// at once), about 0.4 MB of its RSS for as long as they stay idle.
		// A batch larger than 32 KiB is written in more write calls, and
		// its replies read in more reads: a few microseconds a batch, on
		// goroutines that batch thousands of CONNECTs.
		PipelineReadBufferSize:  pipelineBuffer,
		PipelineWriteBufferSize: pipelineBuffer,
	}
}

// pipelineBuffer is the size of a pipeline connection's read buffer and of
// its write buffer: go-redis's default for the other connections.
const pipelineBuffer = 32 << 10

// Background returns the same store on the background client: its every
// method, and its Client, wait up to Options.BackgroundTimeout (or their
// context's deadline), never on the broker thread's connections.
func (s *Store) Background() *Store {
	return &Store{rdb: s.clients.bg, clients: s.clients, kb: s.kb}
}

// Client returns this view's client: the broker thread's for a Store from
// New, the background one for Background().
func (s *Store) Client() redis.UniversalClient { return s.rdb }

// Keys returns the key builder.
func (s *Store) Keys() keys.Builder { return s.kb }

// Close closes both clients (of every view), once.
func (s *Store) Close() error {
	var err error
	s.clients.once.Do(func() {
		err = errors.Join(s.clients.fast.Close(), s.clients.bg.Close())
		s.clients.unroute()
	})
	return err
}

// Ping checks that Redis answers, on the background client: it runs off
// the broker thread (the health probe), bounded by ctx alone, so a probe
// may wait longer than redis_timeout.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.clients.bg.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("store: ping: %w", err)
	}
	return nil
}

// Query is what one CONNECT asks of Redis.
type Query struct {
	ClientID    string
	IP          netip.Addr // the zero Addr when the client's address is unknown
	Username    string
	HasUsername bool
	// Cert is the client certificate's ID (keys.CertID), "" without one;
	// only a value keys.IsCertID accepts is looked up.
	Cert      string
	WantUser  bool // also fetch the user's password hash (the redis backend)
	WantConns bool // also fetch the live connections of the client ID (clientid_conflict deny)
	// OperatorsOnly: block entries of automatic bans (keys.IsAutoBan) are
	// left out: the broker's re-check of the clients it holds after a
	// reload, which automatic bans do not kick (they proved their
	// password: think NAT).
	OperatorsOnly bool
}

// Match is a list entry that matched.
type Match struct {
	Kind   keys.Kind
	Scope  keys.Scope
	Value  string
	Key    string
	Reason string        // the key's value
	TTL    time.Duration // remaining lifetime; negative when the key never expires
}

// Origin says who wrote the entry: "auto" for the plugin's automatic bans
// (their value starts with keys.AutoBanMarker), "operator" for anything else.
func (m Match) Origin() string { return origin(m.Reason) }

// origin names who wrote an entry with the value reason.
func origin(reason string) string {
	if keys.IsAutoBan(reason) {
		return "auto"
	}
	return "operator"
}

// Answer is what Redis said about one CONNECT.
type Answer struct {
	Allow    *Match // the allow entry that counts (see Resolve), or nil
	Block    *Match // the most specific block entry that Allow does not lift, or nil
	Throttle *Match // the username's throttle key, when it is throttled
	UserHash string // the password hash at the user key, when asked for
	HasUser  bool   // the user key exists
	Live     []Conn // live connections of the client ID on every broker, when asked
	// KeyErr, when not nil, is Redis's reply about what one of the keys
	// asked holds (IsKeyReply: an operator's key of another type or
	// value): that key was taken as absent, as the replica takes it, and
	// the rest of the answer stands (atk70: the whole answer was dropped,
	// and a client whose username named such a key got past its
	// address's ban). For the caller to tell the operator.
	KeyErr error
}

// Resolve picks, from the allow and block entries that matched a client
// (each list most specific first), the allow entry that counts and the
// block entry that refuses despite it. An allow entry on proof (ip, cidr,
// cert) is preferred to one on a claim (clientid, username); a block entry is
// lifted only when keys.Exempts says the allow entry lifts it. The block
// returned is the most specific one left.
func Resolve(allows, blocks []*Match) (allow, block *Match) {
	for _, m := range allows {
		if m == nil {
			continue
		}
		if allow == nil || (m.Scope.Proof() && !allow.Scope.Proof()) {
			allow = m
		}
	}
	for _, m := range blocks {
		if m != nil && (allow == nil || !keys.Exempts(allow.Scope, m.Scope)) {
			return allow, m
		}
	}
	return allow, nil
}

// Exempt reports whether allow, the allow entry Resolve picked (nil for
// none), exempts its client from the failure limits (the local counts and
// the username throttle) and from failure counting: an allow entry on proof
// (ip, cidr, cert) does; one on a claim (clientid, username) does not, since
// anyone can claim a name.
func Exempt(allow *Match) bool { return allow != nil && allow.Scope.Proof() }

type candidate struct {
	scope keys.Scope
	value string
	// blockOnly: a claim's Tracking form, the form its automatic bans are
	// written in (keys.FailKey); no allow key is looked up by it: allow
	// keys match the value exactly (atk48: an allow on "sha256:<hex>" lifted
	// the ban of the long client ID it hashes).
	blockOnly bool
}

// candidates lists the entries a client can match, most specific first:
// client ID, username, certificate, IP, then every range containing the IP.
func candidates(q Query) []candidate {
	out := make([]candidate, 0, 4+129)
	out = append(out, candidate{scope: keys.ClientID, value: q.ClientID})
	if t := keys.Tracking(q.ClientID); t != q.ClientID {
		out = append(out, candidate{keys.ClientID, t, true}) // automatic bans of a long client ID
	}
	if q.HasUsername {
		out = append(out, candidate{scope: keys.Username, value: q.Username})
		if t := keys.Tracking(q.Username); t != q.Username {
			out = append(out, candidate{keys.Username, t, true})
		}
	}
	if keys.IsCertID(q.Cert) {
		out = append(out, candidate{scope: keys.Cert, value: q.Cert})
	}
	if q.IP.IsValid() {
		out = append(out, candidate{scope: keys.IP, value: q.IP.String()})
		for _, p := range keys.Prefixes(q.IP) {
			out = append(out, candidate{scope: keys.CIDR, value: p.String()})
		}
	}
	return out
}

// Lookup answers q in one pipelined round trip: a GET of every allow and
// block key the client could match (and PTTL of the block keys, for the
// expiry that refusals log), plus the user's hash when asked.
func (s *Store) Lookup(ctx context.Context, q Query) (Answer, error) {
	cands := candidates(q)
	allow := make([]*redis.StringCmd, len(cands))
	block := make([]*redis.StringCmd, len(cands))
	ttl := make([]*redis.DurationCmd, len(cands))
	var user *redis.StringCmd
	var conns *redis.MapStringStringCmd
	pipe := s.rdb.Pipeline()
	for i, c := range cands {
		if !c.blockOnly {
			allow[i] = pipe.Get(ctx, s.kb.List(keys.Allow, c.scope, c.value))
		}
		bk := s.kb.List(keys.Block, c.scope, c.value)
		block[i] = pipe.Get(ctx, bk)
		ttl[i] = pipe.PTTL(ctx, bk)
	}
	if q.WantUser && q.HasUsername {
		user = pipe.Get(ctx, s.kb.User(q.Username))
	}
	var throttle *redis.StringCmd
	var throttleTTL *redis.DurationCmd
	if q.HasUsername {
		throttle = pipe.Get(ctx, s.kb.Throttle(q.Username))
		throttleTTL = pipe.PTTL(ctx, s.kb.Throttle(q.Username))
	}
	if q.WantConns {
		conns = pipe.HGetAll(ctx, s.kb.Conn(q.ClientID))
	}
	var a Answer
	if cmds, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		if perr := rediserr.PipelineErr(cmds, err); perr != nil {
			return Answer{}, fmt.Errorf("store: lookup: %w", perr) // the connection's set-up failed: no command ran
		}
		// Replies about one key's content leave the rest standing; any
		// other failure fails the lookup.
		for _, c := range cmds {
			if ce := c.Err(); ce != nil && !errors.Is(ce, redis.Nil) && !IsKeyReply(ce) {
				return Answer{}, keyedErr("store: lookup", []redis.Cmder{c}, ce)
			}
		}
	}
	// value is the string of cmd, ok false when absent; a reply about the
	// key's content (another type) is absent, kept in a.KeyErr.
	value := func(cmd *redis.StringCmd) (string, bool, error) {
		v, ok, err := value(cmd)
		if err != nil && IsKeyReply(err) {
			if a.KeyErr == nil {
				a.KeyErr = err
			}
			return "", false, nil
		}
		return v, ok, err
	}
	var allows, blocks []*Match
	for i, c := range cands {
		if allow[i] != nil { // nil: blockOnly, no allow key by a tracking form
			if v, ok, err := value(allow[i]); err != nil {
				return Answer{}, err
			} else if ok {
				allows = append(allows, &Match{Kind: keys.Allow, Scope: c.scope, Value: c.value, Key: allow[i].Args()[1].(string), Reason: v, TTL: -1})
			}
		}
		if v, ok, err := value(block[i]); err != nil {
			return Answer{}, err
		} else if ok {
			if !q.OperatorsOnly || !keys.IsAutoBan(v) {
				blocks = append(blocks, &Match{Kind: keys.Block, Scope: c.scope, Value: c.value, Key: block[i].Args()[1].(string), Reason: v, TTL: remaining(ttl[i])})
			}
		}
	}
	a.Allow, a.Block = Resolve(allows, blocks)
	if throttle != nil {
		v, ok, err := value(throttle)
		if err != nil {
			return Answer{}, err
		}
		if ok {
			a.Throttle = &Match{Kind: keys.Block, Scope: keys.Username, Value: q.Username, Key: s.kb.Throttle(q.Username), Reason: v, TTL: remaining(throttleTTL)}
		}
	}
	if user != nil {
		v, ok, err := value(user)
		if err != nil {
			return Answer{}, err
		}
		a.UserHash, a.HasUser = v, ok
	}
	if conns != nil {
		switch err := conns.Err(); {
		case err != nil && IsKeyReply(err):
			if a.KeyErr == nil {
				a.KeyErr = keyedErr("store: lookup", []redis.Cmder{conns}, err)
			}
		case err != nil:
			return Answer{}, keyedErr("store: lookup", []redis.Cmder{conns}, err)
		default:
			a.Live = decodeConns(conns.Val())
		}
	}
	return a, nil
}

func value(cmd *redis.StringCmd) (string, bool, error) {
	v, err := cmd.Result()
	switch {
	case errors.Is(err, redis.Nil):
		return "", false, nil
	case err != nil:
		return "", false, keyedErr("store: lookup", []redis.Cmder{cmd}, err)
	}
	return v, true, nil
}

// remaining converts a PTTL answer: -1 (no expiry) stays negative; -2 (the
// key expired between GET and PTTL) counts as just expiring.
func remaining(cmd *redis.DurationCmd) time.Duration {
	d, err := cmd.Result()
	if err != nil {
		return 0
	}
	switch {
	case d == -1 || d == -1*time.Millisecond:
		return -1
	case d < 0:
		return 0
	}
	return d
}

// OneLine is err's text on one line, for a log line or a message: go-redis
// joins one error per sentinel when none answers, one per line, the first
// behind its own prefix. A line that repeats one before (or the end of
// one before) is dropped, and the rest joined with "; ".
func OneLine(err error) string { return oneLineText(err.Error()) }

// oneLineText is OneLine of a text.
func oneLineText(text string) string {
	var out []string
	for _, l := range strings.Split(RedactArgs(text), "\n") {
		if l = strings.TrimSpace(l); l != "" && !slices.ContainsFunc(out, func(o string) bool { return o == l || strings.HasSuffix(o, ": "+l) }) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "; ")
}

// argsEcho starts Redis's echo of a refused command's arguments
// (logval.ArgsEcho).
const argsEcho = logval.ArgsEcho

// RedactArgs cuts Redis's echo of a command's arguments out of msg, each to
// the end of its line: "ERR unknown command 'auth' (arguments not shown)".
// Every error OneLine words passes through it, and go-redis's own lines;
// every line the plugin logs passes through RedactArgsInLine (the cgo
// layer's log queue).
func RedactArgs(msg string) string {
	for {
		i := strings.Index(msg, argsEcho)
		if i < 0 {
			return msg
		}
		end := strings.IndexByte(msg[i:], '\n')
		rest := ""
		if end >= 0 {
			rest = msg[i+end:]
		}
		msg = msg[:i] + " (arguments not shown)" + rest
	}
}

// RedactArgsInLine is RedactArgs for a log line. A value a client chose is
// quoted there by logval.Go, which escapes the echo's comma: the echo
// never appears in it, and so the cut, wherever it finds the echo, never
// shortens a client's own line (a client ID holding ", with args beginning
// with:"), and needs no tracking of quotes, which an operator's unquoted
// text holding '"' (a key_prefix) turned inside out (atk59: the password
// showed).
func RedactArgsInLine(line string) string { return RedactArgs(line) }

// ClaimThrottle writes username's throttle key (keys.Builder.Throttle) with
// reason for ttl, unless it exists: the one guess a throttled username's
// lapsed allowance admits goes to the broker that writes it, and the key
// throttles the username on every broker from then on. Reports whether this
// call wrote it. One round trip, bounded by ctx.
func (s *Store) ClaimThrottle(ctx context.Context, username, reason string, ttl time.Duration) (bool, error) {
	err := s.rdb.SetArgs(ctx, s.kb.Throttle(username), reason, redis.SetArgs{Mode: "NX", TTL: ttl}).Err()
	switch {
	case errors.Is(err, redis.Nil):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("store: claim throttle %s: %w", logval.Quote(s.kb.Throttle(username)), err)
	}
	return true, nil
}

// releaseScript deletes KEYS[1] if its value is ARGV[1].
var releaseScript = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`)

// ReleaseThrottle deletes username's throttle key if it still holds reason,
// the value a ClaimThrottle wrote: the claimed guess was the right
// password, so nothing failed and no throttle is due. A throttle written
// since (a failure's count) is kept. Reports whether it deleted the key.
func (s *Store) ReleaseThrottle(ctx context.Context, username, reason string) (bool, error) {
	n, err := releaseScript.Run(ctx, s.rdb, []string{s.kb.Throttle(username)}, reason).Int()
	if err != nil {
		return false, fmt.Errorf("store: release throttle: %w", err)
	}
	return n == 1, nil
}

// keyedErr is err, the error of a pipeline's Exec, with what and the key
// of the first of cmds that Redis answered with an error: a WRONGTYPE
// names no key, and the line that tells it must (atk68).
func keyedErr(what string, cmds []redis.Cmder, err error) error {
	for _, c := range cmds {
		ce := c.Err()
		if !IsReply(ce) {
			continue
		}
		if a := c.Args(); len(a) > 1 {
			if k, ok := a[1].(string); ok {
				return fmt.Errorf("%s %s: %w", what, logval.Quote(k), ce)
			}
		}
	}
	return fmt.Errorf("%s: %w", what, err)
}
