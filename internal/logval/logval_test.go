package logval

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestQuote(t *testing.T) {
	assert.Equal(t, `"a\nb"`, Quote("a\nb"))
	long := strings.Repeat("x", 20000)
	assert.Equal(t, `"`+strings.Repeat("x", Max)+`"...(20000 bytes)`, Quote(long))
	// A cut never splits a character: é is two bytes.
	assert.Equal(t, `"`+strings.Repeat("é", 32)+`"...(200 bytes)`, QuoteN(strings.Repeat("é", 100), 65))
	assert.Equal(t, `""...(3 bytes)`, QuoteN("abc", 0))
}

func TestFit(t *testing.T) {
	assert.Equal(t, `"abc"`, Fit("abc", 10))
	assert.Equal(t, `"abcd"...`, Fit("abcdefghijkl", 9))
	assert.LessOrEqual(t, len(Fit(strings.Repeat("\x00", 100), 20)), 20)
	assert.Equal(t, `""...`, Fit("\x00\x00", 5))
}
