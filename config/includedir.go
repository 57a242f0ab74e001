package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// include_dir as Mosquitto 2.0 follows it (src/conf.c and
// src/conf_includedir.c, the same in 2.0.11 and 2.0.20).

// includeDir reads dir's *.conf files in Mosquitto's order; only the main
// file's include_dir lines count, so an include cannot recurse.
func (r *confReader) includeDir(f *fileState, n int, dir string) {
	if f.level > 0 {
		return
	}
	if dir == "" {
		r.errorf(f, n, "empty include_dir value")
		return
	}
	files, err := includeFiles(dir)
	if err != nil {
		r.errorf(f, n, "include_dir %q: %v", dir, err)
		return
	}
	for _, inc := range files {
		r.readFile(inc, f.level+1)
	}
}

// includeFiles lists dir's files whose name is longer than ".conf" and ends
// in it, sorted as config__get_dir_files sorts them.
func includeFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if n := e.Name(); len(n) > len(".conf") && strings.HasSuffix(n, ".conf") {
			names = append(names, n)
		}
	}
	slices.SortFunc(names, scmp)
	files := make([]string, len(names))
	for i, n := range names {
		files[i] = filepath.Join(dir, n)
	}
	return files, nil
}

// scmp is Mosquitto's scmp_p: byte by byte, by the upper-cased bytes, and
// where those are equal by the bytes themselves; so "A.conf" < "Ab.conf" <
// "a.conf" < "B.conf" < "_x.conf" ('_' is 95, between 'Z' and 'a'). Bytes are
// C chars, signed: glibc's toupper (C locale) maps one over 127, seen as
// negative, to its unsigned value, so "\xc3\xa9.conf" sorts after ASCII;
// but at the end of the shorter name its NUL meets the signed byte.
func scmp(a, b string) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		ca, cb := signedAt(a, i), signedAt(b, i)
		if d := upper(ca) - upper(cb); d != 0 {
			return d
		}
		if d := ca - cb; d != 0 {
			return d
		}
	}
	// One is a prefix of the other: its NUL against the other's next byte.
	n := min(len(a), len(b))
	return signedAt(a, n) - signedAt(b, n)
}

// upper is glibc's toupper in the C locale, for a signed char.
func upper(c int) int {
	switch {
	case c < 0:
		return c + 256
	case c >= 'a' && c <= 'z':
		return c - 'a' + 'A'
	}
	return c
}

// signedAt is s[i] as a C char, 0 (the NUL) past the end.
func signedAt(s string, i int) int {
	if i < len(s) {
		return int(int8(s[i]))
	}
	return 0
}
