package store

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

// CheckSettings tells settings Redis refuses from a Redis that is down: the
// first stop the broker at start, the second do not (atk55).
func TestCheckSettings(t *testing.T) {
	r := testenv.StartRedis(t)
	r.CLI("ACL", "SETUSER", "narrow", "on", ">narrow-secret", "~other:*", "+@all")
	r.CLI("CONFIG", "SET", "requirepass", "right-secret")
	check := func(o Options) error {
		o.Timeout = time.Second
		s := New(o, keys.Builder{Prefix: "s:"})
		defer s.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		return s.CheckSettings(ctx)
	}
	fault := func(err error) SettingsFault {
		var se *SettingsError
		if errors.As(err, &se) {
			return se.Fault
		}
		return 0
	}
	for _, c := range []struct {
		name string
		o    Options
		want SettingsFault
	}{
		{"right password", Options{Addrs: []string{r.Addr}, Password: "right-secret"}, 0},
		{"wrong password", Options{Addrs: []string{r.Addr}, Password: "wrong-secret"}, SettingsWrongPass},
		{"unknown user", Options{Addrs: []string{r.Addr}, Username: "nobody", Password: "right-secret"}, SettingsWrongPass},
		{"no password", Options{Addrs: []string{r.Addr}}, SettingsNoAuth},
		{"db out of range", Options{Addrs: []string{r.Addr}, Password: "right-secret", DB: 16}, SettingsDB},
		{"two addresses, no cluster", Options{Addrs: []string{r.Addr, r.Addr}, Password: "right-secret"}, SettingsNotCluster},
		{"a Redis as the sentinels", Options{Addrs: []string{r.Addr}, Password: "right-secret", SentinelMaster: "m"}, SettingsNotSentinel},
		{"keys under the prefix refused", Options{Addrs: []string{r.Addr}, Username: "narrow", Password: "narrow-secret"}, SettingsKeyPerm},
		{"down", Options{Addrs: []string{fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}}, 0},
	} {
		err := check(c.o)
		assert.Equal(t, c.want, fault(err), "%s: %v", c.name, err)
		if err != nil {
			assert.NotContains(t, err.Error(), "secret", "%s: a password in the error", c.name)
		}
	}
}

// Redis echoes a refused command's arguments, a renamed AUTH's password
// among them (atk56): OneLine and every log line cut the echo.
func TestRedactArgs(t *testing.T) {
	msg := "ERR unknown command 'auth', with args beginning with: 'odd-Secret-42' "
	assert.Equal(t, "ERR unknown command 'auth' (arguments not shown)", RedactArgs(msg))
	assert.Equal(t, "a: ERR unknown command 'auth' (arguments not shown); b", OneLine(errors.New("a: "+msg+"\nb")))
	two := "x, with args beginning with: 'p1'\ny, with args beginning with: 'p2' \nz"
	assert.Equal(t, "x (arguments not shown)\ny (arguments not shown)\nz", RedactArgs(two))
	assert.Equal(t, "nothing to cut", RedactArgs("nothing to cut"))
}

// A client's own value holding the echo's words is not cut (it would cut
// the fields after it from the client's line); Redis's unquoted echo is.
func TestRedactArgsInLine(t *testing.T) {
	client := `mosquitto-guard: event=refused ip=192.0.2.1 rule=bad-password client_id="x, with args beginning with: \"y" username="alice"`
	assert.Equal(t, client, RedactArgsInLine(client))
	redis := "mosquitto-guard: client ID tracking: 3 events not recorded: ERR unknown command 'auth', with args beginning with: 'pw' "
	assert.Equal(t, "mosquitto-guard: client ID tracking: 3 events not recorded: ERR unknown command 'auth' (arguments not shown)", RedactArgsInLine(redis))
	both := `a client_id=", with args beginning with: " b, with args beginning with: 'pw'` + "\nnext, with args beginning with: 'p2'"
	assert.Equal(t, `a client_id=", with args beginning with: " b (arguments not shown)`+"\nnext (arguments not shown)", RedactArgsInLine(both))
}
