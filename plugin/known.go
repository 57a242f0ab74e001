package plugin

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/internal/batchq"
	"github.com/mosquitto-guard/mosquitto-guard/internal/offheap"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// knownSources remembers, per username, the sources (IPs and client IDs) it
// authenticated from with a verified password within conflict_window: while
// the username is throttled, attempts from those sources still have their
// password checked, so a fleet sharing one username keeps connecting through
// an attack on it. A source proves nothing by itself (a client ID is a
// claim), but it only reopens a password check, which counts as usual.
//
// In Redis: the sorted set guard:known:<username>, members "ip:<ip>" and
// "clientid:<id>" (the ID in its keys.Tracking form: over 256 bytes, a hash), scored by
// the last success (unix ms), at most known_sources_max members (the least
// recently successful dropped first), expiring conflict_window after the last
// write. Each broker writes its successes in the background, in pipelined
// batches, each (username, source) at most once per refresh (knownRefresh,
// or a quarter of conflict_window if that is shorter). A score is thus at
// most one refresh older than the source's last success, and sources are
// read back with scores from conflict_window plus one refresh ago: every
// source that succeeded within conflict_window is known (and one may stay
// known up to a refresh longer).
//
// In memory: recent, this broker's own writes (at most knownRecentMax
// entries of 12 bytes, off the Go heap: newRecent; cleared when full), and, for usernames being
// throttled, the set loaded from Redis (at most knownLoadedMax members over
// all usernames). Neither is consulted unless the username is throttled.
type knownSources struct {
	knownDeps
	queue   *batchq.Queue[knownWrite]
	refresh time.Duration // how often a (username, source) is written again
	trimDue atomic.Bool   // run holds a burst's buffers, and trims them at its idle timer (Guard.TrimDue)

	// writtenFrom (unix ms): a success in recent stamped before it is not
	// known to be in Redis (a write failed, or Redis may have come back
	// empty since): its next success writes it again. recent keeps it all
	// the same: it is this broker's own knowledge, which must outlive a
	// Redis that does not answer.
	writtenFrom atomic.Int64

	mu          sync.Mutex
	recent      *offheap.Table[recentID, knownStamp] // recentKey(username, source) -> its last success, as written (or tried); off the Go heap
	loaded      map[string]*knownSet                 // by the username's keys.Tracking form, a copy (startLoad)
	loadedTotal int
	// episodes records the usernames met throttled here lately, made-up
	// ones included, apart from the loaded sets (which only existing
	// usernames get, bounded by knownLoadedUsersMax: a botnet's throttled
	// made-up usernames must neither crowd a fleet's set out nor switch
	// the lapse claim off for it): a keyed 64-bit hash of the username's
	// Tracking form (the throttle key's own) -> when met, unix ms. At most
	// episodesMax (16 bytes each); when full, those older than
	// episodeFor go, and while none can, a new episode is not recorded
	// (its lapse is decided by each broker's own count, as before).
	episodes  map[uint64]int64
	nEpisodes atomic.Int32 // len(episodes): a CONNECT reads this, no lock, while none is
	epSeed    maphash.Seed

	refusedAt  logGate // the write refusals logged (refusedBy)
	readRefuse logGate // the read refusals logged, apart: one does not silence the other (atk66)
}

// episodesMax bounds knownSources.episodes.
const episodesMax = 100_000

// knownDeps are what known sources need of the guard.
type knownDeps struct {
	rdb        redis.UniversalClient
	kb         keys.Builder
	max        int           // known_sources_max
	window     time.Duration // conflict_window: how long a source stays known
	failWindow time.Duration // fail_window: a throttle episode's set is dropped 2 of them after its last use
	userLimit  int           // username_fail_limit: with failWindow, how long an episode stays on record (episodeFor)
	down       func(error)   // Redis failed to answer (health)
	log        func(Level, string)
	spawn      func(name string, fn func())
	stop       <-chan struct{}
}

// knownWrite is a success to write: (username, source) at ms. The broker
// thread names its source without making its text (issue 12: the text
// was an allocation on the broker thread at each new source, every CONNECT
// of make bench's row b, whose addresses go in turn): an IP source by its
// IP, a client-ID source by the client ID's keys.Tracking form (the client
// ID as the client gave it up to 256 bytes: no copy; its hash beyond, so
// that a queued write, held while Redis does not answer, holds at most 256
// bytes of it); the writer makes the text (sourceText). Sources made off
// the broker thread (rewriteKnown) come as their text.
type knownWrite struct {
	username string     // its keys.Tracking form (a queued write keeps no longer username)
	text     string     // the source's text (kind sourceText), or the client ID's keys.Tracking form (kind sourceID)
	ip       netip.Addr // the IP (kind sourceIPAddr)
	ms       int64
	kind     sourceKind
}

// sourceKind says what a knownWrite names its source by.
type sourceKind uint8

const (
	sourceText   sourceKind = iota // text is the source (sourceIP, sourceClientID)
	sourceIPAddr                   // ip: the source sourceIP(ip)
	sourceID                       // text is a client ID's keys.Tracking form: the source sourceClientID of the client ID
)

// source is w's source as Redis records it (a member of guard:known:<username>).
func (w *knownWrite) source() string {
	switch w.kind {
	case sourceIPAddr:
		return sourceIP(w.ip)
	case sourceID:
		return sourceTracked(w.text)
	}
	return w.text
}

type knownSet struct {
	at      time.Time
	members map[string]struct{}
	loading bool
}

const (
	knownRefresh   = time.Hour
	knownRecentMax = 200_000
	knownLoadedMax = 1_000_000
	// knownLoadedUsersMax bounds the throttled usernames whose sets are held
	// (unknown usernames are throttled too, and have empty sets).
	knownLoadedUsersMax = 10_000
	knownQueueSize      = 16384
	knownBatchMax       = 4096
	knownLinger         = 100 * time.Millisecond
	knownReloadAfter    = 5 * time.Second
)

// newKnownSources starts the writer of known sources.
func newKnownSources(d knownDeps) *knownSources {
	k := &knownSources{
		knownDeps: d,
		queue:     batchq.New[knownWrite](knownQueueSize, knownBatchMax),
		recent:    newRecent(), loaded: map[string]*knownSet{},
		refresh:  min(knownRefresh, d.window/4),
		episodes: map[uint64]int64{}, epSeed: maphash.MakeSeed(),
	}
	d.spawn("known sources", k.run)
	return k
}

// sourceIP and sourceClientID name the two kinds of source.
func sourceIP(ip netip.Addr) string { return "ip:" + ip.String() }

func sourceClientID(id string) string { return sourceTracked(keys.Tracking(id)) }

// sourceTracked is sourceClientID of a client ID whose keys.Tracking form is tracked.
func sourceTracked(tracked string) string { return "clientid:" + tracked }

// recentKey is the map key of (username, source): 64 bits of a hash keyed
// by a seed drawn at start (8 bytes a key, where the strings took up to 80),
// held as two 32-bit halves (recentID) so that a slot, key and stamp, is
// 12 bytes, not 16 (issue 12; the slots are off the Go heap: newRecent).
// Two pairs sharing a key are harmless: the second pair's success would not
// be written to Redis for up to a refresh, and its source would count as
// known on this broker, which only reopens a password check that counts as
// usual (see knownSources). Nor can anyone aim for one: the seed is secret
// and per process, so a collision is chance, about n²/2⁶⁴ for n keys of 63
// bits (recentID; one in 5·10⁸ at knownRecentMax).
func recentKey(username, source string) recentID {
	var buf [recentKeyBuf]byte
	return recentKeyIn(buf[:0], username, "", source)
}

// recentKeyIn is recentKey(username, kind+source), for a source in a
// string or a byte slice, of which kind is the start ("ip:", "clientid:").
// The bytes hashed are username's length (8 bytes), username, kind and
// source, end to end: in buf (its capacity, on the caller's stack) and one
// call of maphash.Bytes when they fit, else streamed through a
// maphash.Hash, which hashes the same bytes to the same sum (maphash.Bytes
// is documented so). Neither allocates. A maphash.Hash took four calls to
// buffer the bytes, about 300 instructions of the broker thread a key, two
// keys a CONNECT (issue 12); and the source, built first in a 64-byte
// array, went to the heap for a client ID over 55 bytes: an allocation
// every CONNECT of a fleet whose client IDs are SHA-256 hex
// (TestKnownSourcesLongIDsAllocateNothing).
func recentKeyIn[S string | []byte](buf []byte, username, kind string, source S) recentID {
	if 8+len(username)+len(kind)+len(source) <= cap(buf) {
		b := binary.LittleEndian.AppendUint64(buf[:0], uint64(len(username)))
		b = append(append(append(b, username...), kind...), source...)
		return recentIDOf(maphash.Bytes(recentSeed, b))
	}
	var h maphash.Hash
	h.SetSeed(recentSeed)
	writeRecentUser(&h, username)
	h.WriteString(kind)
	switch s := any(source).(type) {
	case string:
		h.WriteString(s)
	case []byte:
		h.Write(s)
	}
	return recentIDOf(h.Sum64())
}

// recentKeyBuf is the most bytes recentKeyIn hashes in one call: a
// username and a client ID of some 50 bytes each, or a username of 70
// with an IP. More are streamed: no allocation, some 200 instructions
// more. The buffer is zeroed at each CONNECT, so larger would cost every
// CONNECT more than it saves the few with longer ones.
const recentKeyBuf = 128

// recentID is a recentKey: its 64 bits, 4-byte aligned, bit 1 set (63
// bits: recentID{0, 0} and {1, 0} mark recent's empty and deleted slots).
type recentID [2]uint32

func recentIDOf(sum uint64) recentID { return recentID{uint32(sum) | 2, uint32(sum >> 32)} }

// newRecent is knownSources.recent: a hash table mapped off the Go heap
// (offheap.Table, issue 12), where a Go map of these 12-byte slots held
// about 54 bytes of live heap per held device (its two sources), which the
// collector's headroom about doubles in RSS; here 16 to 32 bytes of
// mapping a source. Its probes start at the key's high half, the low
// half's fixed bit out of the way; the slot's key and stamp are its whole
// 12 bytes. At most knownRecentMax entries (rememberLocked clears it when full); k.mu
// guards it; run unmaps it when it returns (the plugin's cleanup).
func newRecent() *offheap.Table[recentID, knownStamp] {
	return offheap.NewTable[recentID, knownStamp](func(k recentID) uint64 { return uint64(k[1]) | uint64(k[0])<<32 }, recentID{1, 0})
}

// freeRecent unmaps recent, empty after (a later success maps it again).
func (k *knownSources) freeRecent() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.recent.Free()
}

// knownStamp is the time of a success in recent: its unix second, floored
// (4 bytes, where unix ms took 8). A stamp is up to a second before the
// success, never after it, so against the ms kept before:
//   - a (username, source) is written again once its stamp is a refresh
//     old: up to a second before a refresh has passed since its last
//     written success, at most one more write per refresh;
//   - this broker's own knowledge (known) counts a source while its stamp
//     is within conflict_window and a refresh: it may stop counting up to a
//     second sooner, which the refresh's slack covers (refresh >= 15 s, as
//     conflict_window >= 1 min): a source that succeeded within
//     conflict_window is still known.
//
// A clock before 1970 stamps 0, one past 2106 the last second uint32 holds.
type knownStamp uint32

// knownStampOf is the stamp of ms (unix ms).
func knownStampOf(ms int64) knownStamp {
	s := ms / 1000
	if ms%1000 < 0 {
		s--
	}
	return knownStamp(max(0, min(s, math.MaxUint32)))
}

// ms is the earliest unix ms st stands for.
func (st knownStamp) ms() int64 { return int64(st) * 1000 }

// recentSeed keys recentKey.
var recentSeed = maphash.MakeSeed()

// writeRecentUser writes username with its length, so that no username
// and source run into another pair's.
func writeRecentUser(h *maphash.Hash, username string) {
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(username)))
	h.Write(n[:])
	h.WriteString(username)
}

// succeeded records that username authenticated from ip with clientID
// (broker thread: only map work and a non-blocking send). It allocates
// nothing: its keys are built in buffers on the stack, and a source to
// write is queued by its IP or client ID, its text made by the writer.
func (k *knownSources) succeeded(username string, ip netip.Addr, clientID string, now time.Time) {
	k.succeededFrom(username, ip, "", clientID, now)
}

// succeededFrom is succeeded for a CONNECT whose address, as the broker
// gave it, is addr: ip's text is taken from it when it is that text
// already (appendIPText), not formatted again. Both sources are looked up
// under one hold of k.mu, one after the other: for a fleet each is a
// random slot of recent, a miss of the CPU's caches, and the two misses
// overlap (issue 12: recent's find was the guard's top symbol on the
// broker thread in perf under make bench's row b).
func (k *knownSources) succeededFrom(username string, ip netip.Addr, addr, clientID string, now time.Time) {
	ms := now.UnixMilli()
	var buf [recentKeyBuf]byte // the two keys' bytes, in turn
	var ipKey recentID
	if ip.IsValid() {
		var text [64]byte // at most 45 bytes: an IP's text
		// sourceIP(ip)
		ipKey = recentKeyIn(buf[:0], username, "ip:", appendIPText(text[:0], ip, addr))
	}
	tracked, user := keys.Tracking(clientID), keys.Tracking(username)
	idKey := recentKeyIn(buf[:0], username, "clientid:", tracked) // sourceClientID
	byIP, byID := k.rememberBoth(ipKey, idKey, ms)
	if byIP {
		k.queueWrite(knownWrite{username: user, ip: ip, ms: ms, kind: sourceIPAddr})
	}
	if byID {
		k.queueWrite(knownWrite{username: user, text: tracked, ms: ms, kind: sourceID})
	}
}

// queueWrite queues w, a success remembered as to be written.
func (k *knownSources) queueWrite(w knownWrite) {
	if !k.queue.Put(w) {
		// A flood of new sources outruns Redis: this one is written on its
		// next success (it stays known here meanwhile).
		k.forgetWritten(time.UnixMilli(w.ms + 1))
	}
}

// rememberBoth records the success at ms of ipKey (unless it is zero: no
// IP) and of idKey in recent, under one hold of k.mu, and reports whether
// each is to be written (rememberLocked). k.mu is released by a defer:
// recent's growth maps memory, and a mapping that fails panics, which the
// cgo layer recovers; a lock left held would then block the broker thread
// at its next success or known.
func (k *knownSources) rememberBoth(ipKey, idKey recentID, ms int64) (byIP, byID bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if ipKey != (recentID{}) {
		byIP = k.rememberLocked(ipKey, ms)
	}
	return byIP, k.rememberLocked(idKey, ms)
}

// rememberLocked records key's success at ms in recent, and reports
// whether it is to be written (not written within the refresh); k.mu held.
func (k *knownSources) rememberLocked(key recentID, ms int64) bool {
	last, ok := k.recent.Get(key)
	// Within the refresh whatever the ms in the two seconds (see knownStamp),
	// and written since Redis last lost what it held.
	if ok && knownStampOf(ms).ms()-last.ms()+1000 <= k.refresh.Milliseconds() && last.ms() >= k.writtenFrom.Load() {
		return false
	}
	if k.recent.Len() >= knownRecentMax {
		k.recent.Clear()
	}
	k.recent.Put(key, knownStampOf(ms))
	return true
}

// forgetWritten makes every success recorded in recent before now count as
// not written to Redis: each is written again at its next success. Called
// when a write fails, when Redis comes back after being down, and when the
// replica finds Redis restarted or flushed (Guard.replicaLost,
// replicaFlushed). It never moves back.
func (k *knownSources) forgetWritten(now time.Time) {
	ms := now.UnixMilli()
	for {
		cur := k.writtenFrom.Load()
		if cur >= ms || k.writtenFrom.CompareAndSwap(cur, ms) {
			return
		}
	}
}

// known reports whether ip, and whether clientID, is a known source of
// username: this broker saw it succeed within conflict_window, or the set
// loaded from Redis for this throttle episode holds it. An absent or stale
// set is loaded in the background; until it arrives only this broker's own
// knowledge counts.
func (k *knownSources) known(username string, ip netip.Addr, clientID string, now time.Time) (byIP, byClientID bool) {
	var ipSrc string
	if ip.IsValid() {
		ipSrc = sourceIP(ip)
	}
	idSrc := sourceClientID(clientID)
	cutoff := now.Add(-k.window - k.refresh).UnixMilli() // a score is up to a refresh behind its last success
	k.mu.Lock()
	defer k.mu.Unlock()
	recent := func(s string) bool {
		st, ok := k.recent.Get(recentKey(username, s))
		return s != "" && ok && st.ms() >= cutoff
	}
	byIP, byClientID = recent(ipSrc), recent(idSrc)
	user := keys.Tracking(username)
	set := k.loaded[user]
	if set == nil || (!set.loading && now.Sub(set.at) > knownReloadAfter) {
		k.startLoad(user, set, now)
		set = k.loaded[user]
	}
	if set != nil { // nil: knownLoadedMax reached, only this broker's own knowledge counts
		_, inIP := set.members[ipSrc]
		_, inID := set.members[idSrc]
		byIP = byIP || (ipSrc != "" && inIP)
		byClientID = byClientID || inID
	}
	return byIP, byClientID
}

// episodeFor is how long an episode stays on record after its username was
// last met throttled: a throttle lapses, and then a source that is not
// known claims its guess (Guard.lapsedThrottle) until the username's count
// in Redis has expired (username_fail_limit × fail_window after its last
// failure: its allowance whole again), and for at least two fail_windows
// and knownReloadAfter. Shorter, an attacker pausing past it between
// bursts met each broker's own refilled count: with two brokers, 39 to 44
// passwords checked in 78 s where one per fail_window was the bound (a
// README-only attacker; username_fail_limit 6, fail_window 5 s, bursts
// 26 s apart, when episodes lasted 2 × fail_window + 5 s).
func (k *knownSources) episodeFor() time.Duration {
	return max(2*k.failWindow+knownReloadAfter, time.Duration(k.userLimit)*k.failWindow)
}

// noteEpisode records that the username whose Tracking form is tracked is
// throttled now (its throttle key seen, or met by a CONNECT).
func (k *knownSources) noteEpisode(tracked string, now time.Time) {
	h := maphash.String(k.epSeed, tracked)
	ms := now.UnixMilli()
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.episodes[h]; !ok && len(k.episodes) >= episodesMax {
		cutoff := ms - k.episodeFor().Milliseconds()
		for e, at := range k.episodes {
			if at < cutoff {
				delete(k.episodes, e)
			}
		}
		if len(k.episodes) >= episodesMax {
			return
		}
	}
	k.episodes[h] = ms
	k.nEpisodes.Store(int32(len(k.episodes)))
}

// episode reports whether username was met throttled here within
// episodeFor: its throttle may have lapsed since. One atomic load while no
// episode is on record (every CONNECT asks).
func (k *knownSources) episode(username string, now time.Time) bool {
	if k.nEpisodes.Load() == 0 {
		return false
	}
	h := maphash.String(k.epSeed, keys.Tracking(username))
	k.mu.Lock()
	defer k.mu.Unlock()
	at, ok := k.episodes[h]
	return ok && now.UnixMilli()-at < k.episodeFor().Milliseconds()
}

// prefetch loads username's known sources as its throttle begins.
func (k *knownSources) prefetch(username string, now time.Time) {
	user := keys.Tracking(username)
	k.mu.Lock()
	defer k.mu.Unlock()
	if set := k.loaded[user]; set == nil || (!set.loading && now.Sub(set.at) > knownReloadAfter) {
		k.startLoad(user, set, now)
	}
}

// startLoad fetches the known sources of the username whose keys.Tracking
// form is user from Redis (k.mu held). k.loaded is keyed by that form, a
// copy: a throttled username is whatever a stranger claims (up to 65 535
// bytes), and a key that was a part of its CONNECT's strings (one
// allocation with the client ID, cgo's connectStrings) kept them all:
// up to 128 KB an entry, at knownLoadedUsersMax entries about 1.3 GB. Now
// at most 256 bytes an entry: 2.6 MB.
func (k *knownSources) startLoad(user string, old *knownSet, now time.Time) {
	if old == nil {
		if k.loadedTotal >= knownLoadedMax || len(k.loaded) >= knownLoadedUsersMax {
			return
		}
		old = &knownSet{}
		k.loaded[strings.Clone(user)] = old
	}
	old.loading = true
	old.at = now
	k.spawn("known sources load", func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		min := strconv.FormatInt(time.Now().Add(-k.window-k.refresh).UnixMilli(), 10)
		members, err := k.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{
			Key: k.kb.KnownTracked(user), Start: min, Stop: "+inf", ByScore: true, Count: int64(k.max),
		}).Result()
		k.mu.Lock()
		defer k.mu.Unlock()
		old.loading = false
		if err != nil {
			// A reply (a user refused ZRANGE, a Redis before 6.2 without
			// BYSCORE, a key of another type) is an answer, not Redis
			// down: marked down, each load refused every client under
			// redis_unavailable deny (atk64). Logged as the writer's are.
			if store.IsReply(err) && !store.Unavailable(err) {
				k.refusedBy("reading", err)
			} else {
				k.down(err) // no answer, or one that says Redis cannot serve now (atk65)
			}
			return
		}
		set := make(map[string]struct{}, len(members))
		for _, m := range members {
			set[m] = struct{}{}
		}
		k.loadedTotal += len(set) - len(old.members)
		old.members = set
		old.at = time.Now()
	})
}

// forgetLoaded drops the sets of episodes that have ended (none of their
// usernames asked for a while).
func (k *knownSources) forgetLoaded(now time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for u, s := range k.loaded {
		if !s.loading && now.Sub(s.at) > 2*k.failWindow+knownReloadAfter {
			k.loadedTotal -= len(s.members)
			delete(k.loaded, u)
		}
	}
	cutoff := now.UnixMilli() - k.episodeFor().Milliseconds()
	for e, at := range k.episodes {
		if at < cutoff {
			delete(k.episodes, e)
		}
	}
	k.nEpisodes.Store(int32(len(k.episodes)))
}

// knownTick is how often the writer forgets ended episodes and trims its
// queue's buffers (a test shortens it).
var knownTick = 10 * time.Second

// knownIdleTrim: the writer trims its queue's buffers once no batch has
// come for this long (a burst is over), not only at its tick (issue 12: a
// fleet's burst of successes left up to two batches of writes, 72 bytes
// each (40 before they named their sources by IP or client ID), held for
// up to knownTick).
// Only buffers larger than knownTrimAbove (batchq's keepMax, which Trim
// keeps) arm it: a light load's batches cost no wake-up more.
const (
	knownIdleTrim  = 5 * knownLinger
	knownTrimAbove = 256
)

func (k *knownSources) run() {
	defer k.freeRecent()
	defer k.trimDue.Store(false) // a stopped writer delays no heap release
	tick := time.NewTicker(knownTick)
	defer tick.Stop()
	idle := time.NewTimer(knownIdleTrim)
	idle.Stop() // armed after a batch
	defer idle.Stop()
	for {
		select {
		case <-k.stop:
			return
		case <-tick.C:
			k.forgetLoaded(time.Now())
			k.queue.Trim() // idle here: a burst's buffers go
			k.trimDue.Store(false)
			continue
		case <-idle.C:
			k.queue.Trim() // no batch for knownIdleTrim: a burst's buffers go
			k.trimDue.Store(false)
			continue
		case <-k.queue.Ready():
		}
		// Linger, deaf to the queue: a fleet reconnecting writes one
		// pipelined batch per knownLinger, not one per success (Redis
		// shares the broker's core), and its successes wake nobody.
		if !batchq.Linger(knownLinger, k.stop) {
			// Stopping: the successes gathered are still written, as a
			// batch cut short by stop always was.
			if batch := k.queue.Take(); len(batch) > 0 {
				k.write(batch)
			}
			return
		}
		for {
			batch := k.queue.Take()
			if len(batch) > knownTrimAbove {
				// A burst's buffers, held from here: said before the
				// round trip to Redis (Tracker.Run's reason).
				k.trimDue.Store(true)
			}
			if len(batch) > 0 {
				k.write(batch)
			}
			if len(batch) < knownBatchMax {
				k.queue.Release() // drained: a burst's buffers go
				break
			}
			select {
			case <-k.stop: // a backlog: the batch in hand was the last
				return
			default:
			}
		}
		if f, h := k.queue.Caps(); max(f, h) > knownTrimAbove {
			k.trimDue.Store(true)
			idle.Reset(knownIdleTrim) // a burst's buffers are held: trim them if it is over
		} else {
			k.trimDue.Store(false) // none held (Release dropped them): no trim to wait for
		}
	}
}

// write records a batch of successes in one pipelined round trip: one ZADD
// per username with its new sources, then the trim to known_sources_max
// (the least recently successful go first) and the expiry.
func (k *knownSources) write(batch []knownWrite) {
	if err := k.exec(batch, false); err != nil {
		if store.IsReply(err) {
			k.refusedBy("writing", err)
		}
		// What was not written is written again at its next success; it
		// stays this broker's own knowledge meanwhile (a README-only
		// attacker: deleting it from recent refused a device the broker
		// had just let in, as throttled, while Redis was down).
		var last int64
		for _, w := range batch {
			last = max(last, w.ms)
		}
		k.forgetWritten(time.UnixMilli(last + 1))
	}
}

// exec sends batch in one pipelined round trip (write); gt: a member's
// score is only raised (ZADD GT, Redis 6.2), never lowered (rewrite).
func (k *knownSources) exec(batch []knownWrite, gt bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	byUser := map[string][]redis.Z{}
	for _, w := range batch {
		byUser[w.username] = append(byUser[w.username], redis.Z{Score: float64(w.ms), Member: w.source()})
	}
	pipe := k.rdb.Pipeline()
	for u, zs := range byUser {
		key := k.kb.KnownTracked(u)
		if gt {
			pipe.ZAddGT(ctx, key, zs...)
		} else {
			pipe.ZAdd(ctx, key, zs...)
		}
		pipe.ZRemRangeByRank(ctx, key, 0, int64(-k.max-1))
		pipe.PExpire(ctx, key, k.window)
	}
	_, err := pipe.Exec(ctx)
	if err != nil && !store.IsReply(err) {
		// An error reply (a key of another type; OOM; ZADD GT on a Redis
		// before 6.2) is an answer: Redis is not down. Marked down, each
		// success of a user whose key had another type took Redis down
		// until the probe saw it up, refusing every client meanwhile
		// under redis_unavailable deny.
		k.down(err)
	}
	return err
}

// refusedLogEvery: the writer's refusals by Redis (error replies) are
// logged at most once per this.
const refusedLogEvery = 10 * time.Minute

// refusedBy logs that Redis refused reading or writing known sources (at
// most once per refusedLogEvery): it answered, so it is not down, but the
// operator must hear of it (a guard:known:<user> key of another type, a
// Redis out of memory, a user refused a command).
func (k *knownSources) refusedBy(what string, err error) {
	gate := &k.refusedAt
	if what == "reading" {
		gate = &k.readRefuse
	}
	if k.log == nil || !gate.allow(refusedLogEvery) {
		return
	}
	k.log(LevelWarning, "mosquitto-guard: redis refused "+what+" known sources ("+store.OneLine(err)+"); each is written again at its next success, and read again at the next throttle (said at most once per "+refusedLogEvery.String()+")")
}

// rewriteRetryable says whether a rewrite that failed with err is worth
// trying again as is: a lost connection or a timeout, or a reply that
// passes by itself (OOM, LOADING, BUSY, a cluster in motion, a failover:
// READONLY from the old master, NOREPLICAS). Another reply
// (WRONGTYPE, a syntax error) would fail the same way.
func rewriteRetryable(err error) bool {
	if !store.IsReply(err) {
		return true
	}
	msg := err.Error()
	for _, p := range []string{"OOM", "LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "MOVED", "ASK", "READONLY", "NOREPLICAS"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// rewriteKnown writes again the known sources of this broker's live
// connections, after Redis lost its keys (a FLUSHALL, an empty restart:
// replicaFlushed). Without it a device that stays connected through the
// loss was known to no other broker until it reconnected, and another
// broker refused it during a throttle of its username (a README-only
// attacker: 4 of 4 runs after a FLUSHALL, 3 of 3 after an empty restart).
//
// A live connection is a known source of its username when this guard
// checked its password: a backend that checks passwords, a username, not
// admitted at its first sight, not deferred; and admitted within
// conflict_window and a refresh (an older one is past the window a read
// asks for, as it would have been in Redis). Each is written with its
// admit time as the score, only raised (ZADD GT): a later success another
// broker wrote meanwhile is kept. g.mu is held for kickScan connections at
// a time; each kickScan connections are one pipelined round trip, off the
// broker thread. It returns the first write's error: the caller retries
// the whole once Redis answers (the sources it wrote before are written
// again, harmlessly).
func (g *Guard) rewriteKnown() error {
	if !g.cfg.Backend.Checks(true) {
		return nil
	}
	cutoff := g.now().Add(-g.cfg.Conflicts.Window - g.known.refresh).UnixMilli()
	var (
		err        error // the error returned (see below)
		unanswered bool  // an error that is no reply (Redis not answering): the scan stops
	)
	stop := func() bool {
		select {
		case <-g.stop:
			return true
		default:
		}
		return unanswered
	}
	write := func(cands []*liveConn) {
		if len(cands) == 0 || stop() {
			return
		}
		batch := make([]knownWrite, 0, 2*len(cands))
		for _, lc := range cands { // identity fields, fixed at admit: read without g.mu
			if ip := lc.ipAddr(); ip.IsValid() {
				batch = append(batch, knownWrite{username: keys.Tracking(lc.username()), ip: ip, ms: lc.sinceMs, kind: sourceIPAddr})
			}
			batch = append(batch, knownWrite{username: keys.Tracking(lc.username()), text: keys.Tracking(lc.clientID), ms: lc.sinceMs, kind: sourceID})
		}
		// An error reply on one username's key (WRONGTYPE) fails that
		// command only: the pipeline's others were written, and the
		// batches after it are written too.
		// A retryable error is kept over one that is not: a batch refused
		// with OOM is retried even when a later batch met a WRONGTYPE.
		e := g.known.exec(batch, true)
		if e != nil && (err == nil || !rewriteRetryable(err)) {
			err = e
		}
		unanswered = unanswered || (e != nil && !store.IsReply(e))
	}
	// The scan hands over the candidates of each kickScan entries of the
	// table, which holds connections that are not candidates too (no
	// username, offline sessions, first sight): they are gathered, and
	// written kickScan connections a round trip. Before, 1 000 checked
	// devices among 50 000 deferred clients took 199 round trips of 5
	// (TestAtkRewriteRoundTripsPer256Connections). The records gathered
	// are not reused until scanDone.
	var pend []*liveConn
	defer g.scanDone()
	g.scanConns(false, func(lc *liveConn) bool {
		return lc.hasUsername && !lc.sighted && !lc.pending && lc.sinceMs >= cutoff && !stop()
	}, func(cands []*liveConn) {
		pend = append(pend, cands...)
		for len(pend) >= kickScan {
			write(pend[:kickScan])
			pend = append(pend[:0], pend[kickScan:]...)
		}
	})
	write(pend)
	return err
}

// rewriteKnownLoop runs rewriteKnown each time Redis lost its keys
// (knownLost). One that failed in a way that may pass (rewriteRetryable) is
// tried again once Redis answers (health.back wakes it), and in any case
// after a backoff (knownRetryMin doubling to knownRetryMax) while Redis is
// up: health.back alone missed a failure recorded after Redis was back (a
// panic, an error reply, which does not mark Redis down, or a failure
// that lost the race with the probe). A loss told while a rewrite runs
// starts one more after it; more are one. The first failure of a series
// is logged.
func (g *Guard) rewriteKnownLoop() {
	var retry <-chan time.Time
	backoff := knownRetryMin
	failing := false
	for {
		select {
		case <-g.stop:
			return
		case <-g.knownLost:
		case <-retry:
			if !g.health.up() {
				retry = time.After(backoff) // health.back wakes it sooner
				continue
			}
		}
		retry = nil
		err := g.rewriteKnownSafely()
		select {
		case <-g.stop:
			// Stopping: a round trip in flight when Close gave up waiting
			// (Redis hung) fails on the client Close closed. That is the
			// shutdown's doing, not Redis's: nothing to log, nothing to retry.
			return
		default:
		}
		switch {
		case err == nil:
			g.knownRetry.Store(false)
			backoff, failing = knownRetryMin, false
			continue
		case !failing:
			failing = true
			g.log(LevelWarning, "mosquitto-guard: writing again the known sources of the live connections after redis lost its keys failed ("+
				store.OneLine(err)+"); each is written at its next success")
		}
		if !rewriteRetryable(err) {
			g.knownRetry.Store(false)
			backoff, failing = knownRetryMin, false
			continue
		}
		g.knownRetry.Store(true)
		retry = time.After(backoff)
		backoff = min(2*backoff, knownRetryMax)
	}
}

// knownRetryMin and knownRetryMax bound the wait before a failed rewrite
// is tried again (rewriteKnownLoop).
const (
	knownRetryMin = time.Second
	knownRetryMax = 30 * time.Second
)

// rewriteKnownSafely is rewriteKnown with a panic logged as an error and
// returned: the loop goes on.
func (g *Guard) rewriteKnownSafely() (err error) {
	defer func() {
		if p := recover(); p != nil {
			g.log(LevelError, fmt.Sprintf("mosquitto-guard: internal error in the known sources rewrite: %v", p))
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return g.rewriteKnown()
}

// knownLostNow asks rewriteKnownLoop for a rewrite (never blocks).
func (g *Guard) knownLostNow() {
	select {
	case g.knownLost <- struct{}{}:
	default:
	}
}
