#!/usr/bin/env bash
# make soak: SOAK_N (1 000 000) distinct client IDs each connecting once to a
# broker with the plugin and its own Redis (on loopback; servers on core 0,
# the load generator on core 1), then SOAK_HOLD (5 000) more kept connected a
# moment; the broker's RSS and Redis's used_memory are sampled along the way
# and set against the bounds README.md states. Files in build/soak/<time>/.
# Bounded: the connect phase by SOAK_MAX (20m), the whole run by timeout.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
GO=${GO:-$(command -v go 2>/dev/null || echo /usr/local/go/bin/go)}
N=${SOAK_N:-1000000}
HOLD=${SOAK_HOLD:-5000}
scripts/deps.sh
make --no-print-directory build GO="$GO" >&2
out="$root/build/soak/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
loadgen="$root/build/bench/loadgen"
"$GO" build -trimpath -o "$loadgen" ./bench/loadgen
pin=() servers=""
if command -v taskset >/dev/null 2>&1 && [ "$(nproc --all)" -ge 2 ]; then
	pin=(taskset -c 1) servers=0
fi
# Each held connection and each worker is a file descriptor on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
SECONDS=0
cmd=("$loadgen" soak -plugin "$root/build/mosquitto_guard.so" -out "$out" -n "$N" -hold "$HOLD" -max-duration "${SOAK_MAX:-20m}")
printf 'make soak SOAK_N=%s (= bench/chaos/soak.sh; results in %s), %s, %s cores\n\n' "$N" "${out#"$root/"}" "$(date -u +%Y-%m-%d)" "$(nproc)" | tee "$out/results.md"
LOADGEN_SERVER_CPUS=$servers timeout 1800 "${pin[@]}" env GOMAXPROCS=1 "${cmd[@]}" | tee -a "$out/results.md"
