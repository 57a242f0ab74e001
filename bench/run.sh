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
# measurement), BENCH_NOISE_RETRIES (2: repeats of a measurement above it).
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

say "bench: make build"
make --no-print-directory build GO="$GO" >&2
plugin="$root/build/mosquitto_guard.so"
[ -f "$plugin" ] || die "no $plugin after make build"
out="$root/build/bench/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
loadgen="$root/build/bench/loadgen"
"$GO" build -trimpath -o "$loadgen" ./bench/loadgen
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
start_redis redis-main
R1=127.0.0.1:$REDIS_PORT R1_PORT=$REDIS_PORT R1_PID=$REDIS_PID
start_redis redis-keys
R2=127.0.0.1:$REDIS_PORT R2_PORT=$REDIS_PORT R2_PID=$REDIS_PID
say "bench: redis-server $R1 (pid $R1_PID) and $R2 (pid $R2_PID, the block keys), on core 0"

# --- password files ---------------------------------------------------------
pw1="$out/passwd-1"
mosquitto_passwd -c -b "$pw1" bench bench-pw >/dev/null
chmod 644 "$pw1"
pw10k="$out/passwd-10k"
users10k="$out/users-10k.txt"
say "bench: $USERS users in mosquitto_passwd's \$7\$ format"
"$loadgen" genpasswd -n "$USERS" -out "$pw10k" -plain "$users10k" >>"$results"

# Keys: 100 000 for (c) in the second Redis; one range banning the flood's
# source addresses in the first.
say "bench: $KEYS block keys ($RANGES ranges) into $R2"
lg loadkeys keys 300 -label keys -redis "$R2" -n "$KEYS" -ranges "$RANGES" -flush >/dev/null
redis-cli -p "$R1_PORT" SET guard:block:cidr:127.2.0.0/16 "bench: flood source" >/dev/null

# --- brokers -------------------------------------------------------------
# kind: anon | passwd FILE | guard FILE REDIS. Logging: mosquitto's default
# log_type (error, warning, notice, information), to a file, the same for all.
REPLICA=unknown # does the plugin log "replica loaded"? learnt from the first guard broker
nbroker=0
start_broker() { # name kind [file] [redis] -> BROKER_PID BROKER_ADDR BROKER_LOG
	local name=$1 kind=$2 file=${3:-} redis=${4:-} port conf
	nbroker=$((nbroker + 1))
	port=$("$loadgen" freeport)
	conf="$out/brokers/$nbroker-$name.conf"
	BROKER_LOG="$out/brokers/$nbroker-$name.log"
	mkdir -p "$out/brokers"
	{
		echo "listener $port 127.0.0.1"
		echo "user $(id -un)"
		echo "log_dest file $BROKER_LOG"
		case $kind in
		anon) echo "allow_anonymous true" ;;
		passwd) echo "allow_anonymous false"; echo "password_file $file" ;;
		guard | guard-off)
			echo "allow_anonymous false"
			echo "auth_plugin $plugin"
			echo "auth_opt_redis_addr $redis"
			echo "auth_opt_password_file $file"
			[ "$kind" = guard-off ] && echo "auth_opt_clientid_conflict off"
			;;
		esac
	} >"$conf"
	BROKER_T0=$(date +%s%N)
	taskset -c 0 mosquitto -c "$conf" >>"$BROKER_LOG.stderr" 2>&1 &
	BROKER_PID=$!
	pids+=("$BROKER_PID")
	BROKER_ADDR=127.0.0.1:$port
	wait_port "$port" "$BROKER_PID" || die "mosquitto $name did not start: $(tail -5 "$BROKER_LOG" "$BROKER_LOG.stderr" 2>/dev/null)"
	if [ "$kind" = guard ] || [ "$kind" = guard-off ]; then
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
stop_broker() {
	stop_pid "$BROKER_PID"
	# A saturated broker logs ~3 lines per connection: keep the ends only.
	if [ -f "$BROKER_LOG" ] && [ "$(wc -l <"$BROKER_LOG")" -gt 400 ]; then
		{ head -n 200 "$BROKER_LOG"; echo "... (cut by bench/run.sh) ..."; tail -n 200 "$BROKER_LOG"; } >"$BROKER_LOG.cut"
		mv "$BROKER_LOG.cut" "$BROKER_LOG"
	fi
}

connect() { # label round [loadgen connect flags...]: on the broker just started
	local label=$1 round=$2 redis_pid=${REDIS_OF_BROKER:-}
	shift 2
	local pidsflag="broker=$BROKER_PID"
	[ -n "$redis_pid" ] && pidsflag="$pidsflag,redis=$redis_pid"
	LG_APPEND=no lg connect "$label" 180 -addr "$BROKER_ADDR" -label "$label" -round "$round" -workers "$WORKERS" \
		-warmup "$WARMUP" -duration "$DURATION" -pids "$pidsflag" "$@" >/dev/null
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
	REDIS_OF_BROKER=""
	case $label in
	a0) start_broker a0 anon
		connect a0 "$round" -src 127.1.0.0/16 -id-prefix a0- ;;
	a) start_broker a passwd "$pw1"
		connect a "$round" -src 127.1.0.0/16 -id-prefix a- -user bench -pass bench-pw ;;
	b) start_broker b guard "$pw1" "$R1"; REDIS_OF_BROKER=$R1_PID
		connect b "$round" -src 127.1.0.0/16 -id-prefix b- -user bench -pass bench-pw ;;
	b-off) start_broker b-off guard-off "$pw1" "$R1"; REDIS_OF_BROKER=$R1_PID
		connect b-off "$round" -src 127.1.0.0/16 -id-prefix b- -user bench -pass bench-pw ;;
	c) start_broker c guard "$pw1" "$R2"; REDIS_OF_BROKER=$R2_PID
		connect c "$round" -src 127.1.0.0/16 -id-prefix c- -user bench -pass bench-pw ;;
	flood-a) start_broker flood-a passwd "$pw1"
		connect flood-a "$round" -src 127.2.0.0/16 -id-prefix flood- -user bench -pass wrong-pw -expect refuse ;;
	flood-b) start_broker flood-b guard "$pw1" "$R1"; REDIS_OF_BROKER=$R1_PID
		connect flood-b "$round" -src 127.2.0.0/16 -id-prefix flood- -user bench -pass wrong-pw -expect refuse ;;
	a10k) start_broker a10k passwd "$pw10k"
		connect a10k "$round" -src 127.1.0.0/16 -id-prefix 10k- -users "$users10k" -max-duration 60s ;;
	b10k) start_broker b10k guard "$pw10k" "$R1"; REDIS_OF_BROKER=$R1_PID
		connect b10k "$round" -src 127.1.0.0/16 -id-prefix 10k- -users "$users10k" -max-duration 60s ;;
	b10k-off) start_broker b10k-off guard-off "$pw10k" "$R1"; REDIS_OF_BROKER=$R1_PID
		connect b10k-off "$round" -src 127.1.0.0/16 -id-prefix 10k- -users "$users10k" -max-duration 60s ;;
	esac
	stop_broker
}

# --- connection rates, interleaved ----------------------------------------
say "bench: $ROUNDS rounds of a0, a, b, b-off, c, flood-a, flood-b; $WORKERS workers, $WARMUP warm-up + $DURATION each; a fresh broker for each"
for r in $(seq "$ROUNDS"); do
	for s in a0 a b b-off c flood-a flood-b; do scenario "$s" "$r"; done
done
say "bench: $ROUNDS rounds of a', b': $USERS users connecting once each"
for r in $(seq "$ROUNDS"); do
	for s in a10k b10k b10k-off; do scenario "$s" "$r"; done
done
[ "$REPLICA" = yes ] && say "bench: the plugin logs 'replica loaded': brokers were measured after it"

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

# --- the table ---------------------------------------------------------------
setup="Load: $WORKERS concurrent workers, each connect → CONNACK → DISCONNECT in a loop (MQTT 3.1.1, clean session, one client ID per worker; per user in a'/b'), \
source addresses taken in turn from 127.1.0.0/16 (floods: 127.2.0.0/16); $WARMUP warm-up, then $DURATION measured (a'/b': until each of the $USERS users has connected once); \
$ROUNDS rounds, interleaved (a0, a, b, c, flood-a, flood-b, then again; then a', b' likewise), medians reported; a fresh broker for every run. \
Brokers log with mosquitto's default log_type, to a file. mosquitto-guard runs with its default options; its Redis is on core 0 with the broker."
"$loadgen" report -results "$results" -command "make bench   (= bench/run.sh; results in ${out#"$root/"})" \
	-runtime "$SECONDS" -loadavg-start "$loadavg_start" -setup "$setup" -retried "$retried" -noise-max "$NOISE_MAX" \
	-users "$USERS" -keys "$KEYS" -ranges "$RANGES" >"$out/results.md"
{
	echo
	echo "Load generator commands (first of each kind; paths relative to the repository):"
	echo
	echo '```'
	cat "$commands"
	echo '```'
} >>"$out/results.md"
cat "$out/results.md"
