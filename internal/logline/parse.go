package logline

import (
	"errors"
	"strconv"
	"strings"
)

// Fields is a parsed line: its pairs in order.
type Fields struct {
	Keys   []string
	Values map[string]string
}

// Get returns the value of key, unquoted ("" when absent).
func (f Fields) Get(key string) string { return f.Values[key] }

// Parse reads a line written by this package (after whatever Mosquitto puts
// in front of it: a timestamp, "1700000000: "). It fails on anything else:
// no prefix, a pair without '=', a bad quoted value, a repeated key, or a
// first key other than event.
func Parse(line string) (Fields, error) {
	i := strings.Index(line, Prefix)
	if i < 0 {
		return Fields{}, errors.New("no " + strconv.Quote(Prefix))
	}
	s := line[i+len(Prefix):]
	f := Fields{Values: map[string]string{}}
	for s != "" {
		eq := strings.IndexByte(s, '=')
		if eq <= 0 || strings.ContainsAny(s[:eq], " \"") {
			return f, errors.New("expected key=value at " + strconv.Quote(head(s)))
		}
		key := s[:eq]
		s = s[eq+1:]
		var val string
		if strings.HasPrefix(s, `"`) {
			q, err := strconv.QuotedPrefix(s)
			if err != nil {
				return f, errors.New("bad quoted value at " + strconv.Quote(head(s)))
			}
			val, _ = strconv.Unquote(q)
			s = s[len(q):]
		} else {
			end := strings.IndexByte(s, ' ')
			if end < 0 {
				end = len(s)
			}
			val, s = s[:end], s[end:]
		}
		if _, dup := f.Values[key]; dup {
			return f, errors.New("repeated key " + key)
		}
		f.Keys = append(f.Keys, key)
		f.Values[key] = val
		if s != "" {
			if s[0] != ' ' {
				return f, errors.New("expected a space at " + strconv.Quote(head(s)))
			}
			s = s[1:]
		}
	}
	if len(f.Keys) == 0 || f.Keys[0] != "event" {
		return f, errors.New("the first key is not event")
	}
	return f, nil
}

func head(s string) string {
	if len(s) > 20 {
		return s[:20]
	}
	return s
}
