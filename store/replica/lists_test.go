package replica

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Lists counts the list keys held by list, through every way one comes or
// goes: Put (a second Put of a key is no new key), Delete, Sweep, and the
// swap of a full load; users and throttles are no list keys.
func TestListsCountsEveryWay(t *testing.T) {
	r := New(kb)
	now := time.Now()
	lists := func() [2]int { b, a := r.Lists(); return [2]int{b, a} }
	require.NoError(t, r.Put("guard:block:ip:192.0.2.1", "x", time.Time{}))
	require.NoError(t, r.Put("guard:block:ip:192.0.2.1", "again", time.Time{}))
	require.NoError(t, r.Put("guard:block:cidr:198.51.100.0/24", "r", now.Add(time.Millisecond)))
	require.NoError(t, r.Put("guard:block:clientid:dev", "c", now.Add(time.Millisecond)))
	require.NoError(t, r.Put("guard:allow:cidr:2001:db8::/32", "", time.Time{}))
	require.NoError(t, r.Put("guard:allow:username:bob", "", time.Time{}))
	require.NoError(t, r.Put("guard:user:bob", "$7$hash", time.Time{}))
	require.NoError(t, r.Put("guard:throttle:username:bob", "t", time.Time{}))
	require.Error(t, r.Put("guard:block:cidr:198.51.100.1/24", "host bits", time.Time{}))
	assert.Equal(t, [2]int{3, 2}, lists())
	assert.Equal(t, 7, r.Len())

	r.Delete("guard:allow:username:bob")
	r.Delete("guard:allow:username:nobody") // not held: nothing to count
	r.Delete("guard:user:bob")
	assert.Equal(t, [2]int{3, 1}, lists())

	assert.Equal(t, 2, r.Sweep(now.Add(time.Second)), "the range and the client ID expired")
	assert.Equal(t, [2]int{1, 1}, lists())

	fresh := New(kb)
	require.NoError(t, fresh.Put("guard:block:cidr:203.0.113.0/24", "", time.Time{}))
	require.NoError(t, fresh.Put("guard:block:username:eve", "", time.Time{}))
	r.swap(fresh)
	assert.Equal(t, [2]int{2, 0}, lists())
}

// The sync reports when it last applied a change or finished a load, and
// whether changes reach it.
func TestSyncLastApplied(t *testing.T) {
	before := time.Now()
	r, s, _, rdb, _ := startSync(t)
	assert.True(t, s.InStep())
	loaded := s.LastApplied()
	assert.False(t, loaded.Before(before), "the first load sets it")
	assert.False(t, loaded.After(time.Now()))

	time.Sleep(20 * time.Millisecond)
	require.NoError(t, rdb.Set(context.Background(), "guard:allow:ip:192.0.2.9", "", 0).Err())
	require.Eventually(t, func() bool { return s.LastApplied().After(loaded) }, 2*time.Second, time.Millisecond,
		"a change applied moves it")
	b, a := r.Lists()
	assert.Equal(t, [2]int{0, 1}, [2]int{b, a})
}

func TestLastAppliedZeroBeforeALoad(t *testing.T) {
	s := NewSync(New(kb), nil, Options{})
	assert.True(t, s.LastApplied().IsZero())
	assert.False(t, s.InStep())
}
