package files

import (
	"bytes"
	"strings"
	"testing"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
)

// FuzzParse checks that no file content panics the parser, that every
// accepted user has a non-empty name and a hash that validates, that the
// dummy's model hash is a user's (or "" for no users), and that a
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
		for _, e := range skipped {
			if e.Line < 1 || e.Line > len(lines) {
				t.Fatalf("line %d out of range", e.Line)
			}
			_, after, found := bytes.Cut(lines[e.Line-1], []byte(":"))
			after = bytes.TrimSpace(after)
			if found && len(after) >= 24 && strings.Contains(e.Error(), string(after)) {
				t.Fatalf("report %q quotes the line's secret part", e.Error())
			}
		}
	})
}
