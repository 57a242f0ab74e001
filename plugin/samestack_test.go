package plugin

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mosquitto-guard/mosquitto-guard/backends/hashes"
)

// A known user's wrong password and an unknown user's are verified by the
// same call, from the same stack (credentials.check): where on the stack Go's
// SHA-512 runs changes what a PBKDF2 costs (30 to 40% more when its writes
// straddle a page), and in the broker the files backend's unknown users,
// verified one frame deeper than its known users, answered $7$ hashes of
// 5000 rounds in 3.8 to 5.1 ms against 6.0 to 7.0 (e2e
// TestZZUnknownUserTiming). The same callers, return addresses included,
// make the same stack.
func TestUnknownUserVerifiedFromTheKnownUsersStack(t *testing.T) {
	for _, backend := range []string{"files", "redis"} {
		t.Run(backend, func(t *testing.T) {
			opts := map[string]string{"username_fail_limit": "0"}
			if backend == "redis" {
				opts["backend"] = "redis"
			}
			g, st, _, _ := newGuard(t, opts)
			if backend == "redis" {
				h, err := hashes.Verifier{}.DummyLike(hashes.DefaultDummy())
				require.NoError(t, err)
				st.set("guard:user:alice", h)
			}
			var stacks [][]uintptr
			saved := verifyPassword
			t.Cleanup(func() { verifyPassword = saved })
			verifyPassword = func(v hashes.Verifier, encoded string, password []byte) (bool, error) {
				pcs := make([]uintptr, 64)
				stacks = append(stacks, pcs[:runtime.Callers(2, pcs)])
				return saved(v, encoded, password)
			}
			frames := func(pcs []uintptr) []string {
				var out []string
				fs := runtime.CallersFrames(pcs)
				for {
					f, more := fs.Next()
					out = append(out, fmt.Sprintf("%s:%d", f.Function, f.Line))
					if !more {
						return out
					}
				}
			}
			var rules []string
			for i, user := range []string{"alice", "nobody"} { // one call site: the test's frame alike too
				rules = append(rules, g.Authenticate(cl(uintptr(i+1), fmt.Sprintf("192.0.2.%d", i+1), "c", user, "wrong")).Rule)
			}
			require.Equal(t, []string{RuleBadPassword, RuleUnknownUser}, rules)
			require.Len(t, stacks, 2, "one verification each, through verifyPassword")
			assert.Equal(t, frames(stacks[0]), frames(stacks[1]), "known and unknown users verified from different stacks")
			assert.Equal(t, stacks[0], stacks[1])
		})
	}
}
