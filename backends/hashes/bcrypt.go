package hashes

import (
	"errors"

	"golang.org/x/crypto/bcrypt"
)

// bcrypt: "$2a$", "$2b$" or "$2y$", a two-digit cost, '$', then 22 characters
// of salt and 31 of hash in bcrypt's base64 alphabet: 60 characters in all.
// mosquitto-go-auth compares with bcrypt.CompareHashAndPassword, as here.
// x/crypto/bcrypt takes the minor version letter as given and treats all
// three alike, so "$2y$" (PHP's name for "$2b$") needs no mapping. It is lax
// about the rest (it ignores characters past the 60th, for one), so the shape
// is checked first. Like every bcrypt, only the first 72 bytes of a password
// count.

const bcryptLen = 60

type bcryptChecker struct {
	encoded []byte
}

func (c bcryptChecker) check(password []byte) (bool, error) {
	err := bcrypt.CompareHashAndPassword(c.encoded, password)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, bcrypt.ErrMismatchedHashAndPassword):
		return false, nil
	}
	// x/crypto's own message may quote bytes of the hash: keep it out.
	return false, malformed("bcrypt", "rejected by x/crypto/bcrypt")
}

func parseBcrypt(encoded string, lim limits) (checker, error) {
	const format = "bcrypt"
	if len(encoded) != bcryptLen {
		return nil, malformed(format, "not 60 characters long")
	}
	cost, ok := parseDecimal(encoded[4:6])
	if !ok || encoded[6] != '$' {
		return nil, malformed(format, "want $2b$cost$ with a two-digit cost")
	}
	if cost < int64(bcrypt.MinCost) || cost > int64(lim.bcryptCost) {
		return nil, malformed(format, "cost out of range")
	}
	for i := 7; i < len(encoded); i++ {
		if !isBcryptBase64(encoded[i]) {
			return nil, malformed(format, "salt or hash is not bcrypt base64")
		}
	}
	return bcryptChecker{encoded: []byte(encoded)}, nil
}

func isBcryptBase64(c byte) bool {
	return c == '.' || c == '/' || ('0' <= c && c <= '9') || ('A' <= c && c <= 'Z') || ('a' <= c && c <= 'z')
}
