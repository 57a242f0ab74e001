package replica

import (
	"fmt"
	"net/netip"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// Entry is one replicated key, as the sync reads it.
type Entry struct {
	Key     string
	Value   string
	Expires time.Time // zero: never
}

// slot is how the replica stores an entry: 24 bytes beside its map key, so a
// million keys fit in a little over 100 MB.
type slot struct {
	value string
	exp   int64 // unix ms; 0: never
}

func (e slot) live(nowMs int64) bool { return e.exp == 0 || nowMs < e.exp }

func toSlot(value string, expires time.Time) slot {
	if expires.IsZero() {
		return slot{value: value}
	}
	return slot{value: value, exp: expires.UnixMilli()}
}

// rangeSet holds the ranges of one list and address family, one map per
// prefix length: a lookup probes only the lengths in use, so its cost does
// not grow with the number of ranges (at most 33 probes for IPv4, 129 for IPv6).
type rangeSet struct {
	byLen map[int]map[netip.Prefix]slot
	lens  []int // lengths in use, longest first
}

func (r *rangeSet) put(p netip.Prefix, e slot) {
	if r.byLen == nil {
		r.byLen = map[int]map[netip.Prefix]slot{}
	}
	m := r.byLen[p.Bits()]
	if m == nil {
		m = map[netip.Prefix]slot{}
		r.byLen[p.Bits()] = m
		r.lens = append(r.lens, p.Bits())
		sort.Sort(sort.Reverse(sort.IntSlice(r.lens)))
	}
	m[p] = e
}

func (r *rangeSet) del(p netip.Prefix) {
	m := r.byLen[p.Bits()]
	if m == nil {
		return
	}
	delete(m, p)
	if len(m) == 0 {
		delete(r.byLen, p.Bits())
		for i, l := range r.lens {
			if l == p.Bits() {
				r.lens = append(r.lens[:i], r.lens[i+1:]...)
				break
			}
		}
	}
}

// match returns the most specific live range containing ip.
func (r *rangeSet) match(ip netip.Addr, nowMs int64) (slot, netip.Prefix, bool) {
	for _, l := range r.lens {
		p, err := ip.Prefix(l)
		if err != nil {
			continue
		}
		if e, ok := r.byLen[l][p]; ok && e.live(nowMs) {
			return e, p, true
		}
	}
	return slot{}, netip.Prefix{}, false
}

// matchOperators is match leaving out automatic bans (keys.IsAutoBan): the
// narrowest live range that is an operator's, for a lookup with
// store.Query.OperatorsOnly (atk52: an automatic /64 hid an operator's
// wider range from the re-check after a reload, where store.Lookup, which
// reads every range, found it).
func (r *rangeSet) matchOperators(ip netip.Addr, nowMs int64) (slot, netip.Prefix, bool) {
	for _, l := range r.lens {
		p, err := ip.Prefix(l)
		if err != nil {
			continue
		}
		if e, ok := r.byLen[l][p]; ok && e.live(nowMs) && !keys.IsAutoBan(e.value) {
			return e, p, true
		}
	}
	return slot{}, netip.Prefix{}, false
}

// Replica is the local copy. It is safe for concurrent use: the broker
// thread reads, the sync goroutine writes.
type Replica struct {
	kb keys.Builder

	mu     sync.RWMutex
	exact  map[string]slot // allow/block keys of the clientid, ip, username and cert scopes
	ranges *[2][2]rangeSet // by listIndex and family; an array, not a map by kind: a lookup reads it twice
	users  map[string]slot // username -> hash, for the redis backend
	// throttles: username (keys.Tracking form) -> its throttle key's entry
	throttles map[string]slot
	count     int
	lists     [2]int // list keys held (exact and ranges), by listIndex: block, allow
	// exactN counts the exact keys held (expired ones until Sweep drops
	// them) by listIndex and exactIndex: a lookup skips a scope of a list
	// that holds none, without building its key or formatting the address.
	exactN [2][exactScopes]int
	gen    uint64 // counts swaps: a walk stops when its maps are replaced
}

// listIndex is a list's index in Replica.lists.
func listIndex(kind keys.Kind) int {
	if kind == keys.Allow {
		return 1
	}
	return 0
}

// The scopes of the exact keys, by their index in Replica.exactN.
const (
	exactClientID = iota
	exactUsername
	exactCert
	exactIP
	exactScopes // their number
)

// exactIndex is scope's index in Replica.exactN; -1 for a scope no exact
// key has (cidr: the ranges).
func exactIndex(scope keys.Scope) int {
	switch scope {
	case keys.ClientID:
		return exactClientID
	case keys.Username:
		return exactUsername
	case keys.Cert:
		return exactCert
	case keys.IP:
		return exactIP
	}
	return -1
}

// countExact adds d to the count of the exact key of kind and scope (r.mu
// held for writing).
func (r *Replica) countExact(kind keys.Kind, scope keys.Scope, d int) {
	if i := exactIndex(scope); i >= 0 {
		r.exactN[listIndex(kind)][i] += d
	}
}

// New returns an empty replica for keys under kb.
func New(kb keys.Builder) *Replica {
	r := &Replica{kb: kb}
	r.reset()
	return r
}

// sizedLike returns an empty replica for the same keys with room for as
// many entries as r holds now: a reload's maps are built at their size
// rather than grown by doubling (each growth a copy and garbage).
func (r *Replica) sizedLike() *Replica {
	r.mu.RLock()
	exact, users, throttles := len(r.exact), len(r.users), len(r.throttles)
	r.mu.RUnlock()
	fresh := New(r.kb)
	fresh.exact = make(map[string]slot, exact)
	fresh.users = make(map[string]slot, users)
	fresh.throttles = make(map[string]slot, throttles)
	return fresh
}

func (r *Replica) reset() {
	r.exact = map[string]slot{}
	r.ranges = &[2][2]rangeSet{}
	r.users = map[string]slot{}
	r.throttles = map[string]slot{}
	r.count = 0
	r.lists = [2]int{}
	r.exactN = [2][exactScopes]int{}
}

// Keys returns the key builder.
func (r *Replica) Keys() keys.Builder { return r.kb }

// UserHashes returns the stored hash of every user held (the redis
// backend's guard:user: keys), expired ones left out: a copy, taken under
// the read lock.
func (r *Replica) UserHashes() []string {
	now := time.Now().UnixMilli()
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.users))
	for _, e := range r.users {
		if e.live(now) {
			out = append(out, e.value)
		}
	}
	return out
}

// Len returns the number of keys held.
func (r *Replica) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.count
}

// Lists returns the number of block and allow keys held (exact keys and
// ranges; expired ones until Sweep drops them), for the metrics: O(1).
func (r *Replica) Lists() (block, allow int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.lists[0], r.lists[1]
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// Kind of key a replica holds, from its name.
type keyClass int

const (
	classNone keyClass = iota
	classList
	classRange
	classUser
	classThrottle
)

// classify says what key is and, for list keys, their scope; for ranges
// and users, its parsed value.
func (r *Replica) classify(key string) (keyClass, keys.Kind, keys.Scope, netip.Prefix, string, error) {
	if u, ok := strings.CutPrefix(key, r.kb.User("")); ok {
		return classUser, "", "", netip.Prefix{}, u, nil
	}
	if u, ok := strings.CutPrefix(key, r.kb.Throttle("")); ok {
		return classThrottle, "", "", netip.Prefix{}, u, nil
	}
	kind, scope, value, ok := r.kb.Split(key)
	if !ok {
		return classNone, "", "", netip.Prefix{}, "", nil
	}
	switch scope {
	case keys.IP:
		if _, err := keys.ParseIPKey(value); err != nil {
			return classNone, kind, scope, netip.Prefix{}, value, r.ipKeyError(key, kind, value, err)
		}
	case keys.CIDR:
		p, err := keys.ParseCIDR(value)
		if err != nil {
			return classNone, kind, scope, netip.Prefix{}, value, fmt.Errorf("range key %s can never match: %w", logval.Quote(key), err)
		}
		return classRange, kind, scope, p, value, nil
	case keys.Cert:
		// Clients are looked up by keys.CertID only: 64 lower-case hex digits.
		if !keys.IsCertID(value) {
			return classNone, kind, scope, netip.Prefix{}, value, fmt.Errorf("cert key %s can never match: expected 64 lower-case hex digits (the SHA-256 of the certificate's DER)", logval.Quote(key))
		}
	}
	return classList, kind, scope, netip.Prefix{}, value, nil
}

// ipKeyError says why the ip key key can never match: the plugin looks
// clients up by their canonical address only. It names the key expected
// when value is an address written in another form.
func (r *Replica) ipKeyError(key string, kind keys.Kind, value string, err error) error {
	if a, nerr := keys.NormalizeIP(value); nerr == nil {
		return fmt.Errorf("ip key %s can never match: expected %s", logval.Quote(key), r.kb.List(kind, keys.IP, a.String()))
	}
	return fmt.Errorf("ip key %s can never match: %w", logval.Quote(key), err)
}

// Put stores key with value and expiry (zero: never). A list key that can
// never match, a range that is no canonical network or an ip key that is no
// canonical address, is not stored: Put returns an error, whose text names
// the key and the form expected, ready to log.
func (r *Replica) Put(key, value string, expires time.Time) error {
	class, kind, scope, p, user, err := r.classify(key)
	if err != nil || class == classNone {
		return err
	}
	e := toSlot(value, expires)
	r.mu.Lock()
	defer r.mu.Unlock()
	var had bool
	switch class {
	case classList:
		_, had = r.exact[key]
		r.exact[key] = e
	case classRange:
		rs := &r.ranges[listIndex(kind)][family(p.Addr())]
		_, had = rs.byLen[p.Bits()][p]
		rs.put(p, e)
	case classUser:
		_, had = r.users[user]
		r.users[user] = e
	case classThrottle:
		_, had = r.throttles[user]
		r.throttles[user] = e
	}
	if !had {
		r.count++
		if class == classList || class == classRange {
			r.lists[listIndex(kind)]++
		}
		if class == classList {
			r.countExact(kind, scope, 1)
		}
	}
	return nil
}

// Get returns the entry held for key, live or not.
func (r *Replica) Get(key string) (Entry, bool) {
	class, kind, _, p, user, _ := r.classify(key)
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.slotLocked(key, class, kind, p, user)
	if !ok {
		return Entry{}, false
	}
	out := Entry{Key: key, Value: e.value}
	if e.exp != 0 {
		out.Expires = time.UnixMilli(e.exp)
	}
	return out, true
}

// slotLocked returns the slot held for key, classified (classify); r.mu
// held, for reading at least.
func (r *Replica) slotLocked(key string, class keyClass, kind keys.Kind, p netip.Prefix, user string) (slot, bool) {
	switch class {
	case classList:
		e, ok := r.exact[key]
		return e, ok
	case classRange:
		e, ok := r.ranges[listIndex(kind)][family(p.Addr())].byLen[p.Bits()][p]
		return e, ok
	case classUser:
		e, ok := r.users[user]
		return e, ok
	case classThrottle:
		e, ok := r.throttles[user]
		return e, ok
	}
	return slot{}, false
}

// Delete removes key.
func (r *Replica) Delete(key string) {
	class, kind, scope, p, user, _ := r.classify(key)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deleteLocked(key, class, kind, scope, p, user)
}

// DeleteIf removes key if the value held for it is value (a change
// arriving meanwhile is kept), and reports whether it did.
func (r *Replica) DeleteIf(key, value string) bool {
	class, kind, scope, p, user, _ := r.classify(key)
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.slotLocked(key, class, kind, p, user); !ok || e.value != value {
		return false
	}
	r.deleteLocked(key, class, kind, scope, p, user)
	return true
}

// deleteLocked removes key (r.mu held).
func (r *Replica) deleteLocked(key string, class keyClass, kind keys.Kind, scope keys.Scope, p netip.Prefix, user string) {
	var had bool
	switch class {
	case classList:
		_, had = r.exact[key]
		delete(r.exact, key)
	case classRange:
		rs := &r.ranges[listIndex(kind)][family(p.Addr())]
		_, had = rs.byLen[p.Bits()][p]
		rs.del(p)
	case classUser:
		_, had = r.users[user]
		delete(r.users, user)
	case classThrottle:
		_, had = r.throttles[user]
		delete(r.throttles, user)
	}
	if had {
		r.count--
		if class == classList || class == classRange {
			r.lists[listIndex(kind)]--
		}
		if class == classList {
			r.countExact(kind, scope, -1)
		}
	}
}

// walkChunk is how many entries a walk visits per hold of the read lock,
// and the most expired entries Sweep drops per hold of the write lock: how
// long a lookup on the broker thread can wait on either does not grow with
// the number of entries.
//
// The loops of a full reload and of a walk also let Go's scheduler run
// other goroutines after each walkChunk entries (runtime.Gosched; a few
// tens of µs of work): the broker thread, coming back into Go from
// Mosquitto's code with its P taken meanwhile (sysmon hands it to waiting
// goroutines), queues for a P, and a loop that never yields holds one for
// Go's whole 10 ms time slice (TestReloadLeavesTheBrokerThreadAP).
const walkChunk = 256

// walk visits the entries of the map cur returns (called under the read
// lock), holding r.mu's read lock for at most walkChunk of them at a time;
// between runs with no lock held after each chunk and once at the end.
// Entries added or removed while the lock is released may or may not be
// visited (Go's rules for maps changed during a range loop); the walk stops
// early when the replica's maps are replaced (swap).
func walk[K comparable](r *Replica, cur func() map[K]slot, visit func(K, slot), between func()) {
	r.mu.RLock()
	gen := r.gen
	n := 0
	for k, e := range cur() {
		visit(k, e)
		if n++; n%walkChunk == 0 {
			r.mu.RUnlock()
			between()
			runtime.Gosched() // see walkChunk
			r.mu.RLock()
			if r.gen != gen {
				break
			}
		}
	}
	r.mu.RUnlock()
	between()
}

// sweep drops the expired entries of the map cur returns, del removing one
// from the live structure (both called under the write lock).
func sweep[K comparable](r *Replica, now int64, cur func() map[K]slot, del func(K)) int {
	n := 0
	expired := make([]K, 0, walkChunk)
	walk(r, cur, func(k K, e slot) {
		if !e.live(now) {
			expired = append(expired, k)
		}
	}, func() {
		if len(expired) == 0 {
			return
		}
		r.mu.Lock()
		m := cur()
		for _, k := range expired {
			if e, ok := m[k]; ok && !e.live(now) { // still there, still expired
				del(k)
				r.count--
				n++
			}
		}
		r.mu.Unlock()
		expired = expired[:0]
	})
	return n
}

// Sweep drops entries that have expired, to free their memory; lookups
// already ignore them. It never holds the replica's lock for more than
// walkChunk entries at a time, so lookups running meanwhile wait at most
// that long, whatever the number of entries.
func (r *Replica) Sweep(t time.Time) int {
	now := t.UnixMilli()
	n := sweep(r, now, func() map[string]slot { return r.exact }, func(k string) {
		delete(r.exact, k)
		if kind, scope, _, ok := r.kb.Split(k); ok {
			r.lists[listIndex(kind)]--
			r.countExact(kind, scope, -1)
		}
	})
	for _, kind := range []keys.Kind{keys.Allow, keys.Block} {
		for f := 0; f < 2; f++ {
			r.mu.RLock()
			lens := append([]int(nil), r.ranges[listIndex(kind)][f].lens...)
			r.mu.RUnlock()
			for _, l := range lens {
				n += sweep(r, now, func() map[netip.Prefix]slot { return r.ranges[listIndex(kind)][f].byLen[l] },
					func(p netip.Prefix) { r.ranges[listIndex(kind)][f].del(p); r.lists[listIndex(kind)]-- })
			}
		}
	}
	n += sweep(r, now, func() map[string]slot { return r.users }, func(u string) { delete(r.users, u) })
	n += sweep(r, now, func() map[string]slot { return r.throttles }, func(u string) { delete(r.throttles, u) })
	return n
}

// Lookup answers q from the replica, exactly as store.Store.Lookup
// answers it from Redis: the first allow and block entries in the order
// client ID, username, certificate, IP, narrowest range.
func (r *Replica) Lookup(q store.Query, t time.Time) store.Answer {
	now := t.UnixMilli()
	r.mu.RLock()
	defer r.mu.RUnlock()
	var a store.Answer
	// A list that holds no key (lists: exact keys and ranges) is not read.
	if r.lists[0]+r.lists[1] > 0 {
		var allows, blocks [5]*store.Match
		var buf [256]byte
		// The address in its canonical form (netip's String), formatted
		// once for both lists, and only when one holds an ip key.
		var ipBuf [64]byte
		var ip []byte
		if q.IP.IsValid() && r.exactN[0][exactIP]+r.exactN[1][exactIP] > 0 {
			ip = q.IP.AppendTo(ipBuf[:0])
		}
		if r.lists[listIndex(keys.Allow)] > 0 {
			r.matches(keys.Allow, q, ip, &buf, now, &allows)
		}
		if r.lists[listIndex(keys.Block)] > 0 {
			r.matches(keys.Block, q, ip, &buf, now, &blocks)
		}
		a.Allow, a.Block = store.Resolve(allows[:], blocks[:])
	}
	if q.HasUsername && len(r.throttles) > 0 {
		if e, ok := r.throttles[keys.Tracking(q.Username)]; ok && e.live(now) {
			k := r.kb.Throttle(q.Username)
			a.Throttle = match(keys.Block, keys.Username, q.Username, k, e, now)
		}
	}
	if q.WantUser && q.HasUsername {
		if e, ok := r.users[q.Username]; ok && e.live(now) {
			a.UserHash, a.HasUser = e.value, true
		}
	}
	return a
}

// matches fills out with the entries of one list that match q, one per
// scope, in the order client ID, username, certificate, IP, narrowest range;
// ip is q.IP's canonical text (nil when no list holds an ip key).
//
// A scope of which the list holds no exact key is skipped (exactN). Keys
// are built in buf (the caller's: zeroing one costs as much as a lookup
// that finds nothing) and looked up as r.exact[string(b)], which Go does
// without allocating: a CONNECT that matches nothing allocates nothing here
// (a key over len(buf) bytes takes one allocation); a match builds its key
// and value strings once.
func (r *Replica) matches(kind keys.Kind, q store.Query, ip []byte, buf *[256]byte, now int64, out *[5]*store.Match) {
	held := &r.exactN[listIndex(kind)]
	// operators: automatic bans are left out in the search itself, as
	// store.Lookup leaves them out of its candidates, so that a wider
	// range or a claim's other form behind one is still found.
	operators := kind == keys.Block && q.OperatorsOnly
	try := func(scope keys.Scope, value string) *store.Match {
		b := r.kb.AppendList(buf[:0], kind, scope, value)
		if e, ok := r.exact[string(b)]; ok && e.live(now) && (!operators || !keys.IsAutoBan(e.value)) {
			return match(kind, scope, value, string(b), e, now)
		}
		return nil
	}
	// A claim over 256 bytes (or starting with "sha256:") is also looked
	// up by its tracking form in the block list: the form automatic bans of
	// it are written in (keys.FailKey). Allow keys match the value alone
	// (atk48: an allow on "sha256:<hex>" lifted the ban of the long client
	// ID it hashes).
	tryClaim := func(scope keys.Scope, value string) *store.Match {
		if m := try(scope, value); m != nil || kind != keys.Block {
			return m
		}
		if t := keys.Tracking(value); t != value {
			return try(scope, t)
		}
		return nil
	}
	if held[exactClientID] > 0 {
		out[0] = tryClaim(keys.ClientID, q.ClientID)
	}
	if q.HasUsername && held[exactUsername] > 0 {
		out[1] = tryClaim(keys.Username, q.Username)
	}
	if held[exactCert] > 0 && keys.IsCertID(q.Cert) { // as store.candidates: an exact key, never a tracking form
		out[2] = try(keys.Cert, q.Cert)
	}
	if !q.IP.IsValid() {
		return
	}
	if held[exactIP] > 0 {
		b := append(r.kb.AppendList(buf[:0], kind, keys.IP, ""), ip...)
		if e, ok := r.exact[string(b)]; ok && e.live(now) && (!operators || !keys.IsAutoBan(e.value)) {
			out[3] = match(kind, keys.IP, q.IP.String(), string(b), e, now)
		}
	}
	e, p, ok := r.ranges[listIndex(kind)][family(q.IP)].match(q.IP, now)
	if ok && operators && keys.IsAutoBan(e.value) {
		e, p, ok = r.ranges[listIndex(kind)][family(q.IP)].matchOperators(q.IP, now)
	}
	if ok {
		v := p.String()
		out[4] = match(kind, keys.CIDR, v, r.kb.List(kind, keys.CIDR, v), e, now)
	}
}

func match(kind keys.Kind, scope keys.Scope, value, key string, e slot, now int64) *store.Match {
	ttl := time.Duration(-1)
	if e.exp != 0 {
		ttl = time.Duration(e.exp-now) * time.Millisecond
	}
	return &store.Match{Kind: kind, Scope: scope, Value: value, Key: key, Reason: e.value, TTL: ttl}
}
