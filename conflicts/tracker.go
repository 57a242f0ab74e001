package conflicts

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/batchq"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logline"
	"github.com/mosquitto-guard/mosquitto-guard/internal/offheap"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Options configure a Tracker; the plugin fills them from its
// clientid_conflict options. Lease and ClaimTimeout must be positive (the
// plugin's options ensure it: broker_lease at least 1s, redis_timeout at
// least 1ms).
type Options struct {
	// Deny is clientid_conflict deny: the broker thread claims a client ID
	// (Claim) before admitting it, so the live entry is Redis's already
	// when the worker sees the connect.
	Deny           bool
	Window         time.Duration // conflict_window: how long a principal's use of a client ID is remembered
	TakeoverLimit  int           // takeover_limit: duplicate connections of one principal before a finding
	TakeoverWindow time.Duration // takeover_window
	FindingsMax    int64         // findings_max: approximate length of the findings stream
	FindingsTopic  string        // findings_topic: MQTT topic findings are published on ("" none)
	Fold           time.Duration // findings_fold: repeats of a finding within this are folded into it
	BrokerName     string        // broker_name: this broker, in findings
	Lease          time.Duration // broker_lease: live connections of a broker that stops renewing expire after this
	ClaimTimeout   time.Duration // redis_timeout: bound on a claim, on the broker thread
}

// Store is what conflict tracking asks of Redis; *store.Store implements it.
type Store interface {
	Claimer
	WriteConns(ctx context.Context, ws []store.ConnWrite, window time.Duration) ([]store.State, error)
	CountTakeovers(ctx context.Context, ts []store.Takeover, window time.Duration, limit int) ([]int64, error)
	RenewLease(ctx context.Context, instance string, ttl time.Duration) (store.Lease, error)
	ReapCount(ctx context.Context, instance string, endMs int64, lease, window time.Duration) (int, error)
	LeaseEnds(ctx context.Context, instances []string) (map[string]int64, error)
	AddFinding(ctx context.Context, f *store.Finding, period, ttl time.Duration, max int64) (bool, error)
}

// Claimer claims a client ID for a new connection in one atomic step
// (clientid_conflict deny): it records the connection as live unless
// another principal holds the ID live on a broker whose entries count
// (store.Brokers: as leaseView.counts), and returns that holder.
// *store.Store implements it.
type Claimer interface {
	Claim(ctx context.Context, clientID string, c store.Conn, b store.Brokers) (*store.Conn, error)
}

// Level is how much a log line matters; the plugin maps it to its own.
type Level int

// The levels a Tracker logs at.
const (
	LevelNotice  Level = iota // a dead broker's live connections cleared
	LevelWarning              // a finding; events not tracked
	LevelError                // an internal error
)

// Deps are a Tracker's connections to the outside; tests pass fakes. Store
// is required; the rest may be nil.
type Deps struct {
	Store Store // the worker's writes and reads, with background deadlines
	// Claimer serves Claim, on the broker thread: a client bounded by
	// Options.ClaimTimeout, without retries. Nil: Store.
	Claimer Claimer
	// Log receives the log lines; it must be safe to call from any goroutine.
	Log func(level Level, msg string)
	// Now is the clock of the worker's reads and writes; nil: time.Now.
	Now func() time.Time
	// Publish sends a finding on Options.FindingsTopic; it must be safe to
	// call from any goroutine. Nil: findings are not published.
	Publish func(topic string, payload []byte)
	// Reported is told the kind (store.Kind...) of each finding reported:
	// logged, and published; not one folded into an earlier report. Called
	// from the worker; nil: nobody is told.
	Reported func(kind string)
	// Relist is told that this broker's connections may be missing from
	// Redis, and the caller must hand every connection it holds to
	// Relisted, then call RelistDone: its lease was found lapsed at a
	// renewal (store.Lease.Lapsed; not at the first: another broker may
	// have reaped this one while it was paused or cut off; Redis was
	// flushed or restarted empty), and once more a little later (a reap
	// already under way); or Redis did not take a batch of the worker's
	// writes, or a relist's, or its removal of ghosts; or the full queue
	// dropped a connect. Called from the worker and from the broker thread
	// (enqueue): it must not block. Nil: nobody is told.
	Relist func()
}

// Conn is a connection of this broker as the broker thread describes it
// (NewConn): its number, its ID being instance-Seq, which the worker builds
// (StoreConn) when it writes, so that describing a connection allocates
// nothing on the broker thread. Its address is IP, the text Redis records,
// or, when IP is "", Addr, whose canonical text (netip.Addr.AppendTo) the
// worker writes where it builds the record: a caller holding the IP in 16
// bytes describes the connection again (at its DISCONNECT) without
// formatting it (issue 12: 88 bytes and an object a DISCONNECT on the
// broker thread).
type Conn struct {
	Seq         uint64 // 1, 2, ...: the connection's number on this instance
	Principal   string // Principal's form
	IP          string
	Addr        netip.Addr // the IP when IP is "" (invalid: no address)
	ConnectedMs int64      // unix ms
}

// appendIP appends c's address text, as Redis records it: IP, or Addr's
// canonical text when IP is "".
func (c *Conn) appendIP(b []byte) []byte {
	if c.IP == "" && c.Addr.IsValid() {
		return c.Addr.AppendTo(b)
	}
	return append(b, c.IP...)
}

// ipFormatted says whether c's address text is formatted from Addr (it is
// not a string c holds already).
func (c *Conn) ipFormatted() bool { return c.IP == "" && c.Addr.IsValid() }

// event is work for the worker, in broker order. clientID is in its
// keys.Tracking form: a queued event holds at most keys.TrackingMax bytes
// of it, however long the client's (up to 65 535 bytes; with Redis hung,
// the queue's 65 536 events held about 4 GB of them).
type event struct {
	kind     eventKind
	clientID string
	long     *longID // the client ID's, when clientID is its hash; else nil
	conn     Conn
	other    *Conn       // connect: the local connection taken over
	holder   *store.Conn // refused: the holder
}

type eventKind int

// longID is what an event keeps of a client ID whose keys.Tracking form is
// its hash, besides that form: what a finding's log line needs to quote it
// as it quotes any client ID (logline.Kept: 201 bytes) and its length.
type longID struct {
	shown string
	bytes int
}

// tracked returns clientID's keys.Tracking form and, when that is its hash,
// its longID. A shorter one is returned as it is: no copy, no allocation.
func tracked(clientID string) (string, *longID) {
	t := keys.Tracking(clientID)
	if len(t) == len(clientID) && t == clientID {
		return clientID, nil
	}
	// A copy: the start must not keep the whole client ID alive.
	return t, &longID{shown: strings.Clone(logline.Kept(clientID)), bytes: len(clientID)}
}

const (
	evConnect eventKind = iota
	evDisconnect
	evRefused
	evRelist     // a held connection to record live again (Relisted)
	evRelistDone // every held connection relisted: the rest of the listed are ghosts (RelistDone)
)

// Tracker detects client-ID conflicts off the broker thread: the broker
// thread only describes connections (NewConn) and queues events.
type Tracker struct {
	opts     Options
	store    Store
	claimer  Claimer
	log      func(Level, string)
	now      func() time.Time
	publish  func(topic string, payload []byte)
	reported func(kind string)
	relist   func()
	renewed  bool // the worker's: a renewal of the lease succeeded (renew)
	// relistFailing is the worker's: the last relist part was not
	// written (handlePart logs the first of a series).
	relistFailing bool
	relistAgainAt int64         // the worker's: unix ms after which a renewal asks for a relist again (renew); 0 none
	ghostsUpTo    atomic.Uint64 // the maxSeq of the latest RelistDone queued: an older removal yields to it
	// unchecked is the worker's: the Seq of connections whose connect
	// (owed.connect) or relist write failed, checked at their next
	// relist whatever Redis holds of them (the write may have been
	// taken); each leaves at that relist, its disconnect, or the end of a
	// complete relist that did not hand it over (relistEnded); at most
	// uncheckedMax.
	unchecked   map[uint64]owed
	relistRound uint32          // the worker's: complete relists ended (relistEnded)
	aliveBefore map[string]bool // the worker's: the brokers alive at the renewal before the last (relistConns)
	stopped     context.Context // the worker's: done once Run's stop is closed (nil: no Run, tests)
	reaping     atomic.Bool     // a renewal's reaps of dead brokers run (renewLease)
	reaps       sync.WaitGroup  // those reaps (tests and benchmarks wait for them)
	instance    string
	seq         atomic.Uint64
	events      *batchq.Queue[event]
	dropped     atomic.Int64
	trimDue     atomic.Bool   // the worker holds a burst's buffers, and trims them at its idle timer (TrimDue)
	lostDue     atomic.Bool   // Redis may have lost what the memo's marks say it holds (RedisLost)
	renewDue    chan struct{} // RedisLost asks the worker for a renewal now (cap 1)
	lostAt      stamp         // the worker's: marks made up to this second count for nothing (forgetMarks)
	// live is the lease view of the last renewal: broker instances whose
	// lease runs (true) or had run out (false); one it does not name
	// started since, and counts as alive (counts).
	live atomic.Pointer[map[string]bool]
	// unseenAll: no renewal has succeeded yet, the last one failed, or it
	// found this broker's lease lapsed (Redis flushed or restarted empty,
	// or a reap while it paused): the brokers the view does not name may be
	// alive ones it has not seen, or whose lease went too and is not yet
	// renewed: their entries count whatever their age (leaseView). atk44:
	// a broker whose first renewal failed let another principal in under
	// deny beside a client held longer than broker_lease elsewhere.
	unseenAll atomic.Bool
	// claimed is the connection the broker thread just claimed in Redis
	// (Claim), for the NewConn that follows to take as its own, so that the
	// live entry recorded is the one its disconnect removes.
	claimed atomic.Pointer[Conn]

	// The worker goroutine's own (no lock): what it remembers of each
	// client ID (memo.go).
	ids    *offheap.Table[memoKey, packedMemo] // by client ID; off the Go heap (memo.go)
	owed   map[memoKey]uint64                  // by client ID: the connection owed its end, of a modeSplit entry; nil when none
	others map[pairKey]seenMark                // seen marks of principals not their client ID's who; nil when none
	listed int                                 // entries of ids with a connection listed (cur != 0)
	peak   int                                 // the most entries ids held since it was built
	seeds  [2]maphash.Seed                     // memoKey's
	// retry holds disconnect writes Redis did not take; retryEnds, beside
	// each, the end check it carries (its write's Check: checkEnds).
	retry     []store.ConnWrite
	retryEnds []endCheck
	// pendingEnds holds the end checks whose read failed, made again
	// before the next batch (checkEnds; at most endsPendingMax).
	pendingEnds []endItem
	// spill holds the disconnects a full queue could not take, of
	// connections whose connects it did take: lost, each would leave its
	// connection live in Redis for the broker's life (clientid_conflict
	// deny would refuse its client ID to every other principal on every
	// broker; a hostile tester's flood). They are handled once the queue
	// is drained (drainSpill), after every connect queued before them.
	// dropped remembers the connects the queue dropped: their disconnects
	// need nothing. Each at most spillMax (about 7.9 MB and 1.5 MB at most,
	// and the spilled events' strings as the queue's, below); dropped is
	// forgotten all at once when full (a disconnect of one of
	// those is then spilled for nothing, and handled harmlessly); a
	// disconnect past a full spill is dropped and counted, as before.
	spill struct {
		sync.Mutex
		evs     []event
		dropped map[uint64]struct{}
	}
	// sc holds a batch's arrays and maps for the next batch: a steady load
	// (a fleet reconnecting) allocated them afresh at every batch, about
	// 1 KB of garbage per connection. At most batchMax long; given back
	// with the queue's buffers once idle (trimScratch).
	sc scratch
}

// The queue between the broker thread and the worker holds at most
// queueSize events (120 bytes each since the longID, 112 before: 7.9 MB
// at most, and only while that many wait, as while Redis does not answer).
// Their strings are at most about 1 KB an event: the client ID's tracking
// form (at most 256 bytes, or with a longID its 71-byte hash and 200 bytes
// of it), the principal's (at most 256), and, as the plugin hands them
// (ownPart), no larger object kept alive by them: at most 64 MB more. The
// worker takes them in batches of at most batchMax, linger after the first
// of a batch arrives.
const (
	queueSize = 65536 // events waiting for the worker
	batchMax  = 4096  // events handled per round trip
	linger    = 100 * time.Millisecond
)

// New builds a Tracker with a broker instance ID of its own; Run starts its worker.
func New(opts Options, d Deps) *Tracker {
	var id [6]byte
	_, _ = rand.Read(id[:])
	t := &Tracker{
		opts: opts, store: d.Store, claimer: d.Claimer, log: d.Log, now: d.Now, publish: d.Publish, reported: d.Reported, relist: d.Relist,
		instance: hex.EncodeToString(id[:]),
		events:   batchq.New[event](queueSize, batchMax),
		renewDue: make(chan struct{}, 1),
		seeds:    [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		// b is a keyed hash of its own; {0, 1} no key (Tracker.memo)
		ids: offheap.NewTable[memoKey, packedMemo](func(k memoKey) uint64 { return k.b }, memoKey{0, 1}),
	}
	if t.claimer == nil {
		t.claimer = d.Store
	}
	if t.log == nil {
		t.log = func(Level, string) {}
	}
	if t.now == nil {
		t.now = time.Now
	}
	t.live.Store(&map[string]bool{})
	t.unseenAll.Store(true) // until a renewal succeeds
	return t
}

// NewConn describes a new connection of this broker: the one just claimed
// for the same principal and IP (Claim, then NewConn, on the broker
// thread), or a new one. It allocates nothing: a caller holding many
// connections may keep its Seq and ConnectedMs and rebuild it when it
// tells the tracker.
func (t *Tracker) NewConn(principal string, ip string, now time.Time) Conn {
	return t.NewConnAddr(principal, ip, netip.Addr{}, now)
}

// NewConnAddr is NewConn for a connection whose address is ip's text or,
// when ip is "", addr (Conn.Addr), whose text the worker formats: a caller
// whose address text is not the IP's canonical text (an IPv4-mapped IPv6
// address from a dual-stack socket, a zone) formats nothing on its thread.
func (t *Tracker) NewConnAddr(principal, ip string, addr netip.Addr, now time.Time) Conn {
	if ip != "" {
		addr = netip.Addr{}
	}
	if p := t.claimed.Swap(nil); p != nil && p.Principal == principal && p.IP == ip && p.Addr == addr {
		return *p
	}
	return Conn{Seq: t.seq.Add(1), Principal: principal, IP: ip, Addr: addr, ConnectedMs: now.UnixMilli()}
}

// StoreConn is c as Redis records it: its ID is instance-Seq, its IP its
// address text (appendIP). One allocation, the ID and, when formatted from
// Addr, the IP's text.
func (t *Tracker) StoreConn(c Conn) store.Conn {
	var buf [128]byte
	b := t.appendID(buf[:0], c.Seq)
	if !c.ipFormatted() {
		return t.storeConn(c, string(b), c.IP)
	}
	n := len(b)
	s := string(c.appendIP(b))
	return t.storeConn(c, s[:n], s[n:])
}

// appendID appends the ID of this instance's connection number seq.
func (t *Tracker) appendID(b []byte, seq uint64) []byte {
	return strconv.AppendUint(append(append(b, t.instance...), '-'), seq, 10)
}

// storeConn is c with id, its ID, and ip, its address text.
func (t *Tracker) storeConn(c Conn, id, ip string) store.Conn {
	return store.Conn{
		ID: id, Instance: t.instance, Broker: t.opts.BrokerName,
		Principal: c.Principal, IP: ip, ConnectedMs: c.ConnectedMs,
	}
}

// Connected queues a connection this broker let through; other is the
// connection of this broker it took the client ID over from, if any.
//
// Each of these takes the client ID itself and queues its keys.Tracking
// form: the value itself up to keys.TrackingMax bytes (no copy, no
// allocation), else its SHA-256 (71 bytes; about 40 µs for 64 KB here, paid
// by the client that sent it, which Mosquitto made read and check it too).
func (t *Tracker) Connected(clientID string, conn Conn, other *Conn) {
	id, long := tracked(clientID)
	t.enqueue(event{kind: evConnect, clientID: id, long: long, conn: conn, other: other})
}

// Disconnected queues the end of a connection queued by Connected. A
// disconnect carries no longID (none allocated at each end on the broker
// thread): the rare finding of its end check (checkEnds) names a client
// ID over keys.TrackingMax bytes by its tracking form (sha256:...) alone.
func (t *Tracker) Disconnected(clientID string, conn Conn) {
	t.enqueue(event{kind: evDisconnect, clientID: keys.Tracking(clientID), conn: conn})
}

// Refused queues a connection refused because holder, under another
// principal, holds its client ID (clientid_conflict deny): a finding.
func (t *Tracker) Refused(clientID string, attempt Conn, holder *store.Conn) {
	id, long := tracked(clientID)
	t.enqueue(event{kind: evRefused, clientID: id, long: long, conn: attempt, holder: holder})
}

// RedisLost tells the tracker that Redis may have lost its keys (the
// replica found them flushed, or its session broke: Redis may have
// restarted empty): the worker forgets its marks (forgetMarks) before its
// next batch, so that the connects after it read their client IDs and
// record their principals' uses again. Before, a device reconnecting within
// 10 s of a read that showed its client ID quiet skipped its read after a
// flush, and one whose use was recorded less than 30 s before did not
// record it again: another principal's hit-and-run in between went
// unflagged, and a later one was not flagged against it either (atk42).
//
// And the worker renews this broker's lease at once, not at its next
// tick: the relist that the same notice starts writes this broker's live
// entries again, and they count for the other brokers as its lease does.
// Before, a flush just after a renewal left the lease gone for up to
// broker_lease/3; another broker that renewed twice in that time no longer
// named this one, and ignored its relisted entries of clients held longer
// than broker_lease: under clientid_conflict deny, with this broker paused
// for less than its lease, another principal took their client IDs (atk47).
// Safe from any goroutine; never blocks.
func (t *Tracker) RedisLost() {
	t.lostDue.Store(true)
	select {
	case t.renewDue <- struct{}{}:
	default: // one is asked already
	}
}

// Relisted queues conn, a connection this broker holds whose Connected
// was queued, to be recorded live in Redis again: its live entry, its
// client ID in this broker's brokerconns set, its principal's use (no
// end). The caller hands every connection it holds once Relist told it
// to, each before the connection's Disconnected (under the lock its
// disconnect takes): the worker writes them in queue order, so a
// connection that ends is never written live after its end. A full queue
// drops it and Relisted reports false (the caller waits for Room). Only
// the live connections made since it are evaluated (relistConns): its
// connect evaluated the rest.
func (t *Tracker) Relisted(clientID string, conn Conn) bool {
	id, long := tracked(clientID)
	if !t.events.Put(event{kind: evRelist, clientID: id, long: long, conn: conn}) {
		return false
	}
	// Its connect, if the queue dropped it, is written now: its end must
	// be written too, spilled if the queue is full then (atk30: it was
	// dropped as the end of a connection never written, and the relisted
	// entry stayed live).
	t.spill.Lock()
	delete(t.spill.dropped, conn.Seq)
	t.spill.Unlock()
	return true
}

// LastSeq is the number of the latest connection described (NewConn,
// Claim): one described later has a higher one.
func (t *Tracker) LastSeq() uint64 { return t.seq.Load() }

// RelistDone queues the end of a relist: every connection this broker
// held was handed to Relisted, every one numbered maxSeq or lower
// (LastSeq, read before the relist began) among them unless it ended.
// The worker then removes the live entries of this broker that it lists
// (its brokerconns set) and that are no connection it holds, numbered
// maxSeq or lower (store's DropGhosts): a Redis restarted from an older
// snapshot brought them back. False: the queue was full (nothing is
// removed; the next relist does it).
func (t *Tracker) RelistDone(maxSeq uint64) bool {
	if !t.events.Put(event{kind: evRelistDone, conn: Conn{Seq: maxSeq}}) {
		return false
	}
	for {
		if cur := t.ghostsUpTo.Load(); cur >= maxSeq || t.ghostsUpTo.CompareAndSwap(cur, maxSeq) {
			return true
		}
	}
}

// Room is how many more events the queue takes now.
func (t *Tracker) Room() int { return queueSize - t.events.Len() }

// enqueue never waits: a full queue drops the event, and the drop is
// logged; a disconnect of a connection whose connect it took goes to the
// spill instead (Tracker.spill). Only the event that finds the queue empty
// wakes the worker.
func (t *Tracker) enqueue(ev event) {
	if t.events.Put(ev) {
		return
	}
	t.spill.Lock()
	defer t.spill.Unlock()
	switch ev.kind {
	case evConnect:
		if t.spill.dropped == nil || len(t.spill.dropped) >= spillMax {
			t.spill.dropped = make(map[uint64]struct{})
		}
		t.spill.dropped[ev.conn.Seq] = struct{}{}
		// A connection held and never written: the held connections are
		// written again once the queue has room (atk31: 4 220 of 70 000
		// were live nowhere). Never blocks.
		if t.relist != nil {
			t.relist()
		}
	case evDisconnect:
		if _, ok := t.spill.dropped[ev.conn.Seq]; ok {
			delete(t.spill.dropped, ev.conn.Seq) // its connect was dropped: nothing to undo
		} else if len(t.spill.evs) < spillMax {
			t.spill.evs = append(t.spill.evs, ev)
			return
		}
	}
	t.dropped.Add(1)
}

// spillMax bounds the spill and the dropped connects each.
const spillMax = queueSize

// drainSpill handles the spilled disconnects, in batches; the worker calls
// it once the queue is drained.
func (t *Tracker) drainSpill() {
	t.spill.Lock()
	evs := t.spill.evs
	t.spill.evs = nil
	t.spill.Unlock()
	for len(evs) > 0 {
		n := min(len(evs), batchMax)
		t.handleSafely(evs[:n])
		evs = evs[n:]
	}
}

// idleTrim: Run trims its queue's buffers once no batch larger than
// trimAbove has come for this long (a burst is over; under load a batch
// comes every linger or so; a straggler's small batch does not put it
// off), so
// that a burst's buffers (up to two batches of 112-byte events: 920 KB) go
// within idleTrim of its end, not at the next sweep (issue 12: they were
// 43 of the 685 bytes of heap a held connection was measured to keep, make
// bench's memory row being read a second after the connections).
// Only buffers larger than trimAbove (batchq's keepMax, which Trim keeps)
// arm it: a light load's batches cost no wake-up more.
const (
	idleTrim  = 5 * linger
	trimAbove = 256
)

// sweepEvery is how often Run sweeps the memos and trims its queue's
// buffers (a test shortens it).
var sweepEvery = quietFor

// Run is the worker, until stop is closed: events in order, and the broker
// lease. A panic in the handling of a batch is logged and the worker goes on.
func (t *Tracker) Run(stop <-chan struct{}) {
	// Only the worker maps the memos (putMemo): unmapped when it returns,
	// at the plugin's cleanup (Guard.Close stops it).
	defer t.ids.Free()
	defer t.trimDue.Store(false) // a stopped worker delays no heap release
	lease := time.NewTicker(t.opts.Lease / 3)
	defer lease.Stop()
	report := time.NewTicker(10 * time.Second)
	defer report.Stop()
	sweep := time.NewTicker(sweepEvery)
	defer sweep.Stop()
	idle := time.NewTimer(idleTrim)
	idle.Stop() // armed after a batch
	defer idle.Stop()
	armed := false // idle runs
	// stopped ends with stop: the dead brokers' reaps a renewal runs stop
	// there (renewLease).
	stopped, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-stopped.Done():
		}
	}()
	t.stopped = stopped
	t.renew()
	for {
		select {
		case <-stop:
			return
		case <-t.events.Ready():
			// Linger, deaf to the queue: the events of the next linger
			// wake nobody, and under load a batch holds many events of the
			// same client IDs, whose writes fold into one per client ID.
			if !batchq.Linger(linger, stop) {
				// Stopping: what gathered is still handled (Close waits
				// for it, bounded), as a batch cut short by stop always was.
				if b := t.events.Take(); len(b) > 0 {
					t.handleSafely(b)
				}
				return
			}
			big := false // a batch over trimAbove in this round
			for {
				b := t.events.Take()
				if len(b) > trimAbove {
					big = true
					// A burst's buffers, held from here: said before the
					// round trip to Redis, which a slow or stopped Redis
					// makes long while the broker is quiet (the release
					// would come at its first quiet tick, and keep them).
					t.trimDue.Store(true)
				}
				if len(b) > 0 {
					t.handleSafely(b)
				}
				if len(b) < batchMax {
					t.events.Release() // drained: a burst's buffers go
					t.drainSpill()     // every connect queued before them handled
					break
				}
				select {
				case <-stop: // a backlog: the batch in hand was the last
					return
				default:
				}
			}
			if f, h := t.events.Caps(); max(f, h, cap(t.sc.conns)) > trimAbove {
				t.trimDue.Store(true)
				// A burst's buffers are held: trim them idleTrim after the
				// last batch that needed them. A straggler's small batch
				// does not put it off (each one did: the scratch kept the
				// caps up, and the buffers stayed until the sweep).
				if big || !armed {
					idle.Reset(idleTrim)
					armed = true
				}
			} else {
				t.trimDue.Store(false) // none held (Release dropped them): no trim to wait for
			}
		case <-idle.C:
			armed = false
			t.events.Trim() // no large batch for idleTrim: a burst's buffers go
			t.trimScratch()
			t.trimDue.Store(false)
		case <-lease.C:
			t.renew()
		case <-t.renewDue:
			if t.renewLease(true) {
				lease.Reset(t.opts.Lease / 3) // the tick that ends unseenAll broker_lease/3 after it (renewLease)
			}
		case <-sweep.C:
			t.sweepSafely(t.now().UnixMilli())
			t.events.Trim() // idle here: a burst's buffers go
			t.trimScratch()
			t.trimDue.Store(false)
		case <-report.C:
			if n := t.dropped.Swap(0); n > 0 {
				t.log(LevelWarning, fmt.Sprintf("mosquitto-guard: %d connection events not tracked: the conflict queue was full", n))
			}
		}
	}
}

// TrimDue reports whether the worker holds buffers grown for a burst that
// it gives back once no batch has come for idleTrim (0.5 s): the plugin's
// heap release waits for that (cgo/heaprelease.go), or it would keep them
// in the heap it leaves behind. Any goroutine may call it.
func (t *Tracker) TrimDue() bool { return t.trimDue.Load() }

// sweepSafely is sweep, a panic in it logged: its shrink maps a new table,
// and a mapping that fails (out of memory) panics; the table is as it was,
// and the worker goes on (a panic leaving Run would end the tracking).
func (t *Tracker) sweepSafely(now int64) {
	defer func() {
		if r := recover(); r != nil {
			t.log(LevelError, fmt.Sprintf("mosquitto-guard: internal error in the client-ID memo sweep: %v", r))
		}
	}()
	t.sweep(now)
}

func (t *Tracker) handleSafely(batch []event) {
	defer func() {
		if r := recover(); r != nil {
			t.log(LevelError, fmt.Sprintf("mosquitto-guard: internal error in client-ID tracking: %v", r))
		}
	}()
	// The relisted connections are written apart from the events around
	// them, in queue order: a run of connects and disconnects, then a run
	// of relists, and so on (a relist only comes in numbers after a lost
	// lease, so the round trips it adds come then).
	for len(batch) > 0 {
		k := partOf(batch[0].kind)
		n := 1
		for n < len(batch) && partOf(batch[n].kind) == k && k != evRelistDone {
			n++
		}
		t.handlePart(batch[:n], k)
		batch = batch[n:]
	}
}

// endedIn is the connections whose disconnect evs hold (nil: none): one
// pass, where a search per connect cost a failed batch of 4 096 events
// some 8 million comparisons.
func endedIn(evs []event) map[uint64]struct{} {
	var ended map[uint64]struct{}
	for i := range evs {
		if evs[i].kind == evDisconnect {
			if ended == nil {
				ended = map[uint64]struct{}{}
			}
			ended[evs[i].conn.Seq] = struct{}{}
		}
	}
	return ended
}

// partOf is the kind of part of a batch an event of kind k is handled in
// (handleSafely): evRelist, evRelistDone (each alone), or evConnect for
// the others (handle).
func partOf(k eventKind) eventKind {
	if k == evRelist || k == evRelistDone {
		return k
	}
	return evConnect
}

// handlePart handles a part of a batch of kind k (partOf), with its own
// bound.
func (t *Tracker) handlePart(part []event, k eventKind) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	switch k {
	case evRelist:
		err := t.relistConns(ctx, part)
		if err != nil && !t.relistFailing {
			// Once a series: a relist is many parts, and is asked for
			// again at each failure (at most once a second).
			t.log(LevelWarning, fmt.Sprintf("mosquitto-guard: client ID tracking: %d live connections not recorded again: %v", len(part), err))
		}
		t.relistFailing = err != nil
		if err != nil && t.relist != nil {
			t.relist()
		}
	case evRelistDone:
		// The event holds the relist's maxSeq (conn.Seq) and, in
		// conn.ConnectedMs, 0 for the relist's end, else 1 + the cursor
		// of its brokerconns set a removal goes on from (its first page
		// not done is cursor 0 too: atk36, a continuation taken for the
		// relist's end forgot the checks owed meanwhile).
		maxSeq := part[0].conn.Seq
		var cursor uint64
		if part[0].conn.ConnectedMs == 0 {
			t.relistEnded(maxSeq)
		} else {
			cursor = uint64(part[0].conn.ConnectedMs - 1)
		}
		if maxSeq < t.ghostsUpTo.Load() {
			// A later relist's removal is queued, and removes what this
			// one would: one removal's budget per round, not one per
			// relist queued (atk33: three relists, three budgets).
			break
		}
		n, cursor, err := t.dropGhosts(ctx, maxSeq, cursor)
		if n > 0 {
			t.log(LevelNotice, fmt.Sprintf("mosquitto-guard: removed %d live entries of this broker from redis: it holds none of their connections (redis restarted from an older snapshot?)", n))
		}
		switch {
		case err == nil:
		case (errors.Is(err, errGhostBudget) || spent(ctx)) && t.events.Put(event{kind: evRelistDone, conn: Conn{Seq: maxSeq, ConnectedMs: int64(cursor) + 1}}):
			// Its budget or bound is spent (a large set, a slow Redis):
			// it goes on from where it stopped, after the events queued
			// meanwhile (atk31: it started over each time, and never
			// reached the end of a set larger than one bound's reach).
		default:
			t.log(LevelWarning, fmt.Sprintf("mosquitto-guard: client ID tracking: removing the live entries of connections this broker does not hold: %v", err))
			if t.relist != nil {
				t.relist() // all over again, a second or more later
			}
		}
	default:
		if err := t.handle(ctx, part); err != nil {
			t.log(LevelWarning, fmt.Sprintf("mosquitto-guard: client ID tracking: %d events not recorded: %v", len(part), err))
			// Redis may have taken the connects and not answered: their
			// relist checks them as their connects would have (atk34);
			// not one whose disconnect came in the same part (atk35: it
			// was owed for ever).
			ended := endedIn(part)
			for _, ev := range part {
				if _, gone := ended[ev.conn.Seq]; ev.kind == evConnect && !gone {
					t.owe(ev.conn.Seq, true)
				}
			}
			// Connects Redis did not take leave connections held and not
			// live there: they are recorded again once Redis takes writes
			// (the caller waits for that).
			if t.relist != nil {
				t.relist()
			}
		}
	}
}
