#!/usr/bin/env bash
# make chaos: faults under CONNECT load, on loopback, a few minutes; not part
# of make test. For each scenario a fresh redis-server and mosquitto with the
# plugin (free ports, own directories under build/chaos/<time>/, stopped by
# PID, killed by the kernel if the load generator dies), a paced load of valid
# clients (CHAOS_RATE connects/s over CHAOS_WORKERS workers) for
# CHAOS_PRE + CHAOS_DURING + CHAOS_POST, the fault in the middle. Servers on
# core 0, the load generator on core 1 (GOMAXPROCS=1), as in make bench.
# Prints a markdown table; exits non-zero if a guarantee did not hold.
#
# Knobs: CHAOS_ONLY (scenarios, comma-separated), CHAOS_WORKERS (16),
# CHAOS_RATE (800), CHAOS_PRE (3s), CHAOS_DURING (5s), CHAOS_POST (7s),
# CHAOS_SLOW (250ms: a slower CONNACK counts as not recovered).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
SECONDS=0
GO=${GO:-$(command -v go 2>/dev/null || echo /usr/local/go/bin/go)}
say() { printf '[%3ds] %s\n' "$SECONDS" "$*" >&2; }

scripts/deps.sh
make --no-print-directory build GO="$GO" >&2
plugin="$root/build/mosquitto_guard.so"
out="$root/build/chaos/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
loadgen="$root/build/bench/loadgen"
"$GO" build -trimpath -o "$loadgen" ./bench/loadgen

pin=() servers=""
if command -v taskset >/dev/null 2>&1 && [ "$(nproc --all)" -ge 2 ]; then
	pin=(taskset -c 1) servers=0
fi
cmd=("$loadgen" chaos -plugin "$plugin" -out "$out"
	-workers "${CHAOS_WORKERS:-16}" -rate "${CHAOS_RATE:-800}"
	-pre "${CHAOS_PRE:-3s}" -during "${CHAOS_DURING:-5s}" -post "${CHAOS_POST:-7s}"
	-slow "${CHAOS_SLOW:-250ms}" ${CHAOS_ONLY:+-only "$CHAOS_ONLY"})
say "chaos: ${cmd[*]#"$root/"}"
loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)
# Bounded: each scenario takes about 20 s; the whole run at most 15 minutes.
rc=0
LOADGEN_SERVER_CPUS=$servers timeout 900 "${pin[@]}" env GOMAXPROCS=1 "${cmd[@]}" >"$out/results.jsonl" || rc=$?
[ "$rc" = 0 ] || say "chaos: loadgen chaos exited $rc (results so far are reported)"
{
	echo "make chaos (= bench/chaos/run.sh; results in ${out#"$root/"}), $(date -u +%Y-%m-%d), $(nproc) cores, load average at start $loadavg_start, $SECONDS s in all"
	echo
	echo "Valid load: ${CHAOS_RATE:-800} connects/s offered by ${CHAOS_WORKERS:-16} workers (connect → CONNACK → DISCONNECT, MQTT 3.1.1, one user, sources in turn from 127.5.0.0/16), for ${CHAOS_PRE:-3s} + fault ${CHAOS_DURING:-5s} + ${CHAOS_POST:-7s}; a fresh Redis and broker (default options, files backend) per scenario. Missing: no CONNACK within 5 s or the socket closed. Time to recover: from the end of the fault to the end of the last attempt that was missing, refused or slower than ${CHAOS_SLOW:-250ms}."
	echo
	report_rc=0
	"$loadgen" chaosreport -results "$out/results.jsonl" || report_rc=$?
} >"$out/results.md" 2>"$out/report.err" || true
cat "$out/results.md"
if [ -s "$out/report.err" ]; then cat "$out/report.err" >&2; rc=1; fi
grep -q '"holds":false' "$out/results.jsonl" && rc=1
exit "$rc"
