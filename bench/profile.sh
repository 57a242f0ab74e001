#!/usr/bin/env bash
# make bench-profile: where the broker thread's work goes per CONNECT, in
# instructions (valgrind --tool=callgrind), which do not move with whatever
# else the machine runs: a0 (anonymous), noop (a plugin that accepts at
# once, bench/noop), b and b-off (the guard, one user
# reconnecting: verification cached), a' (password_file) and b', b'-off (the
# guard), PROFILE_USERS (2000) users each connecting once; b-metrics is b with
# metrics_addr set (what counting costs). PROFILE_ONLY="b b-metrics" runs those rows only. Kernel time (system
# calls, context switches) is not counted: the cost columns of make bench
# have it. Files in build/profile/<time>/. See bench/README.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
USERS=${PROFILE_USERS:-2000}
HIT=${PROFILE_HIT_DURATION:-15s}
# HIT_SRC: the reconnecting rows' source addresses (4 094), fewer than the
# first pass connects (about 1 000 a second under callgrind): see run.
# PROFILE_HIT_SRC sets another range: 127.1.0.0/29 (6 addresses). The
# workers still take the addresses in turn from one counter (a client ID
# does not keep its address), but 8 client IDs by 6 addresses are 48
# pairs, nearly all of which cgo's 1 024 slots keep interned with their
# parsed address (cstrings.go); the default's 8 by 4 094 make most
# CONNECTs a new (client ID, address) pair to them.
HIT_SRC=${PROFILE_HIT_SRC:-127.1.0.0/20}
# The range's host addresses, as loadgen hands them out (the all-zeros and
# all-ones hosts skipped, /30 or wider): the first pass must make at least
# as many CONNECTs, so that each measured one comes from a source seen.
if [[ ! $HIT_SRC =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+/([0-9]+)$ ]] || ((BASH_REMATCH[1] < 8 || BASH_REMATCH[1] > 30)); then
	echo "profile: PROFILE_HIT_SRC=$HIT_SRC: expected a 127.x.y.z/N range with N from 8 to 30" >&2
	exit 2
fi
HIT_HOSTS=$(((1 << (32 - BASH_REMATCH[1])) - 2))
ONLY=${PROFILE_ONLY:-} # rows to run, by name: "b b-metrics"; empty: all
# PROFILE_GUARD_ENV: environment of the guard's brokers only, e.g. "GOGC=50".
command -v valgrind >/dev/null || { echo "profile: valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
bench_setup profile

mosquitto_passwd -c -b "$out/passwd-1" bench bench-pw >/dev/null
"$loadgen" genpasswd -n "$USERS" -out "$out/passwd-n" -plain "$out/users-n.txt" >/dev/null
start_redis

# run label display kind passwd-file loadgen-args...: one broker under
# callgrind, counters zeroed once it is ready, dumped after the load.
args=()
run() {
	local label=$1 display=$2 kind=$3 pw=$4 port conf mp
	shift 4
	if [ -n "$ONLY" ] && [[ " $ONLY " != *" $display "* ]]; then return; fi
	port=$("$loadgen" freeport)
	conf="$out/$label.conf"
	{
		echo "listener $port 127.0.0.1"
		echo "user $(id -un)"
		echo "log_dest file $out/$label.log"
		case $kind in
		anon) echo "allow_anonymous true" ;;
		noop) echo "allow_anonymous false"; echo "auth_plugin $noop_plugin" ;;
		passwd) echo "allow_anonymous false"; echo "password_file $pw" ;;
		guard | guard-off | guard-metrics)
			echo "allow_anonymous false"
			echo "auth_plugin $root/build/mosquitto_guard.so"
			echo "auth_opt_redis_addr 127.0.0.1:$rport"
			echo "auth_opt_password_file $pw"
			[ "$kind" = guard-off ] && echo "auth_opt_clientid_conflict off"
			[ "$kind" = guard-metrics ] && echo "auth_opt_metrics_addr 127.0.0.1:$("$loadgen" freeport)"
			;;
		esac
	} >"$conf"
	redis-cli -p "$rport" FLUSHALL >/dev/null
	# Callgrind 3.19 fails an assertion on the Go runtime's preemption
	# signals: GODEBUG=asyncpreemptoff=1. It does not know RDTSCP either, which
	# the runtime's clock uses where the CPU has it (AMD EPYC here): cpu.rdtscp=off.
	local genv=()
	case $kind in guard*) [ -n "${PROFILE_GUARD_ENV:-}" ] && read -r -a genv <<<"$PROFILE_GUARD_ENV" ;; esac
	"${pin0[@]}" env GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off "${genv[@]}" valgrind --tool=callgrind --separate-threads=yes \
		--callgrind-out-file="$out/$label.cg.%p" mosquitto -c "$conf" >"$out/$label.valgrind.log" 2>&1 &
	mp=$!
	pids+=("$mp")
	for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
	if [ "$kind" != anon ] && [ "$kind" != passwd ] && [ "$kind" != noop ]; then
		"$loadgen" waitlog -file "$out/$label.log" -regex 'mosquitto-guard: replica loaded' -timeout 60s -pid "$mp" >/dev/null
	fi
	sleep 1
	# The rows of one user reconnecting (-duration) are measured as make
	# bench's paired slices run them from their second slice on: from
	# source addresses the broker has seen succeed. A first pass, before the
	# counters are zeroed, connects from the same addresses (loadgen takes
	# them from the range's start each run; HIT_SRC holds fewer than that
	# pass makes), so each measured CONNECT's (user, address) is a known
	# source, not a new one to record (1.3 k instructions on the broker
	# thread and 7 k on the plugin's goroutines per CONNECT, 2026-12-03).
	# The once rows' users each connect once: every source is new there.
	local src=127.1.0.0/16
	if [[ " $* " == *" -duration "* ]]; then
		src=$HIT_SRC
		timeout 900 "${pin1[@]}" env GOMAXPROCS=1 "$loadgen" connect -addr "127.0.0.1:$port" -label "$label-warm" -warmup 0s -workers 8 \
			-timeout 30s -src "$src" -redis "127.0.0.1:$rport" "$@" >"$out/$label.warm.json"
		local warm
		warm=$(grep -o '"accepted":[0-9]*' "$out/$label.warm.json" | cut -d: -f2)
		if [ "${warm:-0}" -lt "$HIT_HOSTS" ]; then
			echo "profile: $display: the first pass made ${warm:-0} CONNECTs, fewer than HIT_SRC's $HIT_HOSTS addresses ($HIT_SRC): raise PROFILE_HIT_DURATION" >&2
			exit 1
		fi
		sleep 1
	fi
	callgrind_control -z "$mp" >/dev/null
	timeout 900 "${pin1[@]}" env GOMAXPROCS=1 "$loadgen" connect -addr "127.0.0.1:$port" -label "$label" -warmup 0s -workers 8 \
		-timeout 30s -src "$src" -redis "127.0.0.1:$rport" "$@" >"$out/$label.json"
	callgrind_control -d "$mp" >/dev/null
	sleep 1
	stop "$mp"
	local n
	n=$(grep -o '"accepted":[0-9]*' "$out/$label.json" | cut -d: -f2)
	local files=("$out/$label.cg.$mp.1-01") f
	for f in "$out/$label.cg.$mp".1-0[2-9] "$out/$label.cg.$mp".1-[1-9][0-9]; do [ -f "$f" ] && files+=("$f"); done
	args+=("$display=$n:$(IFS=,; echo "${files[*]}")")
	echo "profile: $display: $n CONNECTs" >&2
}

hit=(-user bench -pass bench-pw -duration "$HIT" -id-prefix hit-)
once=(-users "$out/users-n.txt" -max-duration 900s -id-prefix once-)
run a0 a0 anon "" -duration "$HIT" -id-prefix anon-
run noop noop noop "" "${hit[@]}"
run b b guard "$out/passwd-1" "${hit[@]}"
run b-off b-off guard-off "$out/passwd-1" "${hit[@]}"
run b-metrics b-metrics guard-metrics "$out/passwd-1" "${hit[@]}"
run a10k "a'" passwd "$out/passwd-n" "${once[@]}"
run b10k "b'" guard "$out/passwd-n" "${once[@]}"
run b10k-off "b'-off" guard-off "$out/passwd-n" "${once[@]}"

{
	echo "## Instructions per CONNECT (callgrind), $(date -u +%Y-%m-%d), $(mosquitto -h 2>/dev/null | head -1)"
	echo
	echo "a0: anonymous; noop: a plugin that accepts the username and password at once (bench/noop); b, b-off: the guard, one user reconnecting ($HIT each; verification cached) from $HIT_SRC, every address seen in a first pass before the count; a', b', b'-off: $USERS users each connecting once (\$7\$, a miss each). 8 workers; user space only."
	echo
	"$loadgen" callgrind -top 25 "${args[@]}"
} | tee "$out/results.md"
