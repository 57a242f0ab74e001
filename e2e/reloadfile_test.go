package e2e

import (
	"context"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
	"github.com/mosquitto-guard/mosquitto-guard/internal/mqttc"
	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// A password file replaced by lines that are not users, then SIGHUP: the
// plugin keeps the users it had, logs an error, and Mosquitto's
// re-authentication after the reload keeps every client connected.
func TestReloadGarbageFileKeepsUsers(t *testing.T) {
	e := newEnv(t)
	alice, code := e.dial(as("127.0.41.1", "alice-dev", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)
	bob, code := e.dial(as("127.0.41.2", "bob-dev", "bob", "bob-pw"))
	require.EqualValues(t, accepted, code)

	garbage := "<html>502 Bad Gateway</html>\nalice\nbob;$7$101$abc\n:::\n\x00\xff\n"
	require.NoError(t, os.WriteFile(e.passwd, []byte(garbage), 0o600))
	e.broker.Reload()
	e.logLine("Reloading config.")
	assert.False(t, alice.Closed(time.Second), "alice must stay connected")
	assert.False(t, bob.Closed(200*time.Millisecond), "bob must stay connected")
	// (Mosquitto's log lines carry no level; the plugin's unit tests check
	// that this one is an error.)
	e.logLine("mosquitto-guard:", "password_file "+e.passwd+": no user in it", "keeping the 2 users loaded before")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, alice.Ping(ctx))
	require.NoError(t, bob.Ping(ctx))
	assert.EqualValues(t, accepted, e.connect(as("127.0.41.3", "alice-2", "alice", "alice-pw")), "the old passwords still work")
	assert.EqualValues(t, accepted, e.connect(as("127.0.41.4", "bob-2", "bob", "bob-pw")))
	assert.NotContains(t, e.broker.Output(), "loaded 0 users")

	// The next file with users is loaded.
	require.NoError(t, os.Remove(e.passwd))
	e.addUser("carol", "carol-pw")
	e.broker.Reload()
	e.logLine("loaded 1 users from " + e.passwd)
	assert.True(t, alice.Closed(3*time.Second), "alice is no longer in the file")
	assert.EqualValues(t, accepted, e.connect(as("127.0.41.5", "carol-dev", "carol", "carol-pw")))
}

// passwdLine returns the "user:hash" line the real mosquitto_passwd writes.
func passwdLine(t *testing.T, user, pass string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "one")
	out, err := exec.Command("mosquitto_passwd", "-c", "-b", path, user, pass).CombinedOutput()
	require.NoError(t, err, "mosquitto_passwd: %s", out)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	return strings.TrimSpace(string(data))
}

// A username on two lines: the last line is used, as Mosquitto's own
// password_file check does (checked here on a broker without the plugin),
// and one log line names the file, the lines and the username, no hash.
func TestDuplicateUserLastLineWinsLikeMosquitto(t *testing.T) {
	old, cur := passwdLine(t, "alice", "old-pw"), passwdLine(t, "alice", "new-pw")
	content := strings.Join([]string{old, passwdLine(t, "bob", "bob-pw"), cur}, "\n") + "\n"

	// Mosquitto alone, with the same file as its password_file.
	plain := filepath.Join(t.TempDir(), "passwd")
	require.NoError(t, os.WriteFile(plain, []byte(content), 0o600))
	m := testenv.StartMosquitto(t, "allow_anonymous false\npassword_file "+plain+"\n")
	mosq := &env{t: t, broker: m}
	assert.EqualValues(t, accepted, mosq.connect(as("127.0.42.1", "a", "alice", "new-pw")), "Mosquitto uses the last line")
	assert.EqualValues(t, refused, mosq.connect(as("127.0.42.1", "a", "alice", "old-pw")))

	e := newEnv(t)
	require.NoError(t, os.WriteFile(e.passwd, []byte(content), 0o600))
	e.broker.Reload()
	e.logLine("loaded 2 users from " + e.passwd)
	assert.EqualValues(t, accepted, e.connect(as("127.0.42.2", "a", "alice", "new-pw")), "the plugin uses the last line too")
	assert.EqualValues(t, refused, e.connect(as("127.0.42.2", "a", "alice", "old-pw")))
	assert.EqualValues(t, accepted, e.connect(as("127.0.42.3", "b", "bob", "bob-pw")))
	line := e.logLine("mosquitto-guard:", "password_file "+e.passwd+" line 3:", `duplicate username "alice"`, "also on line 1", "the last line is used")
	for _, l := range []string{old, cur} {
		hash := strings.SplitN(l, ":", 2)[1]
		assert.NotContains(t, line, hash[len(hash)-20:])
		assert.NotContains(t, line, strings.Split(hash, "$")[3], "no salt either")
	}
}

// mosquittoHash returns a $7$ line hash (PBKDF2-SHA512, Mosquitto's own
// format) of pass with the given rounds.
func mosquittoHash(pass string, rounds int) string {
	salt := make([]byte, 12)
	_, _ = rand.Read(salt)
	key, err := pbkdf2.Key(sha512.New, pass, salt, rounds, 64)
	if err != nil {
		panic(err)
	}
	return fmt.Sprintf("$7$%d$%s$%s", rounds, base64.StdEncoding.EncodeToString(salt), base64.StdEncoding.EncodeToString(key))
}

// costlyRounds returns PBKDF2-SHA512 rounds that cost this machine at least
// 15 ms to verify (10 000 at least), and what one verification costs, timed
// with the plugin's own verifier.
func costlyRounds(t *testing.T) (int, time.Duration) {
	rounds := 10_000
	for {
		h := mosquittoHash("x", rounds)
		start := time.Now()
		ok, err := hashes.Verifier{}.Verify(h, []byte("x"))
		cost := time.Since(start)
		require.NoError(t, err)
		require.True(t, ok)
		if cost >= 15*time.Millisecond || rounds >= 1_000_000 {
			return rounds, cost
		}
		rounds *= 2
	}
}

// After SIGHUP Mosquitto re-authenticates every connected client, on its only
// thread. With the verification cache kept, none of them runs its hash
// again: the broker answers a PINGREQ sent once the reload began within a
// small part of what n full hashes cost. (With the cache cleared on reload,
// the stall was n times one hash: 100 clients of 10 000-round PBKDF2 at
// 25 ms a hash stalled every client for 2.5 s; 20 000 clients of 100 000
// rounds for minutes.)
func TestReloadKeepsVerifyCache(t *testing.T) {
	const n = 100
	rounds, cost := costlyRounds(t)
	e := newEnv(t)

	// n users, each its own password and hash.
	lines := make([]string, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.NumCPU())
	for i := range lines {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			lines[i] = fmt.Sprintf("dev%03d:%s", i, mosquittoHash(fmt.Sprintf("pw-%03d", i), rounds))
		}()
	}
	wg.Wait()
	f, err := os.OpenFile(e.passwd, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString(strings.Join(lines, "\n") + "\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	e.broker.Reload()
	e.logLine(fmt.Sprintf("loaded %d users", n+2))

	conns := make([]*mqttc.Conn, n)
	for i := range conns {
		ip := fmt.Sprintf("127.0.43.%d", 1+i%250)
		var code byte
		conns[i], code = e.dial(as(ip, fmt.Sprintf("dev-%03d", i), fmt.Sprintf("dev%03d", i), fmt.Sprintf("pw-%03d", i)))
		require.EqualValues(t, accepted, code, "dev%03d", i)
	}
	probe, code := e.dial(as("127.0.43.251", "probe", "alice", "alice-pw"))
	require.EqualValues(t, accepted, code)

	reloads := strings.Count(e.broker.Output(), "Reloading config.")
	start := time.Now()
	e.broker.Reload()
	eventually(t, 10*time.Second, func() bool { return strings.Count(e.broker.Output(), "Reloading config.") > reloads }, "no reload")
	// The reload runs on the broker thread from that line on: the PINGRESP
	// comes after every client was re-authenticated.
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(n)*cost*4+10*time.Second)
	defer cancel()
	require.NoError(t, probe.Ping(ctx))
	stall := time.Since(start)
	uncached := time.Duration(n) * cost
	t.Logf("SIGHUP with %d connected clients of %d-round PBKDF2-SHA512 (%v a hash): broker answered after %v; %d full hashes would take %v",
		n, rounds, cost.Round(time.Millisecond), stall.Round(time.Millisecond), n, uncached.Round(time.Millisecond))
	assert.Less(t, stall, uncached/4, "the re-authentication after SIGHUP ran the hashes again")

	for i, c := range conns {
		require.NoError(t, c.Ping(ctx), "dev%03d stays connected", i)
	}
}
