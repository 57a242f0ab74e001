#!/usr/bin/env bash
# Installs the system packages mosquitto-guard builds, runs and tests with,
# when they are missing: quick when everything is present.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have mosquitto || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
[ -f /usr/include/mosquitto_broker.h ] || need+=(mosquitto-dev)
[ -f /usr/include/mosquitto.h ] || need+=(libmosquitto-dev)
have mosquitto_passwd || need+=(mosquitto)
have mosquitto_pub || need+=(mosquitto-clients)
have redis-server || need+=(redis-server)
have redis-cli || need+=(redis-tools)
have gcc || need+=(gcc)
# The tests make their CA, server and client certificates with openssl.
have openssl || need+=(openssl)
# make deb: dpkg-shlibdeps computes the libc6 dependency; strip (binutils,
# with gcc). The package's test checks it with lintian and groff (groff-base,
# a dependency of lintian's man-db).
have dpkg-shlibdeps || need+=(dpkg-dev)
have strip || need+=(binutils)
have lintian || need+=(lintian)
have groff || need+=(groff-base)
# The README walk-through test runs its commands on a terminal with script.
have script || need+=(bsdutils)
# The listen_backlog tests read listeners' queues with ss and run a broker in
# a network namespace of its own (ip, sysctl, unshare).
have ss || need+=(iproute2)
have ip || need+=(iproute2)
have sysctl || need+=(procps)
have unshare || need+=(util-linux)

if [ ${#need[@]} -eq 0 ]; then
	exit 0
fi
# Unique names, in order.
mapfile -t need < <(printf '%s\n' "${need[@]}" | awk '!seen[$0]++')
sudo=""
if [ "$(id -u)" != 0 ]; then
	sudo="sudo"
fi
echo "deps: installing ${need[*]} with apt-get${sudo:+ (through sudo)}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${need[@]}"
