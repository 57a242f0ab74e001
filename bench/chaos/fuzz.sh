#!/usr/bin/env bash
# make fuzz: every parser of client or operator input, under `go test -fuzz`,
# FUZZTIME (20s) each, one target per run (go test -fuzz takes one package and
# one target). Each target's committed seed corpus is in
# <package>/testdata/fuzz/<target>/ (plain `go test`, so make test, runs it
# too). A failing input is written there by go test: the table names it.
# Prints a markdown table; exits non-zero when a target fails.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
GO=${GO:-$(command -v go 2>/dev/null || echo /usr/local/go/bin/go)}
FUZZTIME=${FUZZTIME:-20s}
SECONDS=0

# package:target  what it reads
targets=(
	"./config:FuzzParse|option values (auth_opt_*), config.Parse"
	"./config:FuzzScanBrokerConfig|mosquitto.conf, read for acl_check auto"
	"./keys:FuzzParseIPKey|ip keys, keys.ParseIPKey"
	"./keys:FuzzParseCIDR|cidr keys, keys.ParseCIDR"
	"./keys:FuzzNormalizeIP|client addresses, keys.NormalizeIP"
	"./backends/hashes:FuzzVerify|stored password hashes"
	"./backends/files:FuzzParse|password file lines"
	"./store:FuzzConns|connection records in Redis"
	"./store:FuzzFinding|findings stream entries"
	"./store:FuzzConnEncode|connection records written (byte-identical to encoding/json)"
	"./store:FuzzConnDecode|connection records read (the fast path agrees with json.Unmarshal)"
	"./metrics:FuzzRequest|HTTP requests to the metrics endpoint (metrics_addr)"
)

out="$root/build/fuzz"
mkdir -p "$out"
rows=()
failed=0
for t in "${targets[@]}"; do
	spec=${t%%|*} what=${t#*|}
	pkg=${spec%%:*} fn=${spec##*:}
	p=${pkg#./}; log="$out/${p//\//_}-$fn.log"
	seeds=$(ls "$pkg/testdata/fuzz/$fn" 2>/dev/null | wc -l)
	printf '[%3ds] fuzz %s %s for %s\n' "$SECONDS" "$pkg" "$fn" "$FUZZTIME" >&2
	t0=$SECONDS
	# Bounded: -fuzztime, and timeout(1) around the whole run (compilation included).
	timeout 300 "$GO" test -run '^$' -fuzz "^$fn\$" -fuzztime "$FUZZTIME" "$pkg" >"$log" 2>&1
	rc=$?
	last=$(grep -o 'execs: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
	interesting=$(grep -o 'new interesting: [0-9]*' "$log" | tail -1 | cut -d' ' -f3)
	if [ "$rc" = 0 ]; then
		result=ok
	else
		failed=1
		new=$(grep -o "testdata/fuzz/$fn/[0-9a-f]*" "$log" | head -1)
		result="FAILED (rc $rc${new:+; input: $pkg/$new}; log: ${log#"$root/"})"
	fi
	rows+=("| \`$pkg\` | $fn | $what | $seeds | ${last:-?} | ${interesting:-?} | $((SECONDS - t0)) s | $result |")
done

echo
echo "make fuzz (FUZZTIME=$FUZZTIME each; go $("$GO" env GOVERSION); $(nproc) cores; $SECONDS s in all)"
echo
echo "| package | target | reads | committed seeds | execs | new interesting | wall | result |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit "$failed"
