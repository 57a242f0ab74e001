package files

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
)

// LineError reports one skipped line of a password file. Its text never
// holds anything from after the line's first ':' (that may be a password
// typed in the clear by mistake), nor any other content of the line.
type LineError struct {
	// Path is the password file.
	Path string
	// Line is the 1-based line number.
	Line int
	// Reason says why the line was skipped, in fixed wording.
	Reason string
}

// Error reads "password_file /path line 7: <why>".
func (e LineError) Error() string {
	return fmt.Sprintf("password_file %s line %d: %s", e.Path, e.Line, e.Reason)
}

// maxUsernameBytes is the longest username MQTT can carry.
const maxUsernameBytes = 65535

// blanks is what Mosquitto trims around a username and a hash (C's isspace).
const blanks = " \t\r\n\v\f"

// parsed is the outcome of parsing a whole password file.
type parsed struct {
	users map[string]string
	// like is a hash of the class (hashes.Verifier.Class) that most users
	// have; of those tied for most, the class met first in the file. "" when
	// there are no users.
	like string
}

// parse reads data in mosquitto_passwd format: one username:hash per line,
// split at the first ':'. Blank lines and lines whose first non-blank
// character is '#' are skipped silently; a trailing "\r" is dropped; blanks
// around the username and the hash are trimmed, as Mosquitto does. Lines
// with no ':', an empty or invalid username, a hash that v does not accept,
// or a username already accepted are skipped and reported.
func parse(data []byte, path string, v hashes.Verifier) (parsed, []LineError) {
	p := parsed{users: make(map[string]string)}
	firstLine := make(map[string]int)
	// Per hash class: its users, and the first of them in file order.
	type classCount struct {
		users, order int
		hash         string
	}
	classes := make(map[string]*classCount)
	var skipped []LineError
	for n := 1; len(data) > 0; n++ {
		var raw []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			raw, data = data[:i], data[i+1:]
		} else {
			raw, data = data, nil
		}
		user, hash, class, reason := parseLine(string(raw), v)
		switch {
		case reason == "" && user == "":
			continue // blank or comment
		case reason != "":
			skipped = append(skipped, LineError{Path: path, Line: n, Reason: reason})
			continue
		}
		if first, dup := firstLine[user]; dup {
			skipped = append(skipped, LineError{Path: path, Line: n,
				Reason: "duplicate username, line " + strconv.Itoa(first) + " is kept"})
			continue
		}
		firstLine[user] = n
		p.users[user] = hash
		c := classes[class]
		if c == nil {
			c = &classCount{order: len(classes), hash: hash}
			classes[class] = c
		}
		c.users++
	}
	var best *classCount
	for _, c := range classes {
		if best == nil || c.users > best.users || c.users == best.users && c.order < best.order {
			best = c
		}
	}
	if best != nil {
		p.like = best.hash
	}
	return p, skipped
}

// parseLine returns the username, hash and hash class of one line, or a
// reason to skip it; all four are empty for a blank or comment line. A reason
// is fixed text and never quotes the line.
func parseLine(line string, v hashes.Verifier) (user, hash, class, reason string) {
	line = strings.TrimSuffix(line, "\r")
	trimmed := strings.TrimLeft(line, blanks)
	if trimmed == "" || trimmed[0] == '#' {
		return "", "", "", ""
	}
	before, after, found := strings.Cut(line, ":")
	if !found {
		return "", "", "", "no ':' between username and hash"
	}
	user = strings.Trim(before, blanks)
	hash = strings.Trim(after, blanks)
	switch {
	case user == "":
		return "", "", "", "empty username"
	case len(user) > maxUsernameBytes:
		return "", "", "", "username longer than 65535 bytes"
	case !utf8.ValidString(user) || strings.ContainsRune(user, 0):
		return "", "", "", "username is not valid UTF-8 without NUL"
	case hash == "":
		return "", "", "", "empty hash"
	}
	class, err := v.Class(hash) // Validate's checks and errors
	if err != nil {
		// hashes' errors are fixed text that never quotes the hash.
		return "", "", "", "hash rejected (" + err.Error() + ")"
	}
	return user, hash, class, ""
}
