package files

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
)

// Both hash "password"; written by mosquitto_passwd 2.0.11.
const (
	hash7Password = "$7$101$W0DmyIJ2hz1HNTW0$zWoY14fpYyjdeS1Nu7IsYIIWvsX4Pp9jUt+TstAbXXQqE6bN1Iiao/Vp1k1oAVL6/xTh8lH4xkTEzOqfhsnUQw=="
	hash6Password = "$6$fE3HhJ/EaUFJwxOb$xlgvK5uMo6YcPMqIrlo4+d+AfGaaynTfxCXJ3WdJv1CpPbwEQ/DHt6CwzEz2AE8I0W6hpvx4u5rcPhnk23BH0Q=="
	// secret stands for a password typed in the clear by mistake.
	secret = "Plaintext-Secret-Do-Not-Log"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "passwd")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

func TestParseMalformedLines(t *testing.T) {
	lines := []string{
		"# a comment: with a colon " + secret,  //  1 comment
		"",                                     //  2 blank
		"alice:" + hash7Password,               //  3 ok
		secret,                                 //  4 no ':'
		":" + hash7Password,                    //  5 empty username
		"   :" + secret,                        //  6 empty username
		"bob:",                                 //  7 empty hash
		"carol:" + secret,                      //  8 unsupported hash
		"dave:$7$0$" + secret + "$" + secret,   //  9 malformed hash
		"alice:" + hash6Password,               // 10 duplicate of 3: this one is used
		"   \t  ",                              // 11 blank
		"  # indented comment",                 // 12 comment
		"erin:" + hash6Password + ":" + secret, // 13 text after a second ':'
		"bad\xffname:" + hash6Password,         // 14 invalid UTF-8
		"nul\x00name:" + hash6Password,         // 15 NUL
		"  frank  :  " + hash6Password + "  ",  // 16 ok, trimmed
		"dave:" + hash6Password,                // 17 ok: line 9 was not accepted
		"dave:" + hash7Password,                // 18 duplicate of 17: this one is used
	}
	path := writeFile(t, strings.Join(lines, "\n")+"\n")
	s, skipped, err := Load(path, hashes.Verifier{})
	require.NoError(t, err)

	wantLines := []int{4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 18}
	var gotLines []int
	for _, e := range skipped {
		gotLines = append(gotLines, e.Line)
		msg := e.Error()
		assert.True(t, strings.HasPrefix(msg, fmt.Sprintf("password_file %s line %d: ", path, e.Line)), msg)
		assert.NotContains(t, msg, secret)
		assert.NotContains(t, msg, "W0DmyIJ2hz1HNTW0")
		assert.NotContains(t, msg, "fE3HhJ/EaUFJwxOb")
		assert.NotContains(t, msg, "xlgvK5uMo6YcPMqI")
	}
	assert.Equal(t, wantLines, gotLines)
	reasons := map[int]string{}
	for _, e := range skipped {
		reasons[e.Line] = e.Reason
	}
	assert.Equal(t, "no ':' between username and hash", reasons[4])
	assert.Equal(t, "empty username", reasons[5])
	assert.Equal(t, "empty hash", reasons[7])
	assert.Contains(t, reasons[8], "unsupported")
	assert.Contains(t, reasons[9], "malformed")
	assert.Equal(t, "also on line 3; the last line is used, as Mosquitto does", reasons[10])
	assert.Equal(t, "also on line 17; the last line is used, as Mosquitto does", reasons[18])
	for _, e := range skipped {
		if e.Line == 10 {
			assert.Equal(t, fmt.Sprintf(`password_file %s line 10: duplicate username "alice": also on line 3; the last line is used, as Mosquitto does`, path), e.Error())
		}
	}

	assert.Equal(t, 3, s.Len())
	for _, u := range []string{"alice", "frank", "dave"} {
		ok, err := s.Verify(u, []byte("password"))
		require.NoError(t, err)
		assert.True(t, ok, u)
	}
	h, _ := s.Hash("alice")
	assert.Equal(t, hash6Password, h, "the last alice is used, as Mosquitto does")
	h, _ = s.Hash("dave")
	assert.Equal(t, hash7Password, h)
}

// TestDuplicateUsernames: the last line of a username is used, as
// Mosquitto 2.0.11 does (see parse); one report per duplicated username,
// at its last line, naming the earlier lines (a bounded number of them) and
// the username quoted and cut, never a hash.
func TestDuplicateUsernames(t *testing.T) {
	long := strings.Repeat("é", 100) // 200 bytes: cut at a rune boundary
	var lines []string
	for i := 0; i < 9; i++ { // lines 1-9: "many" nine times, the last with hash6
		h := hash7Password
		if i == 8 {
			h = hash6Password
		}
		lines = append(lines, "many:"+h)
	}
	lines = append(lines,
		"one:"+hash6Password,          // 10
		"bad\"q\tuote:"+hash7Password, // 11
		long+":"+hash6Password,        // 12
		"one:"+hash7Password,          // 13: "one" is used from here
		long+":"+hash7Password,        // 14
		"bad\"q\tuote:"+hash6Password, // 15
	)
	path := writeFile(t, strings.Join(lines, "\n")+"\n")
	s, skipped, err := Load(path, hashes.Verifier{})
	require.NoError(t, err)
	assert.Equal(t, 4, s.Len())
	for user, want := range map[string]string{"many": hash6Password, "one": hash7Password, long: hash7Password, "bad\"q\tuote": hash6Password} {
		h, ok := s.Hash(user)
		require.True(t, ok, user)
		assert.Equal(t, want, h, "the last line of %q", user)
	}
	require.Len(t, skipped, 4)
	msgs := map[int]string{}
	for _, e := range skipped {
		msgs[e.Line] = e.Error()
		assert.NotContains(t, e.Error(), "W0DmyIJ2hz1HNTW0")
		assert.NotContains(t, e.Error(), "fE3HhJ/EaUFJwxOb")
	}
	assert.Equal(t, fmt.Sprintf(`password_file %s line 9: duplicate username "many": also on lines 1, 2, 3, 4, 5 and 3 more; the last line is used, as Mosquitto does`, path), msgs[9])
	assert.Equal(t, fmt.Sprintf(`password_file %s line 13: duplicate username "one": also on line 10; the last line is used, as Mosquitto does`, path), msgs[13])
	assert.Equal(t, fmt.Sprintf(`password_file %s line 14: duplicate username "%s"...(200 bytes): also on line 12; the last line is used, as Mosquitto does`, path, strings.Repeat("é", 32)), msgs[14])
	assert.Equal(t, fmt.Sprintf(`password_file %s line 15: duplicate username "bad\"q\tuote": also on line 11; the last line is used, as Mosquitto does`, path), msgs[15])
	for _, e := range skipped {
		assert.NotContains(t, e.Error(), "\t", "escaped, on one line")
	}
}

// The dummy follows the class of the lines used: a username's earlier
// lines do not count.
func TestDummyCountsLinesUsed(t *testing.T) {
	salt := base64.StdEncoding.EncodeToString(make([]byte, 12))
	sum := base64.StdEncoding.EncodeToString(make([]byte, 64))
	h5000 := "$7$5000$" + salt + "$" + sum
	content := "a:" + h5000 + "\nb:" + hash6Password + "\nc:" + hash6Password + "\na:" + hash6Password + "\n"
	s, _, err := Load(writeFile(t, content), hashes.Verifier{})
	require.NoError(t, err)
	c, err := hashes.Verifier{}.Class(s.dummy)
	require.NoError(t, err)
	assert.Equal(t, "$6$<12>$<64>", c, "a's line 1 ($7$) is not used: only $6$ users")
}

func TestParseCRLFAndNoFinalNewline(t *testing.T) {
	content := "# comment\r\n\r\nalice:" + hash7Password + "\r\nbob:" + hash6Password + "\r\nnocolon\r\ncarol:" + hash6Password
	s, skipped, err := Load(writeFile(t, content), hashes.Verifier{})
	require.NoError(t, err)
	require.Len(t, skipped, 1)
	assert.Equal(t, 5, skipped[0].Line)
	assert.Equal(t, 3, s.Len())
	for _, u := range []string{"alice", "bob", "carol"} {
		h, ok := s.Hash(u)
		require.True(t, ok)
		assert.NotContains(t, h, "\r")
		ok, err := s.Verify(u, []byte("password"))
		require.NoError(t, err)
		assert.True(t, ok, u)
	}
}

func TestParseGoAuthHashes(t *testing.T) {
	// A go-auth PBKDF2 hash whose utf-8 salt holds ':' and '#' (see
	// package hashes' tests for where it comes from).
	utf8Salted := "PBKDF2$sha512$1000$abcdEFGH:12#4 78$CTD9416JS5Djbma9LE+qcSB3re5+AkjURkGWPvBtMoEJfBCu6YbTQCfs1ClX/9wOD0Hf4YcIxVw7hIxRGd0AzA=="
	bcrypt := "$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"
	path := writeFile(t, "gina:"+utf8Salted+"\nhank:"+bcrypt+"\n")

	s, skipped, err := Load(path, hashes.Verifier{SaltEncoding: hashes.SaltUTF8})
	require.NoError(t, err)
	require.Empty(t, skipped)
	ok, err := s.Verify("gina", []byte("utf8-salted"))
	require.NoError(t, err)
	assert.True(t, ok)
	ok, err = s.Verify("hank", []byte("U*U"))
	require.NoError(t, err)
	assert.True(t, ok)
	// The dummy copies the more expensive class: bcrypt cost 5 over 1000 rounds.
	dc, err := hashes.Verifier{SaltEncoding: hashes.SaltUTF8}.Class(s.dummy)
	require.NoError(t, err)
	assert.Equal(t, "$2b$05$<16><23>", dc)

	// With base64 salts the first line does not validate.
	_, skipped, err = Load(path, hashes.Verifier{})
	require.NoError(t, err)
	require.Len(t, skipped, 1)
	assert.Equal(t, 1, skipped[0].Line)
	assert.NotContains(t, skipped[0].Error(), "abcdEFGH")
}

// TestDummyFollowsMostCommonClass: the dummy is of the class most users
// have, whatever the order of the lines; a tie goes to the class met first.
// The dummy copies the most expensive class in the file, so that no user of
// it can be told from an absent one by timing (the hostile test: one bcrypt
// user in a file of $7$ users took 191 ms to refuse, an unknown user 0.7 ms);
// among classes as costly, the one with most users, then the first met.
func TestDummyFollowsMostExpensiveClass(t *testing.T) {
	salt := base64.StdEncoding.EncodeToString(make([]byte, 12))
	sum := base64.StdEncoding.EncodeToString(make([]byte, 64))
	h5000 := "$7$5000$" + salt + "$" + sum
	h777 := "$7$777$" + salt + "$" + sum
	h777b := "$7$777$" + base64.StdEncoding.EncodeToString(make([]byte, 16)) + "$" + sum
	bc := "$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"
	for _, tc := range []struct {
		name  string
		lines []string
		want  string
		cheap int
	}{
		{"the most expensive, however few", []string{h777, h777, h777, h5000, hash6Password}, "$7$5000$<12>$<64>", 4},
		{"bcrypt among $7$", []string{hash6Password, h777, h777, bc}, "$2b$05$<16><23>", 3},
		{"as costly: most users", []string{h777, h777b, h777b}, "$7$777$<16>$<64>", 0},
		{"as costly, as many: first met", []string{h777b, h777}, "$7$777$<16>$<64>", 0},
		// A hash a tenth cheaper or more is told apart (e2e
		// TestZZNearlyAsCostlyUsersWarned: 12 000 rounds beside 20 000, 7.5
		// against 12.0 ms); within a tenth it is not counted.
		{"three fifths as costly", []string{"$7$20000$" + salt + "$" + sum, "$7$12000$" + salt + "$" + sum}, "$7$20000$<12>$<64>", 1},
		// Another format ranked as costly by Work: formats are ranked only
		// roughly (bcrypt-10 and $7$ 138 240 rounds: one Work, 58 and 76 ms).
		{"another format ranked within a tenth", []string{bc, "$7$4200$" + salt + "$" + sum}, "$2b$05$<16><23>", 1},
		{"within a tenth", []string{"$7$20000$" + salt + "$" + sum, "$7$19000$" + salt + "$" + sum}, "$7$20000$<12>$<64>", 0},
		{"one user", []string{hash6Password}, "$6$<12>$<64>", 0},
		{"no users", nil, "$7$101$<12>$<64>", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sb strings.Builder
			for i, h := range tc.lines {
				fmt.Fprintf(&sb, "u%d:%s\n", i, h)
			}
			s, skipped, err := Load(writeFile(t, sb.String()), hashes.Verifier{})
			require.NoError(t, err)
			require.Empty(t, skipped)
			c, err := hashes.Verifier{}.Class(s.dummy)
			require.NoError(t, err)
			assert.Equal(t, tc.want, c, s.dummy)
			assert.Equal(t, tc.cheap, s.CheapHashes())
			for _, h := range tc.lines {
				assert.NotEqual(t, h, s.dummy)
			}
		})
	}
}

func TestLoadTenThousandUsers(t *testing.T) {
	var sb strings.Builder
	b := make([]byte, 12+64)
	for i := 0; i < 10_000; i++ {
		if i == 5000 {
			fmt.Fprintf(&sb, "user%05d:%s\n", i, hash7Password)
			continue
		}
		_, _ = rand.Read(b)
		fmt.Fprintf(&sb, "user%05d:$7$101$%s$%s\n", i,
			base64.StdEncoding.EncodeToString(b[:12]), base64.StdEncoding.EncodeToString(b[12:]))
	}
	path := writeFile(t, sb.String())

	start := time.Now()
	s, skipped, err := Load(path, hashes.Verifier{})
	elapsed := time.Since(start)
	require.NoError(t, err)
	require.Empty(t, skipped)
	assert.Equal(t, 10_000, s.Len())
	assert.Less(t, elapsed, 2*time.Second, "Load must not run the hashes")
	t.Logf("loaded 10 000 users in %v", elapsed)

	ok, err := s.Verify("user05000", []byte("password"))
	require.NoError(t, err)
	assert.True(t, ok)
}
