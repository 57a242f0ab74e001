package hashes

import (
	"encoding/base64"
	"strings"

	"golang.org/x/crypto/argon2"
)

// argon2id as mosquitto-go-auth's hashing/argon2id.go writes it:
//
//	$argon2id$v=19$m=<KiB>,t=<passes>,p=<threads>$<salt>$<hash>
//
// with salt and hash in unpadded standard base64 (the PHC norm) whatever the
// go-auth salt encoding option says, and the key length taken from the
// decoded hash. go-auth only logs a name other than "argon2id" and reads the
// parameters with fmt.Sscanf; here the shape must be exact.

type argon2Checker struct {
	salt, want   []byte
	time, memory uint32
	threads      uint8
}

func (c argon2Checker) check(password []byte) (bool, error) {
	got := argon2.IDKey(password, c.salt, c.time, c.memory, c.threads, uint32(len(c.want)))
	return equal(got, c.want), nil
}

func parseArgon2id(encoded string, lim limits) (checker, error) {
	const format = "argon2id"
	f := strings.Split(encoded, "$")
	if len(f) != 6 {
		return nil, malformed(format, "want $argon2id$v=19$m=,t=,p=$salt$hash")
	}
	if f[2] != "v=19" {
		if strings.HasPrefix(f[2], "v=") {
			return nil, ErrUnsupported // another argon2 version
		}
		return nil, malformed(format, "want v=19")
	}
	params := strings.Split(f[3], ",")
	if len(params) != 3 {
		return nil, malformed(format, "want m=,t=,p= parameters")
	}
	var vals [3]int64
	for i, key := range []string{"m=", "t=", "p="} {
		s, ok := strings.CutPrefix(params[i], key)
		if !ok {
			return nil, malformed(format, "want m=,t=,p= parameters in this order")
		}
		if vals[i], ok = parseDecimal(s); !ok {
			return nil, malformed(format, "parameter is not a decimal number")
		}
	}
	m, t, p := vals[0], vals[1], vals[2]
	if m < 1 || m > int64(lim.argonMemory) {
		return nil, malformed(format, "memory out of range")
	}
	if t < 1 || t > int64(lim.argonTime) {
		return nil, malformed(format, "time out of range")
	}
	if m*t > lim.argonWork {
		return nil, malformed(format, "memory times time out of range")
	}
	if p < 1 || p > 255 {
		return nil, malformed(format, "threads out of range")
	}
	salt, err := decodeField(base64.RawStdEncoding, f[4], format, "salt")
	if err != nil {
		return nil, err
	}
	want, err := decodeDigest(base64.RawStdEncoding, f[5], format)
	if err != nil {
		return nil, err
	}
	return argon2Checker{salt: salt, want: want, time: uint32(t), memory: uint32(m), threads: uint8(p)}, nil
}
