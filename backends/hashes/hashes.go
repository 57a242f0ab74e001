package hashes

import (
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// ErrMalformed reports a stored hash that is not well-formed for its format,
// including one whose parameters exceed the limits of this package.
var ErrMalformed = errors.New("hashes: malformed hash")

// ErrUnsupported reports a stored hash in a format this package does not know.
var ErrUnsupported = errors.New("hashes: unsupported hash format")

// SaltEncoding says how mosquitto-go-auth encoded the salt of its PBKDF2
// hashes (its option auth_opt_hasher_salt_encoding). go-auth's argon2id
// hashes always carry a base64 salt, whatever this setting says.
type SaltEncoding string

const (
	// SaltBase64 is go-auth's default: the salt field is base64 of the salt.
	SaltBase64 SaltEncoding = "base64"
	// SaltUTF8 means the salt field is the salt bytes themselves. go-auth
	// spells this option value "utf-8"; Verifier accepts both spellings.
	SaltUTF8 SaltEncoding = "utf8"
)

// Verifier verifies hashes; the zero value uses SaltBase64. A Verifier is a
// plain value and safe for concurrent use.
type Verifier struct {
	// SaltEncoding applies to go-auth PBKDF2 hashes only; "" means SaltBase64.
	SaltEncoding SaltEncoding
}

// Limits that keep one verification from tying up the broker's thread.
const (
	maxIterations   = 10_000_000 // PBKDF2 iterations (times 64-byte blocks for long keys)
	maxArgonMemory  = 1 << 20    // argon2 memory in KiB: 1 GiB
	maxArgonTime    = 100        // argon2 passes
	maxArgonWork    = 2 << 20    // argon2 memory in KiB times passes: 2 GiB-passes, about a bcrypt-16 (some 5 s)
	maxBcryptCost   = 16         // about as slow as 10 000 000 PBKDF2-SHA512 iterations
	maxFieldBytes   = 1024       // decoded salt or hash
	maxEncodedField = 2048       // encoded salt or hash, checked before decoding
)

// minDigestBytes is the shortest digest of the formats whose digest length
// is the stored hash's own (go-auth's PBKDF2 and argon2id). A digest of n
// bytes is matched by about one password in 2^(8n): a 1-byte one by one in
// 256, found offline in a moment (atk82). 16 bytes (128 bits) is half of
// what go-auth writes by default (32 for argon2id, the hash's size for
// PBKDF2).
const minDigestBytes = 16

// limits are the cost bounds a Verifier enforces; tests use tighter ones.
type limits struct {
	iterations  int
	argonMemory uint32
	argonTime   uint32
	argonWork   int64 // memory in KiB times passes
	bcryptCost  int
}

var defaultLimits = limits{
	iterations:  maxIterations,
	argonMemory: maxArgonMemory,
	argonTime:   maxArgonTime,
	argonWork:   maxArgonWork,
	bcryptCost:  maxBcryptCost,
}

// checker is a parsed hash, ready for the expensive comparison.
type checker interface {
	check(password []byte) (bool, error)
	// class is the hash with its salt and digest replaced by their lengths
	// (see Verifier.Class).
	class() string
	// dummy is a new hash of the same class with a random salt and digest.
	dummy() string
}

// Verify reports whether password matches encoded. A malformed or
// unsupported hash is an error wrapping ErrMalformed or ErrUnsupported, and
// never a match.
func (v Verifier) Verify(encoded string, password []byte) (bool, error) {
	return v.verify(encoded, password, defaultLimits)
}

// Validate checks that encoded is well-formed for a supported format and
// within this package's limits, without the expensive computation.
func (v Verifier) Validate(encoded string) error {
	_, err := v.parse(encoded, defaultLimits)
	return err
}

func (v Verifier) verify(encoded string, password []byte, lim limits) (bool, error) {
	c, err := v.parse(encoded, lim)
	if err != nil {
		return false, err
	}
	ok, err := c.check(password)
	if err != nil {
		return false, err
	}
	return ok, nil
}

// Format names the format of encoded ("sha512", "sha512-pbkdf2",
// "pbkdf2-sha256", "pbkdf2-sha512", "bcrypt", "argon2id") for logs, judging
// by its prefix only; "" if unknown.
func Format(encoded string) string {
	switch {
	case strings.HasPrefix(encoded, "$6$"):
		return "sha512"
	case strings.HasPrefix(encoded, "$7$"):
		return "sha512-pbkdf2"
	case strings.HasPrefix(encoded, "PBKDF2$sha256$"):
		return "pbkdf2-sha256"
	case strings.HasPrefix(encoded, "PBKDF2$sha512$"),
		strings.HasPrefix(encoded, "$pbkdf2-sha512$"),
		strings.HasPrefix(encoded, "pbkdf2-sha512$"):
		return "pbkdf2-sha512"
	case strings.HasPrefix(encoded, "$2a$"),
		strings.HasPrefix(encoded, "$2b$"),
		strings.HasPrefix(encoded, "$2y$"):
		return "bcrypt"
	case strings.HasPrefix(encoded, "$argon2id$"):
		return "argon2id"
	}
	return ""
}

// parse dispatches on the prefix and parses strictly.
func (v Verifier) parse(encoded string, lim limits) (checker, error) {
	if encoded == "" {
		return nil, fmt.Errorf("%w: empty hash", ErrMalformed)
	}
	switch {
	case strings.HasPrefix(encoded, "$6$"):
		return parseMosquittoSHA512(encoded)
	case strings.HasPrefix(encoded, "$7$"):
		return parseMosquittoPBKDF2(encoded, lim)
	case strings.HasPrefix(encoded, "PBKDF2$"):
		return v.parseGoAuthPBKDF2(encoded, lim)
	case strings.HasPrefix(encoded, "$pbkdf2-sha512$"), strings.HasPrefix(encoded, "pbkdf2-sha512$"):
		return v.parseGoAuthPHC(encoded, lim)
	case strings.HasPrefix(encoded, "$2a$"), strings.HasPrefix(encoded, "$2b$"), strings.HasPrefix(encoded, "$2y$"):
		return parseBcrypt(encoded, lim)
	case strings.HasPrefix(encoded, "$argon2id$"):
		return parseArgon2id(encoded, lim)
	}
	return nil, ErrUnsupported
}

// utf8Salt reports whether go-auth salts are raw text rather than base64.
func (v Verifier) utf8Salt() (bool, error) {
	switch v.SaltEncoding {
	case "", SaltBase64:
		return false, nil
	case SaltUTF8, "utf-8":
		return true, nil
	}
	return false, fmt.Errorf("%w: unknown salt encoding (want base64 or utf8)", ErrUnsupported)
}

// malformed returns an error wrapping ErrMalformed. format and why must be
// constant text: they end up in logs and must never quote the stored hash.
func malformed(format, why string) error {
	return fmt.Errorf("%w: %s: %s", ErrMalformed, format, why)
}

// decodeDigest is decodeField for a hash field whose length is the
// digest's: shorter than minDigestBytes is malformed.
func decodeDigest(enc *base64.Encoding, s, format string) ([]byte, error) {
	b, err := decodeField(enc, s, format, "hash")
	if err == nil && len(b) < minDigestBytes {
		return nil, malformed(format, "hash shorter than 16 bytes: about one password in 2^(8 x its length) would match")
	}
	return b, err
}

// decodeField decodes one base64 salt or hash field, refusing empty,
// oversized and undecodable values.
func decodeField(enc *base64.Encoding, s, format, name string) ([]byte, error) {
	if s == "" {
		return nil, malformed(format, "empty "+name)
	}
	// The decoders skip '\r' and '\n'; a stored field never holds them.
	if len(s) > maxEncodedField || strings.ContainsAny(s, "\r\n") {
		return nil, malformed(format, name+" is not valid base64 or too long")
	}
	b, err := enc.DecodeString(s)
	if err != nil {
		return nil, malformed(format, name+" is not valid base64")
	}
	if len(b) == 0 || len(b) > maxFieldBytes {
		return nil, malformed(format, name+" length out of range")
	}
	return b, nil
}

// rawField checks a salt stored as its own bytes (go-auth's utf-8 encoding).
func rawField(s, format, name string) ([]byte, error) {
	if s == "" {
		return nil, malformed(format, "empty "+name)
	}
	if len(s) > maxFieldBytes {
		return nil, malformed(format, name+" length out of range")
	}
	return []byte(s), nil
}

// parseDecimal parses an unsigned decimal of at most 10 ASCII digits, no sign.
func parseDecimal(s string) (int64, bool) {
	if s == "" || len(s) > 10 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// equal compares two byte strings in constant time for equal lengths.
func equal(a, b []byte) bool {
	return subtle.ConstantTimeCompare(a, b) == 1
}
