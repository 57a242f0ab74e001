package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// HOLDS. guardctl takes redis_db as the plugin does since 3b51e04: with
// sentinels (redis_sentinel_master) a database other than 0 is the
// master's and is kept; with several redis_addr and no master name it is
// refused, whitespace and a leading zero alike; 0 spelt "00" passes.
func TestAtk63GuardctlRedisDB(t *testing.T) {
	o, _, err := storeOptions(map[string]string{"redis_addr": "127.0.0.1:26379, 127.0.0.1:26380", "redis_sentinel_master": "m", "redis_db": "3"})
	require.NoError(t, err)
	assert.Equal(t, 3, o.DB)
	assert.Equal(t, "m", o.SentinelMaster)
	for _, db := range []string{"3", " 3 ", "03"} {
		_, _, err = storeOptions(map[string]string{"redis_addr": "127.0.0.1:7000,127.0.0.1:7001", "redis_db": db})
		assert.ErrorContains(t, err, "a cluster has database 0 only", "redis_db %q", db)
	}
	o, _, err = storeOptions(map[string]string{"redis_addr": "127.0.0.1:7000,127.0.0.1:7001", "redis_db": "00"})
	require.NoError(t, err)
	assert.Equal(t, 0, o.DB)
}
