package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// The cost of a new client ID to the conflict worker, through WriteConns as
// the worker calls it (a connect that records and reads, then its
// disconnect, in batches of 64). Under clientid_conflict flag (Sole): at
// most 3 script calls (EVALSHA: the seen record's end at the disconnect;
// there were 4; and, since atk82, the principal's client-ID index at the
// connect and at the end), at most 20.2 Redis commands (those the scripts
// run included; the batch's listings two SADDs for every 16 (listRunMax),
// where each connect sent its own: 21; 13 before the index, whose script runs ZCARD, ZADD and PEXPIRE
// where there is room; there were 15, 16 before that; 12 until the end's
// script renewed the seen hash's TTL: a connection that lasted near the
// window left an end that expired soon after it) and at most 80 Go
// allocations (64 before the index), this test's own setup included. Under
// deny (not Sole): 6 script calls and 23.2 commands (24 before the runs'
// SADDs; 4 and 16 before the index).
func TestWriteConnsCostPerNewClientID(t *testing.T) {
	for _, tc := range []struct {
		sole                    bool
		maxScripts, maxCommands float64
	}{{true, 3, 20.2}, {false, 6, 23.2}} {
		t.Run(fmt.Sprintf("sole=%v", tc.sole), func(t *testing.T) {
			testWriteConnsCost(t, tc.sole, tc.maxScripts, tc.maxCommands)
		})
	}
}

func testWriteConnsCost(t *testing.T, sole bool, maxScripts, maxCommands float64) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	const batch, maxAllocs = 64, 80
	n := 0
	round := func() {
		conns := make([]Conn, batch)
		ws := make([]ConnWrite, 0, 2*batch)
		for i := range conns {
			n++
			conns[i] = Conn{ID: "0123456789ab-" + strconv.Itoa(n), Instance: "0123456789ab", Broker: "edge-1",
				Principal: "user-" + strconv.Itoa(n), IP: "192.0.2.1", ConnectedMs: 1700000000000}
			ws = append(ws, ConnWrite{ClientID: "device-" + strconv.Itoa(n), Instance: conns[i].Instance, Live: &conns[i], Seen: &conns[i], Read: true, Sole: sole})
		}
		if _, err := s.WriteConns(ctx, ws, time.Hour); err != nil {
			t.Fatal(err)
		}
		ws = ws[:0]
		for i := range conns {
			conns[i].DisconnectedMs = 1700000001000
			ws = append(ws, ConnWrite{ClientID: "device-" + strconv.Itoa(n-batch+1+i), Instance: conns[i].Instance, Gone: &conns[i], Unlist: true, Left: &conns[i], Sole: sole})
		}
		if _, err := s.WriteConns(ctx, ws, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	round() // scripts loaded, connection made
	before, scriptsBefore := commandsRun(t, r)
	round()
	after, scriptsAfter := commandsRun(t, r)
	if per := float64(scriptsAfter-scriptsBefore) / batch; per > maxScripts {
		t.Errorf("%.2f script calls per new client ID, want at most %v", per, maxScripts)
	}
	if per := float64(after-before) / batch; per > maxCommands {
		t.Errorf("%.2f Redis commands per new client ID, want at most %v", per, maxCommands)
	} else {
		t.Logf("%.2f Redis commands, %.2f script calls per new client ID", per, float64(scriptsAfter-scriptsBefore)/batch)
	}
	if per := testing.AllocsPerRun(5, round) / batch; per > maxAllocs {
		t.Errorf("%.1f allocations per new client ID, want at most %d", per, maxAllocs)
	} else {
		t.Logf("%.1f allocations per new client ID", per)
	}
	live, seen, err := state(s, "device-1")
	if err != nil || len(live) != 0 || len(seen) != 1 || seen[0].DisconnectedMs == 0 {
		t.Fatalf("device-1 after its disconnect: live %+v, seen %+v, %v", live, seen, err)
	}
}

// commandsRun returns the commands Redis ran (INFO commandstats, those run
// by scripts included), INFO's own left out, and of them the script calls
// (EVALSHA and EVAL).
func commandsRun(t *testing.T, r *testenv.Redis) (n, scripts int64) {
	for name, c := range commandCalls(t, r) {
		if name == "info" {
			continue
		}
		n += c
		if name == "evalsha" || name == "eval" {
			scripts += c
		}
	}
	return n, scripts
}

// commandCalls returns how many times Redis ran each command (INFO
// commandstats' calls, by the command's lower-case name).
func commandCalls(t *testing.T, r *testenv.Redis) map[string]int64 {
	t.Helper()
	calls := map[string]int64{}
	for _, line := range strings.Split(r.CLI("INFO", "commandstats"), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, cmd := strings.CutPrefix(k, "cmdstat_")
		if !ok || !cmd {
			continue
		}
		n, _, _ := strings.Cut(strings.TrimPrefix(v, "calls="), ",")
		c, err := strconv.ParseInt(n, 10, 64)
		if err != nil {
			t.Fatalf("INFO commandstats: %q", line)
		}
		calls[name] = c
	}
	return calls
}
