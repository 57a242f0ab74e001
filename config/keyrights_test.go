package config

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// The key refusal's line asks for the rights the configuration needs: read
// only where the plugin only reads, and redis_rate's keys where failures
// are counted (atk66).
func TestKeyPermAsksTheRightsTheConfigNeeds(t *testing.T) {
	se := &store.SettingsError{Fault: store.SettingsKeyPerm, Err: errors.New("NOPERM this user has no permissions to access one of the keys used as arguments")}
	for _, c := range []struct {
		backend  Backend
		conflict ConflictMode
		want     string
	}{
		{BackendFiles, ConflictFlag, `read and write the keys under key_prefix "guard:" and under "rate:guard:" (redis_rate's)`},
		{BackendDefer, ConflictFlag, `read and write the keys under key_prefix "guard:" (its ACL`},
		{BackendDefer, ConflictOff, `lets read the keys under key_prefix "guard:" (its ACL`},
	} {
		cfg := Options{KeyPrefix: "guard:", Backend: c.backend, RedisAddrs: []string{"127.0.0.1:6379"}}
		cfg.Conflicts.Mode = c.conflict
		err := SettingsOptionError(cfg, se)
		assert.Contains(t, err.Error(), c.want, "%s/%s", c.backend, c.conflict)
	}
}
