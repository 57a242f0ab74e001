package plugin

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Anonymous is the principal of a client without a username.
const Anonymous = "<anonymous>"

// principalOf returns who a client is, for conflict detection: the
// authenticated username, or Anonymous. (Certificate identities will be
// principals too; they belong here.) It is in its keys.Tracking form, the
// form Redis holds and it is compared with: a username of up to 65 535
// bytes must not size what tracking keeps.
func principalOf(c Client) string {
	if !c.HasUsername {
		return Anonymous
	}
	return keys.Tracking(c.Username)
}

// RuleClientIDConflict refuses a client ID live under another principal.
const RuleClientIDConflict = "clientid-conflict"

// ConflictStore is what conflict detection asks of Redis; *store.Store implements it.
type ConflictStore interface {
	Claimer
	WriteConns(ctx context.Context, ws []store.ConnWrite, window time.Duration) ([]store.State, error)
	CountTakeover(ctx context.Context, clientID string, window time.Duration) (int64, error)
	RenewLease(ctx context.Context, instance string, ttl time.Duration) (map[string]bool, []string, error)
	Reap(ctx context.Context, instance string) error
	AddFinding(ctx context.Context, f *store.Finding, period, ttl time.Duration, max int64) (bool, error)
}

// Claimer claims a client ID for a new connection in one atomic step
// (clientid_conflict deny): it records the connection as live unless
// another principal holds the ID live on a broker in alive, and returns that
// holder. *store.Store implements it.
type Claimer interface {
	Claim(ctx context.Context, clientID string, c store.Conn, alive []string) (*store.Conn, error)
}

// Publisher publishes an MQTT message from the broker; it must be safe to
// call from any goroutine (the cgo layer queues it for the broker thread).
type Publisher func(topic string, payload []byte)

// conflictEvent is work for the conflict worker, in broker order.
type conflictEvent struct {
	kind     eventKind
	clientID string
	conn     store.Conn
	other    *store.Conn // connect: the local connection taken over; refused: the holder
}

type eventKind int

const (
	evConnect eventKind = iota
	evDisconnect
	evRefused
)

// conflicts detects client-ID conflicts off the broker thread: the broker
// thread only updates the local connection table and queues events.
type conflicts struct {
	g        *Guard
	cfg      config.ConflictConfig
	store    ConflictStore
	publish  Publisher
	instance string
	seq      atomic.Uint64
	events   chan conflictEvent
	dropped  atomic.Int64
	live     atomic.Pointer[map[string]bool] // broker instances whose lease runs
	// claimed is the connection the broker thread just claimed in Redis
	// (checkConflict), for the admit that follows to take as its own, so
	// that the live entry recorded is the one its disconnect removes.
	claimed atomic.Pointer[store.Conn]

	// seen remembers which connection last wrote each principal's seen
	// record (worker goroutine only): a device reconnecting all day needs
	// its last use recorded every seenRefresh, not at every reconnect.
	seen map[seenKey]seenMark
	// current mirrors this instance's field of each client ID's live hash:
	// the ID of the connection last written there.
	current map[string]string
	// quiet remembers client IDs whose last read showed only this principal
	// on this broker: a reconnect within quietFor skips the read. Nothing is
	// lost: a newcomer's own first connect reads, and sees the incumbent.
	quiet map[string]quietMark
	// retry holds disconnect writes Redis did not take (worker goroutine only).
	retry []store.ConnWrite
	// seen and quiet outlive the connections: they hold client IDs in their
	// keys.Tracking form, so that an entry's size does not depend on them.
}

type quietMark struct {
	principal string
	at        int64 // unix ms
}

const quietFor = 10 * time.Second

type seenKey struct{ clientID, principal string }

type seenMark struct {
	connID string
	at     int64 // unix ms
}

const (
	seenRefresh = 30 * time.Second
	seenMemoMax = 200_000
)

const (
	conflictQueueSize = 65536 // events waiting for the worker
	conflictBatchMax  = 4096  // events handled per round trip
	conflictLinger    = 100 * time.Millisecond
)

func newConflicts(g *Guard, store ConflictStore, publish Publisher) *conflicts {
	var id [6]byte
	_, _ = rand.Read(id[:])
	c := &conflicts{
		g: g, cfg: g.cfg.Conflicts, store: store, publish: publish,
		instance: hex.EncodeToString(id[:]),
		events:   make(chan conflictEvent, conflictQueueSize),
		seen:     map[seenKey]seenMark{},
		current:  map[string]string{},
		quiet:    map[string]quietMark{},
	}
	c.live.Store(&map[string]bool{})
	return c
}

// newConn describes a new connection of this broker: the one just claimed
// for the same principal and IP (checkConflict, then admit, on the broker
// thread), or a new one.
func (c *conflicts) newConn(principal string, ip string, now time.Time) store.Conn {
	if p := c.claimed.Swap(nil); p != nil && p.Principal == principal && p.IP == ip {
		return *p
	}
	return store.Conn{
		ID:       c.instance + "-" + strconv.FormatUint(c.seq.Add(1), 10),
		Instance: c.instance, Broker: c.cfg.BrokerName,
		Principal: principal, IP: ip, ConnectedMs: now.UnixMilli(),
	}
}

func (c *conflicts) enqueue(ev conflictEvent) {
	select {
	case c.events <- ev:
	default:
		c.dropped.Add(1)
	}
}

// remoteHolder returns a live connection of clientID on another broker
// under another principal, from the lookup's answer.
func (c *conflicts) remoteHolder(live []store.Conn, principal string) *store.Conn {
	alive := *c.live.Load()
	for i := range live {
		r := live[i]
		if r.Instance != c.instance && alive[r.Instance] && r.Principal != principal {
			return &r
		}
	}
	return nil
}

// claims reports whether c's client ID is claimed on the broker thread
// under clientid_conflict deny: c is a client this plugin admits itself (a
// username, checked by the files or redis backend). The others may still be
// refused by a later check: they only look for a holder.
func (g *Guard) claims(c Client) bool {
	return c.HasUsername && g.cfg.Backend != config.BackendDefer
}

// claim claims clientID in Redis for a new connection of principal from ip
// (clientid_conflict deny, on the broker thread, bounded by timeout): it
// records the connection live unless another principal holds the ID live on
// another broker whose lease runs, and returns that holder. The record and
// the look are one atomic step on the client ID's live hash, so of two
// brokers admitting one client ID for two principals at the same moment,
// exactly one refuses. The connection claimed is the one admit records.
func (c *conflicts) claim(cl Claimer, clientID, principal, ip string, now time.Time, timeout time.Duration) (conn store.Conn, holder *store.Conn, err error) {
	conn = c.newConn(principal, ip, now)
	alive := *c.live.Load()
	instances := make([]string, 0, len(alive))
	for in, ok := range alive {
		if ok && in != c.instance {
			instances = append(instances, in)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	holder, err = cl.Claim(ctx, clientID, conn, instances)
	if err == nil && holder == nil {
		cc := conn
		c.claimed.Store(&cc)
	}
	return conn, holder, err
}

// run is the worker: events in order, and the broker lease.
func (c *conflicts) run() {
	lease := time.NewTicker(c.cfg.Lease / 3)
	defer lease.Stop()
	report := time.NewTicker(10 * time.Second)
	defer report.Stop()
	c.renew()
	for {
		select {
		case <-c.g.stop:
			return
		case ev := <-c.events:
			c.handleSafely(c.batch(ev))
		case <-lease.C:
			c.renew()
		case <-report.C:
			if n := c.dropped.Swap(0); n > 0 {
				c.g.log(LevelWarning, fmt.Sprintf("mosquitto-guard: %d connection events not tracked: the conflict queue was full", n))
			}
		}
	}
}

// batch collects ev and what follows within conflictLinger, up to
// conflictBatchMax: under load a batch then holds many events of the same
// client IDs, whose writes fold into one per client ID.
func (c *conflicts) batch(ev conflictEvent) []conflictEvent {
	b := []conflictEvent{ev}
	linger := time.NewTimer(conflictLinger)
	defer linger.Stop()
	for len(b) < conflictBatchMax {
		select {
		case ev := <-c.events:
			b = append(b, ev)
		case <-linger.C:
			return b
		case <-c.g.stop:
			return b
		}
	}
	return b
}

func (c *conflicts) handleSafely(batch []conflictEvent) {
	defer func() {
		if r := recover(); r != nil {
			c.g.log(LevelError, fmt.Sprintf("mosquitto-guard: internal error tracking client IDs: %v", r))
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.handle(ctx, batch); err != nil {
		c.g.log(LevelWarning, fmt.Sprintf("mosquitto-guard: client ID tracking: %d events not recorded: %v", len(batch), err))
	}
}

// handle applies the rules to a batch of events, in order, in one round
// trip. Each connect records its connection (live, and its principal's use)
// and reads the client ID's state in the same atomic step per key (unless
// the client ID is known quiet), so that of two brokers recording one client
// ID at the same moment the second always sees the first; each disconnect
// removes its live entry and records its end, if still its own. Redis
// applies a batch's writes to each key in batch order, so each connect's
// read shows the events of the batch before it.
func (c *conflicts) handle(ctx context.Context, batch []conflictEvent) error {
	now := c.g.now().UnixMilli()
	ws := make([]store.ConnWrite, 0, len(batch))
	at := make([]int, len(batch)) // the write of each connect; -1: folded away
	// A connection that starts and ends within this batch, of a client ID
	// read quiet less than quietFor ago (its principal alone on it, here)
	// and whose principal's use is recorded fresh, leaves nothing for
	// Redis to know: the pair is folded away (a device reconnecting in a
	// loop costs no Redis command), and only its local takeover, if any,
	// is evaluated. folded: the connections folded, and whether the client
	// ID was listed live for this broker before (then the pair's end must
	// unlist it).
	ends := map[string]bool{}
	for _, ev := range batch {
		if ev.kind == evDisconnect {
			ends[ev.conn.ID] = true
		}
	}
	folded := map[string]bool{}
	for i, ev := range batch {
		switch ev.kind {
		case evConnect:
			conn := ev.conn
			w := store.ConnWrite{ClientID: ev.clientID, Instance: c.instance, Live: &conn, Read: !c.isQuiet(ev, now)}
			if !c.seenFresh(ev, now) {
				w.Seen = &conn
			}
			// Not under clientid_conflict deny: there the broker thread
			// wrote the live entry already (the claim), and its end must clear it.
			if ends[conn.ID] && !w.Read && w.Seen == nil && c.g.cfg.Conflicts.Mode != config.ConflictDeny {
				_, listed := c.current[ev.clientID]
				folded[conn.ID] = listed
				c.current[ev.clientID] = conn.ID
				at[i] = -1
				continue
			}
			c.current[ev.clientID] = conn.ID
			at[i] = len(ws)
			ws = append(ws, w)
		case evDisconnect:
			left := ev.conn
			left.DisconnectedMs = now
			if listed, ok := folded[left.ID]; ok {
				if c.current[ev.clientID] == left.ID {
					delete(c.current, ev.clientID)
					if listed {
						ws = append(ws, store.ConnWrite{ClientID: ev.clientID, Instance: c.instance, Unlist: true})
					}
				}
				continue
			}
			w := store.ConnWrite{ClientID: ev.clientID, Instance: c.instance, Gone: &left}
			if c.current[ev.clientID] == left.ID { // not already replaced by a takeover
				delete(c.current, ev.clientID)
				w.Unlist = true
			}
			if c.seen[seenKey{keys.Tracking(ev.clientID), left.Principal}].connID == left.ID {
				w.Left = &left
			}
			ws = append(ws, w)
		}
	}
	c.flushRetry(ctx)
	states, err := c.store.WriteConns(ctx, ws, c.cfg.Window)
	if err != nil {
		c.keepForRetry(ws)
		return err
	}
	alive := *c.live.Load()
	var found, dups []*store.Finding
	for i, ev := range batch {
		switch ev.kind {
		case evConnect:
			var st store.State // a quiet client ID is not read: only a local takeover counts
			if at[i] >= 0 && at[i] < len(states) && ws[at[i]].Read {
				st = states[at[i]]
				c.noteQuiet(ev, &st, alive, now)
			}
			cross, dup := evaluate(ev, st.Live, st.Seen, alive, now, c.cfg.Window)
			if cross != nil {
				found = append(found, cross)
			}
			if dup != nil {
				dups = append(dups, dup)
			}
		case evRefused:
			f := newFinding(store.KindCrossPrincipal, ev.clientID, []store.Conn{ev.conn, *ev.other}, now)
			f.Action = "refused"
			found = append(found, f)
		}
	}
	for _, d := range dups {
		n, err := c.store.CountTakeover(ctx, d.ClientID, c.cfg.TakeoverWindow)
		if err != nil {
			return err
		}
		if n >= int64(c.cfg.TakeoverLimit) {
			found = append(found, d)
		}
	}
	for _, f := range found {
		c.report(ctx, f)
	}
	return nil
}

// isQuiet reports whether ev's client ID read back quiet for its principal
// less than quietFor ago.
func (c *conflicts) isQuiet(ev conflictEvent, now int64) bool {
	m, ok := c.quiet[keys.Tracking(ev.clientID)]
	return ok && m.principal == ev.conn.Principal && now-m.at < quietFor.Milliseconds()
}

// noteQuiet records whether a read of ev's client ID showed only its
// principal, with no live connection on another broker.
func (c *conflicts) noteQuiet(ev conflictEvent, st *store.State, alive map[string]bool, now int64) {
	for _, x := range st.Seen {
		if x.Principal != ev.conn.Principal {
			delete(c.quiet, keys.Tracking(ev.clientID))
			return
		}
	}
	for _, x := range st.Live {
		if x.Instance != c.instance && alive[x.Instance] {
			delete(c.quiet, keys.Tracking(ev.clientID))
			return
		}
	}
	if len(c.quiet) >= seenMemoMax {
		c.quiet = map[string]quietMark{}
	}
	c.quiet[keys.Tracking(ev.clientID)] = quietMark{principal: ev.conn.Principal, at: now}
}

// seenFresh reports whether ev's principal had its use of the client ID
// recorded less than seenRefresh ago; if not, ev's connection records it.
func (c *conflicts) seenFresh(ev conflictEvent, now int64) bool {
	k := seenKey{keys.Tracking(ev.clientID), ev.conn.Principal}
	if m, ok := c.seen[k]; ok && now-m.at < seenRefresh.Milliseconds() {
		return true
	}
	if len(c.seen) >= seenMemoMax {
		c.seen = map[seenKey]seenMark{}
	}
	c.seen[k] = seenMark{connID: ev.conn.ID, at: now}
	return false
}

// report stores f (folding repeats) and, unless it was folded into an
// earlier report, logs it and publishes it on findings_topic.
func (c *conflicts) report(ctx context.Context, f *store.Finding) {
	reported, err := c.store.AddFinding(ctx, f, c.cfg.Fold, c.cfg.Window, c.cfg.FindingsMax)
	note := ""
	if err != nil {
		reported, note = true, " (not stored: "+err.Error()+")"
	}
	if !reported {
		return
	}
	c.g.log(LevelWarning, describeFinding(f)+note)
	if c.cfg.FindingsTopic != "" && c.publish != nil {
		payload, _ := json.Marshal(f)
		c.publish(c.cfg.FindingsTopic, payload)
	}
}

// renew extends this broker's lease, learns which brokers are alive, and
// clears the live connections of brokers whose lease ran out.
// keepForRetry keeps the disconnect writes of a batch Redis did not take:
// a connection that ended must not stay "live" in guard:conn while this
// broker's lease runs (clientid_conflict deny would refuse its device on
// every other broker). They are final-state and compare-and-delete, so
// writing them late is safe. At most conflictQueueSize are kept; the oldest
// go first.
func (c *conflicts) keepForRetry(ws []store.ConnWrite) {
	for _, w := range ws {
		if w.Gone != nil {
			c.retry = append(c.retry, w)
		}
	}
	if over := len(c.retry) - conflictQueueSize; over > 0 {
		c.retry = append(c.retry[:0], c.retry[over:]...)
		c.dropped.Add(int64(over))
	}
}

// flushRetry writes the kept disconnects, before a batch and at each lease
// renewal, until Redis takes them.
func (c *conflicts) flushRetry(ctx context.Context) {
	if len(c.retry) == 0 {
		return
	}
	if _, err := c.store.WriteConns(ctx, c.retry, c.cfg.Window); err == nil {
		c.retry = c.retry[:0]
	}
}

func (c *conflicts) renew() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.flushRetry(ctx)
	live, dead, err := c.store.RenewLease(ctx, c.instance, c.cfg.Lease)
	if err != nil {
		return // Redis down: health reports it; live brokers are kept as they were
	}
	c.live.Store(&live)
	for _, d := range dead {
		if err := c.store.Reap(ctx, d); err == nil {
			c.g.log(LevelNotice, "mosquitto-guard: cleared the live connections of broker instance "+logval.Quote(d)+": its lease ran out")
		}
	}
}

// close removes this broker's live connections from Redis: clients still
// connected at shutdown get no DISCONNECT.
func (c *conflicts) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = c.store.Reap(ctx, c.instance)
}

func describeFinding(f *store.Finding) string {
	var ips, brokers []string
	for _, c := range f.Connections {
		ips = append(ips, c.IP)
		brokers = append(brokers, logval.Quote(c.Broker))
	}
	ps := make([]string, len(f.Principals))
	for i, p := range f.Principals {
		ps[i] = logval.Quote(p)
	}
	return fmt.Sprintf("mosquitto-guard: finding %s severity=%s kind=%s action=%s client_id=%s principals=[%s] ips=[%s] brokers=[%s] disconnected_ms=%d count=%d id=%s",
		f.Reason, f.Severity, f.Kind, f.Action, logval.Quote(f.ClientID), strings.Join(ps, ","), strings.Join(ips, ","),
		strings.Join(brokers, ","), f.DisplacedDisconnectedMs, f.Count, f.ID)
}
