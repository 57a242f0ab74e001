package rediserr

import (
	"context"
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"
)

// IsReply says whether err is an error reply from Redis: it answered (not a
// lost connection, not a timeout, not a missing key). The plugin and the
// replica ask it too (through store.IsReply).
func IsReply(err error) bool {
	var re redis.Error
	return err != nil && !errors.Is(err, redis.Nil) && errors.As(err, &re) &&
		!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled)
}

// IsWrongType says whether err is, or wraps, Redis's WRONGTYPE reply: a key
// of another type where a command expects its own (an operator's key under
// the plugin's prefix), an answer about that key, not Redis down.
func IsWrongType(err error) bool {
	var re redis.Error
	return IsReply(err) && errors.As(err, &re) && strings.HasPrefix(re.Error(), "WRONGTYPE")
}

// IsKeyReply says whether err is, or wraps, a reply about what one key
// holds: WRONGTYPE, or a value a command or a script cannot use (a count
// that is no number, Lua's error on it: an operator's stray string under
// rate:guard:, atk69). Redis answered, and it serves every other key: not
// an outage. A refusal by its ACL is not one of them.
func IsKeyReply(err error) bool {
	if IsWrongType(err) {
		return true
	}
	var re redis.Error
	if !IsReply(err) || !errors.As(err, &re) {
		return false
	}
	msg := re.Error()
	// Redis echoes a command's arguments (a client's bytes among them) after
	// this: only its own words are read (atk70).
	msg, _, _ = strings.Cut(msg, "with args beginning with:")
	if !strings.HasPrefix(msg, "ERR ") || strings.Contains(msg, "unknown command") || strings.Contains(msg, "can't run this command") || strings.Contains(msg, "no permissions") {
		return false
	}
	for _, s := range keyValueErrors {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// keyValueErrors are the texts of Redis's (and its Lua's) errors on a
// value it cannot use; and Redis 6's form of a WRONGTYPE raised inside a
// script ("ERR Error running script (call to f_...): @user_script:1:
// WRONGTYPE ...", atk70).
var keyValueErrors = []string{"not an integer", "not a valid float", "would overflow", "bad argument", "attempt to compare", "attempt to perform arithmetic", "attempt to concatenate", ": WRONGTYPE "}

// PipelineErr is err, a pipeline's Exec error, when the pipeline failed as
// a whole: go-redis stamps a lost connection or a timeout onto every
// command, but leaves the commands untouched when a Redis reply failed the
// connection's set-up (WRONGPASS after a password rotation, NOPERM on
// SELECT or CLIENT SETNAME), so a caller that reads each command's own
// error reads a GET's empty value as an answer (atk71: every allow key
// present, every ban lifted). nil when some command carries its own error,
// or when Exec succeeded. Right for the clients the plugin makes (one
// server, sentinels, a cluster, whose pipeline stamps a node's set-up
// failure onto that node's commands); not for a go-redis Ring, which does
// not, and which the plugin never builds.
func PipelineErr(cmds []redis.Cmder, err error) error {
	if err == nil {
		return nil
	}
	for _, c := range cmds {
		if c.Err() != nil {
			return nil
		}
	}
	return err
}
