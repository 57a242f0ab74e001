package hashes

import (
	"golang.org/x/crypto/bcrypt"

	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strconv"
	"sync"
)

// Dummy hashes keep a failed login for an unknown user from being faster
// than one for a known user: the caller verifies the password against a
// dummy of the class that a known user's hash would have, and throws the
// result away. A hash's class is its format and everything that sets the
// cost of verifying it: the iterations, bcrypt cost or argon2 m, t and p,
// the PBKDF2 digest, the salt and key lengths, and the textual form (so that
// the dummy parses the same way). Salt and digest are not part of it.

// maxDummyClasses bounds the dummy cache. A broker sees a handful of classes
// (one per tool and setting that wrote its hashes); past the bound, an
// arbitrary entry is dropped for each new class.
const maxDummyClasses = 64

var dummies = struct {
	sync.Mutex
	byClass map[string]string
}{byClass: make(map[string]string)}

// Class names the class of encoded: encoded with its salt and digest each
// replaced by "<n>", their length in bytes ("<n utf8>" for a go-auth salt
// stored as itself), and its numbers in canonical decimal. For example
//
//	$7$101$<12>$<64>
//	PBKDF2$sha512$100000$<16>$<64>
//	$pbkdf2-sha512$i=100000,l=64$<16>$<64>
//	$2b$10$<16><23>
//	$argon2id$v=19$m=65536,t=3,p=4$<16>$<32>
//
// Two hashes of one class cost the same to verify. A class holds no salt or
// digest, so it may be logged. Errors are those of Validate.
func (v Verifier) Class(encoded string) (string, error) {
	c, err := v.parse(encoded, defaultLimits)
	if err != nil {
		return "", err
	}
	return c.class(), nil
}

// DummyLike returns a hash of the same class as encoded (see Class) with a
// random salt and a random digest, for an unknown user: verifying a password
// against it with v costs what verifying against encoded costs. Its result
// must be thrown away: no password is known to match a dummy, but a tiny
// key (go-auth PBKDF2 allows one byte) matches some passwords by chance.
//
// Dummies are cached per class (up to 64 classes), so a call costs a parse
// of encoded and a map look-up, never a hash computation, and repeated calls
// for one class return the same dummy. DummyLike is safe for concurrent use.
// A malformed or unsupported encoded is the error Validate would return.
func (v Verifier) DummyLike(encoded string) (string, error) {
	c, err := v.parse(encoded, defaultLimits)
	if err != nil {
		return "", err
	}
	class := c.class()
	dummies.Lock()
	defer dummies.Unlock()
	if d, ok := dummies.byClass[class]; ok {
		return d, nil
	}
	if len(dummies.byClass) >= maxDummyClasses {
		for k := range dummies.byClass {
			delete(dummies.byClass, k)
			break
		}
	}
	d := c.dummy() // random bytes and encoding only: microseconds
	dummies.byClass[class] = d
	return d, nil
}

// DefaultDummy returns a dummy of the class mosquitto_passwd 2.0 writes by
// default ($7$, 101 iterations, 12-byte salt), for when no known user's hash
// is at hand. Its format does not depend on a Verifier's salt encoding.
func DefaultDummy() string {
	d, err := Verifier{}.DummyLike(defaultTemplate)
	if err != nil {
		panic("hashes: default dummy template: " + err.Error())
	}
	return d
}

// defaultTemplate is a well-formed $7$ hash of mosquitto_passwd's default
// class; all of its salt and digest bytes are zero.
var defaultTemplate = "$7$101$" + base64.StdEncoding.EncodeToString(make([]byte, 12)) +
	"$" + base64.StdEncoding.EncodeToString(make([]byte, mosquittoHashLen))

// randomBytes returns n bytes from crypto/rand (which never fails since
// Go 1.24).
func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// rawSaltAlphabet is what a dummy's go-auth utf-8 salt is made of: never '$'
// nor a blank, one byte per character.
const rawSaltAlphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// randomText returns n random bytes of rawSaltAlphabet.
func randomText(n int) string {
	b := randomBytes(n)
	for i := range b {
		b[i] = rawSaltAlphabet[b[i]&63]
	}
	return string(b)
}

// lenTag is a field of a class: "<n>".
func lenTag(n int) string {
	return "<" + strconv.Itoa(n) + ">"
}

func (c sha512Checker) class() string {
	return "$6$" + lenTag(len(c.salt)) + "$" + lenTag(len(c.want))
}

func (c sha512Checker) dummy() string {
	enc := base64.StdEncoding
	return "$6$" + enc.EncodeToString(randomBytes(len(c.salt))) + "$" + enc.EncodeToString(randomBytes(len(c.want)))
}

// params is the parameter field: "101" or "i=101,l=64".
func (c pbkdf2Checker) params() string {
	if c.form.phc {
		return "i=" + strconv.Itoa(c.iterations) + ",l=" + strconv.Itoa(len(c.want))
	}
	return strconv.Itoa(c.iterations)
}

func (c pbkdf2Checker) encoding() *base64.Encoding {
	if c.form.phc {
		return base64.RawStdEncoding
	}
	return base64.StdEncoding
}

func (c pbkdf2Checker) class() string {
	salt := lenTag(len(c.salt))
	if c.form.rawSalt {
		salt = "<" + strconv.Itoa(len(c.salt)) + " utf8>"
	}
	return c.form.prefix + c.params() + "$" + salt + "$" + lenTag(len(c.want))
}

func (c pbkdf2Checker) dummy() string {
	enc := c.encoding()
	salt := ""
	if c.form.rawSalt {
		salt = randomText(len(c.salt))
	} else {
		salt = enc.EncodeToString(randomBytes(len(c.salt)))
	}
	return c.form.prefix + c.params() + "$" + salt + "$" + enc.EncodeToString(randomBytes(len(c.want)))
}

// bcrypt's salt is 16 bytes and its stored digest 23, in bcrypt's own
// unpadded base64.
var bcryptEncoding = base64.NewEncoding(rawSaltAlphabet).WithPadding(base64.NoPadding)

const (
	bcryptSaltBytes   = 16
	bcryptDigestBytes = 23
	bcryptPrefixLen   = len("$2b$10$")
)

func (c bcryptChecker) class() string {
	return string(c.encoded[:bcryptPrefixLen]) + lenTag(bcryptSaltBytes) + lenTag(bcryptDigestBytes)
}

func (c bcryptChecker) dummy() string {
	return string(c.encoded[:bcryptPrefixLen]) +
		bcryptEncoding.EncodeToString(randomBytes(bcryptSaltBytes)) +
		bcryptEncoding.EncodeToString(randomBytes(bcryptDigestBytes))
}

func (c argon2Checker) params() string {
	return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$", c.memory, c.time, c.threads)
}

func (c argon2Checker) class() string {
	return c.params() + lenTag(len(c.salt)) + "$" + lenTag(len(c.want))
}

func (c argon2Checker) dummy() string {
	enc := base64.RawStdEncoding
	return c.params() + enc.EncodeToString(randomBytes(len(c.salt))) + "$" + enc.EncodeToString(randomBytes(len(c.want)))
}

// ToldApart reports whether a hash of work w is told from one of work
// model by timing: it costs more than a tenth less (the tolerance a timing
// attacker's medians need, on a hash worth measuring). Before, only a hash
// under half the model's counted, and a $7$ of 12 000 rounds beside one of
// 20 000 (7.5 against 12.0 ms at the median in the broker) went unreported
// (e2e TestZZNearlyAsCostlyUsersWarned).
//
// kind and modelKind are the hashes' Kind: Work ranks hashes of one kind by
// their parameters, and of different kinds only roughly (a bcrypt-10 and a
// $7$ of 138 240 rounds have the same Work and cost 58 against 76 ms), so a
// hash of another kind than the model's is told apart whatever its Work.
func ToldApart(w float64, kind string, model float64, modelKind string) bool {
	return w < model*0.9 || kind != modelKind
}

// WorkKind is Work, and the kind of computation verifying encoded runs
// (ToldApart): mosquitto's one SHA-512, PBKDF2 over a digest of a given
// size, bcrypt or argon2id.
func (v Verifier) WorkKind(encoded string) (float64, string, error) {
	w, err := v.Work(encoded)
	if err != nil {
		return 0, "", err
	}
	c, _ := v.parse(encoded, defaultLimits) // parsed by Work already
	if p, ok := c.(pbkdf2Checker); ok {
		return w, fmt.Sprintf("pbkdf2-%d", p.newHash().Size()), nil
	}
	return w, fmt.Sprintf("%T", c), nil
}

// Work estimates what verifying a password against encoded costs, in units
// of about one SHA-512 compression (a quarter of a microsecond on a 2020s
// x86 core), so that hashes of different formats can be ranked: to make an
// unknown user cost what the most expensive known one costs. Rough constants
// (bcrypt 2^cost x 270, argon2id memory KiB x passes x 4) are measured ratios;
// they rank common settings right, not within a few percent.
func (v Verifier) Work(encoded string) (float64, error) {
	c, err := v.parse(encoded, defaultLimits)
	if err != nil {
		return 0, err
	}
	switch c := c.(type) {
	case sha512Checker:
		return 1, nil
	case pbkdf2Checker:
		size := c.newHash().Size()
		blocks := (len(c.want) + size - 1) / size
		per := 2.0 // HMAC: inner and outer compression per iteration
		if size < 64 {
			per = 1.4 // SHA-256 compressions are cheaper
		}
		return float64(c.iterations) * float64(blocks) * per, nil
	case bcryptChecker:
		cost, err := bcrypt.Cost(c.encoded)
		if err != nil {
			return 0, malformed("bcrypt", "no cost")
		}
		return float64(uint64(1)<<uint(cost)) * 270, nil
	case argon2Checker:
		// The memory argon2 fills: at least 8 KiB per lane (x/crypto's
		// argon2 rounds m up to 8*p), whatever m says: m=8,t=100,p=255
		// fills 2 040 KiB a pass (228 ms, ranked below a bcrypt-10 when m
		// alone was counted).
		mem := max(float64(c.memory), 8*float64(c.threads))
		return mem * float64(c.time) * 4, nil
	}
	return 1, nil
}
