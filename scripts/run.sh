#!/usr/bin/env bash
# make run: a local redis-server (own port, own data dir: never a Redis you
# already run) and mosquitto with the plugin on 127.0.0.1:1883, until Ctrl-C.
set -euo pipefail
plugin=${1:?usage: run.sh path/to/mosquitto_guard.so}
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${GUARD_RUN_DIR:-$root/build/run} # the README walk-through test runs it in its own
redis_port=${GUARD_RUN_REDIS_PORT:-6390}
mqtt_port=${GUARD_RUN_MQTT_PORT:-1883}
mkdir -p "$dir/redis"

busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$redis_port" "$mqtt_port"; do
	if busy "$p"; then
		echo "run: port 127.0.0.1:$p is already in use (another mosquitto or redis?)." >&2
		echo "run: stop it, or pick others: GUARD_RUN_MQTT_PORT=1884 GUARD_RUN_REDIS_PORT=6391 make run" >&2
		exit 1
	fi
done

# A demo password file, written by the real tool.
rm -f "$dir/passwd"
mosquitto_passwd -c -b "$dir/passwd" alice alice-secret >/dev/null
mosquitto_passwd -b "$dir/passwd" bob bob-secret >/dev/null
chmod 644 "$dir/passwd"

cat >"$dir/mosquitto.conf" <<CONF
# Written by make run; see mosquitto.conf.example for every option.
listener $mqtt_port 127.0.0.1
allow_anonymous false
user $(id -un)
log_dest stdout
log_type all
log_timestamp_format %H:%M:%S
auth_plugin $plugin
auth_opt_redis_addr 127.0.0.1:$redis_port
auth_opt_password_file $dir/passwd
auth_opt_fail_limit 3
auth_opt_fail_window 1m
auth_opt_ban_time 1m
auth_opt_ban_max 1h
CONF

redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir/redis" --save "" --appendonly no \
	--daemonize no --logfile "$dir/redis.log" &
redis_pid=$!
mosquitto_pid=""
stop() {
	trap - INT TERM EXIT
	echo
	echo "run: stopping mosquitto${mosquitto_pid:+ (pid $mosquitto_pid)} and redis-server (pid $redis_pid)"
	[ -n "$mosquitto_pid" ] && kill "$mosquitto_pid" 2>/dev/null || true
	kill "$redis_pid" 2>/dev/null || true
	wait 2>/dev/null || true
}
trap stop INT TERM EXIT
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

cat <<MSG
run: redis-server on 127.0.0.1:$redis_port (data in $dir/redis), mosquitto on 127.0.0.1:$mqtt_port
run: users alice / alice-secret and bob / bob-secret; Ctrl-C stops both.

Try, in another terminal:
  mosquitto_pub -h 127.0.0.1 -p $mqtt_port -u alice -P alice-secret -t demo -m hello    # accepted
  redis-cli -p $redis_port SET guard:block:username:alice "stolen laptop" EX 300        # ban alice for 5 minutes
  mosquitto_pub -h 127.0.0.1 -p $mqtt_port -u alice -P alice-secret -t demo -m hello    # refused: see the log line below
  redis-cli -p $redis_port DEL guard:block:username:alice                               # lift the ban
  for i in 1 2 3 4 5; do mosquitto_pub -h 127.0.0.1 -p $mqtt_port -u bob -P wrong -t demo -m x; done
  redis-cli -p $redis_port --scan --pattern 'guard:block:*'                             # 127.0.0.1 is banned for 1m
  redis-cli -p $redis_port TTL guard:block:ip:127.0.0.1
  redis-cli -p $redis_port DEL guard:block:ip:127.0.0.1                                 # lift it

MSG
# Line-buffered, so the log shows at once even when piped.
line=""; command -v stdbuf >/dev/null && line="stdbuf -oL"
$line mosquitto -c "$dir/mosquitto.conf" &
mosquitto_pid=$!
wait "$mosquitto_pid" || true
