#!/usr/bin/env bash
# make bench: mosquitto alone vs mosquitto with mosquitto-guard, side by side
# in one run, on loopback. Starts its own redis-servers and brokers (free
# ports, own directories; never a Redis or broker you already run), pinned to
# core 0; the load generator runs on core 1 with GOMAXPROCS=1. Prints a
# markdown table; everything (JSON lines, logs, the table) is kept in
# build/bench/<time>/. See bench/README.md.
#
# Knobs (environment): BENCH_ROUNDS (3), BENCH_WARMUP (1s), BENCH_DURATION (5s),
# BENCH_WORKERS (32), BENCH_USERS (10000), BENCH_KEYS (100000), BENCH_RANGES
# (10000), BENCH_MEM_KEYS (1000000), BENCH_MEM_RANGES (100000),
# BENCH_PROP_TRIALS (50), BENCH_KICK_TRIALS (20), BENCH_LOAD_WAIT (60),
# BENCH_NOISE_MAX (25: % of a core other processes may take during a
# measurement), BENCH_NOISE_RETRIES (2: repeats of a measurement above it),
# BENCH_STORM_N (10000: devices of the reconnect storm), BENCH_STORM_ROUNDS
# (BENCH_ROUNDS), BENCH_CONNS (8000: live connections of the memory row),
# BENCH_PAIRS (10: paired slices of a0, a0-cred, noop, b, b-off, b-noyield; 0: none), BENCH_PAIR_DURATION (2s),
# BENCH_MISS_PAIRS (6: paired slices of a', b', b'-off; 0: none), BENCH_MISS_PAIR_USERS (5000: users
# each connecting once per slice), BENCH_ALLOC (1: the allocation benchmark of cgo/, 0: skipped), BENCH_ONLY
# ("": everything; "storm": only the reconnect storm, as make bench-storm;
# "memory": only the memory row, e.g. with BENCH_GUARD_ENV="GOGC=50";
# "pairs": only the paired slices, e.g. BENCH_PAIRS=4).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
SECONDS=0
loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)

ROUNDS=${BENCH_ROUNDS:-3}
WARMUP=${BENCH_WARMUP:-1s}
DURATION=${BENCH_DURATION:-5s}
WORKERS=${BENCH_WORKERS:-32}
USERS=${BENCH_USERS:-10000}
KEYS=${BENCH_KEYS:-100000}
RANGES=${BENCH_RANGES:-10000}
MEM_KEYS=${BENCH_MEM_KEYS:-1000000}
MEM_RANGES=${BENCH_MEM_RANGES:-100000}
PROP_TRIALS=${BENCH_PROP_TRIALS:-50}
KICK_TRIALS=${BENCH_KICK_TRIALS:-20}
LOAD_WAIT=${BENCH_LOAD_WAIT:-60}
NOISE_MAX=${BENCH_NOISE_MAX:-25}
NOISE_RETRIES=${BENCH_NOISE_RETRIES:-2}
STORM_N=${BENCH_STORM_N:-10000}
STORM_ROUNDS=${BENCH_STORM_ROUNDS:-$ROUNDS}
CONNS=${BENCH_CONNS:-8000}
ALLOC=${BENCH_ALLOC:-1}
ONLY=${BENCH_ONLY:-}
PAIRS=${BENCH_PAIRS:-10}
PAIR_DURATION=${BENCH_PAIR_DURATION:-2s}
MISS_PAIRS=${BENCH_MISS_PAIRS:-6}
MISS_PAIR_USERS=${BENCH_MISS_PAIR_USERS:-5000}
case $ONLY in "" | storm | memory | pairs) ;; *) echo "BENCH_ONLY: \"\", storm, memory or pairs, not $ONLY" >&2; exit 2 ;; esac
GO=${GO:-$(command -v go 2>/dev/null || echo /usr/local/go/bin/go)}

say() { printf '[%3ds] %s\n' "$SECONDS" "$*" >&2; }
die() { say "bench: $*"; exit 1; }

# --- what it needs --------------------------------------------------------
scripts/deps.sh
if ! command -v taskset >/dev/null 2>&1; then
	say "bench: installing util-linux (taskset)"
	sudo=""; [ "$(id -u)" != 0 ] && sudo=sudo
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q util-linux
fi
command -v timeout >/dev/null 2>&1 || die "timeout (coreutils) is missing"
cores=$(nproc --all)
[ "$cores" -ge 2 ] || die "needs 2 cores (broker on core 0, load generator on core 1); this machine has $cores"
# A held connection is a descriptor in the broker and one in the load
# generator (Go raises its own soft limit to the hard one): room for the
# storm's devices or the memory row's, whichever is more, and some spare.
need_fds=$(((STORM_N > CONNS ? STORM_N : CONNS) + 1000))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need_fds" ]; then
	[ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$need_fds" ] && { ulimit -Hn "$need_fds" 2>/dev/null || true; }
	ulimit -n "$need_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
fds=$(ulimit -n)
if [ "$fds" != unlimited ] && [ "$fds" -lt "$need_fds" ]; then
	max_n=$((fds - 1000))
	[ "$max_n" -ge 100 ] || die "open files limit $fds: too low for the storm and memory rows (raise ulimit -n)"
	say "bench: open files limit $fds (the hard limit; raising it needs CAP_SYS_RESOURCE): storm and memory rows cut to $max_n devices"
	STORM_N=$((STORM_N < max_n ? STORM_N : max_n))
	CONNS=$((CONNS < max_n ? CONNS : max_n))
fi

say "bench: make build"
make --no-print-directory build GO="$GO" >&2
plugin="$root/build/mosquitto_guard.so"
[ -f "$plugin" ] || die "no $plugin after make build"
out="$root/build/bench/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
loadgen="$root/build/bench/loadgen"
"$GO" build -trimpath -o "$loadgen" ./bench/loadgen
# The paired slices' floor: a plugin that accepts everything (bench/noop).
noop_plugin="$root/build/bench/noop_plugin.so"
gcc -O2 -Wall -Wextra -Werror -shared -fPIC -o "$noop_plugin" bench/noop/noop_plugin.c
results="$out/results.jsonl"
discarded="$out/results-discarded.jsonl"
retried=0
commands="$out/commands.txt"
: >"$results"
: >"$discarded"
: >"$commands"

# --- processes: started here, stopped here, by PID ------------------------
pids=()
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	for p in "${pids[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
	done
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget() { # drop $1 from pids
	local keep=() p
	for p in "${pids[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done
	pids=("${keep[@]}")
}

stop_pid() {
	local p=$1
	kill -TERM "$p" 2>/dev/null || true
	for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$p" 2>/dev/null || true
	wait "$p" 2>/dev/null || true
	forget "$p"
}

wait_port() { # port pid: up to 10 s
	local i
	for i in $(seq 200); do
		kill -0 "$2" 2>/dev/null || return 1
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.05
	done
	return 1
}

# lg: the load generator, on core 1, one Go thread, bounded in time. Its
# JSON line is left in LG_LINE and goes to the results (unless LG_APPEND=no);
# the first command of each kind is recorded.
declare -A recorded=()
lg() {
	local kind=$1 label=$2 bound=$3
	shift 3
	local cmd=(timeout "$bound" taskset -c 1 env GOMAXPROCS=1 "$loadgen" "$kind" "$@")
	if [ -z "${recorded[$kind/$label]:-}" ]; then
		recorded[$kind/$label]=1
		printf '%s\n' "${cmd[*]}" | sed "s|$root/||g" >>"$commands"
	fi
	LG_LINE=$("${cmd[@]}") || { say "bench: loadgen $kind $label failed"; return 1; }
	[ "${LG_APPEND:-yes}" = yes ] && printf '%s\n' "$LG_LINE" >>"$results"
	return 0
}

# --- Redis ----------------------------------------------------------------
start_redis() { # name -> sets REDIS_PORT REDIS_PID
	local name=$1 port
	port=$("$loadgen" freeport)
	mkdir -p "$out/$name"
	taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
		--dir "$out/$name" --logfile "$out/$name/redis.log" --daemonize no &
	REDIS_PID=$!
	pids+=("$REDIS_PID")
	REDIS_PORT=$port
	wait_port "$port" "$REDIS_PID" || die "redis-server $name did not start: $(tail -5 "$out/$name/redis.log")"
}
start_redis redis-storm
R3=127.0.0.1:$REDIS_PORT R3_PORT=$REDIS_PORT R3_PID=$REDIS_PID
if [ "$ONLY" = pairs ]; then
	start_redis redis-main
	R1=127.0.0.1:$REDIS_PORT R1_PORT=$REDIS_PORT R1_PID=$REDIS_PID
	say "bench: redis-server $R1 (pid $R1_PID), on core 0"
elif [ -z "$ONLY" ]; then
	start_redis redis-main
	R1=127.0.0.1:$REDIS_PORT R1_PORT=$REDIS_PORT R1_PID=$REDIS_PID
	start_redis redis-keys
	R2=127.0.0.1:$REDIS_PORT R2_PORT=$REDIS_PORT R2_PID=$REDIS_PID
	say "bench: redis-server $R1 (pid $R1_PID), $R2 (pid $R2_PID, the block keys) and $R3 (pid $R3_PID, storm and memory rows), on core 0"
fi

# --- password files ---------------------------------------------------------
if [ -z "$ONLY" ] || [ "$ONLY" = pairs ]; then
	pw1="$out/passwd-1"
	mosquitto_passwd -c -b "$pw1" bench bench-pw >/dev/null
	chmod 644 "$pw1"
fi
if [ -z "$ONLY" ]; then
	pw10k="$out/passwd-10k"
	users10k="$out/users-10k.txt"
	say "bench: $USERS users in mosquitto_passwd's \$7\$ format"
	"$loadgen" genpasswd -n "$USERS" -out "$pw10k" -plain "$users10k" >>"$results"
fi
# users_for N: a password file and its user:password list of at least N
# users (the $USERS of a'/b' when enough) -> USERS_PW USERS_PLAIN
users_for() {
	if [ -z "$ONLY" ] && [ "$1" -le "$USERS" ]; then
		USERS_PW=$pw10k USERS_PLAIN=$users10k
		return
	fi
	USERS_PW="$out/passwd-$1" USERS_PLAIN="$out/users-$1.txt"
	if [ ! -f "$USERS_PW" ]; then
		say "bench: $1 users in mosquitto_passwd's \$7\$ format"
		"$loadgen" genpasswd -n "$1" -out "$USERS_PW" -plain "$USERS_PLAIN" >/dev/null
	fi
}

if [ -z "$ONLY" ]; then
	# Keys: 100 000 for (c) in the second Redis; one range banning the flood's
	# source addresses in the first.
	say "bench: $KEYS block keys ($RANGES ranges) into $R2"
	lg loadkeys keys 300 -label keys -redis "$R2" -n "$KEYS" -ranges "$RANGES" -flush >/dev/null
fi
if [ -z "$ONLY" ] || [ "$ONLY" = pairs ]; then
	redis-cli -p "$R1_PORT" SET guard:block:cidr:127.2.0.0/16 "bench: flood source" >/dev/null
fi

# --- brokers -------------------------------------------------------------
# kind: anon | passwd FILE | guard FILE REDIS. Logging: mosquitto's default
# log_type (error, warning, notice, information), to a file, the same for all.
# A guard broker's environment: BENCH_GUARD_ENV, then BROKER_EXTRA_ENV (a
# shell variable, not exported, set around one call, see run_pairs).
REPLICA=unknown # does the plugin log "replica loaded"? learnt from the first guard broker
nbroker=0
BROKER_EXTRA_ENV=""
start_broker() { # name kind [file] [redis] -> BROKER_PID BROKER_ADDR BROKER_LOG BROKER_CONF
	local name=$1 kind=$2 file=${3:-} redis=${4:-} port conf
	nbroker=$((nbroker + 1))
	port=$("$loadgen" freeport)
	conf="$out/brokers/$nbroker-$name.conf"
	BROKER_CONF=$conf
	BROKER_LOG="$out/brokers/$nbroker-$name.log"
	mkdir -p "$out/brokers"
	{
		echo "listener $port 127.0.0.1"
		echo "user $(id -un)"
		echo "log_dest file $BROKER_LOG"
		case $kind in
		anon) echo "allow_anonymous true" ;;
		noop) echo "allow_anonymous false"; echo "auth_plugin $noop_plugin" ;;
		passwd) echo "allow_anonymous false"; echo "password_file $file" ;;
		guard | guard-off | guard-q100)
			echo "allow_anonymous false"
			echo "auth_plugin $plugin"
			echo "auth_opt_redis_addr $redis"
			echo "auth_opt_password_file $file"
			[ "$kind" = guard-off ] && echo "auth_opt_clientid_conflict off"
			[ "$kind" = guard-q100 ] && echo "auth_opt_listen_backlog 0"
			;;
		esac
	} >"$conf"
	BROKER_T0=$(date +%s%N)
	BROKER_ENV=()
	case $kind in guard*) [ -n "${BENCH_GUARD_ENV:-}" ] && read -r -a BROKER_ENV <<<"$BENCH_GUARD_ENV" ;; esac
	if [ -n "${BROKER_EXTRA_ENV:-}" ]; then
		local extra_env=()
		read -r -a extra_env <<<"$BROKER_EXTRA_ENV"
		BROKER_ENV+=("${extra_env[@]}")
	fi
	taskset -c 0 env "${BROKER_ENV[@]}" mosquitto -c "$conf" >>"$BROKER_LOG.stderr" 2>&1 &
	BROKER_PID=$!
	pids+=("$BROKER_PID")
	BROKER_ADDR=127.0.0.1:$port
	wait_port "$port" "$BROKER_PID" || die "mosquitto $name did not start: $(tail -5 "$BROKER_LOG" "$BROKER_LOG.stderr" 2>/dev/null)"
	if [ "$kind" != anon ] && [ "$kind" != passwd ] && [ "$kind" != noop ]; then
		local w
		w=$("$loadgen" waitlog -file "$BROKER_LOG" -regex 'mosquitto-guard: ready' -timeout "${READY_WAIT:-10s}" -pid "$BROKER_PID")
		case $w in *'"found":true'*) ;; *) die "mosquitto-guard did not report ready: $(tail -5 "$BROKER_LOG")" ;; esac
		# With a replica, measure only once it is loaded.
		local bound=2s
		[ "$REPLICA" = yes ] && bound=30s
		if [ "$REPLICA" != no ]; then
			w=$("$loadgen" waitlog -file "$BROKER_LOG" -regex 'mosquitto-guard: replica loaded' -timeout "$bound" -pid "$BROKER_PID")
			case $w in
			*'"found":true'*) REPLICA=yes ;;
			*) if [ "$REPLICA" = unknown ]; then REPLICA=no; else say "bench: $name: no 'replica loaded' within $bound"; fi ;;
			esac
		fi
	fi
}
# restart_broker: the broker just started, stopped by PID and started again
# with the same configuration (same port); its new PID is written to $1
# before it starts.
restart_broker() { # pidfile
	stop_pid "$BROKER_PID"
	taskset -c 0 env "${BROKER_ENV[@]}" mosquitto -c "$BROKER_CONF" >>"$BROKER_LOG.stderr" 2>&1 &
	BROKER_PID=$!
	echo "$BROKER_PID" >"$1"
	pids+=("$BROKER_PID")
	wait_port "${BROKER_ADDR##*:}" "$BROKER_PID" || die "mosquitto did not start again: $(tail -5 "$BROKER_LOG" "$BROKER_LOG.stderr" 2>/dev/null)"
}
stop_broker() {
	stop_pid "$BROKER_PID"
	# A saturated broker logs ~3 lines per connection: keep the ends only.
	if [ -f "$BROKER_LOG" ] && [ "$(wc -l <"$BROKER_LOG")" -gt 400 ]; then
		{ head -n 200 "$BROKER_LOG"; echo "... (cut by bench/run.sh) ..."; tail -n 200 "$BROKER_LOG"; } >"$BROKER_LOG.cut"
		mv "$BROKER_LOG.cut" "$BROKER_LOG"
	fi
}

connect() { # label round [loadgen connect flags...]: on the broker just started
	local label=$1 round=$2 redis_pid=${REDIS_OF_BROKER:-} redis_flag=()
	shift 2
	local pidsflag="broker=$BROKER_PID"
	[ -n "$redis_pid" ] && pidsflag="$pidsflag,redis=$redis_pid"
	[ -n "${REDIS_ADDR_OF_BROKER:-}" ] && redis_flag=(-redis "$REDIS_ADDR_OF_BROKER")
	LG_APPEND=no lg connect "$label" 180 -addr "$BROKER_ADDR" -label "$label" -round "$round" -workers "$WORKERS" \
		-warmup "$WARMUP" -duration "$DURATION" -pids "$pidsflag" "${redis_flag[@]}" "$@" >/dev/null
}

# scenario: one measurement, on a fresh broker. When other processes took more
# than NOISE_MAX % of a core meanwhile (the machine is shared), it is measured
# again, each time on a fresh broker, at most NOISE_RETRIES more times, and
# the quietest attempt is kept; the others go to results-discarded.jsonl.
scenario() { # label round
	local label=$1 round=$2 try best="" best_other="" other
	for try in $(seq $((NOISE_RETRIES + 1))); do
		measure "$label" "$round"
		other=$(printf '%s' "$LG_LINE" | grep -o '"other":[0-9.]*' | cut -d: -f2)
		other=${other:-0}
		if [ -z "$best" ] || awk -v a="$other" -v b="$best_other" 'BEGIN { exit !(a < b) }'; then
			[ -n "$best" ] && printf '%s\n' "$best" >>"$discarded"
			best=$LG_LINE best_other=$other
		else
			printf '%s\n' "$LG_LINE" >>"$discarded"
		fi
		awk -v a="$best_other" -v m="$NOISE_MAX" 'BEGIN { exit !(a <= m) }' && break
		if [ "$try" -le "$NOISE_RETRIES" ]; then
			say "bench: $label round $round: other processes took ${other}% of a core meanwhile; measuring again"
			retried=$((retried + 1))
		fi
	done
	printf '%s\n' "$best" >>"$results"
}

measure() { # label round
	local label=$1 round=$2
	REDIS_OF_BROKER="" REDIS_ADDR_OF_BROKER=""
	case $label in
	a0) start_broker a0 anon
		connect a0 "$round" -src 127.1.0.0/16 -id-prefix a0- ;;
	a) start_broker a passwd "$pw1"
		connect a "$round" -src 127.1.0.0/16 -id-prefix a- -user bench -pass bench-pw ;;
	b) start_broker b guard "$pw1" "$R1"; REDIS_OF_BROKER=$R1_PID REDIS_ADDR_OF_BROKER=$R1
		connect b "$round" -src 127.1.0.0/16 -id-prefix b- -user bench -pass bench-pw ;;
	b-off) start_broker b-off guard-off "$pw1" "$R1"; REDIS_OF_BROKER=$R1_PID REDIS_ADDR_OF_BROKER=$R1
		connect b-off "$round" -src 127.1.0.0/16 -id-prefix b- -user bench -pass bench-pw ;;
	c) start_broker c guard "$pw1" "$R2"; REDIS_OF_BROKER=$R2_PID REDIS_ADDR_OF_BROKER=$R2
		connect c "$round" -src 127.1.0.0/16 -id-prefix c- -user bench -pass bench-pw ;;
	flood-a) start_broker flood-a passwd "$pw1"
		connect flood-a "$round" -src 127.2.0.0/16 -id-prefix flood- -user bench -pass wrong-pw -expect refuse ;;
	flood-b) start_broker flood-b guard "$pw1" "$R1"; REDIS_OF_BROKER=$R1_PID REDIS_ADDR_OF_BROKER=$R1
		connect flood-b "$round" -src 127.2.0.0/16 -id-prefix flood- -user bench -pass wrong-pw -expect refuse ;;
	a10k) start_broker a10k passwd "$pw10k"
		connect a10k "$round" -src 127.1.0.0/16 -id-prefix 10k- -users "$users10k" -max-duration 60s ;;
	b10k) start_broker b10k guard "$pw10k" "$R1"; REDIS_OF_BROKER=$R1_PID REDIS_ADDR_OF_BROKER=$R1
		connect b10k "$round" -src 127.1.0.0/16 -id-prefix 10k- -users "$users10k" -max-duration 60s ;;
	b10k-off) start_broker b10k-off guard-off "$pw10k" "$R1"; REDIS_OF_BROKER=$R1_PID REDIS_ADDR_OF_BROKER=$R1
		connect b10k-off "$round" -src 127.1.0.0/16 -id-prefix 10k- -users "$users10k" -max-duration 60s ;;
	esac
	stop_broker
}

# --- the reconnect storm -----------------------------------------------------
# storm: STORM_N devices, each its own user and client ID, held connected to a
# fresh broker; then the broker is stopped by PID and started again on the
# same port, and every device reconnects at once (loadgen fleet -mode storm:
# bounded jittered backoff, see bench/README.md). The guard's Redis is
# emptied first, so every round starts alike.
STORM_BOUND=$((600 + STORM_N / 100))
storm() { # label round
	local label=$1 round=$2 dir="$out/storm" lgpid rc=0
	local ready="$dir/ready-$1-$2" pidf="$dir/pid-$1-$2" tmp="$dir/$1-$2.json"
	mkdir -p "$dir"
	redis-cli -p "$R3_PORT" FLUSHALL >/dev/null
	case $label in
	storm-a) start_broker "$label" passwd "$USERS_PW" ;;
	storm-b) start_broker "$label" guard "$USERS_PW" "$R3" ;;
	storm-b-off) start_broker "$label" guard-off "$USERS_PW" "$R3" ;;
	storm-b-q100) start_broker "$label" guard-q100 "$USERS_PW" "$R3" ;;
	esac
	local fixed="broker=$BROKER_PID" redisflag=()
	case $label in storm-b*) fixed="$fixed,redis=$R3_PID" redisflag=(-redis "$R3") ;; esac
	local cmd=(timeout "$STORM_BOUND" taskset -c 1 env GOMAXPROCS=1 "$loadgen" fleet -mode storm -addr "$BROKER_ADDR"
		-users "$USERS_PLAIN" -n "$STORM_N" -id-prefix storm- -src 127.5.0.0/16 -label "$label" -round "$round"
		-pids "$fixed" "${redisflag[@]}" -settle 300ms -ready-file "$ready" -pid-file "$pidf")
	if [ -z "${recorded[fleet/$label]:-}" ]; then
		recorded[fleet/$label]=1
		printf '%s\n' "${cmd[*]}" | sed "s|$root/||g" >>"$commands"
	fi
	"${cmd[@]}" >"$tmp" &
	lgpid=$!
	pids+=("$lgpid")
	while [ ! -f "$ready" ] && kill -0 "$lgpid" 2>/dev/null; do sleep 0.05; done
	if [ -f "$ready" ]; then
		# What the guard asks of Redis during the storm, by command (kept
		# beside the results; the table counts them in total).
		case $label in storm-b*) redis-cli -p "$R3_PORT" CONFIG RESETSTAT >/dev/null ;; esac
		restart_broker "$pidf"
	fi
	wait "$lgpid" || rc=$?
	case $label in storm-b*) redis-cli -p "$R3_PORT" INFO commandstats >"$dir/commandstats-$label-$round.txt" ;; esac
	forget "$lgpid"
	stop_broker
	[ "$rc" = 0 ] || die "loadgen fleet $label round $round failed (exit $rc)"
	cat "$tmp" >>"$results"
}
run_storms() {
	users_for "$STORM_N"
	say "bench: $STORM_ROUNDS rounds of the reconnect storm: $STORM_N devices on password_file, the guard, the guard with tracking off, the guard with Mosquitto's listen backlog"
	for r in $(seq "$STORM_ROUNDS"); do
		for s in storm-a storm-b storm-b-off storm-b-q100; do storm "$s" "$r"; done
	done
}

# --- memory per connection --------------------------------------------------
# The broker's VmRSS idle and holding CONNS live idle connections (each its
# own user and client ID), without the plugin (password_file) and with it
# (the same file, auth_opt_password_file), and with it but its heap's
# release after a burst off (MOSQUITTO_GUARD_NO_RELEASE=1: the baseline of
# cgo/heaprelease.go).
run_memory() {
	users_for "$CONNS"
	say "bench: memory per connection: $CONNS connections held, mosquitto password_file vs the guard"
	for s in mem-a mem-b mem-b-norelease; do
		redis-cli -p "$R3_PORT" FLUSHALL >/dev/null
		case $s in
		mem-a) start_broker "$s" passwd "$USERS_PW" ;;
		mem-b) start_broker "$s" guard "$USERS_PW" "$R3" ;;
		mem-b-norelease)
			BROKER_EXTRA_ENV=MOSQUITTO_GUARD_NO_RELEASE=1
			start_broker "$s" guard "$USERS_PW" "$R3"
			BROKER_EXTRA_ENV=""
			;;
		esac
		lg fleet "$s" 600 -mode hold -addr "$BROKER_ADDR" -users "$USERS_PLAIN" -n "$CONNS" -id-prefix mem- -src 127.6.0.0/16 \
			-label "$s" -pids "broker=$BROKER_PID" -settle 2s >/dev/null
		stop_broker
	done
}

# --- cache hits in paired slices ------------------------------------------
# a0, b, b-off and b-noyield (b with MOSQUITTO_GUARD_NO_YIELD=1: the yield
# of cgo/yield.go off) on four brokers started once and kept running (the
# guards on R1), measured in turn for PAIR_DURATION each after a 0.5 s
# warm-up, the order reversed every other pair: a ratio of two slices a few
# seconds apart cancels the drift of a shared machine's speed (loadgen
# report_pairs.go). Two references go beside them, not judged: a0-cred,
# anonymous Mosquitto whose clients send b's username and password (what
# Mosquitto spends on them itself), and noop, Mosquitto with a plugin that
# accepts them at once (bench/noop: what calling any plugin costs).
run_pairs() {
	[ "$PAIRS" -gt 0 ] || return 0
	local labels="a0 a0-cred noop b b-off b-noyield"
	say "bench: cache hits in $PAIRS paired slices: $labels kept running, $PAIR_DURATION each in turn"
	local -A addr=() pid=() log=()
	local l i order
	start_broker pair-a0 anon
	addr[a0]=$BROKER_ADDR pid[a0]=$BROKER_PID log[a0]=$BROKER_LOG
	start_broker pair-a0-cred anon
	addr[a0-cred]=$BROKER_ADDR pid[a0-cred]=$BROKER_PID log[a0-cred]=$BROKER_LOG
	start_broker pair-noop noop
	addr[noop]=$BROKER_ADDR pid[noop]=$BROKER_PID log[noop]=$BROKER_LOG
	start_broker pair-b guard "$pw1" "$R1"
	addr[b]=$BROKER_ADDR pid[b]=$BROKER_PID log[b]=$BROKER_LOG
	start_broker pair-b-off guard-off "$pw1" "$R1"
	addr[b-off]=$BROKER_ADDR pid[b-off]=$BROKER_PID log[b-off]=$BROKER_LOG
	BROKER_EXTRA_ENV=MOSQUITTO_GUARD_NO_YIELD=1
	start_broker pair-b-noyield guard "$pw1" "$R1"
	BROKER_EXTRA_ENV=""
	addr[b-noyield]=$BROKER_ADDR pid[b-noyield]=$BROKER_PID log[b-noyield]=$BROKER_LOG
	for i in $(seq "$PAIRS"); do
		order=$labels
		[ $((i % 2)) = 0 ] && order=$(printf '%s\n' $labels | tac | tr '\n' ' ')
		for l in $order; do
			local pidsflag="broker=${pid[$l]}" extra=(-user bench -pass bench-pw)
			case $l in
			a0) extra=() ;;
			b*) pidsflag="$pidsflag,redis=$R1_PID" extra+=(-redis "$R1") ;;
			esac
			LG_APPEND=no lg connect "pair-$l" 60 -addr "${addr[$l]}" -label "pair-$l" -round "$i" -workers "$WORKERS" \
				-warmup 0.5s -duration "$PAIR_DURATION" -pids "$pidsflag" -src 127.1.0.0/16 -id-prefix "pair-$l-" "${extra[@]}" >/dev/null &&
				printf '%s\n' "$LG_LINE" >>"$results"
		done
	done
	for l in $labels; do
		BROKER_PID=${pid[$l]} BROKER_LOG=${log[$l]} stop_broker
	done
}

# --- cache misses in paired slices -----------------------------------------
# a', b' and b'-off (as the rounds below: password_file, the guard, the
# guard without tracking) on three brokers started once and kept running,
# each measured in turn on the same MISS_PAIR_USERS users connecting once
# (a slice of its own for each pair, so that every CONNECT is a miss on each
# broker), the order reversed every other pair: as for the cache hits, a
# ratio of two slices a few seconds apart cancels the drift of a shared
# machine's speed, which b' / b'-off measured on fresh brokers tens of
# seconds apart does not (0.91 to 1.39 over the runs of 2026-12-02 and -03).
run_miss_pairs() {
	[ "$MISS_PAIRS" -gt 0 ] || return 0
	local labels="a10k b10k b10k-off" n=$((MISS_PAIRS * MISS_PAIR_USERS))
	users_for "$n"
	local pw=$USERS_PW plain=$USERS_PLAIN
	say "bench: cache misses in $MISS_PAIRS paired slices: a', b', b'-off kept running, $MISS_PAIR_USERS users each connecting once per slice"
	local -A addr=() pid=() log=()
	local l i order slice
	start_broker pair-a10k passwd "$pw"
	addr[a10k]=$BROKER_ADDR pid[a10k]=$BROKER_PID log[a10k]=$BROKER_LOG
	start_broker pair-b10k guard "$pw" "$R1"
	addr[b10k]=$BROKER_ADDR pid[b10k]=$BROKER_PID log[b10k]=$BROKER_LOG
	start_broker pair-b10k-off guard-off "$pw" "$R1"
	addr[b10k-off]=$BROKER_ADDR pid[b10k-off]=$BROKER_PID log[b10k-off]=$BROKER_LOG
	for i in $(seq "$MISS_PAIRS"); do
		slice="$out/users-miss-pair-$i.txt"
		sed -n "$(((i - 1) * MISS_PAIR_USERS + 1)),$((i * MISS_PAIR_USERS))p" "$plain" >"$slice"
		order=$labels
		[ $((i % 2)) = 0 ] && order=$(printf '%s\n' $labels | tac | tr '\n' ' ')
		for l in $order; do
			local pidsflag="broker=${pid[$l]}" extra=()
			case $l in b*) pidsflag="$pidsflag,redis=$R1_PID" extra=(-redis "$R1") ;; esac
			LG_APPEND=no lg connect "pair-$l" 120 -addr "${addr[$l]}" -label "pair-$l" -round "$i" -workers "$WORKERS" \
				-warmup 0.5s -pids "$pidsflag" -src 127.1.0.0/16 -id-prefix "pair-$l-$i-" -users "$slice" -max-duration 60s "${extra[@]}" >/dev/null &&
				printf '%s\n' "$LG_LINE" >>"$results"
		done
	done
	for l in $labels; do
		BROKER_PID=${pid[$l]} BROKER_LOG=${log[$l]} stop_broker
	done
}

if [ -z "$ONLY" ]; then
# --- connection rates, interleaved ----------------------------------------
say "bench: $ROUNDS rounds of a0, a, b, b-off, c, flood-a, flood-b; $WORKERS workers, $WARMUP warm-up + $DURATION each; a fresh broker for each"
for r in $(seq "$ROUNDS"); do
	for s in a0 a b b-off c flood-a flood-b; do scenario "$s" "$r"; done
done
run_pairs
say "bench: $ROUNDS rounds of a', b': $USERS users connecting once each"
for r in $(seq "$ROUNDS"); do
	for s in a10k b10k b10k-off; do scenario "$s" "$r"; done
done
run_miss_pairs
[ "$REPLICA" = yes ] && say "bench: the plugin logs 'replica loaded': brokers were measured after it"

run_memory

run_storms

# --- ban propagation and kick ---------------------------------------------
say "bench: ban propagation ($PROP_TRIALS trials) and kick ($KICK_TRIALS trials)"
start_broker prop guard "$pw1" "$R1"
lg propagation propagation 180 -addr "$BROKER_ADDR" -redis "$R1" -user bench -pass bench-pw -trials "$PROP_TRIALS" -src 127.3.0.0/16 >/dev/null
lg kick kick 180 -addr "$BROKER_ADDR" -redis "$R1" -user bench -pass bench-pw -trials "$KICK_TRIALS" -src 127.4.0.0/16 >/dev/null
stop_broker

# --- memory and load time with 1M keys ------------------------------------
say "bench: the plugin's RSS with an empty Redis"
redis-cli -p "$R2_PORT" FLUSHALL >/dev/null
start_broker mem-empty guard "$pw1" "$R2"
lg waitlog replica-empty 30 -label replica-empty -file "$BROKER_LOG" -regex 'mosquitto-guard: replica loaded ([0-9]+) keys in ([^ ]+)' \
	-timeout 3s -pid "$BROKER_PID" >/dev/null
sleep 1
lg procmem rss-empty 10 -label rss-empty -pid "$BROKER_PID" >/dev/null
stop_broker
say "bench: $MEM_KEYS block keys ($MEM_RANGES ranges) into $R2"
lg loadkeys keys-mem 300 -label keys-mem -redis "$R2" -n "$MEM_KEYS" -ranges "$MEM_RANGES" -flush >/dev/null
say "bench: the plugin with $MEM_KEYS keys: waiting up to ${LOAD_WAIT}s for 'replica loaded'"
REPLICA=no READY_WAIT=${LOAD_WAIT}s start_broker mem-1m guard "$pw1" "$R2"
lg waitlog replica-1m $((LOAD_WAIT + 10)) -label replica-1m -file "$BROKER_LOG" -regex 'mosquitto-guard: replica loaded ([0-9]+) keys in ([^ ]+)' \
	-timeout "${LOAD_WAIT}s" -pid "$BROKER_PID" -t0 "$BROKER_T0" >/dev/null
sleep 1
lg procmem rss-1m 10 -label rss-1m -pid "$BROKER_PID" >/dev/null
sleep 5
lg procmem rss-1m-later 10 -label rss-1m-later -pid "$BROKER_PID" >/dev/null
stop_broker
stop_pid "$R1_PID"
stop_pid "$R2_PID"
elif [ "$ONLY" = storm ]; then
	run_storms
elif [ "$ONLY" = pairs ]; then
	run_pairs
	run_miss_pairs
	stop_pid "$R1_PID"
else
	run_memory
fi
stop_pid "$R3_PID"

# --- allocations on the decision path -------------------------------------------
alloc_flag=()
if [ -z "$ONLY" ] && [ "$ALLOC" = 1 ]; then
	say "bench: allocations per CONNECT: go test -run XXX -bench BasicAuth -benchmem ./cgo"
	echo "$GO test -count=1 -run XXX -bench BasicAuth -benchmem -benchtime 2000x ./cgo" >>"$commands"
	if "$GO" test -count=1 -run XXX -bench BasicAuth -benchmem -benchtime 2000x ./cgo >"$out/alloc.txt" 2>&1; then
		alloc_flag=(-alloc "$out/alloc.txt")
	else
		say "bench: the allocation benchmark failed: $(tail -3 "$out/alloc.txt")"
	fi
fi

# --- the table ---------------------------------------------------------------
setup="Load: $WORKERS concurrent workers, each connect → CONNACK → DISCONNECT in a loop (MQTT 3.1.1, clean session, one client ID per worker; per user in a'/b'), \
source addresses taken in turn from 127.1.0.0/16 (floods: 127.2.0.0/16); $WARMUP warm-up, then $DURATION measured (a'/b': until each of the $USERS users has connected once); \
$ROUNDS rounds, interleaved (a0, a, b, c, flood-a, flood-b, then again; then a', b' likewise), medians reported; a fresh broker for every run. \
Brokers log with mosquitto's default log_type, to a file. mosquitto-guard runs with its default options; its Redis is on core 0 with the broker."
[ "$ONLY" = storm ] && setup="The reconnect storm alone (BENCH_ONLY=storm): $STORM_N devices, $STORM_ROUNDS rounds. \
Brokers log with mosquitto's default log_type, to a file. mosquitto-guard runs with its default options; its Redis is on core 0 with the broker."
[ -n "${BENCH_GUARD_ENV:-}" ] && setup="$setup The guard's brokers ran with the environment $BENCH_GUARD_ENV."
command="make bench   (= bench/run.sh; results in ${out#"$root/"})"
[ "$ONLY" = memory ] && setup="The memory row alone (BENCH_ONLY=memory): $CONNS connections held. mosquitto-guard runs with its default options."
[ "$ONLY" = memory ] && command="BENCH_ONLY=memory bench/run.sh   (results in ${out#"$root/"})"
[ "$ONLY" = pairs ] && setup="The paired slices alone (BENCH_ONLY=pairs): $PAIRS pairs of a0, a0-cred, noop, b, b-off, b-noyield, $WORKERS workers, $PAIR_DURATION each; $MISS_PAIRS pairs of a', b', b'-off, $MISS_PAIR_USERS users each connecting once per slice. \
Brokers log with mosquitto's default log_type, to a file. mosquitto-guard runs with its default options; its Redis is on core 0 with the broker."
[ "$ONLY" = pairs ] && [ -n "${BENCH_GUARD_ENV:-}" ] && setup="$setup The guard's brokers ran with the environment $BENCH_GUARD_ENV."
[ "$ONLY" = pairs ] && command="BENCH_ONLY=pairs BENCH_PAIRS=$PAIRS BENCH_MISS_PAIRS=$MISS_PAIRS bench/run.sh   (results in ${out#"$root/"})"
[ "$ONLY" = storm ] && command="make bench-storm   (= BENCH_ONLY=storm BENCH_STORM_N=$STORM_N bench/run.sh; results in ${out#"$root/"})"
"$loadgen" report -results "$results" -command "$command" \
	-runtime "$SECONDS" -loadavg-start "$loadavg_start" -setup "$setup" -retried "$retried" -noise-max "$NOISE_MAX" \
	-users "$USERS" -keys "$KEYS" -ranges "$RANGES" "${alloc_flag[@]}" >"$out/results.md"
{
	echo
	echo "Load generator commands (first of each kind; paths relative to the repository):"
	echo
	echo '```'
	cat "$commands"
	echo '```'
} >>"$out/results.md"
cat "$out/results.md"
