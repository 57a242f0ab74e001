package plugin

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/ratelimit"
)

// strayKeyCounter answers one key's count with a reply about that key (an
// operator's stray string under it), the others as counted.
type strayKeyCounter struct {
	fakeCounter
	stray keys.Scope
}

func (s *strayKeyCounter) FailAttempt(ctx context.Context, scope keys.Scope, value string, a *ratelimit.Attempt) (*ratelimit.Ban, error) {
	if scope == s.stray {
		return nil, fmt.Errorf("ratelimit: count failure %q: %w", "rate:guard:fail:"+string(scope)+":"+value, reply("ERR user_script:34: bad argument #1 to 'max'"))
	}
	return s.fakeCounter.FailAttempt(ctx, scope, value, a)
}

// A failure whose first key's count meets a reply about that key alone
// still counts under its other keys and toward its username's throttle
// (atk69): before, the first error ended the failure's count, so a client
// whose username named a key an operator had spoiled kept its address's
// and its client ID's counts in Redis from moving. Redis is not down.
func TestFailureCountsPastAKeyReply(t *testing.T) {
	ct := &strayKeyCounter{stray: keys.Username}
	var downs []error
	now := time.Unix(1_800_000_000, 0)
	q := &failureQueue{failureDeps: failureDeps{counter: ct, policy: ratelimit.Policy{Limit: 5, Window: time.Minute}, userLimit: 3,
		log: (&logSink{}).log, now: func() time.Time { return now }, down: func(err error) { downs = append(downs, err) },
		listed: func(string, string, time.Time) {}}}
	ip := netip.MustParseAddr("192.0.2.9")
	cli := cl(1, ip.String(), "dev-9", "bob", "wrong")
	fk := []failKey{{keys.Username, "bob"}, {keys.IP, ip.String()}, {keys.ClientID, "dev-9"}}
	q.count(newFailure(&cli, ip, fk, true))
	assert.Equal(t, []string{"ip=192.0.2.9", "clientid=dev-9"}, ct.fails, "the other keys counted")
	assert.Equal(t, []string{keys.Tracking("bob")}, ct.throttles, "the throttle counted")
	assert.Len(t, downs, 1, "the reply is told (health logs it as a key's, not an outage)")
	assert.EqualValues(t, 1, q.uncounted.Load())
}
