package store

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// DropGhosts removes instance's entries of the client IDs it is given that
// are numbered maxSeq or lower, and unlists them; it keeps a newer one
// (claimed since the caller looked), another instance's, an entry replaced
// by a claim between its read and its delete (listed again), and it leaves
// the principal's seen record alone.
func TestDropGhosts(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	conn := func(id, principal string) Conn {
		return Conn{ID: id, Instance: id[:2], Principal: principal, IP: "192.0.2.1", ConnectedMs: 1}
	}
	ghost, newer, other, raced := conn("ia-3", "alice"), conn("ia-9", "bob"), conn("ib-1", "carol"), conn("ia-4", "dave")
	require.NoError(t, writeConns(ctx, s, []ConnWrite{
		{ClientID: "ghost", Instance: "ia", Live: &ghost, Seen: &ghost},
		{ClientID: "newer", Instance: "ia", Live: &newer},
		{ClientID: "other", Instance: "ib", Live: &other},
		{ClientID: "raced", Instance: "ia", Live: &raced},
	}, time.Hour))
	seen := r.CLI("HGET", "guard:seen:ghost", "alice")

	var page []string
	for cursor := uint64(0); ; {
		ids, next, err := s.Listed(ctx, "ia", cursor)
		require.NoError(t, err)
		page = append(page, ids...)
		if cursor = next; cursor == 0 {
			break
		}
	}
	sort.Strings(page)
	assert.Equal(t, []string{"ghost", "newer", "raced"}, page)

	// A claim replaces raced's entry after DropGhosts read it.
	hook := func() {
		claimed := conn("ia-5", "dave")
		_, err := s.Claim(ctx, "raced", claimed, Brokers{})
		require.NoError(t, err)
	}
	dropGhostsHook = hook
	t.Cleanup(func() { dropGhostsHook = nil })
	n, err := s.DropGhosts(ctx, "ia", []string{"ghost", "newer", "other", "raced", "absent"}, 4)
	require.NoError(t, err)
	assert.Equal(t, 1, n, "the ghost alone")
	assert.Equal(t, "0", r.CLI("HLEN", "guard:conn:ghost"))
	assert.Equal(t, "0", r.CLI("SISMEMBER", "guard:brokerconns:ia", "ghost"))
	assert.Equal(t, seen, r.CLI("HGET", "guard:seen:ghost", "alice"), "the seen record is left")
	assert.Contains(t, r.CLI("HGET", "guard:conn:newer", "ia"), `"ia-9"`, "numbered after maxSeq: kept")
	assert.Equal(t, "1", r.CLI("SISMEMBER", "guard:brokerconns:ia", "newer"))
	assert.Contains(t, r.CLI("HGET", "guard:conn:other", "ib"), `"ib-1"`, "another instance's")
	assert.Contains(t, r.CLI("HGET", "guard:conn:raced", "ia"), `"ia-5"`, "the claim that replaced it")
	assert.Equal(t, "1", r.CLI("SISMEMBER", "guard:brokerconns:ia", "raced"), "listed again")

	r.CLI("SCRIPT", "FLUSH")
	g2 := conn("ia-2", "erin")
	require.NoError(t, writeConns(ctx, s, []ConnWrite{{ClientID: "g2", Instance: "ia", Live: &g2}}, time.Hour))
	r.CLI("SCRIPT", "FLUSH")
	dropGhostsHook = nil
	n, err = s.DropGhosts(ctx, "ia", []string{"g2"}, 4)
	require.NoError(t, err)
	assert.Equal(t, 1, n, "after SCRIPT FLUSH")
}
