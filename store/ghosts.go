package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/mosquitto-guard/mosquitto-guard/internal/rediserr"
)

// Listed returns a page (about 500) of the client IDs (their
// keys.Tracking form) in instance's brokerconns set, from cursor (0: the
// start), and the cursor of the next page (0: the last). SSCAN: a member
// there throughout is returned at least once.
func (s *Store) Listed(ctx context.Context, instance string, cursor uint64) ([]string, uint64, error) {
	ids, next, err := s.rdb.SScan(ctx, s.kb.BrokerConns(instance), cursor, "", 500).Result()
	if err != nil {
		return nil, 0, fmt.Errorf("store: listed connections: %w", err)
	}
	return ids, next, nil
}

// readEntries reads instance's field of each of ids' conn keys (client IDs
// in their keys.Tracking form) in one round trip, for the reap and the
// removal of ghosts. redis.Nil (no entry) and a reply about one key (an
// operator's key of another type: atk74, first in a page it failed every
// removal of the page for ever) are each command's own answer; any other
// failure of any command fails the read (atk72: on a cluster a redis.Nil
// first in command order hid a hung node's timeouts, whose entries were
// taken as none), and so does a refused connection set-up, which go-redis
// stamps on no command (rediserr.PipelineErr).
func (s *Store) readEntries(ctx context.Context, instance string, ids []string) ([]*redis.StringCmd, error) {
	pipe := s.rdb.Pipeline()
	gets := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		gets[i] = pipe.HGet(ctx, s.kb.ConnTracked(id), instance)
	}
	cmds, err := pipe.Exec(ctx)
	if perr := rediserr.PipelineErr(cmds, err); perr != nil {
		return nil, perr
	}
	for _, g := range gets {
		if err := g.Err(); err != nil && !errors.Is(err, redis.Nil) && !rediserr.IsKeyReply(err) {
			return nil, err
		}
	}
	return gets, nil
}

// dropGhostsHook, when set (tests), runs between DropGhosts' reads and its
// writes.
var dropGhostsHook func()

// DropGhosts removes the live entries of instance under ids (client IDs in
// their keys.Tracking form) that instance, running, does not hold: the
// caller (its conflict worker) knows it holds no connection of them. Only
// an entry of a connection numbered maxSeq or lower goes: a higher one
// was made since the caller looked (a claim on the broker thread, ahead of
// the worker). Each goes as its DISCONNECT's compare-and-delete would,
// if it is still what was read (a claim that replaced it meanwhile is
// kept), and then the client ID leaves instance's brokerconns set, unless
// a claim listed it again meanwhile. The principal's seen record is left
// as it is: the connection's end is not known. Five round trips at most;
// it returns how many went.
//
// Such an entry is a ghost: Redis restarted from a snapshot older than the
// connection's DISCONNECT, and brought the entry back under the running
// broker's lease (atk29), where clientid_conflict deny refused its client
// ID to every other principal for as long as the broker ran.
func (s *Store) DropGhosts(ctx context.Context, instance string, ids []string, maxSeq uint64) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	gets, err := s.readEntries(ctx, instance, ids)
	if err != nil {
		return 0, fmt.Errorf("store: drop ghosts: %w", err)
	}
	if dropGhostsHook != nil {
		dropGhostsHook()
	}
	type ghost struct{ id, v string }
	var gs []ghost
	for i, id := range ids {
		v, err := gets[i].Result()
		if err != nil {
			continue // no entry of instance's
		}
		var c Conn
		if decodeConn(v, &c) != nil {
			continue
		}
		n, err := strconv.ParseUint(seq(c.ID), 10, 64)
		if err != nil || n > maxSeq || !strings.HasPrefix(c.ID, instance+"-") {
			continue // newer than the caller's look, or not instance's numbering
		}
		gs = append(gs, ghost{id, v})
	}
	if len(gs) == 0 {
		return 0, nil
	}
	run := func(full bool) ([]*redis.Cmd, error) {
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.Cmd, len(gs))
		for i, g := range gs {
			cmds[i] = s.eval(ctx, pipe, casArgs, full, s.kb.ConnTracked(g.id), instance, g.v, "")
		}
		done, err := pipe.Exec(ctx)
		s.markSent(done)
		return cmds, err
	}
	cmds, err := run(false)
	var first []*redis.Cmd
	if isNoScript(err) {
		// On a Cluster, a node that knew the script removed its entries in
		// the first attempt: the replay finds them gone (0), and they are
		// counted and unlisted from the first attempt's reply (atk86: one
		// node's cache flushed, 22 of 60 counted, 38 left listed).
		first = cmds
		cmds, err = run(true)
	}
	if err != nil {
		return 0, fmt.Errorf("store: drop ghosts: %w", err)
	}
	var gone []any
	for i, c := range cmds {
		n, _ := c.Int64()
		if n != 1 && first != nil {
			n, _ = first[i].Int64()
		}
		if n == 1 {
			gone = append(gone, gs[i].id)
		}
	}
	dropped := len(gone)
	if dropped == 0 {
		return 0, nil
	}
	// Unlisted after: a failure here leaves a member with no entry, which
	// the next relist or reap passes over (unlisted first, a failure of
	// the delete left an entry no relist nor reap could find: atk30). A
	// claim of the client ID that lands between the delete and the SREM
	// is listed again: each is looked for after the SREM.
	set := s.kb.BrokerConns(instance)
	if err := s.rdb.SRem(ctx, set, gone...).Err(); err != nil {
		return dropped, fmt.Errorf("store: drop ghosts: %w", err)
	}
	pipe := s.rdb.Pipeline()
	back := make([]*redis.BoolCmd, len(gone))
	for i, id := range gone {
		back[i] = pipe.HExists(ctx, s.kb.ConnTracked(id.(string)), instance)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return dropped, fmt.Errorf("store: drop ghosts: %w", err)
	}
	var relist []any
	for i, b := range back {
		if b.Val() {
			relist = append(relist, gone[i])
		}
	}
	if len(relist) > 0 {
		if err := s.rdb.SAdd(ctx, set, relist...).Err(); err != nil {
			return dropped, fmt.Errorf("store: drop ghosts: %w", err)
		}
	}
	return dropped, nil
}
