package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/internal/rediserr"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// Conn is one connection of a client ID, as brokers record it in Redis.
// Field order matters: the JSON encoding starts with the ID, which is how
// the compare-and-delete scripts recognise an entry.
//
// Principal is compared with the principals read back from Redis, so it
// must be in its keys.Tracking form already. As a safeguard, Redis never
// gets a principal, IP or broker name longer than keys.TrackingMax: such a
// value is stored hashed.
type Conn struct {
	ID             string `json:"id"`       // unique per connection: instance-sequence
	Instance       string `json:"instance"` // the plugin instance that holds it
	Broker         string `json:"broker"`   // broker_name, for people
	Principal      string `json:"principal"`
	IP             string `json:"ip"`
	ConnectedMs    int64  `json:"connected_ms"`
	DisconnectedMs int64  `json:"disconnected_ms,omitempty"`
}

// bounded returns c as Redis stores it: no string longer than
// keys.TrackingMax. A value in its keys.Tracking form is unchanged.
func (c Conn) bounded() Conn {
	c.Principal, c.IP, c.Broker = bound(c.Principal), bound(c.IP), bound(c.Broker)
	return c
}

// bound hashes a value longer than keys.TrackingMax, as keys.Tracking does;
// it leaves shorter ones, which may be keys.Tracking forms already, alone.
func bound(s string) string {
	if len(s) > keys.TrackingMax {
		return keys.Tracking(s)
	}
	return s
}

// encode returns c's JSON as Redis stores it: bounded, as jsonString
// writes it.
func (c Conn) encode() string {
	var a [256]byte
	return string(c.appendBounded(a[:0]))
}

// appendBounded appends encode's bytes.
func (c *Conn) appendBounded(dst []byte) []byte {
	b := c.bounded()
	return appendConn(dst, &b)
}

// prefix is how encode's bytes start: the compare-and-delete scripts match
// it to recognise c's entry.
func (c Conn) prefix() string {
	if plainID(c.ID) {
		return `{"id":"` + c.ID + `"`
	}
	return `{"id":` + strconv.Quote(c.ID)
}

// prefixOf is c.prefix() for enc, c's encoding: a part of it when the two
// agree, without allocating.
func (c *Conn) prefixOf(enc string) string {
	if n := len(`{"id":"`) + len(c.ID) + 1; plainID(c.ID) && len(enc) >= n {
		return enc[:n]
	}
	return c.prefix()
}

// decodeConns decodes a hash of connections (field to JSON), skipping
// entries without an ID, newest first.
func decodeConns(m map[string]string) []Conn {
	out := make([]Conn, 0, len(m))
	for _, v := range m {
		out = appendDecoded(out, v)
	}
	sortNewestFirst(out)
	return out
}

// decodeConnList is decodeConns for a hash as a script (or HGETALL)
// returns it, a flat list of fields and values, without building a map:
// a hash's fields are distinct, so its values are the list's odd elements.
func decodeConnList(list []any) []Conn {
	if len(list) < 2 {
		return []Conn{}
	}
	out := make([]Conn, 0, len(list)/2)
	for i := 1; i < len(list); i += 2 {
		v, _ := list[i].(string)
		out = appendDecoded(out, v)
	}
	sortNewestFirst(out)
	return out
}

// appendDecoded appends the Conn v holds, if it decodes and has an ID.
// It decodes in place: a Conn of its own would escape to the heap.
func appendDecoded(out []Conn, v string) []Conn {
	out = append(out, Conn{})
	if c := &out[len(out)-1]; decodeConn(v, c) != nil || c.ID == "" {
		return out[:len(out)-1]
	}
	return out
}

func sortNewestFirst(cs []Conn) {
	slices.SortStableFunc(cs, func(a, b Conn) int { return cmp.Compare(b.ConnectedMs, a.ConnectedMs) })
}

// casScript replaces (or, with an empty ARGV[3], deletes) field ARGV[1] of
// hash KEYS[1] only if its value starts with ARGV[2]: a connection's
// disconnect must not overwrite the record of a newer connection of the same
// principal (possibly on another broker), nor remove a newer live entry.
// It returns 1 when it did, 0 when the field was not there, -1 when it
// held another value (ConnWrite.Check tells the two apart: under
// clientid_conflict deny a reconnect's claim replaces the field before the
// old connection's end is written).
var casScript = redis.NewScript(casSrc)

const casSrc = `
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
if string.sub(v, 1, #ARGV[2]) ~= ARGV[2] then return -1 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1`

// leftScript records a connection's end in its principal's field ARGV[1]
// of seen hash KEYS[1]: its final record ARGV[3] (prefix ARGV[2]), ended at
// ARGV[5] (unix ms), with the hash's TTL renewed to the window ARGV[4]. It
// writes when the field holds this connection, or holds nothing (the hash
// expired while the connection lasted longer than the window), or holds
// another connection of the principal that ended before this one did (a
// quick reconnect that found the principal's use freshly recorded by the
// connection before it, and then lasted): the field then tells the
// principal's latest use. It keeps a record of a connection still live (it
// writes its own end) and one that ended later. The ended time is read from
// the record's own field: an encoded string escapes every quote, so a
// client's bytes inside one cannot look like the field. With ARGV[6]
// (Reap, whose end ARGV[5] is a bound, not a time seen: the earliest the
// connection may have ended), it keeps another connection's record that
// ended at ARGV[6] or later (a device whose broker died and that
// reconnected elsewhere: that connection's real end is as late as the
// written one may be), and this connection's own record once it has an
// end at ARGV[6] or later (its DISCONNECT's, real, written while the reap
// ran; not an earlier reap's, made by mistake while its broker paused).
// It returns 0 when it wrote nothing; when it wrote over this connection's
// own record, 2 + the end that record held (unix ms; 2: none), else 1
// (ConnWrite.Check reads it). (What it kept when it wrote nothing, another
// use of the principal, is not told: that use's connect may have skipped
// its read, atk41, so it vouches for nothing.) An integer:
// a disconnect's reply allocates nothing more (an array cost three
// allocations a disconnect).
var leftScript = redis.NewScript(leftSrc)

const leftSrc = `
local v = redis.call('HGET', KEYS[1], ARGV[1])
local own, d = false, nil
if v then
  d = string.match(v, '"disconnected_ms":(%-?%d+)')
  own = string.sub(v, 1, #ARGV[2]) == ARGV[2]
  if own then
    if ARGV[6] and d and tonumber(d) >= tonumber(ARGV[6]) then return 0 end
  elseif not d or tonumber(d) >= tonumber(ARGV[6] or ARGV[5]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if own then return 2 + (tonumber(d) or 0) end
return 1`

// liveScript records and reads a client ID's live connections in one atomic
// step on its live hash KEYS[1] (guard:conn:<id>, one key: it holds on a
// Redis Cluster too). It records ARGV[2] as the live connection of broker
// instance ARGV[1] unless that field holds a newer connection of the
// instance (connection IDs end in a sequence number, ARGV[3]; the broker
// thread and the conflict worker both record, and the worker may come
// late). ARGV[4] says what else it does:
//   - empty: nothing more; returns 0;
//   - 'read': returns the whole hash after recording;
//   - 'claim': first looks for a connection of another principal than
//     ARGV[5] held by another instance that counts (Brokers: ARGV[6] its
//     Since, ARGV[7] how many Dead follow, then Alive); if there is one,
//     records nothing and returns it, else records and returns an empty
//     string.
//
// Two brokers recording at the same moment are thus ordered by Redis:
// whichever comes second sees the first. With 'read' or 'claim' the hash is
// read once (HGETALL) and what is returned is that read with the record
// applied: what an HGETALL after the HSET would return, one command less.
// A ConnWrite with Sole (clientid_conflict flag) does without it: plain
// HSET, then HGETALL.
var liveScript = redis.NewScript(liveSrc)

const liveSrc = `
local all, cur
if ARGV[4] == 'claim' or ARGV[4] == 'read' then
  local claim, dead, alive, since = ARGV[4] == 'claim', {}, {}, 0
  if claim then
    since = tonumber(ARGV[6]) or 0
    local nd = tonumber(ARGV[7]) or 0
    for i = 8, 7 + nd do dead[ARGV[i]] = true end
    for i = 8 + nd, #ARGV do alive[ARGV[i]] = true end
  end
  all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if all[i] == ARGV[1] then
      cur = i
    elseif claim and not dead[all[i]] then
      local ok, c = pcall(cjson.decode, all[i + 1])
      if ok and type(c) == 'table' and c.principal ~= ARGV[5] and (alive[all[i]] or (tonumber(c.connected_ms) or 0) >= since) then return all[i + 1] end
    end
  end
else
  cur = redis.call('HGET', KEYS[1], ARGV[1])
end
local v = cur
if all then v = cur and all[cur + 1] end
local mine = tonumber(ARGV[3])
local theirs = v and tonumber(string.match(v, '^{"id":"[^"]*%-(%d+)"'))
if not (mine and theirs and theirs > mine) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  if all and cur then all[cur + 1] = ARGV[2] elseif all then all[#all + 1] = ARGV[1]; all[#all + 1] = ARGV[2] end
end
if ARGV[4] == 'read' then return all end
if ARGV[4] == 'claim' then return '' end
return 0`

// seenScript records and reads a client ID's past users in one atomic step
// on its seen hash KEYS[1] (guard:seen:<id>): it records ARGV[2] as the
// latest use of principal ARGV[1] (unless ARGV[1] is empty), keeps the hash
// ARGV[3] ms, and with ARGV[4] == '1' returns the whole hash after recording.
// Two principals recording at the same moment: the second sees the first.
// A ConnWrite with Sole does the same with plain commands (see writeConns).
var seenScript = redis.NewScript(seenSrc)

const seenSrc = `
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
if ARGV[4] == '1' then return redis.call('HGETALL', KEYS[1]) end
return 0`

// idsScript keeps principal's index of client IDs, KEYS[1]
// (keys.Builder.ClientIDs): the client IDs whose seen hash holds a use of
// the principal, scored by that use's time, at most ARGV[3] of them. It
// admits client ID ARGV[1] (its Tracking form) at score ARGV[2] (unix ms)
// when it is a member already or there is room, once full after dropping
// the members scored before ARGV[5] (older than the window: their uses are
// forgotten), keeping the index ARGV[4] ms, and returns 1; else it changes
// nothing and returns 0 (ZCARD, ZADD and PEXPIRE where there is room; ZSCORE
// and ZREMRANGEBYSCORE only once full): the caller then
// removes the use it wrote from that client ID's seen hash, where it still
// holds a record of that connection (refuseUses). Every write of a use, a
// connect's or an end's, is indexed, scored by its time. So a principal's recorded uses stay within
// the bound however many client IDs it connects with (atk82: one account
// connecting with new client IDs grew Redis by 610 bytes an ID for
// conflict_window, until Redis refused the writes that ban), and nothing a
// client does removes a use already recorded: a full index refuses the new
// client ID, it evicts no old one (atk83: with eviction, one member of a
// principal shared by many devices, such as every anonymous client, erased
// the others' uses by connecting with new client IDs, and another principal
// then took a device's client ID unseen). One key: it holds on a Cluster.
var idsScript = redis.NewScript(idsSrc)

const idsSrc = `
local max = tonumber(ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= max and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[5])
  if redis.call('ZCARD', KEYS[1]) >= max then return 0 end
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1`

// use is a principal's use of a client ID written to its seen hash: the
// principal's field, the client ID's Tracking form, the use's time, and the
// prefix of the connection's record written (Conn.prefix).
type use struct {
	field, tracked string
	atMs           int64
	prefix         string
}

// indexUse queues idsScript for u, written beside it to its seen hash; w
// is the batch's window arguments (windowArgs).
func (s *Store) indexUse(ctx context.Context, pipe redis.Pipeliner, full bool, u use, w windowArgs) indexed {
	if u.field == "" {
		return indexed{}
	}
	return indexed{use: u, cmd: s.eval(ctx, pipe, idsArgs, full, s.kb.ClientIDs(u.field), u.tracked, strconv.FormatInt(u.atMs, 10),
		s.clientIDsMax(), w.ttl, w.cutoff)}
}

// windowArgs is the window as idsScript takes it, boxed once a batch: its
// length (the index's TTL) and its start (unix ms), both in milliseconds.
type windowArgs struct{ ttl, cutoff any }

func windowOf(window time.Duration) windowArgs {
	ms := window.Milliseconds()
	return windowArgs{ttl: strconv.FormatInt(ms, 10), cutoff: strconv.FormatInt(time.Now().UnixMilli()-ms, 10)}
}

// indexed is one queued idsScript call and the use it indexes.
type indexed struct {
	use use
	cmd *redis.Cmd
}

// clientIDsMax is Options.ClientIDsMax as idsScript takes it, boxed once.
func (s *Store) clientIDsMax() any { return s.clients.idsMax }

// refuseUses removes each use whose index call refused it (0) from its seen
// hash, where the field still holds a record of that connection (casScript
// on its prefix: its connect's or its end's, both refused; another
// connection's newer write, in this batch or by another broker, is kept):
// one round trip, sent only when a call refused one. A call whose reply was lost
// (a timeout, Redis gone) leaves its use to the hash's TTL (conflict_window),
// as does a removal that fails: a use more than the bound per such failure.
func (s *Store) refuseUses(ctx context.Context, idx []indexed) {
	var refused []use
	for _, x := range idx {
		if x.cmd == nil {
			continue
		}
		if n, err := x.cmd.Int64(); err == nil && n == 0 {
			refused = append(refused, x.use)
		}
	}
	if len(refused) == 0 {
		return
	}
	s.clients.refusedUses.Add(uint64(len(refused)))
	run := func(full bool) error {
		pipe := s.rdb.Pipeline()
		for _, u := range refused {
			s.eval(ctx, pipe, casArgs, full, s.kb.SeenTracked(u.tracked), u.field, u.prefix, "")
		}
		cmds, err := pipe.Exec(ctx)
		s.markSent(cmds)
		return err
	}
	if err := run(false); isNoScript(err) {
		_ = run(true)
	}
}

// RefusedUses is how many uses this Store's writes recorded and then
// removed because their principal's index was full
// (conflict_clientids_max): the plugin logs its growth.
func (s *Store) RefusedUses() uint64 { return s.clients.refusedUses.Load() }

// seq returns the sequence number that ends connection ID id
// (instance-sequence), or "" when it has none: such an entry is always
// overwritten.
func seq(id string) string {
	i := strings.LastIndexByte(id, '-')
	if i < 0 {
		return ""
	}
	if _, err := strconv.ParseUint(id[i+1:], 10, 52); err != nil {
		return ""
	}
	return id[i+1:]
}

// State is what Redis knows of one client ID.
type State struct {
	Live  []Conn // live connections on every broker, newest first
	Seen  []Conn // the latest connection of each principal within the window, newest first
	Prior Prior  // with ConnWrite.Prior: what Redis held of Live before this write
	// ran: which of a Check write's commands ran (ranGone, ranLeft), for
	// WriteConns' replay: what a command that ran read is what was there.
	ran uint8
}

const (
	ranGone uint8 = 1 << iota
	ranLeft
)

// Prior is what Redis held of a connection before a write recorded it
// again (ConnWrite.Prior: a relist): whether its live entry was there
// (Listed), whether its principal's use was this connection's (Seen),
// and the end that use recorded for it (EndedMs, unix ms; 0: none, or
// Seen false).
type Prior struct {
	Listed  bool
	Seen    bool
	EndedMs int64
	// Missing (ConnWrite.Check only): the removal ran and found no live
	// entry of the connection (Listed false tells that only with Missing:
	// a store that does not read it leaves both false).
	Missing bool
}

// ConnWrite is one connection event of a broker instance for one client ID.
// ClientID is the client ID itself: Redis gets its keys.Tracking form; or,
// with Tracked, that form already (conflict tracking's, whose queue holds no
// client ID longer than keys.TrackingMax). A batch of writes is applied in
// its order; each key sees its writes in that order (also on a Redis
// Cluster, where one key is on one node).
type ConnWrite struct {
	ClientID string
	Tracked  bool // ClientID is in its keys.Tracking form already
	Instance string
	// Live: a new connection of Instance, recorded as its live one (and the
	// client ID added to Instance's brokerconns set), unless a newer one of
	// Instance is recorded already.
	Live *Conn
	// Gone: a connection of Instance that ended; its live entry is removed
	// if it is still there.
	Gone *Conn
	// Unlist: Instance holds no live connection of ClientID any more: the
	// client ID leaves Instance's brokerconns set.
	Unlist bool
	Seen   *Conn // record this connection as its principal's latest use
	Left   *Conn // record this connection's disconnect as its principal's latest use, unless a live or later-ended connection's is there (leftScript)
	// Read (with Live): return the client ID's state, each part read after
	// recording Live and Seen, on each key in the same atomic step (a
	// script) or, with Sole, right after the write in this connection's
	// order.
	Read bool
	// ReadLive (with Live, without Read or Ended): return the client ID's
	// live connections alone (State.Live), read after recording Live as
	// Read reads them: one HGETALL more with Sole, none without (the live
	// script returns the hash). A reconnect that skips its read (its client
	// ID read quiet a moment before) still sees a connection of its own
	// principal live on another broker: two devices sharing one principal
	// and client ID across brokers, each reconnecting while the other is
	// live, each skipping its read, displaced each other unseen (atk47).
	ReadLive bool
	// Sole: Instance's field of ClientID's live hash is written by this
	// writer alone, in batch order (clientid_conflict flag: no Claim from
	// the broker thread; a reap by any broker only deletes it). Then no
	// script is needed where nothing else can interleave:
	//   - Live is recorded with a plain HSET: no newer connection of
	//     Instance can be there already (the sequence guard of liveScript
	//     cannot trigger), and Read reads with HGETALL after it;
	//   - Gone is removed with a plain HDEL: the caller sets Sole on a
	//     Gone write only when Gone is the last connection of Instance
	//     it wrote there (or meant to: a write Redis did not take leaves an
	//     older connection of Instance, which has ended, or nothing);
	//     a write kept to be retried later must not have Sole, since a
	//     newer connection may be recorded by then;
	//   - Seen is recorded with plain PEXPIRE, HSET, PEXPIRE (and HGETALL
	//     with Read), see writeConns.
	// Left stays a script: another broker can record a newer use of the
	// same principal.
	Sole bool
	// Ended (with Live): Live's connection has ended already, its
	// disconnect folded into this write by the caller (clientid_conflict
	// flag only: under deny the broker thread's claim wrote the live field,
	// and only the disconnect's own write clears it). Live is then neither
	// recorded nor listed in Instance's brokerconns set; Read reads the live
	// hash as it is (HGETALL); Seen, the connection's final record
	// (DisconnectedMs set), is recorded and read back as for any connect.
	// No Gone, Unlist or Left is needed after it: nothing of it is live.
	Ended bool
	// Prior (with Live and Read, not Ended): State.Prior tells what Redis
	// held of Live before this write, read in the same pipeline, each
	// key's read just before its write (on a Cluster the live and seen
	// keys may be on two nodes).
	Prior bool
	// Check (with Gone): State.Prior tells what Redis held of Gone before
	// this write, from the replies of the write's own commands (no command
	// more): Listed, its live entry (or, with Sole, this instance's field)
	// was there and is removed now, Missing, it was not; Seen and EndedMs,
	// its principal's use was Gone's own record (with Left only: without
	// it, Seen is false).
	Check bool
	// Peek: nothing is written; the State is the client ID's live and seen
	// hashes as they are (ClientID and Tracked alone matter).
	Peek bool
}

// WriteConns applies a batch of writes in one round trip. It returns one
// State per write: the state read for those with Read (or ReadLive), zero
// for the others.
func (s *Store) WriteConns(ctx context.Context, ws []ConnWrite, window time.Duration) ([]State, error) {
	if len(ws) == 0 {
		return nil, nil
	}
	out, err := s.writeConns(ctx, ws, window, false)
	if isNoScript(err) {
		// The script cache was flushed (or this is a new node): send the
		// scripts themselves. Every write is idempotent, so replaying is safe,
		// and what is read is read after the replayed writes. What was
		// there before is what the first attempt read, where it read it:
		// on a Cluster, the nodes that knew the scripts ran the writes it
		// replays.
		first := out
		out, err = s.writeConns(ctx, ws, window, true)
		for i := range first {
			if i < len(out) && ws[i].Check {
				// A command that ran in the first attempt (a plain HDEL;
				// a script the node knew) read what was there; the
				// replay's ran after it, and reads what it left.
				if first[i].ran&ranGone != 0 {
					out[i].Prior.Listed, out[i].Prior.Missing = first[i].Prior.Listed, first[i].Prior.Missing
				}
				if first[i].ran&ranLeft != 0 {
					out[i].Prior.Seen, out[i].Prior.EndedMs = first[i].Prior.Seen, first[i].Prior.EndedMs
				}
				continue
			}
			if i < len(out) && ws[i].Prior {
				out[i].Prior.Listed = out[i].Prior.Listed && first[i].Prior.Listed
				out[i].Prior.Seen = out[i].Prior.Seen && first[i].Prior.Seen
				if first[i].Prior.EndedMs != 0 {
					out[i].Prior.EndedMs = first[i].Prior.EndedMs
				}
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("store: record connections: %w", err)
	}
	return out, nil
}

// The scripts' sources and hashes, boxed once: a batch passes them with
// every call.
var (
	casArgs  = scriptArgs{id: 0, src: casSrc, sha: casScript.Hash()}
	liveArgs = scriptArgs{id: 1, src: liveSrc, sha: liveScript.Hash()}
	seenArgs = scriptArgs{id: 2, src: seenSrc, sha: seenScript.Hash()}
	leftArgs = scriptArgs{id: 3, src: leftSrc, sha: leftScript.Hash()}
	idsArgs  = scriptArgs{id: 4, src: idsSrc, sha: idsScript.Hash()}
)

// evalScripts is how many scripts eval sends (scriptArgs.id below it).
const evalScripts = 5

type scriptArgs struct {
	id       int
	src, sha any
}

// eval queues script sc on one key: EVALSHA, or with full EVAL and the
// source. The arguments are Redis's own, so that one allocation (Do's)
// holds them all, and so that a ClusterClient routes on the key.
//
// A script not yet known to be in Redis's script cache (since this Store
// started, or since a new connection's loading call was refused:
// loadScripts) is sent by its source, every call of it, until a call by
// its source was compiled (markSent): so the first batches after a start
// do not meet NOSCRIPT, and are not replayed (WriteConns: a replay's reads
// see the batch's later writes of its first attempt; a conflict was
// reported twice). After a restart or a failover, each new connection
// loads the scripts first (loadScripts). A SCRIPT FLUSH on a connection
// already open, or a script Redis evicted, still answers NOSCRIPT: the
// callers' replays stay for those.
func (s *Store) eval(ctx context.Context, pipe redis.Pipeliner, sc scriptArgs, full bool, key any, argv ...any) *redis.Cmd {
	if !full && !s.clients.sent[sc.id].Load() {
		full = true
		s.clients.bySource.Add(1)
	}
	args := make([]any, 0, 4+len(argv))
	if full {
		args = append(args, "eval", sc.src)
	} else {
		args = append(args, "evalsha", sc.sha)
	}
	args = append(args, "1", key)
	return pipe.Do(ctx, append(args, argv...)...)
}

func (s *Store) writeConns(ctx context.Context, ws []ConnWrite, window time.Duration, full bool) ([]State, error) {
	type reads struct{ live, seen, priorLive, priorSeen, gone, left *redis.Cmd }
	rs := make([]reads, len(ws))
	win := windowOf(window)
	ttl := win.ttl
	var (
		idx []indexed // every principal's use written to a seen hash (Seen, Left), indexed
	)
	var (
		instance     string
		inst, setKey any // instance and its brokerconns set, boxed once per instance
		buf          []byte
	)
	ids := make([]string, len(ws)) // each write's client ID in its keys.Tracking form
	for i := range ws {
		if ids[i] = ws[i].ClientID; !ws[i].Tracked {
			ids[i] = keys.Tracking(ws[i].ClientID)
		}
	}
	runs := s.listRuns(ws, ids)
	starts, ends := runs, runs
	pipe := s.rdb.Pipeline()
	for i := range ws {
		w := &ws[i]
		for len(ends) > 0 && ends[0].end <= i { // a run of one (end -1) was sent with its entry
			if ends[0].end == i {
				pipe.Do(ctx, ends[0].args...) // the run's second SADD, after its entries (listRuns)
			}
			ends = ends[1:]
		}
		if inst == nil || w.Instance != instance {
			instance, inst, setKey = w.Instance, w.Instance, s.kb.BrokerConns(w.Instance)
		}
		tracked := ids[i]
		if w.Peek {
			rs[i].live = pipe.Do(ctx, "hgetall", s.kb.ConnTracked(tracked))
			rs[i].seen = pipe.Do(ctx, "hgetall", s.kb.SeenTracked(tracked))
			continue
		}
		var conn, seenKey, member any
		if w.Gone != nil || w.Live != nil {
			conn = s.kb.ConnTracked(tracked)
		}
		if w.Seen != nil || w.Left != nil || (w.Read && w.Live != nil) {
			seenKey = s.kb.SeenTracked(tracked)
		}
		if w.Unlist || (w.Live != nil && !w.Ended) {
			member = tracked
		}
		var left string // w.Left as stored
		if w.Left != nil {
			buf = w.Left.appendBounded(buf[:0])
			left = string(buf)
		}
		if w.Gone != nil {
			var prefix string
			if w.Left != nil && w.Left.ID == w.Gone.ID {
				prefix = w.Left.prefixOf(left)
			} else {
				prefix = w.Gone.prefix()
			}
			var gone *redis.Cmd
			if w.Sole {
				gone = pipe.Do(ctx, "hdel", conn, inst)
			} else {
				gone = s.eval(ctx, pipe, casArgs, full, conn, inst, prefix, "")
			}
			if w.Check {
				rs[i].gone = gone
			}
		}
		if w.Unlist {
			pipe.Do(ctx, "srem", setKey, member)
		}
		var single []any // w's listing, a run of one: sent right after its entry
		if len(starts) > 0 && starts[0].at == i {
			if starts[0].end < 0 {
				single = starts[0].args
			} else {
				pipe.Do(ctx, starts[0].args...) // the run's first SADD, before its entries
			}
			starts = starts[1:]
		}
		if w.Prior && w.Read && w.Live != nil && !w.Ended {
			// HMGET: a field not there is a nil element, not an error
			// that would fail the pipeline.
			rs[i].priorLive = pipe.Do(ctx, "hmget", conn, inst)
			rs[i].priorSeen = pipe.Do(ctx, "hmget", seenKey, bound(w.Live.Principal))
		}
		var live string // w.Live as stored
		if w.Live != nil && w.Ended {
			if w.Read {
				rs[i].live = pipe.Do(ctx, "hgetall", conn)
			}
		} else if w.Live != nil {
			mode := ""
			if w.Read || w.ReadLive {
				mode = "read"
			}
			buf = w.Live.appendBounded(buf[:0])
			live = string(buf)
			if w.Sole {
				pipe.Do(ctx, "hset", conn, inst, live)
				if w.Read || w.ReadLive {
					rs[i].live = pipe.Do(ctx, "hgetall", conn)
				}
			} else {
				rs[i].live = s.eval(ctx, pipe, liveArgs, full, conn, inst, live, seq(w.Live.ID), mode)
			}
			if single != nil {
				pipe.Do(ctx, single...)
			}
		}
		if w.Seen != nil || (w.Read && w.Live != nil) {
			field, value, read := "", "", "0"
			if w.Seen != nil {
				field, value = bound(w.Seen.Principal), live
				if w.Live == nil || w.Ended || *w.Seen != *w.Live { // Ended: Live not encoded
					buf = w.Seen.appendBounded(buf[:0])
					value = string(buf)
				}
			}
			if w.Read && w.Live != nil {
				read = "1"
			}
			if field != "" {
				idx = append(idx, s.indexUse(ctx, pipe, full, use{field: field, tracked: tracked, atMs: w.Seen.ConnectedMs, prefix: w.Seen.prefixOf(value)}, win))
			}
			switch {
			case !w.Sole:
				rs[i].seen = s.eval(ctx, pipe, seenArgs, full, seenKey, field, value, ttl, read)
			case field != "":
				// seenScript's HSET and PEXPIRE, plain. A PEXPIRE first: of a
				// hash whose last record is a window old, the TTL may end
				// between the HSET and the PEXPIRE after it (the two are not
				// one step any more), taking this record with it; with its
				// TTL renewed first (window >= 1 min) it cannot. A hash
				// that is not there is made by the HSET and gets its TTL
				// from the second PEXPIRE. Same bytes, same TTL as the script.
				pipe.Do(ctx, "pexpire", seenKey, ttl)
				pipe.Do(ctx, "hset", seenKey, field, value)
				pipe.Do(ctx, "pexpire", seenKey, ttl)
			}
			if w.Sole && read == "1" {
				// After this connection's HSET, in its order: of two
				// principals recording at the same moment, whichever
				// HGETALL runs last runs after both HSETs, so the second
				// sees the first, as with the script.
				rs[i].seen = pipe.Do(ctx, "hgetall", seenKey)
			}
		}
		if w.Left != nil {
			cmd := s.eval(ctx, pipe, leftArgs, full, seenKey, bound(w.Left.Principal), w.Left.prefixOf(left), left, ttl, strconv.FormatInt(w.Left.DisconnectedMs, 10))
			if w.Check {
				rs[i].left = cmd
			}
			// Every end is indexed too, scored by its time: the index then
			// ages a use out only a window after the principal's last write
			// of it (atk84: scored by the connect alone, connections held
			// near a window and then ended kept their uses a window more,
			// past the index, and the bound doubled).
			idx = append(idx, s.indexUse(ctx, pipe, full, use{field: bound(w.Left.Principal), tracked: tracked, atMs: w.Left.DisconnectedMs, prefix: w.Left.prefixOf(left)}, win))
		}
	}
	for _, r := range ends { // the last run's second SADD (end: len(ws))
		if r.end == len(ws) {
			pipe.Do(ctx, r.args...)
		}
	}
	err := s.execIndexed(ctx, pipe, idx, full)
	if err != nil {
		// What was there before, read where it could be (WriteConns
		// keeps it for a replay).
		out := make([]State, len(ws))
		for i := range ws {
			if ws[i].Check {
				out[i].Prior, out[i].ran = goneOf(rs[i].gone, rs[i].left)
				continue
			}
			out[i].Prior = priorOf(rs[i].priorLive, rs[i].priorSeen, ws[i].Live)
		}
		return out, err
	}
	out := make([]State, len(ws))
	for i, w := range ws {
		switch {
		case w.Peek:
			out[i] = State{Live: connsOf(rs[i].live), Seen: connsOf(rs[i].seen)}
		case w.Check:
			out[i].Prior, out[i].ran = goneOf(rs[i].gone, rs[i].left)
		case w.Read && w.Live != nil:
			out[i] = State{Live: connsOf(rs[i].live), Seen: connsOf(rs[i].seen), Prior: priorOf(rs[i].priorLive, rs[i].priorSeen, w.Live)}
		case w.ReadLive && w.Live != nil && !w.Ended:
			out[i] = State{Live: connsOf(rs[i].live)}
		}
	}
	return out, nil
}

// listRunMax is the most listings in one run of writeConns (listRuns): the
// second SADD of each comes within that many listing writes of each entry.
const listRunMax = 16

// listRun is a run of writeConns' listings: the writes it sends its two
// SADDs with (at, end; end -1: a run of one, one SADD right after its
// entry) and their arguments, the command's own.
type listRun struct {
	at, end int
	args    []any
}

// listRuns is ws's listings (Live, not Ended: the client ID, ids[i], into
// Instance's brokerconns set) in fewer SADDs than one a listing, each
// write's own right after its live entry as it was, where their order
// allows: one run per stretch of writes of one instance that no Unlist
// cuts, of at most listRunMax listings. A run of two or more is listed
// twice: with its first write (at: after that write's SREM, before any
// entry of the run) and at the write that cuts it (end: before that
// write's commands; len(ws): after the pipeline's last write). A run of
// one (connects and disconnects in turn) is one SADD right after its
// entry, as before (end -1). So:
//   - each SREM of a member still comes between the listings before it and
//     those after it;
//   - a pipeline that Redis runs only in part (a connection lost midway)
//     leaves members listed without an entry, which the member's next
//     disconnect (its SREM) or the broker's stop removes, not entries
//     unlisted;
//   - the second SADD comes no earlier than each write's own came, so
//     whatever runs between the first and an entry (another broker's reap
//     of the set; a batch sent after this one timed out, unlisting a
//     member before this batch writes its entry) leaves the member listed
//     wherever the write's own SADD left it listed, if the pipeline runs to
//     the end. One cut short after an entry and before its run's second
//     SADD, with a later batch's SREM of the member run between, leaves the
//     entry unlisted: the write's own SADD left one command for that, a run
//     the commands of up to listRunMax writes.
//
// On a Redis Cluster each node's part of a pipeline is sent on its own, and
// no order holds between the set's node and an entry's, as before. A
// reconnect storm's batch of connects is two SADDs for every listRunMax,
// where it was one a connect (the worker's BenchmarkWorkerRestartStorm: 11
// commands a device, now 10.125). Never more SADDs than listings.
func (s *Store) listRuns(ws []ConnWrite, ids []string) []listRun {
	var runs []listRun
	open := false
	finish := func(end int) {
		if r := &runs[len(runs)-1]; len(r.args) == 3 {
			r.end = -1
		} else {
			r.end = end
		}
		open = false
	}
	for i := range ws {
		w := &ws[i]
		if w.Peek {
			continue
		}
		if open && (w.Unlist || w.Instance != ws[runs[len(runs)-1].at].Instance) {
			finish(i)
		}
		if w.Live == nil || w.Ended {
			continue
		}
		if open && len(runs[len(runs)-1].args) == 2+listRunMax {
			finish(i)
		}
		if !open {
			runs = append(runs, listRun{at: i, args: []any{"sadd", s.kb.BrokerConns(w.Instance)}})
			open = true
		}
		r := &runs[len(runs)-1]
		r.args = append(r.args, ids[i])
	}
	if open {
		finish(len(ws))
	}
	return runs
}

// execIndexed sends pipe, whose index calls are idx, and removes the uses
// they refused (refuseUses). Its error is the batch's (indexAfter).
func (s *Store) execIndexed(ctx context.Context, pipe redis.Pipeliner, idx []indexed, full bool) error {
	cmds, err := pipe.Exec(ctx)
	s.markSent(cmds)
	if err != nil && len(idx) > 0 {
		return s.indexAfter(ctx, cmds, idx, full)
	}
	s.refuseUses(ctx, idx)
	return err
}

// indexAfter judges a batch that failed with index calls in it (idx): an
// index call that met NOSCRIPT does not fail it, so that it alone never
// makes WriteConns replay the batch; any other error, an index call's
// included (WRONGTYPE, a node down on a Cluster), does, as before. A replay
// re-runs every write and every read; a read then sees what a later write
// of the same batch wrote in the first attempt (a fresh Redis, or one
// whose scripts were flushed, answers the first batch's EVALSHA with
// NOSCRIPT: under clientid_conflict flag a batch of plain commands and
// index calls was replayed, and a connect then read the other principal's
// use written after it, so one conflict was reported twice). Index calls
// that met NOSCRIPT are sent again with the script's source, in their
// order, in one pipeline after the batch: each touches only its
// principal's index, which nothing but index calls writes, so each admits
// or refuses as it would have in place; an error of theirs is the
// batch's. That holds when the batch failed otherwise too (atk86: the
// conflict worker keeps only a failed batch's disconnects for its retry,
// so a connect's use already written was left unindexed). Only when the
// other commands met NOSCRIPT is the batch replayed whole (WriteConns),
// index calls included, and the refusals are left to the replay (else a
// use refused would be counted twice).
func (s *Store) indexAfter(ctx context.Context, cmds []redis.Cmder, idx []indexed, full bool) error {
	ids := make(map[redis.Cmder]struct{}, len(idx))
	for _, x := range idx {
		if x.cmd != nil {
			ids[x.cmd] = struct{}{}
		}
	}
	var err error
	for _, c := range cmds {
		if _, ok := ids[c]; ok && isNoScript(c.Err()) {
			continue
		}
		if err = c.Err(); err != nil {
			break
		}
	}
	if err != nil && !full && isNoScript(err) {
		return err // replayed whole, index calls included
	}
	pipe := s.rdb.Pipeline()
	for i, x := range idx {
		if x.cmd != nil && isNoScript(x.cmd.Err()) {
			a := x.cmd.Args() // evalsha, sha, 1, key, argv...
			idx[i].cmd = s.eval(ctx, pipe, idsArgs, true, a[3], a[4:]...)
		}
	}
	again, err2 := pipe.Exec(ctx)
	s.markSent(again)
	s.refuseUses(ctx, idx)
	if err == nil {
		err = err2
	}
	return err
}

// isNoScript says whether err is Redis's NOSCRIPT (a script not in its
// cache): every caller that sends scripts by their hash sends them again
// by their source on it.
func isNoScript(err error) bool {
	return err != nil && strings.Contains(err.Error(), "NOSCRIPT")
}

// goneOf is what a Check write's removal (HDEL or casScript: 1, removed)
// and leftScript (nil: none queued) tell of the connection before it, and
// which of them ran. A command that failed tells nothing: not listed, not
// seen.
func goneOf(gone, left *redis.Cmd) (Prior, uint8) {
	var p Prior
	var ran uint8
	if gone != nil && gone.Err() == nil {
		n, _ := gone.Int64()
		p.Listed, p.Missing = n == 1, n == 0
		ran |= ranGone
	}
	if left == nil || left.Err() != nil {
		return p, ran
	}
	ran |= ranLeft
	if n, _ := left.Int64(); n >= 2 {
		p.Seen, p.EndedMs = true, n-2
	}
	return p, ran
}

// priorOf is what the HMGETs live and seen (nil: none queued) read of c.
// A read that failed tells nothing: not listed, no end.
func priorOf(live, seen *redis.Cmd, c *Conn) Prior {
	var p Prior
	if live == nil || c == nil {
		return p
	}
	var got Conn
	if v := firstString(live); v != "" && decodeConn(v, &got) == nil {
		p.Listed = got.ID == c.ID
	}
	got = Conn{}
	if v := firstString(seen); v != "" && decodeConn(v, &got) == nil && got.ID == c.ID {
		p.Seen, p.EndedMs = true, got.DisconnectedMs
	}
	return p
}

// firstString is the first element of an HMGET's reply as a string ("":
// nil, an error, or no reply).
func firstString(cmd *redis.Cmd) string {
	if cmd == nil || cmd.Err() != nil {
		return ""
	}
	list, _ := cmd.Val().([]any)
	if len(list) == 0 {
		return ""
	}
	v, _ := list[0].(string)
	return v
}

// connsOf decodes the hash a script returned as a flat list of fields and
// values, or HGETALL as a map (RESP3) or such a list (RESP2).
func connsOf(cmd *redis.Cmd) []Conn {
	if cmd == nil {
		return decodeConnList(nil)
	}
	if m, ok := cmd.Val().(map[any]any); ok {
		out := make([]Conn, 0, len(m))
		for _, v := range m {
			s, _ := v.(string)
			out = appendDecoded(out, s)
		}
		sortNewestFirst(out)
		return out
	}
	list, _ := cmd.Val().([]any)
	return decodeConnList(list)
}

// Brokers is which instances' live entries count for a claim: those in
// Alive (their lease ran at the caller's last renewal), not those in Dead
// (it had run out), and those of an instance in neither (a broker started
// since; or one that died before it ever renewed, never reaped) when they
// connected at or after Since (unix ms).
type Brokers struct {
	Alive, Dead []string
	Since       int64
}

// Claim records c as its instance's live connection of clientID, unless
// another principal holds the client ID live on an instance other than c's
// whose entries count (b): then it records nothing and returns that holder. Both happen in
// one atomic step on the client ID's live hash, so of two brokers claiming
// one client ID for two principals at the same moment, exactly one gets it.
// c.Principal must be in its keys.Tracking form. One round trip (two when
// Redis lost its script cache), bounded by ctx.
func (s *Store) Claim(ctx context.Context, clientID string, c Conn, b Brokers) (*Conn, error) {
	args := make([]any, 0, 7+len(b.Dead)+len(b.Alive))
	args = append(args, c.Instance, c.encode(), seq(c.ID), "claim", bound(c.Principal), b.Since, len(b.Dead))
	for _, a := range b.Dead {
		args = append(args, a)
	}
	for _, a := range b.Alive {
		args = append(args, a)
	}
	// The client ID joins this instance's brokerconns set in the same round
	// trip (pipelined; another slot on a cluster): were the broker to crash
	// right after the claim, the others' reap of its lease must find the
	// live entry. A member whose claim is refused is harmless: the reap finds
	// no field of this instance there.
	claim := func(eval bool) (string, error) {
		pipe := s.rdb.Pipeline()
		pipe.SAdd(ctx, s.kb.BrokerConns(c.Instance), keys.Tracking(clientID))
		var cmd *redis.Cmd
		if eval {
			cmd = liveScript.Eval(ctx, pipe, []string{s.kb.Conn(clientID)}, args...)
		} else {
			cmd = liveScript.EvalSha(ctx, pipe, []string{s.kb.Conn(clientID)}, args...)
		}
		cmds, err := pipe.Exec(ctx)
		if perr := rediserr.PipelineErr(cmds, err); perr != nil {
			return "", perr
		}
		return cmd.Text()
	}
	v, err := claim(false)
	if isNoScript(err) {
		v, err = claim(true)
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("store: claim client id %s: %w", logval.Quote(s.kb.Conn(clientID)), err)
	}
	if v == "" {
		return nil, nil
	}
	var h Conn
	if err := decodeConn(v, &h); err != nil {
		return nil, fmt.Errorf("store: claim client id: bad live entry: %w", err)
	}
	return &h, nil
}

// LiveConns returns the live connections of clientID on every broker.
func (s *Store) LiveConns(ctx context.Context, clientID string) ([]Conn, error) {
	m, err := s.rdb.HGetAll(ctx, s.kb.Conn(clientID)).Result()
	if err != nil {
		return nil, fmt.Errorf("store: live conns %s: %w", logval.Quote(s.kb.Conn(clientID)), err)
	}
	return decodeConns(m), nil
}

// takeoverScript records one takeover in KEYS[1], the client ID's hash of
// the connections that took it over (TakeoverConns): ARGV[3], the
// connection's ID, a field, unless the hash holds ARGV[2] (takeover_limit)
// already; and returns how many it holds. The first field sets the window,
// ARGV[1] ms, as does a hash found without an expiry: one step, so the
// hash is never left without one. The same connection recorded again (a
// pipeline go-redis sent again after a connection error, when Redis had run
// it) is not counted twice, where the counter it replaced (INCR) was.
var takeoverScript = redis.NewScript(`
local n = redis.call('HLEN', KEYS[1])
if n < tonumber(ARGV[2]) then n = n + redis.call('HSETNX', KEYS[1], ARGV[3], '1') end
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n`)

// Takeover is one duplicate connection to count (CountTakeovers): its
// client ID in its keys.Tracking form, and the connection's ID.
type Takeover struct {
	Tracked string
	ConnID  string
}

// CountTakeover counts connID's takeover of clientID and returns how many
// connections took it over within window (a fixed window from the first),
// at most limit (takeover_limit).
func (s *Store) CountTakeover(ctx context.Context, clientID, connID string, window time.Duration, limit int) (int64, error) {
	n, err := s.CountTakeovers(ctx, []Takeover{{Tracked: keys.Tracking(clientID), ConnID: connID}}, window, limit)
	if err != nil {
		return 0, err
	}
	return n[0], nil
}

// CountTakeovers counts each of ts (a client ID may come more than once,
// each connection counted once) in one round trip, and returns each
// count, as CountTakeover one after the other would; a count stops at
// limit. Before, a batch's duplicates were counted one round trip each, in
// turn: a fleet whose connections were all taken over at once (a NAT that
// dropped every flow) cost the worker 54 to 67 µs of CPU a device
// (BenchmarkWorkerTakeoverStorm). Calls that met NOSCRIPT (a flushed script
// cache) did not run: only they are sent again, by their source, in a
// second round trip. A call that failed otherwise is -1 in the counts,
// and the first such error is returned with them: the others ran, and
// their counts hold (a review: one client ID's key of another type, or one
// lost reply, had every count of the batch dropped, and a takeover that
// reached takeover_limit unreported). On an error of the round trip itself
// every count is -1.
func (s *Store) CountTakeovers(ctx context.Context, ts []Takeover, window time.Duration, limit int) ([]int64, error) {
	ms := window.Milliseconds()
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(ts))
	for i, tk := range ts {
		cmds[i] = takeoverScript.EvalSha(ctx, pipe, []string{s.kb.TakeoverConnsTracked(tk.Tracked)}, ms, limit, tk.ConnID)
	}
	_, _ = pipe.Exec(ctx) // each call's error is read below
	var again redis.Pipeliner
	for i, tk := range ts {
		if isNoScript(cmds[i].Err()) {
			if again == nil {
				again = s.rdb.Pipeline()
			}
			cmds[i] = takeoverScript.Eval(ctx, again, []string{s.kb.TakeoverConnsTracked(tk.Tracked)}, ms, limit, tk.ConnID)
		}
	}
	if again != nil {
		_, _ = again.Exec(ctx)
	}
	out := make([]int64, len(ts))
	var first error
	for i, cmd := range cmds {
		n, err := cmd.Int64()
		if err != nil {
			out[i] = -1
			if first == nil {
				first = fmt.Errorf("store: count takeover: %w", err)
			}
			continue
		}
		out[i] = n
	}
	return out, first
}

// LeaseEnds returns when each of instances' leases ends (its score in
// guard:brokers, unix ms), in one round trip; an instance with no lease
// (reaped, or never renewed) is not in the map.
func (s *Store) LeaseEnds(ctx context.Context, instances []string) (map[string]int64, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.FloatCmd, len(instances))
	for i, in := range instances {
		cmds[i] = pipe.ZScore(ctx, s.kb.Brokers(), in)
	}
	_, err := pipe.Exec(ctx)
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("store: lease ends: %w", err)
	}
	out := make(map[string]int64, len(instances))
	for i, c := range cmds {
		v, err := c.Result()
		switch {
		case err == nil:
			out[instances[i]] = int64(max(min(v, math.MaxInt64/2), math.MinInt64/2))
		case !errors.Is(err, redis.Nil):
			return nil, fmt.Errorf("store: lease ends: %w", err)
		}
	}
	return out, nil
}

// Lease is what a renewal of a broker's lease (RenewLease) learnt.
type Lease struct {
	Live map[string]bool // the instances whose lease runs, this one's included
	Dead []string        // instances whose lease ran out (at most 100 a renewal)
	// Lapsed: this instance's lease had run out before the renewal, or
	// was gone from guard:brokers. Other brokers may then have reaped its
	// live entries (while it was paused or cut off; one reap may still be
	// under way, and stops at this renewal: ErrLeaseRuns), or Redis lost
	// them (flushed, restarted empty), and the broker must record them
	// again (conflicts.Deps.Relist). The first renewal of an instance is
	// Lapsed too.
	Lapsed bool
}

// RenewLease extends instance's lease to now+ttl and returns the instances
// whose lease still runs and those whose lease ran out (dead brokers),
// and whether instance's own had lapsed. One round trip: the lease's
// score is read before the ZADD, in the same pipeline on the same key.
func (s *Store) RenewLease(ctx context.Context, instance string, ttl time.Duration) (Lease, error) {
	now := time.Now().UnixMilli()
	key := s.kb.Brokers()
	pipe := s.rdb.Pipeline()
	was := pipe.ZScore(ctx, key, instance) // redis.Nil: gone
	add := pipe.ZAdd(ctx, key, redis.Z{Score: float64(now + ttl.Milliseconds()), Member: instance})
	alive := pipe.ZRangeByScore(ctx, key, &redis.ZRangeBy{Min: strconv.FormatInt(now, 10), Max: "+inf"})
	gone := pipe.ZRangeByScore(ctx, key, &redis.ZRangeBy{Min: "-inf", Max: "(" + strconv.FormatInt(now, 10), Count: 100})
	cmds, err := pipe.Exec(ctx) // each command's error is read below
	if perr := rediserr.PipelineErr(cmds, err); perr != nil {
		return Lease{}, fmt.Errorf("store: renew lease: %w", perr)
	}
	if err := errors.Join(add.Err(), alive.Err(), gone.Err()); err != nil {
		return Lease{}, fmt.Errorf("store: renew lease: %w", err)
	}
	if err := was.Err(); err != nil && !errors.Is(err, redis.Nil) {
		return Lease{}, fmt.Errorf("store: renew lease: %w", err)
	}
	score, err := was.Result()
	l := Lease{Live: map[string]bool{}, Dead: gone.Val(), Lapsed: err != nil || !(score >= float64(now))}
	for _, m := range alive.Val() {
		l.Live[m] = true
	}
	return l, nil
}

// Reap ends every connection instance holds live: for a broker shutting
// down (clients still connected at shutdown get no DISCONNECT), or one
// that died without cleaning up. Each one's live entry is read, recorded
// as its principal's latest use (leftScript, whose hash keeps window), and
// then deleted if it is still that connection; then instance's set and
// lease go. Safe to run on several brokers at once.
//
// The end is what a disconnect would have written: a device connected for
// longer than window was in use until its broker stopped, and without it
// the principal's record (written at the connect, with no end) counted
// from the connect, so it was forgotten the moment the broker stopped, and
// another principal taking the client ID then was not flagged.
//
// lease 0: instance is this broker, stopping at endMs (unix ms): that is
// each connection's end, and its lease's, set first (what the stop does
// not reach is a dead broker's at once). Otherwise instance died, and lease is its
// broker_lease (this broker's, the same on every broker): its connections
// ended after its last renewal and by its lease's end (its score in
// guard:brokers), whenever the reap runs (the restarted broker's own first
// renewal, hours later); the end written is the lease's end (or endMs,
// now, if that came first), the same for every broker reaping it, and the
// earliest it may have been is lease before that. A lease that runs at
// endMs (the broker came back, paused or cut off, since the caller saw it
// lapse) is not reaped: ErrLeaseRuns, also when it comes back while the
// reap runs (read again before each batch's writes and before the set and
// lease go; what is reaped by then stays reaped). No end is before the
// connection's connect.
//
// The end goes over the principal's record unless that record is live,
// ended at or after the earliest end (another connection's, such as the
// device's newer one elsewhere after its broker died; or this one's own,
// written by its DISCONNECT while the reap ran).
//
// A principal whose JSON has U+FFFD (not UTF-8: Mosquitto refuses such a
// username, certificate IDs are hex) gets no end: its record's field is
// its raw bytes, which the live entry's JSON no longer holds.
//
// Cost: per 500 client IDs, two round trips (HGET each, then leftScript
// and a compare-and-delete each), where the delete alone was one; for a
// dead broker, one more (its lease read again).
func (s *Store) Reap(ctx context.Context, instance string, endMs int64, lease, window time.Duration) error {
	_, err := s.ReapCount(ctx, instance, endMs, lease, window)
	return err
}

// ReapCount is Reap, and how many live entries of instance it found to
// end (so many ended, unless another broker's reap of the same instance
// or the connection's own end came first): 0 when another reap had
// already ended them all, as a broker's own stop may just have, its
// lease ended at the stop and its reap under way (the caller then has
// nothing to tell).
func (s *Store) ReapCount(ctx context.Context, instance string, endMs int64, lease, window time.Duration) (int, error) {
	found := 0
	var leaseErr error // this broker's stop could not end its lease
	now, earliest := endMs, endMs
	if lease <= 0 {
		// This broker stopping: its lease ends now, before the first
		// connection is reaped. A stop that runs out of time (the
		// plugin's 1.5 s: about 65 000 held connections) leaves the
		// rest to a dead broker's reap, and from every broker's next
		// renewal, which names this one dead, its live entries no
		// longer count (the conflicts package's leaseView). Before,
		// they counted until the lease ran out (broker_lease after the
		// last renewal): a fleet reconnecting to the restarted broker
		// was, device by device, a takeover of its own connection on a
		// live broker, one more round trip each (BenchmarkWorkerRestartStorm
		// at 200 000 devices: 38 to 41 µs of the worker's CPU a
		// reconnect, not 10).
		// XX: a lease already gone (reaped by another broker) is not
		// made again. A lease that cannot be written (its Cluster shard
		// down) does not keep the connections on the other shards from
		// their end: the reap goes on, and reports it.
		if err := s.rdb.ZAddXX(ctx, s.kb.Brokers(), redis.Z{Score: float64(endMs), Member: instance}).Err(); err != nil {
			leaseErr = fmt.Errorf("store: reap: end the lease: %w", err)
		}
	}
	if lease > 0 {
		score, err := s.leaseEnd(ctx, instance, now)
		switch {
		case err == nil:
			endMs = int64(max(score, math.MinInt64/2)) // -inf: before any connect
			earliest = endMs - lease.Milliseconds()
		case errors.Is(err, redis.Nil): // no lease (reaped already): now is the bound
			earliest = endMs - lease.Milliseconds()
		default:
			return found, err
		}
	}
	// Before each batch's writes, and before the set and lease go, a dead
	// broker's lease is read again: one back from a pause meanwhile keeps
	// what is not yet reaped (ErrLeaseRuns).
	recheck := func() error {
		if lease <= 0 {
			return nil
		}
		if _, err := s.leaseEnd(ctx, instance, now); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		return nil
	}
	set := s.kb.BrokerConns(instance)
	var cursor uint64
	for {
		ids, next, err := s.rdb.SScan(ctx, set, cursor, "", 500).Result()
		if err != nil {
			return found, fmt.Errorf("store: reap: %w", err)
		}
		if len(ids) > 0 {
			n, err := s.reapIDs(ctx, instance, ids, endMs, earliest, window, recheck)
			found += n
			if err != nil {
				return found, err
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	if reapScanned != nil {
		reapScanned()
	}
	if err := recheck(); err != nil {
		return found, err
	}
	if err := s.rdb.Del(ctx, set).Err(); err != nil {
		return found, fmt.Errorf("store: reap: %w", err)
	}
	if err := s.rdb.ZRem(ctx, s.kb.Brokers(), instance).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return found, fmt.Errorf("store: reap: %w", err)
	}
	return found, leaseErr
}

// ErrLeaseRuns is Reap's answer for a broker whose lease runs again (back
// from a pause, or cut off from Redis and back): what is not reaped yet is
// left to it.
var ErrLeaseRuns = errors.New("store: reap: the broker's lease runs again")

// leaseEnd is instance's lease end (its score in guard:brokers; redis.Nil:
// none), or ErrLeaseRuns when it is now or later.
func (s *Store) leaseEnd(ctx context.Context, instance string, now int64) (float64, error) {
	score, err := s.rdb.ZScore(ctx, s.kb.Brokers(), instance).Result()
	switch {
	case err == nil && score >= float64(now):
		return 0, ErrLeaseRuns
	case err != nil && !errors.Is(err, redis.Nil):
		return 0, fmt.Errorf("store: reap: %w", err)
	}
	return score, err
}

// reapHook and reapScanned, when set (tests), run between reapIDs' read
// and its writes, and between Reap's scan and its removal of the set and
// lease.
var reapHook, reapScanned func()

// reapIDs ends instance's live connections of ids, client IDs in their
// keys.Tracking form (Reap).
func (s *Store) reapIDs(ctx context.Context, instance string, ids []string, endMs, earliest int64, window time.Duration, recheck func() error) (int, error) {
	gets, err := s.readEntries(ctx, instance, ids)
	if err != nil {
		return 0, fmt.Errorf("store: reap: %w", err)
	}
	found := 0
	for _, g := range gets {
		if g.Err() == nil {
			found++
		}
	}
	if reapHook != nil {
		reapHook()
	}
	if err := recheck(); err != nil {
		return 0, err
	}
	win := windowOf(window)
	ttl := win.ttl
	run := func(full bool) error {
		pipe := s.rdb.Pipeline()
		var idx []indexed
		for i, id := range ids {
			v, err := gets[i].Result()
			if err != nil {
				continue // no entry of instance: nothing to end
			}
			conn := s.kb.ConnTracked(id)
			var c Conn
			if decodeConn(v, &c) != nil || c.ID == "" {
				// Not a record of ours: nothing to end; deleted if unchanged.
				s.eval(ctx, pipe, casArgs, full, conn, instance, v, "")
				continue
			}
			if !strings.ContainsRune(c.Principal, utf8.RuneError) {
				c.DisconnectedMs = max(endMs, c.ConnectedMs)
				var a [256]byte
				rec := string(c.appendBounded(a[:0]))
				s.eval(ctx, pipe, leftArgs, full, s.kb.SeenTracked(id), bound(c.Principal), c.prefixOf(rec), rec, ttl,
					strconv.FormatInt(c.DisconnectedMs, 10), strconv.FormatInt(max(earliest, c.ConnectedMs), 10))
				idx = append(idx, s.indexUse(ctx, pipe, full, use{field: bound(c.Principal), tracked: id, atMs: c.DisconnectedMs, prefix: c.prefixOf(rec)}, win))
			}
			// Deleted only if it is still this connection: a broker whose
			// lease ran out while it lived on (cut off from Redis) may
			// have recorded a newer one meanwhile.
			s.eval(ctx, pipe, casArgs, full, conn, instance, c.prefixOf(v), "")
		}
		return s.execIndexed(ctx, pipe, idx, full)
	}
	err = run(false)
	if isNoScript(err) {
		err = run(true) // the script cache was flushed: every step is idempotent
	}
	if err != nil {
		return 0, fmt.Errorf("store: reap: %w", err)
	}
	return found, nil
}

// evalArgs are the scripts eval sends, by scriptArgs.id.
var evalArgs = [evalScripts]scriptArgs{casArgs, liveArgs, seenArgs, leftArgs, idsArgs}

// markSent records the scripts that cmds (a batch eval queued calls in)
// sent by their source and Redis compiled (compiled): they are in its
// script cache now, and eval sends them by their hash. Nothing to do while
// no call was sent by source for want of it (bySource).
func (s *Store) markSent(cmds []redis.Cmder) {
	if s.clients.bySource.Load() <= 0 {
		return
	}
	var n int64
	for _, c := range cmds {
		a := c.Args()
		if len(a) < 2 || a[0] != "eval" {
			continue
		}
		n++
		if !compiled(c.Err()) {
			continue
		}
		for i := range evalArgs {
			if a[1] == evalArgs[i].src {
				s.clients.sent[i].Store(true)
			}
		}
	}
	// A replay's calls by source are counted too: the count may reach 0
	// before every call by source was answered, and such a script is sent
	// by its source again at its next call (counted again).
	if s.clients.bySource.Add(-n) < 0 {
		s.clients.bySource.Store(0)
	}
}

// compiled says whether a call by source with reply err was compiled by
// Redis, and so is in its script cache: answered, or an error raised while
// the script ran (its own, or of a command it called: Redis 7 and Valkey
// name "user_script", Redis 6 "Error running script"). Not one refused
// before the script ran (NOSCRIPT, NOPERM, LOADING, BUSY, MASTERDOWN,
// CLUSTERDOWN, a connection's error: atk87).
func compiled(err error) bool {
	if err == nil {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "user_script") || strings.Contains(msg, "Error running script")
}

// loadScripts puts eval's scripts into the script cache of the Redis that
// cn, a new connection of the background client (the conflict tracker's,
// the reaper's), is to, before its first command: so a batch sent on it
// meets no NOSCRIPT after a restart or a failover (which go-redis's
// retries ride through unseen by the health probe: atk86), nor on a
// Cluster node the plugin had not sent a script to yet, and is not replayed
// whole (WriteConns). Each script is sent with no keys and no arguments:
// Redis compiles and caches it, and its first redis.call fails on a nil
// argument before it runs any command (no key is read or written, nothing
// is checked against the user's ACL: TestLoadScriptsTouchesNothing), where
// SCRIPT LOAD would need a right the start check does not ask. One round
// trip per new connection, bounded by the connection's timeouts (so a new
// connection's first command may wait twice BackgroundTimeout).
//
// A script Redis did not compile (LOADING after a restart, BUSY, a
// Sentinel's "unknown command": atk87) is sent by its source again until a
// call by source is answered (eval, markSent). A reply not read (a
// timeout, a broken connection) fails the connection, which go-redis then
// closes: kept, its later commands would read these replies (atk87).
func (c *clients) loadScripts(ctx context.Context, cn *redis.Conn) error {
	cmds, _ := cn.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range evalArgs {
			p.Do(ctx, "eval", evalArgs[i].src, "0")
		}
		return nil
	})
	for i, cmd := range cmds {
		err := cmd.Err()
		var reply redis.Error
		if err != nil && !errors.As(err, &reply) {
			return fmt.Errorf("store: load scripts: %w", err)
		}
		if i < len(c.sent) && !compiled(err) {
			c.sent[i].Store(false)
		}
	}
	return nil
}
