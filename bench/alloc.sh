#!/usr/bin/env bash
# make bench-alloc: what one CONNECT allocates on the Go heap, from the cgo
# boundary (guardBasicAuth, as plugin.c calls it) on a guard against a real
# redis-server: go test -bench BasicAuth -benchmem ./cgo, then, for each case,
# a memory profile of every allocation (-memprofilerate 1) and its top sites
# under guardBasicAuth (the broker thread) and elsewhere (the guard's
# goroutines). Files in build/alloc/<time>/. See bench/README.md.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
GO=${GO:-$(command -v go 2>/dev/null || echo /usr/local/go/bin/go)}
N=${ALLOC_N:-5000} # CONNECTs per case
scripts/deps.sh
out="$root/build/alloc/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
"$GO" test -c -o "$out/cgo.test" ./cgo
cd "$out"
# top PROFILE PPROF-FLAGS...: the first 25 rows of pprof -top.
top() {
	local prof=$1
	shift
	"$GO" tool pprof -top "$@" cgo.test "$prof" >top.txt 2>/dev/null || true
	awk '/flat%/ { p = 1 } p && n++ < 26' top.txt
}
{
	echo "## Allocations per CONNECT from the cgo boundary ($(date -u +%Y-%m-%d), $("$GO" version | cut -d' ' -f3))"
	echo
	echo '```'
	./cgo.test -test.run XXX -test.bench BasicAuth -test.benchmem -test.benchtime "${N}x" >bench.txt
	grep -E '^(Benchmark|goos|cpu)' bench.txt
	echo '```'
	for c in hit/clientid_conflict=off hit/clientid_conflict=flag miss/clientid_conflict=off miss/clientid_conflict=flag; do
		f=$(echo "$c" | tr '/=' '__')
		./cgo.test -test.run XXX -test.bench "BasicAuth/$c\$" -test.benchtime "${N}x" -test.memprofile "$f.mem" -test.memprofilerate 1 >/dev/null
		for idx in alloc_objects alloc_space; do
			echo
			echo "### $c: $idx under guardBasicAuth (the broker thread), about $N CONNECTs"
			echo
			echo '```'
			top "$f.mem" -sample_index="$idx" -focus=guardBasicAuth
			echo '```'
		done
		echo
		echo "### $c: alloc_space of the guard's goroutines (not under guardBasicAuth, nor the benchmark's setup)"
		echo
		echo '```'
		top "$f.mem" -sample_index=alloc_space -focus='mosquitto-guard/(plugin|conflicts|store|ratelimit)|go-redis' \
			-ignore='guardBasicAuth|newAuthBench|plugin\.New|testenv'
		echo '```'
	done
	for c in held/clientid_conflict=off held/clientid_conflict=flag; do
		f=$(echo "$c" | tr '/=' '__')
		BENCH_HEAP_PROFILE="$out/$f.heap" ./cgo.test -test.run XXX -test.bench "BasicAuth/$c\$" -test.benchtime "${N}x" -test.memprofilerate 1 >/dev/null
		echo
		echo "### $c: inuse_space with $N connections held (the benchmark's own setup included: its guard, Redis client, password file)"
		echo
		echo '```'
		top "$f.heap" -sample_index=inuse_space
		echo '```'
	done
} | tee results.md
