package plugin

import (
	"context"
	"errors"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/config"
	"github.com/mosquitto-guard/mosquitto-guard/store"
)

// tlsCheckTimeout bounds the TLS check at start (checkTLS), which takes
// at most this plus store's plain-text probe (0.5 s): 2 s. A handshake with
// a Redis across a region takes a few hundred milliseconds.
const tlsCheckTimeout = 1500 * time.Millisecond

// checkTLS makes one connection to Redis at start, when redis_tls is on,
// bounded by tlsCheckTimeout. A TLS fault (a certificate that does not
// verify, a client certificate refused, a port without TLS) is a
// configuration error that no retry mends: it stops the broker with one line
// naming the option to fix. A Redis that does not answer is no such error:
// the broker starts, and redis_unavailable applies until Redis answers.
func checkTLS(st *store.Store, cfg config.Options) error {
	if !cfg.RedisTLS.On {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), tlsCheckTimeout)
	defer cancel()
	var te *store.TLSError
	if err := st.CheckTLS(ctx); !errors.As(err, &te) {
		return nil
	}
	return config.TLSOptionError(cfg, te)
}
