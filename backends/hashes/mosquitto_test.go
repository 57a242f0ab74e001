package hashes

import (
	"crypto/rand"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// Generated with mosquitto 2.0.11:
//
//	mosquitto_passwd -H sha512 -b -c /tmp/x user PASSWORD
//	mosquitto_passwd -H sha512-pbkdf2 -b -c /tmp/x user PASSWORD
const (
	pwUnicode = "pässwörd-ünïcødé-密码-🔑"
	pwOdd     = `p:a$s w#rd\`
)

var pwLong = strings.Repeat("L", 200)

var mosquittoVectors = []struct {
	name, password, encoded string
}{
	{"sha512 password", "password", "$6$fE3HhJ/EaUFJwxOb$xlgvK5uMo6YcPMqIrlo4+d+AfGaaynTfxCXJ3WdJv1CpPbwEQ/DHt6CwzEz2AE8I0W6hpvx4u5rcPhnk23BH0Q=="},
	{"sha512 empty", "", "$6$PymLi5xIuubBTwbK$W7BipErRqOg5VIbbZEUIacvmrAsSW2tevwX8Qwf+tdQK1e+aD5luieHtj8uAb5j8m5vVN2p7GYJyDp9zB+Bj1g=="},
	{"sha512 one char", "a", "$6$9RPHNskLLtIqGYEp$4sBrwy0qUelCbBQkV4Jzy8g+i47/eqnIv06oR+Tw+XawpIZ861jihAALFXyDiGPFXQWD8f7TouvtjIHjUKNiQw=="},
	{"sha512 space", " ", "$6$t5qx4B4wn64EUtaB$FmtcAubGLMZxMXod2tJWyKYGVKS7MrhPucNhBvfLaQtfD1P2cqn3F+n7UljNieIuYRT78aKTak2bC6W8WtCJ5g=="},
	{"sha512 unicode", pwUnicode, "$6$LvinB4tXS8yYo4ey$r0EdsFkEXQYkcmOggvbmWUTtpYHNcHBDRoe21JL2srbjNRV5az4dQSyfcOnzfrmEBHfZBeO/Jh4K+hF097SCFA=="},
	{"sha512 long", pwLong, "$6$MTLBmqSxl/VXLCxx$Y/JlFMr6l05sIHq31ScHifvWoD5UQZir8PlDa5A4x7OLf4jXdK+DDNY2Po+uh3sq/vhejn/jPRhoVGylAVlobA=="},
	{"sha512 separators", pwOdd, "$6$HVuttxH5Q+X355Y1$rpBMTkOJGZRZcD/ALJmYqZAXBUAj4VtDDSNKUQ80Uo5HsN9OcFJ3nlX4j1hxy8BiT3vMXauPquDwSidfRyalSA=="},
	{"pbkdf2 password", "password", "$7$101$W0DmyIJ2hz1HNTW0$zWoY14fpYyjdeS1Nu7IsYIIWvsX4Pp9jUt+TstAbXXQqE6bN1Iiao/Vp1k1oAVL6/xTh8lH4xkTEzOqfhsnUQw=="},
	{"pbkdf2 empty", "", "$7$101$zr9zvpdPEqdKlbXt$h0C93R+wegbdSAHgWFAWlp9a7feORUjJ6+mRiIlrmb2T0RkT/JF7FzKEjuWW8oUswjWHbsiy8SJJGwvHtEgGog=="},
	{"pbkdf2 one char", "a", "$7$101$an5lEYDmwNZSuB4F$oy1jTzwkxVVJiE6WKpPKPWSA5id6d/DKwoVECHINCRQWaqdsXwOLVtm9gISQbb8+zblBOwM90pxU5hMacIT/EA=="},
	{"pbkdf2 space", " ", "$7$101$PoqCuuV+wyzoLF44$9gg+KHAhrITfklyU91LC4dwi6GglVnH+LCLCGUVr9ERWrkywVeA6fTD40yvj8YeC/xOyB+xTChLP0o3mg9C9IA=="},
	{"pbkdf2 unicode", pwUnicode, "$7$101$uX/JlR8FNLF5rP+8$zKoP6yjAyGssk0SeunLXs99GGj4rTQ6dZl33llAsx/JF4jHzUEoGhOuVsKukBakGjliHzj2ylsQQySG3U36X7A=="},
	{"pbkdf2 long", pwLong, "$7$101$7TFl7iyxozxwmkVD$teLchxX/WpWHaVPPO8UroJYyUtEKBS44tgNCOc/hHjuBua7ac1koBFgHrYkcpUwyLy0UBMyMt7hQlbxolrE6/g=="},
	{"pbkdf2 separators", pwOdd, "$7$101$obEYTgA8j0LECLYZ$YWeFpN0iaiwjd0uCqMw3KFGlFe+ft2zH8nA3J0hOyFeFYFZdjpnDZGeyO1OLFq8jx+oTmw6FK4he7UYpQhGp6A=="},
}

func TestMosquittoVectors(t *testing.T) {
	var v Verifier
	for _, tc := range mosquittoVectors {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, v.Validate(tc.encoded))

			ok, err := v.Verify(tc.encoded, []byte(tc.password))
			require.NoError(t, err)
			assert.True(t, ok, "right password")

			for _, wrong := range []string{tc.password + "x", strings.ToUpper(tc.password) + "!", "", "password"} {
				if wrong == tc.password {
					continue
				}
				ok, err := v.Verify(tc.encoded, []byte(wrong))
				require.NoError(t, err)
				assert.False(t, ok, "wrong password %q", wrong)
			}
		})
	}
}

func TestMosquittoFormatNames(t *testing.T) {
	assert.Equal(t, "sha512", Format(mosquittoVectors[0].encoded))
	assert.Equal(t, "sha512-pbkdf2", Format(mosquittoVectors[7].encoded))
}

// TestMosquittoLongerSalt covers hashes with a salt longer than Mosquitto
// 2.0's 12 bytes, as later mosquitto_passwd versions write them.
func TestMosquittoLongerSalt(t *testing.T) {
	salt := make([]byte, 64)
	_, _ = rand.Read(salt)
	want := refPBKDF2(sha512New, []byte("pw"), salt, 1000, 64)
	encoded := "$7$1000$" + base64.StdEncoding.EncodeToString(salt) + "$" + base64.StdEncoding.EncodeToString(want)
	ok, err := Verifier{}.Verify(encoded, []byte("pw"))
	require.NoError(t, err)
	assert.True(t, ok)
}

// TestMosquittoPasswdLive runs the installed mosquitto_passwd with random
// passwords and checks that Verify accepts what it wrote.
func TestMosquittoPasswdLive(t *testing.T) {
	testenv.Need(t, "mosquitto_passwd")
	dir := t.TempDir()
	for _, alg := range []string{"sha512", "sha512-pbkdf2"} {
		for i := 0; i < 4; i++ {
			password := randomPassword(t, 1+i*37)
			file := filepath.Join(dir, alg+".txt")
			out, err := exec.Command("mosquitto_passwd", "-H", alg, "-b", "-c", file, "user", password).CombinedOutput()
			require.NoError(t, err, "mosquitto_passwd: %s", out)
			data, err := os.ReadFile(file)
			require.NoError(t, err)
			_, encoded, found := strings.Cut(strings.TrimSpace(string(data)), ":")
			require.True(t, found)

			ok, err := Verifier{}.Verify(encoded, []byte(password))
			require.NoError(t, err, alg)
			assert.True(t, ok, "%s with a %d-byte password", alg, len(password))
			ok, err = Verifier{}.Verify(encoded, []byte(password+"-"))
			require.NoError(t, err)
			assert.False(t, ok)
		}
	}
}

// randomPassword returns n printable characters, including mosquitto's and
// the file format's separators.
func randomPassword(t *testing.T, n int) string {
	t.Helper()
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 :$#!\\\"'éü密"
	runes := []rune(chars)
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	var sb strings.Builder
	for _, x := range b {
		sb.WriteRune(runes[int(x)%len(runes)])
	}
	return sb.String()
}
