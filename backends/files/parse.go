package files

import (
	"bytes"
	"fmt"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
)

// LineError reports one skipped line of a password file, or a username
// found on several lines. Its text never holds anything from after a line's
// first ':' (that may be a password typed in the clear by mistake); the only
// content of a line it may hold is a duplicate username, quoted and cut.
type LineError struct {
	// Path is the password file.
	Path string
	// Line is the 1-based line number: the skipped line, or for a duplicate
	// username the last line holding it, which is the one used.
	Line int
	// Reason says why the line was skipped, in fixed wording, or for a
	// duplicate which earlier lines hold the username.
	Reason string
	// Username is set for a duplicate username only.
	Username string
}

// Error reads "password_file /path line 7: <why>", or for a duplicate
// username "password_file /path line 7: duplicate username "alice": <lines>".
func (e LineError) Error() string {
	if e.Username != "" {
		return fmt.Sprintf("password_file %s line %d: duplicate username %s: %s", e.Path, e.Line, logval.QuoteN(e.Username, maxQuotedUser), e.Reason)
	}
	return fmt.Sprintf("password_file %s line %d: %s", e.Path, e.Line, e.Reason)
}

// maxQuotedUser is how much of a duplicate username a report quotes.
const maxQuotedUser = 64

// maxUsernameBytes is the longest username MQTT can carry.
const maxUsernameBytes = 65535

// blanks is what Mosquitto trims around a username and a hash (C's isspace).
const blanks = " \t\r\n\v\f"

// maxListedLines bounds the earlier line numbers one duplicate report lists.
const maxListedLines = 5

// MaxLineErrors bounds the reports (skipped lines, duplicate usernames) a
// parse keeps: the first ones in file order; the others are only counted
// (parsed.skipped, Store.Skipped). The plugin logs 20. Unbounded, a 64 MiB
// file of "x:y" lines (16.7 million reports) took the broker 3 to 5 GiB and
// 10 to 15 s (a README-only attacker's measure), where the file's bound
// (MaxFileBytes) is meant to bound both.
const MaxLineErrors = 100

// yieldLines is how many lines parse handles between two yields to Go's
// scheduler: a few hundred µs of work.
const yieldLines = 256

// parsed is the outcome of parsing a whole password file.
type parsed struct {
	users map[string]string
	// like is a hash of the most expensive class (hashes.Verifier.Class and
	// Work) in the file; of classes as expensive, the one most users have,
	// then the one met first (a user is where its last line is). "" when
	// there are no users.
	like string
	// mixed counts the users whose hash costs less than the dummy's by more
	// than a tenth (hashes.ToldApart):
	// timing can tell them from unknown users.
	mixed int
	// skipped counts every report (skipped lines, duplicate usernames), of
	// which parse returns the first MaxLineErrors.
	skipped int
}

// parse reads data in mosquitto_passwd format: one username:hash per line,
// split at the first ':'. Blank lines and lines whose first non-blank
// character is '#' are skipped silently; a trailing "\r" is dropped; blanks
// around the username and the hash are trimmed, as Mosquitto does. Lines
// with no ':', an empty or invalid username, or a hash that v does not
// accept are skipped and reported.
//
// A username on several accepted lines gets the hash of its LAST line, as
// Mosquitto's own password_file check does, and one report naming it and its
// lines. Mosquitto 2.0.11's pwfile__parse (src/security_default.c) adds every
// line with uthash's HASH_ADD_KEYPTR without looking for an existing entry;
// HASH_ADD_TO_BKT (deps/uthash.h) puts a new item at the head of its bucket
// and HASH_FIND_IN_BKT walks a bucket from its head, so
// mosquitto_unpwd_check_default's HASH_FIND meets the last line first.
// (HASH_EXPAND_BUCKETS re-links each bucket head first, which reverses
// items of one bucket: in a file large enough for the table to double an odd
// number of times between the two lines, Mosquitto itself uses the earlier
// one. Its behaviour is the last line wherever it is consistent; a file
// should hold each username once.) mosquitto-go-auth's files backend keeps
// the last line too (a Go map assignment per line).
//
// It runs off the broker thread (the plugin's reloadLoop) but yields to Go's
// scheduler every yieldLines lines: a loop that never yields holds its P
// for Go's whole 10 ms time slice, while the broker thread, coming back
// into Go from Mosquitto's code with its P taken meanwhile, waits for one
// (TestLoadLeavesTheBrokerThreadAP).
func parse(data []byte, path string, v hashes.Verifier) (parsed, []LineError) {
	type entry struct {
		hash, class string
		line        int   // the last line holding the username: the one used
		earlier     []int // up to maxListedLines earlier lines
		dups        int   // how many earlier lines
	}
	entries := make(map[string]*entry)
	// accepted lists the accepted lines in file order: the users in the
	// order of the lines used (their last), without sorting them.
	type userLine struct {
		user string
		line int
	}
	var accepted []userLine
	var skipped []LineError
	lineErrs, dupErrs := 0, 0
	for n := 1; len(data) > 0; n++ {
		if n%yieldLines == 0 {
			runtime.Gosched()
		}
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
			if lineErrs++; len(skipped) < MaxLineErrors {
				skipped = append(skipped, LineError{Path: path, Line: n, Reason: reason})
			}
			continue
		}
		accepted = append(accepted, userLine{user, n})
		e := entries[user]
		if e == nil {
			entries[user] = &entry{hash: hash, class: class, line: n}
			continue
		}
		if len(e.earlier) < maxListedLines {
			e.earlier = append(e.earlier, e.line)
		}
		e.dups++
		e.hash, e.class, e.line = hash, class, n
	}

	p := parsed{users: make(map[string]string, len(entries))}
	type userAt struct {
		user string
		e    *entry
	}
	// File order of the lines used: for the class tie-break and the reports.
	order := make([]userAt, 0, len(entries))
	for i, a := range accepted {
		if i%yieldLines == yieldLines-1 {
			runtime.Gosched()
		}
		if e := entries[a.user]; e.line == a.line {
			p.users[a.user] = e.hash
			order = append(order, userAt{a.user, e})
		}
	}
	// Per hash class: its users, and the first of them in file order.
	type classCount struct {
		users, order int
		hash         string
	}
	classes := make(map[string]*classCount)
	for i, o := range order {
		if i%yieldLines == yieldLines-1 {
			runtime.Gosched()
		}
		c := classes[o.e.class]
		if c == nil {
			c = &classCount{order: len(classes), hash: o.e.hash}
			classes[o.e.class] = c
		}
		c.users++
		if o.e.dups > 0 {
			// In file order here too: the first MaxLineErrors of each kind
			// hold the first MaxLineErrors of both.
			if dupErrs++; dupErrs <= MaxLineErrors {
				skipped = append(skipped, LineError{Path: path, Line: o.e.line, Username: o.user,
					Reason: duplicateReason(o.e.earlier, o.e.dups)})
			}
		}
	}
	sort.SliceStable(skipped, func(i, j int) bool { return skipped[i].Line < skipped[j].Line })
	skipped = skipped[:min(len(skipped), MaxLineErrors):min(len(skipped), MaxLineErrors)]
	p.skipped = lineErrs + dupErrs
	// The dummy copies the most expensive class: an unknown user then costs
	// what the slowest known user costs, so that no user of that class can be
	// told from an absent one; users of cheaper classes still can (a file that
	// mixes hash costs leaks which of its cheap-hash users exist), and that is
	// reported (mixed). Ties: the class with most users, then the first met.
	var best *classCount
	var bestWork float64
	for _, c := range classes {
		w, _ := v.Work(c.hash) // validated by Class already
		if best == nil || w > bestWork || w == bestWork && (c.users > best.users || c.users == best.users && c.order < best.order) {
			best, bestWork = c, w
		}
	}
	if best != nil {
		p.like = best.hash
		_, bestKind, _ := v.WorkKind(best.hash)
		for _, c := range classes {
			if w, kind, _ := v.WorkKind(c.hash); hashes.ToldApart(w, kind, bestWork, bestKind) {
				p.mixed += c.users
			}
		}
	}
	return p, skipped
}

// duplicateReason reads "also on line 3; the last line is used" or "also on
// lines 3, 5, 9 and 4 more; the last line is used".
func duplicateReason(earlier []int, dups int) string {
	var b strings.Builder
	b.WriteString("also on line")
	if dups > 1 {
		b.WriteByte('s')
	}
	for i, l := range earlier {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte(' ')
		b.WriteString(strconv.Itoa(l))
	}
	if more := dups - len(earlier); more > 0 {
		b.WriteString(" and " + strconv.Itoa(more) + " more")
	}
	b.WriteString("; the last line is used, as Mosquitto does")
	return b.String()
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
