package store

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
	"github.com/mosquitto-guard/mosquitto-guard/keys"
)

func tlsStore(t *testing.T, addr string, cfg *tls.Config) *Store {
	t.Helper()
	s := New(Options{Addrs: []string{addr}, Timeout: time.Second, TLS: cfg}, keys.Builder{Prefix: "guard:"})
	t.Cleanup(func() { s.Close() })
	return s
}

func checkTLS(t *testing.T, s *Store) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	err := s.CheckTLS(ctx)
	assert.Less(t, time.Since(start), 2500*time.Millisecond, "bounded by its context")
	return err
}

// A TLS Redis: both clients work through it, and CheckTLS tells each TLS
// fault from a Redis that is down.
func TestCheckTLS(t *testing.T) {
	ca := testenv.NewCA(t)
	r := testenv.StartRedisTLS(t, &testenv.RedisTLS{CA: ca})

	good := tlsStore(t, r.Addr, ca.TLSConfig(t, nil))
	require.NoError(t, checkTLS(t, good))
	ctx := context.Background()
	_, err := good.SetEntry(ctx, keys.Block, keys.ClientID, "over-tls", "r", 0)
	require.NoError(t, err)
	a, err := good.Lookup(ctx, Query{ClientID: "over-tls"})
	require.NoError(t, err, "the broker thread's client speaks TLS too")
	require.NotNil(t, a.Block)
	assert.Equal(t, "r", r.CLI("GET", "guard:block:clientid:over-tls"))

	fault := func(s *Store) TLSFault {
		t.Helper()
		err := checkTLS(t, s)
		var te *TLSError
		require.ErrorAs(t, err, &te)
		t.Logf("%v", err)
		return te.Fault
	}
	other := testenv.NewCA(t)
	assert.Equal(t, TLSUnknownAuthority, fault(tlsStore(t, r.Addr, other.TLSConfig(t, nil))))
	named := ca.TLSConfig(t, nil)
	named.ServerName = "redis.example"
	assert.Equal(t, TLSBadName, fault(tlsStore(t, r.Addr, named)))

	plain := testenv.StartRedis(t)
	assert.Equal(t, TLSNotTLS, fault(tlsStore(t, plain.Addr, ca.TLSConfig(t, nil))))

	mutual := testenv.StartRedisTLS(t, &testenv.RedisTLS{CA: ca, AuthClients: true})
	assert.Equal(t, TLSRefused, fault(tlsStore(t, mutual.Addr, ca.TLSConfig(t, nil))), "no client certificate")
	assert.Equal(t, TLSRefused, fault(tlsStore(t, mutual.Addr, func() *tls.Config {
		c := ca.TLSConfig(t, other.Client(t, "stranger"))
		return c
	}())), "a client certificate of another CA")
	require.NoError(t, checkTLS(t, tlsStore(t, mutual.Addr, ca.TLSConfig(t, ca.Client(t, "guard")))))

	expiredCert, expiredKey := ca.ExpiredServer(t, "127.0.0.1")
	expired := testenv.StartRedisTLS(t, &testenv.RedisTLS{CA: ca}, "--tls-cert-file", expiredCert, "--tls-key-file", expiredKey)
	assert.Equal(t, TLSInvalid, fault(tlsStore(t, expired.Addr, ca.TLSConfig(t, nil))))

	down := testenv.StartRedisTLS(t, &testenv.RedisTLS{CA: ca})
	down.Stop()
	assert.NoError(t, checkTLS(t, tlsStore(t, down.Addr, ca.TLSConfig(t, nil))), "Redis down is no TLS fault")
}

// go-redis joins one error per sentinel: OneLine makes one line of them.
func TestOneLine(t *testing.T) {
	err := fmt.Errorf("redis: all sentinels are unreachable: %w", errors.Join(errors.New("x509: a"), errors.New("x509: a"), errors.New("dial: b")))
	assert.Equal(t, "redis: all sentinels are unreachable: x509: a; dial: b", OneLine(err))
	assert.Equal(t, "plain", OneLine(errors.New("plain")))
}
