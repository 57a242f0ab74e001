package config

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

// errUnknownOption is wrapped by the error for an option this plugin does not know.
var errUnknownOption = errors.New("unknown option")

// unknownOptions returns an error for each option not in the table, sorted
// by name. None echoes a value: a password may sit in a misspelt option.
func unknownOptions(opts map[string]string) Errors {
	var names []string
	for name := range opts {
		if _, ok := options[name]; !ok {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var errs Errors
	for _, name := range names {
		errs = append(errs, UnknownOption(name))
	}
	return errs
}

// UnknownOption is the error for name, an option this plugin does not
// know, with what to write instead when that can be told. It never echoes
// a value.
func UnknownOption(name string) error {
	if head, cut := NameHead(name); cut {
		// Mosquitto splits an option from its value at a space only: a tab
		// makes the value part of the name (atk59: the password showed).
		hint := " (a tab does not separate an option from its value; the rest of the name is not shown)"
		if _, ok := options[head]; ok {
			hint = " (a tab does not separate " + head + " from its value: write a space; the rest of the name is not shown)"
		}
		return fmt.Errorf("option %s...: %w%s", quoteOdd(head), errUnknownOption, hint)
	}
	return fmt.Errorf("option %s: %w%s", quoteOdd(name), errUnknownOption, unknownHint(name))
}

// NameHead is an option's name up to its first tab, space or control
// character, and whether one was there: what follows it may be a value
// (a password), which no line may show.
func NameHead(name string) (head string, cut bool) {
	if i := strings.IndexFunc(name, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }); i >= 0 {
		return name[:i], true
	}
	return name, false
}

// unknownHint says what to write instead of an unknown option.
func unknownHint(name string) string {
	if h := goAuthHint(name); h != "" {
		return " (mosquitto-go-auth): " + h
	}
	if n := closest(name, optionNames()); n != "" {
		return " (did you mean " + n + "?)"
	}
	return " (known options: " + strings.Join(optionNames(), ", ") + ")"
}

// quoteOdd quotes a name holding anything but printable characters, so
// that a log line stays one line of text.
func quoteOdd(s string) string {
	if q := strconv.Quote(s); q[1:len(q)-1] != s {
		return q
	}
	return s
}

// closest returns the name nearest to s, at most two edits away, if no
// other is as near ("redis_adr": redis_addr at one edit, not redis_db at two).
func closest(s string, names []string) string {
	found, best, tie := "", 3, false
	for _, n := range names {
		switch d := editDistance(s, n, 2); {
		case d < best:
			found, best, tie = n, d, false
		case d == best:
			tie = true
		}
	}
	if tie || found == "" {
		return ""
	}
	return found
}

// editDistance is the Levenshtein distance of a and b, or more than limit
// once it is certain to exceed it.
func editDistance(a, b string, limit int) int {
	if d := len(a) - len(b); d > limit || -d > limit {
		return limit + 1
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
