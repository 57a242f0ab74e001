package hashes

import (
	"errors"
	"testing"
)

// fuzzLimits keep every input the fuzzer builds cheap to verify; the parse
// paths are the same as with the defaults.
var fuzzLimits = limits{iterations: 20_000, argonMemory: 256, argonTime: 3, argonWork: 256 * 3, bcryptCost: 5}

// FuzzVerify checks that no stored hash, however broken, panics, that an
// error is never a match, and that DummyLike keeps an accepted hash's class. Run it with: go test -fuzz FuzzVerify ./backends/hashes
func FuzzVerify(f *testing.F) {
	for _, tc := range mosquittoVectors {
		f.Add(tc.encoded, []byte(tc.password), false)
	}
	for _, tc := range goAuthVectors {
		f.Add(tc.encoded, []byte(tc.password), tc.enc == SaltUTF8)
	}
	for _, h := range malformedHashes {
		f.Add(h, []byte("password"), false)
	}
	for _, h := range unsupportedHashes {
		f.Add(h, []byte("password"), true)
	}
	f.Fuzz(func(t *testing.T, encoded string, password []byte, utf8 bool) {
		v := Verifier{}
		if utf8 {
			v.SaltEncoding = SaltUTF8
		}
		_ = Format(encoded)
		validateErr := v.Validate(encoded)
		checkErr(t, validateErr)

		ok, err := v.verify(encoded, password, fuzzLimits)
		checkErr(t, err)
		if err != nil && ok {
			t.Fatalf("error %v together with a match", err)
		}
		// Tighter limits may refuse what the defaults accept, never the reverse.
		if validateErr != nil && err == nil {
			t.Fatalf("Validate refused (%v) what verify accepted", validateErr)
		}

		// An accepted hash has a class and a dummy of that class, never
		// equal to it; a refused one has neither. (The dummy is not
		// verified: the default limits allow costly parameters.)
		class, classErr := v.Class(encoded)
		dummy, dummyErr := v.DummyLike(encoded)
		if (classErr == nil) != (validateErr == nil) || (dummyErr == nil) != (validateErr == nil) {
			t.Fatalf("Validate %v, Class %v, DummyLike %v", validateErr, classErr, dummyErr)
		}
		if validateErr == nil {
			dummyClass, err := v.Class(dummy)
			if err != nil || dummyClass != class || dummy == encoded {
				t.Fatalf("dummy of class %q (%v), want %q", dummyClass, err, class)
			}
		}
	})
}

func checkErr(t *testing.T, err error) {
	t.Helper()
	if err != nil && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupported) {
		t.Fatalf("error %v wraps neither ErrMalformed nor ErrUnsupported", err)
	}
}
