#!/usr/bin/env bash
# bench/syscalls.sh: the broker thread's system calls per CONNECT, by kind,
# for noop (a plugin that accepts at once, bench/noop) and b, b-off (the
# guard, one user reconnecting from 62 addresses: verification cached), counted by the
# kernel's tracepoints (perf stat -t on the broker's main thread), which
# cost the thread little, unlike strace. It answers what callgrind (make
# bench-profile, user space only) cannot: whether the guard's share of the
# broker thread's time is system calls (Go's runtime waking threads from the
# callback) or its instructions. Also the thread's user and system CPU per
# CONNECT (/proc/<pid>/task/<pid>/stat, 10 ms ticks: a guide, not a
# measure; make bench has the measure). Needs perf (apt-get install
# linux-perf) and root or perf_event_paranoid -1.
#
# SYSCALLS_ONLY="b" runs those rows; SYSCALLS_DURATION (8s) each row's load.
# Files in build/syscalls/<time>/.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
DUR=${SYSCALLS_DURATION:-8s}
ONLY=${SYSCALLS_ONLY:-}
command -v perf >/dev/null || { echo "syscalls: perf is needed (apt-get install linux-perf)" >&2; exit 1; }
bench_setup syscalls

mosquitto_passwd -c -b "$out/passwd-1" bench bench-pw >/dev/null
start_redis

events=raw_syscalls:sys_enter,syscalls:sys_enter_futex,syscalls:sys_enter_rt_sigprocmask,syscalls:sys_enter_epoll_wait,sched:sched_switch
# 62 addresses, all seen in the first pass: 8 client IDs by 62 addresses are
# 496 pairs, which cgo's 1 024 interned slots keep (profile.sh); and enough
# source ports (a /29's six addresses run out of them within a minute of
# these rates, TIME_WAIT holding each for 60 s, and connect() then burns
# the load generator's CPU searching for a free one).
src=127.1.0.0/26
echo "| row | CONNECTs | system calls per CONNECT | futex | rt_sigprocmask | epoll_wait | context switches | thread user µs | thread system µs |" >"$out/results.md"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|" >>"$out/results.md"
run() { # label kind
	local label=$1 kind=$2 port conf mp
	if [ -n "$ONLY" ] && [[ " $ONLY " != *" $label "* ]]; then return; fi
	port=$("$loadgen" freeport)
	conf="$out/$label.conf"
	{
		echo "listener $port 127.0.0.1"
		echo "user $(id -un)"
		echo "log_dest file $out/$label.log"
		echo "allow_anonymous false"
		case $kind in
		noop) echo "auth_plugin $noop_plugin" ;;
		guard | guard-off)
			echo "auth_plugin $root/build/mosquitto_guard.so"
			echo "auth_opt_redis_addr 127.0.0.1:$rport"
			echo "auth_opt_password_file $out/passwd-1"
			[ "$kind" = guard-off ] && echo "auth_opt_clientid_conflict off"
			;;
		esac
	} >"$conf"
	redis-cli -p "$rport" FLUSHALL >/dev/null
	"${pin0[@]}" mosquitto -c "$conf" >"$out/$label.out" 2>&1 &
	mp=$!
	pids+=("$mp")
	for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
	if [ "$kind" != noop ]; then
		"$loadgen" waitlog -file "$out/$label.log" -regex 'mosquitto-guard: replica loaded' -timeout 60s -pid "$mp" >/dev/null
	fi
	local lg=("${pin1[@]}" env GOMAXPROCS=1 "$loadgen" connect -addr "127.0.0.1:$port" -warmup 0s -workers 8 -timeout 30s
		-src "$src" -redis "127.0.0.1:$rport" -user bench -pass bench-pw -id-prefix hit-)
	timeout 300 "${lg[@]}" -label "$label-warm" -duration 3s >"$out/$label.warm.json" # every source seen
	sleep 1
	local u0 s0 u1 s1 tps
	tps=$(getconf CLK_TCK)
	perf stat -x, -t "$mp" -e "$events" -o "$out/$label.perf.csv" &
	local pp=$!
	pids+=("$pp")
	sleep 1 # perf attached before the load (its few idle calls meanwhile are in the counts)
	read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$mp/task/$mp/stat")
	timeout 300 "${lg[@]}" -label "$label" -duration "$DUR" >"$out/$label.json"
	kill -INT "$pp" 2>/dev/null || { echo "syscalls: $label: perf stat ended before the load did (see $out/$label.perf.csv)" >&2; exit 1; }
	wait "$pp" || true
	read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$mp/task/$mp/stat")
	stop "$mp"
	local n
	n=$(grep -o '"accepted":[0-9]*' "$out/$label.json" | cut -d: -f2)
	# Every event counted, as a number: perf writes "<not counted>" or
	# "<not supported>" where it could not, which awk would read as 0.
	awk -F, -v n="$n" -v label="$label" -v du="$((u1 - u0))" -v ds="$((s1 - s0))" -v tps="$tps" '
		$3 ~ /:/ && $1 !~ /^[0-9]+$/ { print "syscalls: " label ": perf did not count " $3 ": " $1 > "/dev/stderr"; bad = 1 }
		$3 ~ /sys_enter$/ { all = $1; k++ } $3 ~ /futex/ { fx = $1; k++ } $3 ~ /sigprocmask/ { sm = $1; k++ }
		$3 ~ /epoll_wait/ { ew = $1; k++ } $3 ~ /sched_switch/ { cs = $1; k++ }
		END {
			if (bad || k != 5 || n < 1) { if (k != 5) print "syscalls: " label ": " k " of 5 events in perf stat'"'"'s output" > "/dev/stderr"; exit 1 }
			printf "| %s | %d | %.2f | %.3f | %.2f | %.2f | %.3f | %.1f | %.1f |\n", label, n, all/n, fx/n, sm/n, ew/n, cs/n, du*1e6/tps/n, ds*1e6/tps/n }' \
		"$out/$label.perf.csv" >>"$out/results.md"
	echo "syscalls: $label: $n CONNECTs" >&2
}

run noop noop
run b guard
run b-off guard-off
{
	echo
	echo "The broker thread of each row (perf stat -t, tracepoints), $(date -u +%Y-%m-%d), $(mosquitto -h 2>/dev/null | head -1): one user reconnecting from $src for $DUR after a first pass of 3 s, 8 workers. The thread's user and system µs come from 10 ms ticks."
} >>"$out/results.md"
cat "$out/results.md"
