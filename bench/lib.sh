# bench/lib.sh: what bench/profile.sh and bench/syscalls.sh share, sourced
# after `set -euo pipefail`. bench_setup NAME builds the plugin, the load
# generator and the noop plugin (bench/noop: a plugin that accepts every
# username and password at once, what calling any plugin costs the broker
# thread), makes build/NAME/<time>/ (out), and sets the CPU pins (pin0:
# the brokers and Redis; pin1: the load generator). Every process started
# goes in pids and is stopped by PID at exit (cleanup) or by stop.
# start_redis starts the redis-server of the run on a free port (rport).

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
GO=${GO:-$(command -v go 2>/dev/null || echo /usr/local/go/bin/go)}

bench_setup() { # name
	scripts/deps.sh
	make --no-print-directory build GO="$GO" >&2
	out="$root/build/$1/$(date +%Y%m%d-%H%M%S)"
	mkdir -p "$out"
	loadgen="$root/build/bench/loadgen"
	"$GO" build -trimpath -o "$loadgen" ./bench/loadgen
	noop_plugin="$root/build/bench/noop_plugin.so"
	gcc -O2 -Wall -Wextra -Werror -shared -fPIC -o "$noop_plugin" bench/noop/noop_plugin.c
	pin0=() pin1=()
	if command -v taskset >/dev/null && [ "$(nproc --all)" -ge 2 ]; then pin0=(taskset -c 0) pin1=(taskset -c 1); fi
}

pids=()
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do
		for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
	done
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop() { # pid
	kill -TERM "$1" 2>/dev/null || true
	for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

start_redis() {
	rport=$("$loadgen" freeport)
	"${pin0[@]}" redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$out" \
		--logfile "$out/redis.log" --daemonize no &
	pids+=($!)
	for _ in $(seq 100); do redis-cli -p "$rport" PING >/dev/null 2>&1 && break; sleep 0.1; done
}
