package hashes

import (
	"encoding/base64"
	"strings"
)

// This file holds mosquitto-go-auth's PBKDF2 formats, as its
// hashing/pbkdf2.go writes and compares them:
//
//	PBKDF2$<sha512|sha256>$<iterations>$<salt>$<hash>
//
// The salt field is base64 (padded, standard alphabet) of the salt, or the
// salt bytes themselves under go-auth's "utf-8" salt encoding; the hash is
// padded standard base64 and its decoded length is the PBKDF2 key length.
// go-auth also compares, but never writes, a PHC-style form:
//
//	[$]pbkdf2-sha512$i=<iterations>,l=<key length>$<salt>$<hash>
//
// with unpadded base64 (or the raw salt under "utf-8"). go-auth is lax where
// this parser is strict: it accepts extra or empty '$' fields, any algorithm
// name (hashing with SHA-512 for anything but "sha256"), an "l" that differs
// from the stored hash length (comparing a prefix, or panicking) and an
// undecodable PHC hash (comparing nothing, so any password matched). All of
// these are refused here as malformed or unsupported.

func (v Verifier) parseGoAuthPBKDF2(encoded string, lim limits) (checker, error) {
	f := strings.Split(encoded, "$")
	if len(f) < 2 {
		return nil, malformed("pbkdf2", "want PBKDF2$algorithm$iterations$salt$hash")
	}
	newHash, blockLen, ok := hashFor(f[1])
	if !ok {
		return nil, ErrUnsupported
	}
	format := "pbkdf2-" + f[1]
	if len(f) != 5 {
		return nil, malformed(format, "want PBKDF2$algorithm$iterations$salt$hash")
	}
	iter, err := parseIterations(f[2], format, lim)
	if err != nil {
		return nil, err
	}
	salt, rawSalt, err := v.goAuthSalt(f[3], base64.StdEncoding, format)
	if err != nil {
		return nil, err
	}
	want, err := decodeDigest(base64.StdEncoding, f[4], format)
	if err != nil {
		return nil, err
	}
	if err := checkPBKDF2Work(iter, len(want), blockLen, format, lim); err != nil {
		return nil, err
	}
	return pbkdf2Checker{newHash: newHash, salt: salt, want: want, iterations: iter,
		form: pbkdf2Form{prefix: "PBKDF2$" + f[1] + "$", rawSalt: rawSalt}}, nil
}

func (v Verifier) parseGoAuthPHC(encoded string, lim limits) (checker, error) {
	const format = "pbkdf2-sha512"
	f := strings.Split(strings.TrimPrefix(encoded, "$"), "$")
	if len(f) != 4 {
		return nil, malformed(format, "want $pbkdf2-sha512$i=iterations,l=length$salt$hash")
	}
	var iterField, lenField string
	var seenI, seenL bool
	for _, opt := range strings.Split(f[1], ",") {
		key, val, ok := strings.Cut(opt, "=")
		switch {
		case !ok:
			return nil, malformed(format, "parameter without '='")
		case key == "i" && !seenI:
			iterField, seenI = val, true
		case key == "l" && !seenL:
			lenField, seenL = val, true
		default:
			return nil, malformed(format, "unknown or repeated parameter")
		}
	}
	if !seenI || !seenL {
		return nil, malformed(format, "want both i= and l= parameters")
	}
	iter, err := parseIterations(iterField, format, lim)
	if err != nil {
		return nil, err
	}
	keyLen, ok := parseDecimal(lenField)
	if !ok {
		return nil, malformed(format, "key length is not a decimal number")
	}
	salt, rawSalt, err := v.goAuthSalt(f[2], base64.RawStdEncoding, format)
	if err != nil {
		return nil, err
	}
	want, err := decodeDigest(base64.RawStdEncoding, f[3], format)
	if err != nil {
		return nil, err
	}
	if keyLen != int64(len(want)) {
		return nil, malformed(format, "key length does not match the hash")
	}
	newHash, blockLen, _ := hashFor("sha512")
	if err := checkPBKDF2Work(iter, len(want), blockLen, format, lim); err != nil {
		return nil, err
	}
	prefix := "pbkdf2-sha512$"
	if strings.HasPrefix(encoded, "$") {
		prefix = "$" + prefix
	}
	return pbkdf2Checker{newHash: newHash, salt: salt, want: want, iterations: iter,
		form: pbkdf2Form{prefix: prefix, phc: true, rawSalt: rawSalt}}, nil
}

// goAuthSalt decodes a go-auth PBKDF2 salt field per the salt encoding, and
// says whether that field is the raw salt.
func (v Verifier) goAuthSalt(s string, enc *base64.Encoding, format string) ([]byte, bool, error) {
	raw, err := v.utf8Salt()
	if err != nil {
		return nil, false, err
	}
	var salt []byte
	if raw {
		salt, err = rawField(s, format, "salt")
	} else {
		salt, err = decodeField(enc, s, format, "salt")
	}
	return salt, raw, err
}
