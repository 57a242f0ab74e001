package config

import (
	"errors"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMetricsAddr(t *testing.T) {
	c, err := Parse(nil)
	require.NoError(t, err)
	assert.Equal(t, "", c.MetricsAddr, "off by default")
	for _, good := range []string{"127.0.0.1:9466", ":9466", "[::1]:9466", "localhost:9466", "metrics.example.com:65535", "0.0.0.0:1"} {
		c, err := Parse(map[string]string{"metrics_addr": good})
		require.NoError(t, err, good)
		assert.Equal(t, good, c.MetricsAddr)
	}
	for _, bad := range []string{"9466", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:http",
		"127.0.0.1:09466", "::1:9466", "http://127.0.0.1:9466", "127.0.0.1:9466/metrics", "bad host:9466", "-x:1", "a..b:1"} {
		_, err := Parse(map[string]string{"metrics_addr": bad})
		var oe *OptionError
		require.True(t, errors.As(err, &oe), "%q must be refused", bad)
		assert.Equal(t, `option metrics_addr: bad value "`+bad+`": expected host:port to serve Prometheus metrics on, such as 127.0.0.1:9466 (a port from 1 to 65535; an empty host for every interface), or nothing for no endpoint`, oe.Error())
	}
}

// listen_backlog: 4096 by default; 0 keeps Mosquitto's 100; anything lower
// than 100 (it would only make a fleet wait longer) or above 65535 stops
// the broker with one line.
func TestListenBacklog(t *testing.T) {
	c, err := Parse(map[string]string{})
	require.NoError(t, err)
	assert.Equal(t, 4096, c.ListenBacklog)
	for _, good := range []string{"0", "100", "1024", "65535"} {
		c, err := Parse(map[string]string{"listen_backlog": good})
		require.NoError(t, err, good)
		assert.Equal(t, good, strconv.Itoa(c.ListenBacklog))
	}
	for _, bad := range []string{"1", "99", "-1", "65536", "abc", ""} {
		_, err := Parse(map[string]string{"listen_backlog": bad})
		require.Error(t, err, bad)
		assert.Equal(t, "option listen_backlog: bad value "+strconv.Quote(bad)+": expected 0 (Mosquitto's own backlog of 100 kept) or a whole number from 100 to 65535", err.Error())
	}
}
