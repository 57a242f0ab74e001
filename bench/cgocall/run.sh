#!/usr/bin/env bash
# The Go runtime's own cost of callbacks from a C thread (bench/cgocall):
# a C program calls an empty exported Go function every 50 and 150 µs,
# pinned to one core, with GOMAXPROCS 1 and 2, and prints per call how
# often Go's other threads (sysmon, idle Ms) switch, the CPU they use, and
# how long the call takes the calling thread (its wall time: on one core,
# Go's threads run inside it), without and with a yield to Go's scheduler
# at most every 5 ms from the callback (cgo/yield.go). Mosquitto calls the
# plugin this way; this is the floor the plugin cannot go below per
# callback into Go. Usage: bench/cgocall/run.sh (CGOCALL_PROCS="1 2 4 8" for
# other GOMAXPROCS; 4 and 8 were no better than 2 on 2026-12-02)
set -euo pipefail
cd "$(dirname "$0")"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
GO=${GO:-$(command -v go 2>/dev/null || echo /usr/local/go/bin/go)}
"$GO" build -buildmode=c-shared -o "$out/libcgocall.so" .
gcc -O2 -I"$out" -o "$out/main" caller/caller.c -L"$out" -lcgocall -Wl,-rpath,"$out"
for procs in ${CGOCALL_PROCS:-1 2}; do
	for gap in 50 150; do
		for yield in "" 1; do
			printf 'GOMAXPROCS=%s, %s: ' "$procs" "$([ -n "$yield" ] && echo 'yield every 5 ms' || echo 'no yield')"
			CGOCALL_YIELD=$yield GOMAXPROCS=$procs taskset -c 0 "$out/main" "$gap"
		done
	done
done
