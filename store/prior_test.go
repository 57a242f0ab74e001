package store

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A write with Prior tells what Redis held of its connection just before
// it (a relist's question: was it listed all along, or did a reap end
// it?), in the same round trip, also when Redis lost its scripts and the
// write is replayed.
func TestWriteConnsTellsThePrior(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := t.Context()
	c := Conn{ID: "i1-7", Instance: "i1", Principal: "alice", IP: "192.0.2.1", ConnectedMs: 1000}
	write := func() Prior {
		t.Helper()
		st, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "x", Instance: "i1", Live: &c, Seen: &c, Read: true, Prior: true}}, time.Hour)
		require.NoError(t, err)
		require.Len(t, st, 1)
		return st[0].Prior
	}
	assert.Equal(t, Prior{}, write(), "nothing there: not listed, no end")
	assert.Equal(t, Prior{Listed: true, Seen: true}, write(), "written before: listed, its use recorded")

	// Another connection of the instance listed: not this one.
	other := c
	other.ID = "i1-5"
	r.CLI("HSET", "guard:conn:x", "i1", other.encode())
	assert.Equal(t, Prior{Seen: true}, write(), "another connection's entry: not listed")

	// A reap: the entry gone, the principal's use ended at the lease's end.
	require.NoError(t, s.Reap(ctx, "i1", 5000, 0, time.Hour))
	require.Equal(t, "0", r.CLI("HEXISTS", "guard:conn:x", "i1"))
	assert.Equal(t, Prior{Seen: true, EndedMs: 5000}, write(), "reaped: not listed, ended at the reap's bound")
	assert.Equal(t, Prior{Listed: true, Seen: true}, write(), "relisted: listed, its use open again")

	// Another connection's end in the principal's use is not this one's.
	ended := c
	ended.ID, ended.DisconnectedMs = "i1-3", 4000
	r.CLI("HSET", "guard:seen:x", "alice", ended.encode())
	r.CLI("HDEL", "guard:conn:x", "i1")
	assert.Equal(t, Prior{}, write(), "the use is another connection's")

	// Scripts lost: the write is replayed with them, and tells what was
	// there before the first attempt.
	r.CLI("HDEL", "guard:conn:x", "i1")
	r.CLI("HDEL", "guard:seen:x", "alice")
	r.CLI("SCRIPT", "FLUSH")
	assert.Equal(t, Prior{}, write(), "replayed after NOSCRIPT: nothing there before")
	assert.Equal(t, Prior{Listed: true, Seen: true}, write())

	// Without Prior, nothing is read.
	st, err := s.WriteConns(ctx, []ConnWrite{{ClientID: "x", Instance: "i1", Live: &c, Seen: &c, Read: true}}, time.Hour)
	require.NoError(t, err)
	assert.Equal(t, Prior{}, st[0].Prior)
}

// A write replayed after NOSCRIPT tells what the first attempt read, where
// that attempt ran some of its writes: here the node knew the live script
// and not the seen one (on a Cluster, nodes that knew the scripts beside
// one that lost them), so the first attempt wrote the live entry, and the
// replay reads it back. Prior must say it was not listed before.
func TestWriteConnsPriorAfterAPartialReplay(t *testing.T) {
	s, r := newStore(t, "guard:")
	c := Conn{ID: "i1-7", Instance: "i1", Principal: "alice", IP: "192.0.2.1", ConnectedMs: 1000}
	r.CLI("SCRIPT", "FLUSH")
	require.Equal(t, liveScript.Hash(), r.CLI("SCRIPT", "LOAD", liveSrc))
	st, err := s.WriteConns(t.Context(), []ConnWrite{{ClientID: "x", Instance: "i1", Live: &c, Seen: &c, Read: true, Prior: true}}, time.Hour)
	require.NoError(t, err)
	assert.Equal(t, Prior{}, st[0].Prior, "nothing was there before the first attempt")
	assert.Equal(t, "1", r.CLI("HEXISTS", "guard:conn:x", "i1"), "written")

	// The same with the seen script alone known: the first attempt
	// records the use, and the replay reads it back.
	r.CLI("FLUSHALL")
	r.CLI("SCRIPT", "FLUSH")
	require.Equal(t, seenScript.Hash(), r.CLI("SCRIPT", "LOAD", seenSrc))
	st, err = s.WriteConns(t.Context(), []ConnWrite{{ClientID: "x", Instance: "i1", Live: &c, Seen: &c, Read: true, Prior: true}}, time.Hour)
	require.NoError(t, err)
	assert.Equal(t, Prior{}, st[0].Prior, "no use was there before the first attempt")
}
