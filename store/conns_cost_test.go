package store

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mosquitto-guard/mosquitto-guard/internal/testenv"
)

// The cost of a new client ID to the conflict worker, through WriteConns as
// the worker calls it (a connect that records and reads, then its
// disconnect, in batches of 64): at most 15 Redis commands (those the
// scripts run included; there were 16) and at most 64 Go allocations,
// this test's own setup included (there were 122 with encoding/json and
// go-redis's Script wrappers; now 57).
func TestWriteConnsCostPerNewClientID(t *testing.T) {
	s, r := newStore(t, "guard:")
	ctx := context.Background()
	const batch, maxCommands, maxAllocs = 64, 15, 64
	n := 0
	round := func() {
		conns := make([]Conn, batch)
		ws := make([]ConnWrite, 0, 2*batch)
		for i := range conns {
			n++
			conns[i] = Conn{ID: "0123456789ab-" + strconv.Itoa(n), Instance: "0123456789ab", Broker: "edge-1",
				Principal: "user-" + strconv.Itoa(n), IP: "192.0.2.1", ConnectedMs: 1700000000000}
			ws = append(ws, ConnWrite{ClientID: "device-" + strconv.Itoa(n), Instance: conns[i].Instance, Live: &conns[i], Seen: &conns[i], Read: true})
		}
		if _, err := s.WriteConns(ctx, ws, time.Hour); err != nil {
			t.Fatal(err)
		}
		ws = ws[:0]
		for i := range conns {
			conns[i].DisconnectedMs = 1700000001000
			ws = append(ws, ConnWrite{ClientID: "device-" + strconv.Itoa(n-batch+1+i), Instance: conns[i].Instance, Gone: &conns[i], Unlist: true, Left: &conns[i]})
		}
		if _, err := s.WriteConns(ctx, ws, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	round() // scripts loaded, connection made
	before := commandsRun(t, r)
	round()
	if per := float64(commandsRun(t, r)-before) / batch; per > maxCommands {
		t.Errorf("%.2f Redis commands per new client ID, want at most %d", per, maxCommands)
	}
	if per := testing.AllocsPerRun(5, round) / batch; per > maxAllocs {
		t.Errorf("%.1f allocations per new client ID, want at most %d", per, maxAllocs)
	}
	live, seen, err := state(s, "device-1")
	if err != nil || len(live) != 0 || len(seen) != 1 || seen[0].DisconnectedMs == 0 {
		t.Fatalf("device-1 after its disconnect: live %+v, seen %+v, %v", live, seen, err)
	}
}

// commandsRun returns the commands Redis ran (INFO commandstats, those run
// by scripts included), INFO's own left out.
func commandsRun(t *testing.T, r *testenv.Redis) int64 {
	var n int64
	for _, line := range strings.Split(r.CLI("INFO", "commandstats"), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(k, "cmdstat_") || k == "cmdstat_info" {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(v, "calls="), ",")
		c, err := strconv.ParseInt(calls, 10, 64)
		if err != nil {
			t.Fatalf("INFO commandstats: %q", line)
		}
		n += c
	}
	return n
}
