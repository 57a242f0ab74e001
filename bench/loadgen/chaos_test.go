package main

import (
	"strings"
	"testing"
	"time"
)

func TestRawConnectMaxFields(t *testing.T) {
	m := []byte(strings.Repeat("M", 65535))
	p := rawConnect("MQTT", 4, 0xc2, m, m, m)
	body := 6 + 4 + 3*(2+65535)
	if got := remainingLength(body); string(p[1:1+len(got)]) != string(got) || len(p) != 1+len(got)+body {
		t.Fatalf("packet of %d bytes, header % x", len(p), p[:5])
	}
	if string(rawConnect("MQTT", 4, 0xc2, []byte("id"), []byte("bench"), []byte("pw"))) != string(connectPacket("id", ptr("bench"), ptr("pw"))) {
		t.Fatal("rawConnect and connectPacket differ for a plain CONNECT")
	}
}

func TestSummarizeRecovery(t *testing.T) {
	e := &chaosEnv{slow: 100 * time.Millisecond}
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	faultEnd := at(5)
	samples := []sample{
		{start: at(1), end: at(1.01), code: 0, lat: 10 * time.Millisecond},
		{start: at(4), end: at(6), code: -1, err: "timeout"},                 // missing, ends 1 s after the fault
		{start: at(6.5), end: at(7), code: 0, lat: 500 * time.Millisecond},   // slow: the last bad one
		{start: at(7.5), end: at(7.51), code: 5, lat: 10 * time.Millisecond}, // refused: bad too
		{start: at(8), end: at(8.01), code: 0, lat: 10 * time.Millisecond},
	}
	var r ChaosResult
	e.summarize(&r, samples, faultEnd)
	if r.Attempts != 5 || r.Missing != 1 || r.Refused != 1 || r.Slow != 1 || r.Accepted != 3 || !r.Degraded {
		t.Fatalf("%+v", r)
	}
	if r.Recover == nil || *r.Recover != 2.51 {
		t.Fatalf("recover %v, want 2.51 s", r.Recover)
	}
	var clean ChaosResult
	e.summarize(&clean, samples[4:], faultEnd)
	if clean.Recover != nil || clean.Degraded {
		t.Fatalf("%+v", clean)
	}
}
