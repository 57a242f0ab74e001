package e2e

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// An ip key not in the canonical form (IPv4 dotted quad, IPv6 in RFC 5952
// lower-case form, IPv4-mapped written as IPv4) can never match a client:
// the plugin says so, with the key it expected, whether the key is written
// while the broker runs or is there when it starts.
func TestNonCanonicalIPKeyIsLogged(t *testing.T) {
	e := newEnv(t)

	// Written while the broker runs: the replica sees them at once.
	e.redis.CLI("SET", "guard:block:ip:0:0:0:0:0:0:0:1", "long form")
	e.logLine(`ip key "guard:block:ip:0:0:0:0:0:0:0:1" can never match: expected guard:block:ip:::1`)
	e.redis.CLI("SET", "guard:allow:ip:::ffff:127.0.40.1", "mapped")
	e.logLine(`ip key "guard:allow:ip:::ffff:127.0.40.1" can never match: expected guard:allow:ip:127.0.40.1`)
	e.redis.CLI("SET", "guard:block:ip:not-an-ip", "typo")
	e.logLine(`ip key "guard:block:ip:not-an-ip" can never match`, "expected an address such as")

	// A canonical key is no such key, and it matches.
	e.redis.CLI("SET", "guard:block:ip:127.0.40.2", "canonical")
	e.expect(as("127.0.40.2", "dev-40-2", "alice", "alice-pw"), refused)
	e.logLine("refused", "ip=127.0.40.2", `rule="guard:block:ip:127.0.40.2"`)

	// There when the broker starts: the replica's load reports them.
	e.broker.Stop()
	e.redis.CLI("SET", "guard:block:ip:2001:DB8::1", "upper case")
	e.redis.CLI("SET", "guard:allow:ip:127.000.0.1", "leading zeros")
	e.broker = startBroker(t, e.conf())
	e.logLine(`ip key "guard:block:ip:2001:DB8::1" can never match: expected guard:block:ip:2001:db8::1`)
	e.logLine(`ip key "guard:allow:ip:127.000.0.1" can never match`, "expected an address such as")
	e.logLine(`ip key "guard:block:ip:0:0:0:0:0:0:0:1" can never match: expected guard:block:ip:::1`)
	assert.NotContains(t, e.broker.Output(), `"guard:block:ip:127.0.40.2" can never match`)
}
