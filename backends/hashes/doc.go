// Package hashes verifies a password against a stored hash string in one of
// the formats that Mosquitto and mosquitto-go-auth users already have:
//
//   - "$6$salt$hash": Mosquitto's salted SHA-512 (mosquitto_passwd -H sha512);
//   - "$7$iterations$salt$hash": Mosquitto's PBKDF2-HMAC-SHA512, the default
//     of mosquitto_passwd since Mosquitto 2.0;
//   - "PBKDF2$sha512$..." and "PBKDF2$sha256$...", and the PHC-style
//     "$pbkdf2-sha512$i=...,l=...$salt$hash": mosquitto-go-auth's PBKDF2;
//   - "$2a$", "$2b$" and "$2y$": bcrypt;
//   - "$argon2id$v=19$m=...,t=...,p=...$salt$hash": argon2id as
//     mosquitto-go-auth writes it.
//
// Every stored hash is parsed strictly before any expensive computation, and
// parameters that would tie up the broker (huge iteration counts, memory
// costs or lengths) are refused as malformed. Error messages never quote the
// stored hash, so they may be logged.
//
// For an unknown user, Verifier.DummyLike gives a hash that costs what a
// known user's hash costs, so that failing on a name is as slow as failing on
// a password (see dummy.go).
package hashes
