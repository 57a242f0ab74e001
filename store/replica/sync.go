package replica

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/internal/rediserr"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Options configure a Sync.
type Options struct {
	DB          int           // the database number, for keyspace notification channels
	Users       bool          // also replicate user:<name> keys (the redis backend)
	ResyncEvery time.Duration // full reload as a safety net
	// Log receives notices (level 0 info, 1 warning); from the sync goroutines.
	Log func(warning bool, msg string)
	// OnChange is called after a key changed in the replica (e nil: deleted);
	// old is what the replica held before (nil: nothing). Every reload but
	// the first calls it, after the swap, for each key whose live entry the
	// reload added, changed or removed (changes that no notification
	// brought): at most maxReloadChanges calls, else one OnManyChanges.
	OnChange func(key string, e, old *Entry)
	// OnReloadChange, when set, is called instead of OnChange for the
	// changes a full reload found (no notification told of them: after a
	// FLUSHALL, a restart of Redis, notifications off). A key a reload
	// finds gone may have been flushed, not deleted by anyone.
	OnReloadChange func(key string, e, old *Entry)
	// OnManyChanges is called instead of OnChange when a reload changed more
	// than maxReloadChanges keys, and after a first load that found any key:
	// any entry may have changed.
	OnManyChanges func()
	// OnFirstLoad, when set, is called once, after the first full load is
	// in the replica and before Ready reports true: what must hold from the
	// first lookup of the replica on is set up there.
	OnFirstLoad func()
	// BeforeReloadSwap, when set, is called with a reload's fresh replica
	// before it replaces the live one, when the reload changed any key (not
	// for the first load: OnFirstLoad): what must cover the new entries from
	// their first lookup on is set up there. OnReloadChange and
	// OnManyChanges come only after the swap and the memory's release, some
	// hundreds of milliseconds with 200 000 users.
	BeforeReloadSwap func(fresh *Replica)
	// OnLost is called when changes stop reaching the replica (Redis lost).
	OnLost func(err error)
	// OnFlushed is called when a master's flush mark is found with another
	// value than the one this Sync saw there before (noteMarks): its keys
	// were flushed (FLUSHALL, FLUSHDB) or lost (Redis restarted empty),
	// found by a flush check or by the next session after a lost
	// connection, before the reload. Keys the replica does not hold (known
	// sources) went with them.
	OnFlushed func()
}

// Sync keeps a Replica in step with Redis.
type Sync struct {
	r   *Replica
	rdb redis.UniversalClient
	kb  keys.Builder
	o   Options

	ready   atomic.Bool  // loaded at least once
	healthy atomic.Bool  // subscribed and loaded: changes reach us
	unsub   atomic.Bool  // Redis refused the subscription: changes come with reloads only
	applied atomic.Int64 // unix ns of the last change applied or load finished; 0: none yet

	mu      sync.Mutex
	dirty   map[string]struct{} // keys to refetch
	loading map[string]struct{} // keys changed while a load runs (nil when none runs)
	wake    chan struct{}

	markRefused bool              // the flush mark was refused (logged once); session goroutine only
	seen        map[string]string // each flush mark's key -> the value last seen there (noteMarks); session goroutine only
	subRefused  bool              // the subscription was refused (logged once); session goroutine only
	infoRefused bool              // INFO was refused: no failover check (logged once); session goroutine only

	notifyMu      sync.Mutex        // a cluster's masters are asked concurrently
	notifyRefused string            // the last CONFIG refusal logged by enableNotifications
	evictionSaid  map[string]string // by node: the evicting setting last warned of ("" none; checkEviction)

	wrongMu     sync.Mutex
	wrongLogged map[string]struct{} // keys of another type already logged
}

// NewSync returns a Sync for r; Run starts it.
func NewSync(r *Replica, rdb redis.UniversalClient, o Options) *Sync {
	if o.Log == nil {
		o.Log = func(bool, string) {}
	}
	return &Sync{r: r, rdb: rdb, kb: r.kb, o: o, dirty: map[string]struct{}{}, wake: make(chan struct{}, 1)}
}

// Ready reports whether the replica has been loaded once.
func (s *Sync) Ready() bool { return s.ready.Load() }

// Unsubscribed reports whether Redis refused the replica's subscription
// (an ACL user without channels): the replica then learns of changes only
// at its reloads (ResyncEvery), and a lookup that needs them fresh asks
// Redis.
func (s *Sync) Unsubscribed() bool { return s.unsub.Load() }

// InStep reports whether changes reach the replica: it is subscribed to
// Redis's notifications and loaded since.
func (s *Sync) InStep() bool { return s.healthy.Load() }

// LastApplied returns when the replica last applied a change from Redis or
// finished a full load (one every ResyncEvery while Redis answers, whatever
// changed); zero before the first load.
func (s *Sync) LastApplied() time.Time {
	ns := s.applied.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// Run keeps the replica in step until ctx ends: subscribe, load, apply
// changes, reload every ResyncEvery, and start over after a lost connection.
func (s *Sync) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.applyLoop(ctx) }()
	backoff := 100 * time.Millisecond
	refused := "" // the last refusal logged: each new one once
	for ctx.Err() == nil {
		err := s.session(ctx)
		if s.healthy.Swap(false) {
			backoff = 100 * time.Millisecond // it worked: a new failure starts again from a short wait
			refused = ""
		}
		if ctx.Err() != nil {
			break
		}
		// Redis refusing a command (an ACL's NOPERM, a proxy without SCAN)
		// is no outage that ends by itself: until the first load the redis
		// backend checks no password, so say why the load does not happen.
		if store.IsReply(err) && !transient(err) && err.Error() != refused {
			refused = err.Error()
			s.o.Log(true, fmt.Sprintf("replica: Redis refused a command the replica needs (%v); retrying until it is allowed", err))
		}
		if s.o.OnLost != nil {
			s.o.OnLost(err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
	wg.Wait()
}

// session subscribes, loads, and serves until the subscription breaks, or
// the Sentinel master changes.
func (s *Sync) session(ctx context.Context) error {
	master, err := s.masterID(ctx)
	if err != nil {
		return err
	}
	s.enableNotifications(ctx)
	subs, err := s.subscribe(ctx)
	switch {
	case store.IsReply(err) && !transient(err):
		// Refused, not lost: a Redis 7 ACL user gets no channel unless
		// given one (acl-pubsub-default resetchannels). Returning would
		// retry forever and never load: the lists stay unknown and the
		// redis backend checks no password at all. Load without the
		// subscription instead; changes then arrive with each reload.
		s.unsub.Store(true)
		if !s.subRefused {
			s.subRefused = true
			s.o.Log(true, fmt.Sprintf("replica: Redis refused the subscription to keyspace notifications and %s (%v): changes reach the replica at each reload only (replica_resync); give the plugin's Redis user the channels (ACL: &* or allchannels)", s.kb.Changes(), err))
		}
	case err != nil:
		return err
	default:
		s.subRefused = false // unsub is cleared once the load below is in
	}
	var readers sync.WaitGroup
	defer func() {
		for _, ps := range subs {
			ps.Close()
		}
		readers.Wait() // closed, their reads return: nothing of this session runs on
	}()
	broken := make(chan error, len(subs)) // one send at most from each reader: never blocks
	for _, ps := range subs {
		readers.Add(1)
		go func() { defer readers.Done(); s.receive(ctx, ps, broken) }()
	}
	marks, err := s.mark(ctx)
	if err != nil {
		return err
	}
	if err := s.load(ctx); err != nil {
		return err
	}
	if err := s.masterMoved(ctx, master); err != nil {
		return err // a failover while subscribing: the subscription may be on the old master
	}
	s.healthy.Store(len(subs) > 0) // unsubscribed: changes wait for the next reload
	// Subscribed again: lookups may use the replica once it holds what
	// Redis held when the subscription began (not before the load: a ban
	// set since the last reload would be missed meanwhile).
	s.unsub.Store(len(subs) == 0)
	t := time.NewTicker(s.o.ResyncEvery)
	defer t.Stop()
	check := time.NewTicker(flushCheckEvery)
	defer check.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-broken:
			return err
		case <-t.C:
			if marks == nil {
				if marks, err = s.mark(ctx); err != nil {
					return err
				}
			}
		case <-check.C:
			if err := s.masterMoved(ctx, master); err != nil {
				return err
			}
			if len(subs) == 0 && n%notifyCheckEvery == 0 && s.subscribable(ctx) {
				return errSubscribable // a new session subscribes, then loads
			}
			why, flushed := s.lost(ctx, marks) // a flush: the mark below differs (noteMarks)
			if why == "" && n%notifyCheckEvery == 0 {
				why = s.notificationsLost(ctx)
			}
			if why == "" {
				continue
			}
			s.o.Log(true, "replica: "+why+": reloading")
			if marks, err = s.mark(ctx); err != nil {
				return err
			}
			if flushed && marks == nil && s.o.OnFlushed != nil {
				// The mark is refused now (OOM under noeviction, an ACL):
				// noteMarks cannot tell, yet the keys were lost.
				s.o.OnFlushed()
			}
		}
		if err := s.load(ctx); err != nil {
			return err
		}
	}
}

// errSubscribable ends a session that runs without the subscription Redis
// refused, once Redis allows it (the operator gave the channels): the next
// session subscribes and reloads.
var errSubscribable = errors.New("the subscription is allowed now: subscribing and reloading")

// subscribable reports whether Redis now allows the subscription it refused
// (tried every notifyCheckEvery flush checks, 5 s); the test subscription is
// closed at once. Session goroutine only.
func (s *Sync) subscribable(ctx context.Context) bool {
	subs, err := s.subscribe(ctx)
	for _, ps := range subs {
		ps.Close()
	}
	if err != nil {
		return false
	}
	s.o.Log(false, "replica: "+errSubscribable.Error())
	return true
}

// patterns are the keyspace channels of the key families the replica holds
// (wanted): the lists, throttles and, for the redis backend, users. Not the
// whole prefix: conflict tracking and known sources write three keys per new
// client ID (guard:conn:, guard:seen:, guard:known:, each with an expiry
// that Redis notifies), and every broker's replica used to receive and drop
// all three.
func (s *Sync) patterns() []string {
	families := []string{s.kb.List(keys.Block, "", ""), s.kb.List(keys.Allow, "", ""), s.kb.Throttle("")}
	if s.o.Users {
		families = append(families, s.kb.User(""))
	}
	var ps []string
	for _, f := range families {
		// List(kind, "", "") ends "block::": the scope's own ':' is part of the pattern's '*'.
		f = strings.TrimSuffix(f, ":")
		ps = append(ps, fmt.Sprintf("__keyspace@%d__:%s*", s.o.DB, keys.GlobEscape(f)))
	}
	return ps
}

// subscribe listens to keyspace notifications for our keys on every master
// (they are per node), and to the change channel.
func (s *Sync) subscribe(ctx context.Context) ([]*redis.PubSub, error) {
	patterns := s.patterns()
	var (
		mu      sync.Mutex // a cluster's masters are subscribed to concurrently
		subs    []*redis.PubSub
		changes bool // someone subscribes to the change channel
	)
	err := store.EachMaster(ctx, s.rdb, func(ctx context.Context, c *redis.Client) error {
		ps := c.PSubscribe(ctx, patterns...)
		confirmations := len(patterns)
		mu.Lock()
		first := !changes // the change channel is broadcast: one subscription is enough
		changes = true
		mu.Unlock()
		if first {
			if err := ps.Subscribe(ctx, s.kb.Changes()); err != nil {
				ps.Close()
				mu.Lock()
				changes = false
				mu.Unlock()
				return err
			}
			confirmations++
		}
		// Wait for the confirmations, so no change made after this is missed.
		for i := 0; i < confirmations; i++ {
			if _, err := ps.ReceiveTimeout(ctx, 5*time.Second); err != nil {
				ps.Close()
				return err
			}
		}
		mu.Lock()
		subs = append(subs, ps)
		mu.Unlock()
		return nil
	})
	if err != nil {
		for _, ps := range subs {
			ps.Close()
		}
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	return subs, nil
}

// subPingEvery is how often a subscription is pinged, and subSilentMax
// how long it may stay silent (no change, no pong) before it is taken as
// lost, and the session starts over (subscribes, reloads). A connection
// dropped without a FIN or a reset (a NAT's or firewall's state expired, a
// proxy that stopped forwarding) blocks a read forever, and TCP's
// keepalive (go-redis dials with 5 min) takes tens of minutes to end it:
// meanwhile changes reached the replica at its reloads only, and InStep
// said it was in step (atk98: an operator's DEL of a ban unseen until the
// ban ran out). Tests shorten both.
var (
	subPingEvery = 5 * time.Second
	subSilentMax = 15 * time.Second
)

func (s *Sync) receive(ctx context.Context, ps *redis.PubSub, broken chan<- error) {
	pctx, cancel := context.WithCancel(ctx)
	pinged := make(chan struct{})
	defer func() { cancel(); <-pinged }()
	go func() {
		defer close(pinged)
		t := time.NewTicker(subPingEvery)
		defer t.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-t.C:
				_ = ps.Ping(pctx) // its pong, or the silence, shows in the reads
			}
		}
	}()
	for {
		m, err := ps.ReceiveTimeout(ctx, subSilentMax)
		// A reply read off the subscription comes unwrapped; go-redis's
		// own dial's refusals come wrapped (below): a type assertion.
		if re, ok := err.(redis.Error); ok && transient(re) {
			// Redis answered, busy (a ping refused while a script runs
			// past busy-reply-threshold: BUSY): the link is alive, and
			// the subscription with it (a review of 2392d1c: a BUSY ended
			// the session). Any other reply ends it: a refusal of the
			// ping or of a PSUBSCRIBE go-redis sent again after its own
			// reconnect (an ACL changed), and, wrapped, a refusal of the
			// AUTH of a connection go-redis dialled anew (a rotated
			// password), which a skip would meet at every read, the
			// subscription gone (a review of 4a934c4).
			continue
		}
		if err != nil {
			broken <- fmt.Errorf("subscription lost: %w", err)
			return
		}
		msg, ok := m.(*redis.Message)
		if !ok {
			continue // a pong, or a subscription's confirmation
		}
		key := msg.Payload // the change channel carries the key name
		if msg.Pattern != "" {
			_, key, _ = strings.Cut(msg.Channel, "__:")
		}
		s.markDirty(key)
	}
}

func (s *Sync) markDirty(key string) {
	if !s.wanted(key) {
		return
	}
	s.mu.Lock()
	s.dirty[key] = struct{}{}
	if s.loading != nil {
		s.loading[key] = struct{}{}
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// wanted says whether key is one the replica holds.
func (s *Sync) wanted(key string) bool {
	if _, _, _, ok := s.kb.Split(key); ok {
		return true
	}
	if strings.HasPrefix(key, s.kb.Throttle("")) {
		return true
	}
	return s.o.Users && strings.HasPrefix(key, s.kb.User(""))
}

// applyLoop refetches changed keys, in batches, and applies them.
func (s *Sync) applyLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		}
		s.mu.Lock()
		batch := make([]string, 0, len(s.dirty))
		for k := range s.dirty {
			batch = append(batch, k)
		}
		s.dirty = map[string]struct{}{}
		s.mu.Unlock()
		for len(batch) > 0 {
			n := min(len(batch), 500)
			if err := s.refetch(ctx, batch[:n]); err != nil {
				s.requeue(batch) // the session loop notices the broken connection
				break
			}
			batch = batch[n:]
		}
	}
}

func (s *Sync) requeue(keys []string) {
	s.mu.Lock()
	for _, k := range keys {
		s.dirty[k] = struct{}{}
	}
	s.mu.Unlock()
	time.AfterFunc(200*time.Millisecond, func() {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	})
}

// refetch reads keys from Redis and applies them to the live replica.
func (s *Sync) refetch(ctx context.Context, batch []string) error {
	vals, wrong, err := s.fetch(ctx, batch)
	if err != nil {
		return err
	}
	s.wrongTypes(wrong, false)
	for i, k := range batch {
		v := vals[i]
		if v != nil {
			s.wrongTypeFixed(k)
		}
		var old *Entry
		if e, ok := s.r.Get(k); ok {
			old = &e
		}
		if v == nil {
			s.r.Delete(k)
		} else if err := s.r.Put(k, v.Value, v.Expires); err != nil {
			s.o.Log(true, err.Error()) // names the key and what was expected
			continue
		}
		s.applied.Store(time.Now().UnixNano())
		if s.o.OnChange != nil {
			s.o.OnChange(k, v, old)
		}
	}
	return nil
}

// fetch GETs and PTTLs keys in one pipeline; nil for a missing key, and
// for a key of another type than string, which wrong lists.
func (s *Sync) fetch(ctx context.Context, batch []string) (out []*Entry, wrong []string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	now := time.Now()
	pipe := s.rdb.Pipeline()
	gets := make([]*redis.StringCmd, len(batch))
	ttls := make([]*redis.DurationCmd, len(batch))
	for i, k := range batch {
		gets[i] = pipe.Get(ctx, k)
		ttls[i] = pipe.PTTL(ctx, k)
	}
	cmds, err := pipe.Exec(ctx) // each command's own error is looked at below
	if perr := rediserr.PipelineErr(cmds, err); perr != nil {
		return nil, nil, fmt.Errorf("fetch: %w", perr)
	}
	out = make([]*Entry, len(batch))
	for i, k := range batch {
		v, err := gets[i].Result()
		switch {
		case errors.Is(err, redis.Nil):
			continue // missing
		case redis.HasErrorPrefix(err, "WRONGTYPE"):
			wrong = append(wrong, k) // a hash, a list...: no entry
			continue
		case err != nil:
			return nil, nil, fmt.Errorf("fetch: %w", err) // connection lost, LOADING, ...
		}
		e := &Entry{Key: k, Value: v}
		d, err := ttls[i].Result()
		switch {
		case err != nil && !errors.Is(err, redis.Nil):
			// Its expiry unknown (a cluster's node lost between the GET
			// and the PTTL): not an entry that never expires (atk72).
			return nil, nil, fmt.Errorf("fetch: %w", err)
		case d > 0:
			e.Expires = now.Add(d)
		}
		out[i] = e
	}
	return out, wrong, nil
}

// masterID identifies the master a client that follows a Sentinel master
// reaches: its run_id. "" for any other client: a Redis that restarts
// breaks the subscription by itself, and a cluster's nodes have clients of
// their own. "" too where INFO is refused (an ACL without @dangerous): then
// a failover reaches the replica when the old master drops the
// subscription (the sentinels demote it), which is logged once.
func (s *Sync) masterID(ctx context.Context) (string, error) {
	if !store.FollowsSentinel(s.rdb) {
		return "", nil
	}
	ctx, cancel := context.WithTimeout(ctx, flushCheckEvery)
	defer cancel()
	info, err := s.rdb.Info(ctx, "server").Result()
	if store.IsReply(err) && !transient(err) {
		if !s.infoRefused {
			s.o.Log(true, "replica: cannot read the Sentinel master's run_id ("+err.Error()+"); after a failover, changes reach the replica once the sentinels demote the old master")
		}
		s.infoRefused = true
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("master run_id: %w", err)
	}
	s.infoRefused = false
	for _, l := range strings.Split(info, "\n") {
		if id, ok := strings.CutPrefix(strings.TrimSpace(l), "run_id:"); ok {
			return id, nil
		}
	}
	return "", errors.New("master run_id: not in INFO server")
}

// masterMoved returns an error when the Sentinel master is no longer the
// one (id) the session subscribed to. After a failover go-redis sends new
// commands to the new master at once (the sentinels' +switch-master), but
// a subscription stays on the old one until that server drops it, which an
// old master still alive does only when the sentinels demote it (up to
// their 10 s INFO period): until then no notification of a change made on
// the new master would arrive. Checked every flushCheckEvery, so a session
// follows a failover within that time of go-redis learning of it. A master
// that does not answer says nothing: the subscription notices.
func (s *Sync) masterMoved(ctx context.Context, id string) error {
	if id == "" {
		return nil
	}
	now, err := s.masterID(ctx)
	if err != nil || now == id {
		return nil
	}
	s.o.Log(false, "replica: the Sentinel master changed (a failover): subscribing to the new master and reloading")
	return errors.New("the Sentinel master changed")
}
