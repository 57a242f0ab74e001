package plugin

import (
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/backends/files"
	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// credentials checks usernames and passwords against the backend: the
// password file (files), or the hashes the lookup read from Redis (redis).
type credentials struct {
	backend      config.Backend
	passwordFile string
	usernameMax  int // username_max_bytes (0: none): a longer user can never connect
	verifier     hashes.Verifier
	cache        *verifyCache
	log          Logger
	users        atomic.Pointer[files.Store] // files backend: the users loaded
	lastHash     atomic.Pointer[string]      // redis backend: the most expensive known user's hash seen, the model of the unknown users' dummy
	// seeded: the redis backend's model has been taken from a full load of
	// the users (seedUnknownUsersDummy). Until then no password is checked
	// (check): the class of an unknown user's dummy is not known yet.
	seeded atomic.Bool
	// unseededLogged: the refusals for want of a seeded model were logged.
	unseededLogged atomic.Bool
	badHashes      badHashLines
}

// badHashLines holds back the error line of a stored hash that cannot be
// used: a client retrying as its user wrote one line per attempt (7 626
// lines, 936 KB, in 3 s from one client; such refusals are not counted, so
// no ban stops it). A username's line is written at most once per
// badHashEvery; at most badHashMax usernames are remembered (by a keyed
// 64-bit hash of the name: 16 bytes each). When full, those logged more
// than badHashEvery ago are forgotten (at most once per badHashSweep); if
// none is, a new username's line waits: at most badHashMax lines per
// badHashEvery, however many users have unusable hashes (forgetting all at
// once let 5 000 such users cycled twice write 10 000 lines in a minute).
type badHashLines struct {
	mu    sync.Mutex
	seed  maphash.Seed
	last  map[uint64]time.Time
	swept time.Time
}

const (
	badHashEvery = 10 * time.Minute
	badHashMax   = 4096
	badHashSweep = time.Minute
)

// due reports whether username's line is due now, and notes it if so.
func (b *badHashLines) due(username string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last == nil {
		b.seed = maphash.MakeSeed()
		b.last = map[uint64]time.Time{}
	}
	k := maphash.String(b.seed, username)
	t, ok := b.last[k]
	if ok && now.Sub(t) < badHashEvery {
		return false
	}
	if !ok && len(b.last) >= badHashMax {
		if now.Sub(b.swept) < badHashSweep {
			return false
		}
		b.swept = now
		for h, t := range b.last {
			if now.Sub(t) >= badHashEvery {
				delete(b.last, h)
			}
		}
		if len(b.last) >= badHashMax {
			return false
		}
	}
	b.last[k] = now
	return true
}

// check returns "" when c's password is right, else the rule that refused.
// known says whether ans holds what Redis knows; reauth, that the broker is
// re-checking a client it holds after a reload. A stored hash that cannot
// be used is logged at error level: the operator got it wrong.
//
// An unknown user's password is verified against a dummy hash, known and
// unknown users alike by the one call below (verifyPassword), from the same
// stack: where it lies changes what a hash costs. Go's SHA-512 (blockAVX2)
// writes its message schedule to its own stack frame 32 bytes at a time;
// when those writes straddle a 4 KiB page the whole PBKDF2 costs some 30 to
// 40% more. In the broker, the files backend's unknown users went one frame
// deeper (files.Store.Verify) than its known users: the known users' block
// function ran at a stack pointer of 0x...ff8, across a page, the unknown
// users' at 0x...f80, and with $7$ hashes of 5000 rounds a wrong password
// for a known user answered in 6.0 to 7.0 ms, an unknown user in 3.8 to
// 5.1 (e2e TestZZUnknownUserTiming). One call site gives both one cost,
// whichever it is.
//
// cached: the password matched the verification cache, nothing was hashed.
func (cr *credentials) check(c *Client, ans store.Answer, known, reauth bool) (rule string, cached bool) {
	var hash string
	unknown := false
	switch cr.backend {
	case config.BackendFiles:
		hash, unknown = cr.users.Load().HashOrDummy(c.Username)
	case config.BackendRedis:
		if !cr.seeded.Load() && !reauth {
			// Until the users are loaded (a broker started while Redis did
			// not answer, or whose first load outlasted the start's wait),
			// the class of the most expensive user is not known: an unknown
			// user's dummy of the default class would answer in a
			// millisecond where a bcrypt-11 user takes 160, telling every
			// username probed apart. Known and unknown users alike are
			// refused unchecked, as while Redis is down, for as long as the
			// first load takes (about 3 s for 200 000 users). Not counted
			// as a failure. A reload's re-check is no probe: it goes on.
			// Warned whether or not Redis answers now: a broker started
			// while Redis was down refused every client with no line
			// saying why (a README-only attacker).
			if !cr.unseededLogged.Swap(true) {
				cr.log(LevelWarning, "mosquitto-guard: backend redis: passwords are checked once the replica has loaded the users; until then clients are refused with rule=redis-unavailable")
			}
			return RuleRedisUnavailable, false
		}
		if !known {
			return RuleRedisUnavailable, false
		}
		if !ans.HasUser {
			// Spend what a known user costs: a hash of the class of the most
			// expensive known user's seen so far (or mosquitto_passwd's
			// default), never matching. Only known users' hashes move it, so
			// an attacker cannot make it cheaper.
			hash, unknown = cr.unknownHash(), true
		} else {
			hash = ans.UserHash
		}
	}
	// An unknown user looks in the cache as a known one does (its dummy
	// is never in it: only successes are added).
	if cr.cache.hit(c.Username, c.Password, hash) && !unknown {
		return "", true
	}
	if cr.backend == config.BackendRedis && !unknown {
		cr.noteHash(hash)
	}
	ok, err := verifyPassword(cr.verifier, hash, c.Password)
	switch {
	case unknown:
		return RuleUnknownUser, false // the dummy's result is thrown away
	case err != nil:
		if cr.badHashes.due(c.Username, time.Now()) {
			cr.log(LevelError, fmt.Sprintf("mosquitto-guard: the stored hash of username=%s cannot be used: %v (said at most once per %v for a user)",
				logval.Quote(c.Username), err, badHashEvery))
		}
		return RuleBadStoredHash, false
	case !ok:
		return RuleBadPassword, false
	}
	cr.cache.add(c.Username, c.Password, hash)
	return "", false
}

// verifyPassword is the one verification of a password in check (a
// variable: a test sees from where it is called).
var verifyPassword = hashes.Verifier.Verify

// unknownHash is the redis backend's dummy for an unknown user: a hash of
// the class of the most expensive known user's seen so far, or
// mosquitto_passwd's default.
func (cr *credentials) unknownHash() string {
	if ref := cr.lastHash.Load(); ref != nil {
		if d, err := cr.verifier.DummyLike(*ref); err == nil {
			return d
		}
	}
	return hashes.DefaultDummy()
}

// noteHash keeps the most expensive known user's hash seen (redis backend),
// the model of the unknown users' dummy. Called on cache misses only, beside
// a verification that costs far more than the parse.
func (cr *credentials) noteHash(hash string) {
	if cr.isModel(hash) {
		return // the common case, a user's own hash already the model: no parse
	}
	w, err := cr.verifier.Work(hash)
	if err != nil {
		return
	}
	for {
		ref := cr.lastHash.Load()
		if ref != nil {
			if *ref == hash {
				return
			}
			if cur, _ := cr.verifier.Work(*ref); cur >= w {
				return
			}
		}
		// Compare and swap: a more expensive hash stored meanwhile (the
		// sync goroutine and the broker thread both call this) is not
		// overwritten.
		if cr.lastHash.CompareAndSwap(ref, &hash) {
			return
		}
	}
}

// isModel reports whether hash is the unknown users' model (redis backend).
func (cr *credentials) isModel(hash string) bool {
	ref := cr.lastHash.Load()
	return ref != nil && *ref == hash
}

// resetHashes makes the most expensive of hashes the unknown users' model,
// in place of the one before (none usable: mosquitto_passwd's default): for
// a reload, or when the model's user was deleted or rehashed. It returns
// how many of hashes cost less than the model by more than a tenth: users a timing attacker
// tells from unknown ones, as in a password file that mixes hash costs.
func (cr *credentials) resetHashes(hashes []string) (cheap int) {
	best, cheap := cr.rank(hashes)
	cr.lastHash.Store(best)
	return cheap
}

// mostExpensive returns the hash of hashes that costs most to verify (nil:
// none usable).
func (cr *credentials) mostExpensive(hashes []string) *string {
	best, _ := cr.rank(hashes)
	return best
}

// rank returns the hash of hashes that costs most to verify (nil: none
// usable) and how many cost less than it by more than a tenth (the files
// backend's measure, files.Store.CheapHashes).
func (cr *credentials) rank(hs []string) (best *string, cheap int) {
	type cost struct {
		work float64
		kind string
	}
	costs := make([]cost, len(hs))
	bestAt := -1
	for i, h := range hs {
		w, kind, err := cr.verifier.WorkKind(h)
		if err != nil {
			costs[i].work = -1
			continue
		}
		costs[i] = cost{w, kind}
		if bestAt < 0 || w > costs[bestAt].work {
			bestAt = i
		}
	}
	if bestAt < 0 {
		return nil, 0
	}
	m := costs[bestAt]
	for _, c := range costs {
		if c.work >= 0 && hashes.ToldApart(c.work, c.kind, m.work, m.kind) {
			cheap++
		}
	}
	h := hs[bestAt] // a copy: the slice is not kept
	return &h, cheap
}

// cheaperThanModel reports whether hash's user is told from unknown users
// by timing (hashes.ToldApart): it costs less than the unknown users' model
// by more than a tenth, or is of another kind (redis backend).
func (cr *credentials) cheaperThanModel(hash string) bool {
	ref := cr.lastHash.Load()
	if ref == nil {
		return false
	}
	w, kind, err := cr.verifier.WorkKind(hash)
	if err != nil {
		return false
	}
	m, mKind, err := cr.verifier.WorkKind(*ref)
	return err == nil && hashes.ToldApart(w, kind, m, mKind)
}

// exists reports whether c's username is a known user of the backend.
func (cr *credentials) exists(c *Client, ans store.Answer) bool {
	switch cr.backend {
	case config.BackendFiles:
		_, ok := cr.users.Load().Hash(c.Username)
		return ok
	case config.BackendRedis:
		return ans.HasUser
	}
	return false
}

// load loads the password file and makes it the users checked (read, then
// apply): at start, and for a reload whose read ended in time.
func (cr *credentials) load() error {
	users, err := cr.read()
	if err != nil {
		return err
	}
	cr.apply(users)
	return nil
}

// read reads the password file, logging at most maxReports of its skipped
// lines and duplicate usernames plus a count of the rest. A file that yields
// no user where users were loaded before is an error. It changes nothing.
func (cr *credentials) read() (*files.Store, error) {
	const maxReports = 20
	users, skipped, err := files.Load(cr.passwordFile, cr.verifier)
	if err != nil {
		return nil, &config.OptionError{Option: "password_file", Value: cr.passwordFile, Expected: "a readable mosquitto_passwd file (" + err.Error() + ")"}
	}
	for i, s := range skipped {
		if i == maxReports {
			cr.log(LevelWarning, fmt.Sprintf("mosquitto-guard: password_file %s: %d more skipped lines or duplicate usernames not logged",
				cr.passwordFile, users.Skipped()-i))
			break
		}
		if s.Username != "" {
			cr.log(LevelWarning, "mosquitto-guard: "+s.Error())
		} else {
			cr.log(LevelWarning, "mosquitto-guard: skipped "+s.Error())
		}
	}
	if prev := cr.users.Load(); prev != nil && prev.Len() > 0 && users.Len() == 0 {
		return nil, fmt.Errorf("password_file %s: no user in it (%d lines skipped; a file meant to hold no user takes effect at restart)",
			cr.passwordFile, users.Skipped())
	}
	return users, nil
}

// apply makes users the users checked from now on.
func (cr *credentials) apply(users *files.Store) {
	cr.users.Store(users)
	cr.log(LevelInfo, fmt.Sprintf("mosquitto-guard: loaded %d users from %s", users.Len(), cr.passwordFile))
	if m := cr.usernameMax; m > 0 && m < 65535 {
		if n := users.LongerThan(m); n > 0 {
			cr.log(LevelWarning, fmt.Sprintf("mosquitto-guard: password_file %s: %d users have a username longer than username_max_bytes (%d bytes): they can never connect", cr.passwordFile, n, m))
		}
	}
	if n := users.CheapHashes(); n > 0 {
		cr.log(LevelWarning, fmt.Sprintf("mosquitto-guard: password_file %s mixes hash costs: %d users have a hash cheaper than the most expensive one by more than a tenth, or of another format, and timing can tell them from unknown users; rehash them with one format and cost", cr.passwordFile, n))
	}
}
