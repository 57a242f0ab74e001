package hashes

import (
	"crypto/pbkdf2"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
	"hash"
	"strings"
)

// This file holds Mosquitto's own formats, as Mosquitto 2.0 reads them in
// src/security_default.c (unpwd__decode_passwords, pw__digest):
//
//	$6$<salt b64>$<hash b64>               SHA-512(password || salt)
//	$7$<iterations>$<salt b64>$<hash b64>  PBKDF2-HMAC-SHA512, 64-byte key
//
// Salt and hash are standard padded base64. Mosquitto 2.0 insists on a 12-byte
// salt; any salt of 1..1024 bytes is accepted here so that files from later
// versions (which write longer salts) keep working. The hash must be the
// 64 bytes of a SHA-512 output, as Mosquitto requires.

const mosquittoHashLen = sha512.Size

// sha512Checker is the $6$ format.
type sha512Checker struct {
	salt, want []byte
}

func (c sha512Checker) check(password []byte) (bool, error) {
	h := sha512.New()
	h.Write(password)
	h.Write(c.salt)
	return equal(h.Sum(nil), c.want), nil
}

// pbkdf2Checker is any PBKDF2 format; the key length is that of want.
type pbkdf2Checker struct {
	newHash    func() hash.Hash
	salt, want []byte
	iterations int
	form       pbkdf2Form
}

// pbkdf2Form is how a PBKDF2 hash is written, for its class and its dummy.
type pbkdf2Form struct {
	// prefix comes before the parameters: "$7$", "PBKDF2$sha512$",
	// "PBKDF2$sha256$", "$pbkdf2-sha512$" or "pbkdf2-sha512$".
	prefix string
	// phc: parameters "i=<iterations>,l=<key length>" and unpadded base64;
	// otherwise "<iterations>" and padded base64.
	phc bool
	// rawSalt: the salt field is the salt itself (go-auth's utf-8 encoding).
	rawSalt bool
}

func (c pbkdf2Checker) check(password []byte) (bool, error) {
	// A password longer than the hash's block is hashed first, as HMAC
	// does with any key longer than its block (RFC 2104, 2): PBKDF2's
	// result is the same. Passed whole, crypto/pbkdf2 took it as a string
	// and hmac.New copied it again: a stranger's refused CONNECTs with
	// 60 000-byte passwords allocated 120 KB each, and at 10 a second kept
	// the heap's release after a burst away (cgo/heaprelease.go).
	// (No block is under sha256's 64 bytes: a shorter password, the
	// common one, costs no hash state more.)
	var sum [sha512.Size]byte
	if len(password) > sha256.BlockSize {
		if h := c.newHash(); len(password) > h.BlockSize() {
			h.Write(password)
			password = h.Sum(sum[:0])
		}
	}
	got, err := pbkdf2.Key(c.newHash, string(password), c.salt, c.iterations, len(c.want))
	if err != nil {
		// Only FIPS 140-only mode refuses the parameters of a well-formed hash.
		return false, fmt.Errorf("hashes: pbkdf2: %w", err)
	}
	return equal(got, c.want), nil
}

func parseMosquittoSHA512(encoded string) (checker, error) {
	const format = "sha512"
	f := strings.Split(encoded, "$")
	if len(f) != 4 {
		return nil, malformed(format, "want $6$salt$hash")
	}
	salt, err := decodeField(base64.StdEncoding, f[2], format, "salt")
	if err != nil {
		return nil, err
	}
	want, err := decodeField(base64.StdEncoding, f[3], format, "hash")
	if err != nil {
		return nil, err
	}
	if len(want) != mosquittoHashLen {
		return nil, malformed(format, "hash is not 64 bytes")
	}
	return sha512Checker{salt: salt, want: want}, nil
}

func parseMosquittoPBKDF2(encoded string, lim limits) (checker, error) {
	const format = "sha512-pbkdf2"
	f := strings.Split(encoded, "$")
	if len(f) != 5 {
		return nil, malformed(format, "want $7$iterations$salt$hash")
	}
	iter, err := parseIterations(f[2], format, lim)
	if err != nil {
		return nil, err
	}
	salt, err := decodeField(base64.StdEncoding, f[3], format, "salt")
	if err != nil {
		return nil, err
	}
	want, err := decodeField(base64.StdEncoding, f[4], format, "hash")
	if err != nil {
		return nil, err
	}
	if len(want) != mosquittoHashLen {
		return nil, malformed(format, "hash is not 64 bytes")
	}
	return pbkdf2Checker{newHash: sha512.New, salt: salt, want: want, iterations: iter,
		form: pbkdf2Form{prefix: "$7$"}}, nil
}

func parseIterations(s, format string, lim limits) (int, error) {
	n, ok := parseDecimal(s)
	if !ok {
		return 0, malformed(format, "iterations is not a decimal number")
	}
	if n < 1 || n > int64(lim.iterations) {
		return 0, malformed(format, "iterations out of range")
	}
	return int(n), nil
}

// checkPBKDF2Work bounds iterations times output blocks: each block of the
// derived key costs a full run of iterations.
func checkPBKDF2Work(iterations, keyLen, blockLen int, format string, lim limits) error {
	blocks := (keyLen + blockLen - 1) / blockLen
	if int64(iterations)*int64(blocks) > int64(lim.iterations) {
		return malformed(format, "iterations times key blocks out of range")
	}
	return nil
}

// hashFor maps go-auth's algorithm name to a hash and its output size.
func hashFor(name string) (func() hash.Hash, int, bool) {
	switch name {
	case "sha512":
		return sha512.New, sha512.Size, true
	case "sha256":
		return sha256.New, sha256.Size, true
	}
	return nil, 0, false
}
