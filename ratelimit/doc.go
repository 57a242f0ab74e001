// Package ratelimit counts failed authentications and bans the clients that
// fail too often.
//
// # Policy
//
// Failures are counted per value of a scope (an IP address, a client ID or a
// username) with github.com/go-redis/redis_rate, a GCRA limiter, set to
// Burst = Policy.Limit and Rate = 1 per Policy.Window: a key has an allowance
// of Limit failures, which refills by one failure per Window. The failure
// that finds the allowance empty bans the key automatically for
// Policy.BanTime (default 10m); each repeat offence doubles the ban, up to
// Policy.BanMax (default 24h): 10m, 20m, 40m, ... 24h.
//
// What that guarantees, for Limit L and Window W (proof in Policy.RedisRate's comment):
//   - L+1 failures inside any span shorter than W always ban;
//   - L failures at once never ban a key whose allowance is full;
//   - a key that keeps failing more often than once per W is banned once its
//     L spare failures are spent: over a long time a guesser gets L + t/W
//     tries, where a fixed or sliding window (fail2ban's findtime) would give
//     it L per W for ever.
//
// The usual reading of "L failures per W" (fail2ban's maxretry/findtime)
// allows L*t/W tries in the long run; this allows L + t/W.
//
// # Keys
//
// Every key name comes from keys.Builder, so the values, which are arbitrary
// client-supplied bytes, are taken verbatim and each maps to exactly one key.
// With the prefix "guard:" and the IP 192.0.2.7:
//
//	rate:guard:fail:ip:192.0.2.7    redis_rate's counter (redis_rate adds its own "rate:" prefix)
//	guard:block:ip:192.0.2.7        the ban: "auto: ..." with a PX expiry of the ban's length
//	guard:offences:ip:192.0.2.7     how many automatic bans the key has had, expiring BanMax after the ban
//
// The block key is the same one operators write by hand; automatic bans are
// told apart by their value, which always starts with keys.AutoBanMarker ("auto:"). An existing
// block key, whether an operator's permanent ban or another broker's
// automatic one, is never overwritten.
//
// Only single-key commands are used (redis_rate's script touches one key), so
// a Limiter works on Redis Cluster, where the three keys live in different
// slots, as well as on a single server or a Ring. No command takes a pattern
// built from a value.
//
// # Beside the Redis count
//
// Local (local.go) is one broker's own count of the same shape, consulted on
// the broker thread before any password check, so that parallel guesses are
// bounded while Redis counts, and while Redis is down. ThrottleFail counts a
// username's failures from every source toward its throttle
// (username_fail_limit), which is no ban: it expires by itself.
package ratelimit
