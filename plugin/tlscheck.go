package plugin

import (
	"context"
	"crypto/x509"
	"errors"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// tlsCheckTimeout bounds the TLS check at start (checkTLS), which takes
// at most this plus store's plain-text probe (0.5 s): 2 s. A handshake with
// a Redis across a region takes a few hundred milliseconds.
const tlsCheckTimeout = 1500 * time.Millisecond

// systemRootsWait bounds how long checkTLS waits, before its own bound
// starts, for Go to load the system's CA pool (redis_tls_ca unset). Go loads
// it once, at the first verification that needs it: some 300 files on
// Debian, a few tens of milliseconds on an idle machine, seconds on a
// loaded one. Inside tlsCheckTimeout that load could use up the bound, and
// the check then took a certificate the system's CAs do not sign for a
// Redis that does not answer, and let the broker start (CI saw it once).
//
// A variable: TestAtk22HungSystemRoots's child shortens it.
var systemRootsWait = 10 * time.Second

// checkTLS makes one connection to Redis at start, when redis_tls is on,
// bounded by tlsCheckTimeout (after the system's CAs are loaded, bounded by
// systemRootsWait, when no redis_tls_ca is given). A TLS fault (a
// certificate that does not verify, a client certificate refused, a port
// without TLS) is a configuration error that no retry mends: it stops the
// broker with one line naming the option to fix. A Redis that does not
// answer is no such error: the broker starts, and redis_unavailable applies
// until Redis answers.
func checkTLS(st *store.Store, cfg config.Options) error {
	if !cfg.RedisTLS.On {
		return nil
	}
	if c := cfg.RedisTLS.Config; c == nil || c.RootCAs == nil {
		loadSystemRoots(systemRootsWait)
	}
	ctx, cancel := context.WithTimeout(context.Background(), tlsCheckTimeout)
	defer cancel()
	var te *store.TLSError
	if err := st.CheckTLS(ctx); !errors.As(err, &te) {
		return nil
	}
	return config.TLSOptionError(cfg, te)
}

// loadSystemRoots has Go load the system's CA pool, which every later
// verification without RootCAs shares, and waits for it at most wait. It
// reports whether the load ended in time; a load that did not goes on in
// the background, and the check it delays is bounded as before.
func loadSystemRoots(wait time.Duration) bool {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = x509.SystemCertPool() // an error here is the verification's error later
	}()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// settingsCheckTimeout bounds the settings check at start (checkSettings):
// a Redis that has not answered by then is taken as down, not wrong.
const settingsCheckTimeout = 1500 * time.Millisecond

// checkSettings asks Redis once at start, bounded by settingsCheckTimeout:
// an answer that says the settings are wrong (a refused password, no
// password where one is required, a database Redis lacks, cluster seeds
// for a Redis without cluster support, a master name the sentinels do not
// monitor, a sentinel that is none or a sentinel given as the Redis) is a
// configuration error that no retry mends: it stops the broker with one
// line naming the option to fix (atk55: the broker started, Redis down
// for good, no option named). A Redis that does not answer is no such
// error: the broker starts, and redis_unavailable applies until it does.
func checkSettings(st *store.Store, cfg config.Options) error {
	ctx, cancel := context.WithTimeout(context.Background(), settingsCheckTimeout)
	defer cancel()
	var se *store.SettingsError
	counts := cfg.Backend != config.BackendDefer
	needs := store.SettingsNeeds{Counts: counts, Known: counts && cfg.UsernameFailLimit > 0, Tracking: cfg.Conflicts.Mode != config.ConflictOff}
	if err := st.CheckSettingsNeeds(ctx, needs); !errors.As(err, &se) {
		return nil
	}
	return config.SettingsOptionError(cfg, se)
}
