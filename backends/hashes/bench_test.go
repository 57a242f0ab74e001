package hashes

import "testing"

// go test -bench . ./backends/hashes/: the cost of one verification on the
// broker thread, per format, with the parameters each tool writes by default.
func BenchmarkVerify(b *testing.B) {
	cases := map[string]string{
		"sha512-pbkdf2 (mosquitto_passwd, 101 rounds)": mosquittoVectors[7].encoded,
		"sha512 (mosquitto_passwd -H sha512)":          mosquittoVectors[0].encoded,
	}
	for name, h := range cases {
		b.Run(name, func(b *testing.B) {
			var v Verifier
			for i := 0; i < b.N; i++ {
				if _, err := v.Verify(h, []byte("wrong")); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
