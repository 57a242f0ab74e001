package files

import (
	"bytes"
	"strings"
	"testing"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
	"github.com/mosquitto-guard/mosquitto-guard/internal/logval"
)

// FuzzParse checks that no file content panics the parser, that every
// accepted user has a non-empty name and a hash that validates, that the
// dummy's model hash is a user's (or "" for no users), that a username on
// several lines gets its last line's hash, and that a
// report never quotes a long enough part of what followed a line's ':'.
// Run it with: go test -fuzz FuzzParse ./backends/files
func FuzzParse(f *testing.F) {
	f.Add([]byte("alice:" + hash7Password + "\nbob:" + hash6Password + "\n"))
	f.Add([]byte("# c\r\n\r\nalice:" + hash7Password + "\r\n"))
	f.Add([]byte("alice:" + hash7Password + "\nalice:" + hash6Password))
	f.Add([]byte(":" + secret + "\n" + secret + "\nx:" + secret + "\n  y : $7$0$abc$def\n"))
	f.Add([]byte("u:PBKDF2$sha512$1000$c2FsdA==$aGFzaA==\nv:$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"))
	f.Add([]byte("\x00:\xff\n\n\n:"))
	v := hashes.Verifier{}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, skipped := parse(data, "/p", v)
		lines := bytes.Split(data, []byte("\n"))
		for user, hash := range p.users {
			if user == "" {
				t.Fatal("empty username accepted")
			}
			if err := v.Validate(hash); err != nil {
				t.Fatalf("accepted hash fails Validate: %v", err)
			}
		}
		likeIsAUser := false
		for _, hash := range p.users {
			likeIsAUser = likeIsAUser || hash == p.like
		}
		if likeIsAUser != (len(p.users) > 0) {
			t.Fatal("the dummy's model is not one of the users' hashes")
		}
		if len(p.users)+len(skipped) > len(lines) {
			t.Fatalf("%d users and %d reports from %d lines", len(p.users), len(skipped), len(lines))
		}
		last := map[string]string{}
		for _, l := range lines {
			if u, h, _, reason := parseLine(string(l), v); u != "" && reason == "" {
				last[u] = h
			}
		}
		if len(last) != len(p.users) {
			t.Fatalf("%d users, %d distinct accepted usernames", len(p.users), len(last))
		}
		for u, h := range last {
			if p.users[u] != h {
				t.Fatalf("user %q does not have its last line's hash", u)
			}
		}
		for _, e := range skipped {
			if e.Line < 1 || e.Line > len(lines) {
				t.Fatalf("line %d out of range", e.Line)
			}
			_, after, found := bytes.Cut(lines[e.Line-1], []byte(":"))
			after = bytes.TrimSpace(after)
			// A duplicate's report quotes its username (before the ':'),
			// which may itself look like anything.
			msg := strings.Replace(e.Error(), logval.QuoteN(e.Username, maxQuotedUser), "", 1)
			if found && len(after) >= 24 && strings.Contains(msg, string(after)) {
				t.Fatalf("report %q quotes the line's secret part", e.Error())
			}
		}
	})
}
