#!/usr/bin/env bash
# Builds the Debian package of mosquitto-guard with dpkg-deb alone (no
# debhelper): stages the file tree, writes DEBIAN/, runs dpkg-deb.
#
#   packaging/build-deb.sh PLUGIN GUARDCTL OUTDIR
#
# PLUGIN and GUARDCTL are the built binaries (make build's build/ outputs);
# they are copied and stripped, never rebuilt. Prints the path of
# OUTDIR/mosquitto-guard_<version>_<arch>.deb on its last line.
#
# Version: from git (see debian_version); DEB_VERSION overrides it.
# Maintainer: DEB_MAINTAINER overrides the default below.
# Timestamps: SOURCE_DATE_EPOCH, by default the last commit's time, for every
# mtime, the man page's date and changelog entry: the same commit and the same
# binaries give the same package.
# Needs: git, go, dpkg-deb, dpkg-shlibdeps (dpkg-dev), strip and readelf (binutils), gzip.
set -euo pipefail

if [ $# -ne 3 ]; then
	echo "usage: $0 PLUGIN GUARDCTL OUTDIR" >&2
	exit 2
fi
plugin=$(realpath "$1")
guardctl=$(realpath "$2")
out=$(realpath "$3")
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"
GO=${GO:-go}

name=mosquitto-guard
maintainer=${DEB_MAINTAINER:-"mosquitto-guard maintainers <maintainers@users.noreply.r-seed-489ef958.example>"}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
export LC_ALL=C TZ=UTC
umask 022

die() {
	echo "build-deb: $*" >&2
	exit 1
}

# debian_version turns git describe into a Debian version, revision -1:
# on a tag vX.Y.Z: X.Y.Z-1; N commits after it: X.Y.Z+git<date>.<time>.<hash>-1;
# with no tag: 0.0~git<date>.<time>.<hash>-1 (the commit's UTC date and time,
# so that two builds of one day still sort by age).
debian_version() {
	local hash stamp tag upstream
	hash=$(git rev-parse --short=7 HEAD)
	stamp=$(git log -1 --format=%cd --date=format-local:%Y%m%d.%H%M%S)
	if tag=$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null); then
		upstream=${tag#v}
		if [ "$(git rev-list --count "$tag..HEAD")" != 0 ]; then
			upstream="$upstream+git$stamp.$hash"
		fi
	else
		upstream="0.0~git$stamp.$hash"
	fi
	[[ $upstream =~ ^[0-9][A-Za-z0-9.+~]*$ ]] || die "tag $tag does not make a Debian version ($upstream)"
	echo "$upstream-1"
}
version=${DEB_VERSION:-$(debian_version)}
arch=$(dpkg --print-architecture)

# The binaries must be for this architecture: their GOARCH, in Debian's names.
for bin in "$plugin" "$guardctl"; do
	goarch=$("$GO" version -m "$bin" | awk '$1 == "build" && $2 ~ /^GOARCH=/ { sub(/^GOARCH=/, "", $2); print $2 }')
	case $goarch in
	386) goarch=i386 ;;
	arm) goarch=armhf ;;
	ppc64le) goarch=ppc64el ;;
	mips64le) goarch=mips64el ;;
	esac
	[ "$goarch" = "$arch" ] || die "$bin is built for ${goarch:-an unknown GOARCH}, dpkg's architecture is $arch"
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# dpkg-shlibdeps wants the debhelper layout: debian/control, debian/<package>.
pkg=$stage/debian/$name
doc=$pkg/usr/share/doc/$name
install -d "$pkg/DEBIAN" "$pkg/usr/lib/$name" "$pkg/usr/bin" "$pkg/etc/mosquitto/conf.d" \
	"$doc/examples" "$pkg/usr/share/man/man1" "$pkg/usr/share/lintian/overrides"

# Binaries, stripped as dh_strip strips them.
install -m 0644 "$plugin" "$pkg/usr/lib/$name/mosquitto_guard.so"
install -m 0755 "$guardctl" "$pkg/usr/bin/guardctl"
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
	"$pkg/usr/lib/$name/mosquitto_guard.so" "$pkg/usr/bin/guardctl"

install -m 0644 packaging/guard.conf "$pkg/etc/mosquitto/conf.d/guard.conf"
install -m 0644 mosquitto.conf.example "$doc/examples/mosquitto.conf.example"
install -m 0644 packaging/lintian-overrides "$pkg/usr/share/lintian/overrides/$name"
gzip -9n <README.md >"$doc/README.md.gz"
sed -e "s/@VERSION@/$version/g" -e "s/@DATE@/$(date -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)/g" \
	packaging/guardctl.1 | gzip -9n >"$pkg/usr/share/man/man1/guardctl.1.gz"

# changelog.Debian: one entry, this build.
{
	echo "$name ($version) unstable; urgency=medium"
	echo
	echo "  * Built from git commit $(git rev-parse HEAD)."
	echo
	echo " -- $maintainer  $(date -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.Debian.gz"

# license_paragraph prints the License field of a DEP-5 Files paragraph for
# the licence text in file $1: a short name, then the text, or a pointer to
# /usr/share/common-licenses where Debian keeps it.
license_paragraph() {
	local f=$1 short
	if grep -q 'Apache License' "$f" && grep -q 'Version 2.0' "$f"; then
		printf 'License: Apache-2.0\n On Debian systems the full text of the Apache License 2.0 is in\n /usr/share/common-licenses/Apache-2.0.\n'
		return
	elif grep -q 'Mozilla Public License' "$f" && grep -q 'Version 2.0' "$f"; then
		printf 'License: MPL-2.0\n On Debian systems the full text of the Mozilla Public License 2.0 is in\n /usr/share/common-licenses/MPL-2.0.\n'
		return
	elif grep -q 'Permission is hereby granted, free of charge' "$f"; then
		short=Expat
	elif grep -q 'Redistribution and use in source and binary forms' "$f"; then
		if grep -q 'Neither the name' "$f"; then short=BSD-3-clause; else short=BSD-2-clause; fi
	else
		return 1
	fi
	echo "License: $short"
	sed -e 's/[[:space:]]*$//' -e 's/^$/./' -e 's/^/ /' "$f"
}

# copyright_holders prints the first real "Copyright ..." line of file $1,
# or $2 when there is none.
copyright_holders() {
	local line
	line=$(grep -m1 -E '^[[:space:]]*Copyright[[:space:]]+(\(c\)[[:space:]]+)?[0-9]' "$1" | sed -E 's/^[[:space:]]*Copyright[[:space:]]+(\(c\)[[:space:]]+)?//' || true)
	echo "${line:-$2}"
}

# The copyright file: the project's paragraphs, then one per Go module linked
# into the binaries (as their build information lists them, at the version
# this tree's go.mod selects) and one for the Go standard library.
{
	cat packaging/copyright
	goversion=$("$GO" version -m "$guardctl" | awk 'NR == 1 { print $2 }')
	goroot=$("$GO" env GOROOT)
	echo
	echo "Files: GOROOT/src/*"
	echo "Copyright: $(copyright_holders "$goroot/LICENSE" "The Go Authors")"
	echo "Comment: The Go standard library and runtime ($goversion), linked into both binaries."
	license_paragraph "$goroot/LICENSE" || die "cannot tell the licence of $goroot/LICENSE"
	mods=$({ "$GO" version -m "$plugin"; "$GO" version -m "$guardctl"; } |
		awk '$1 == "dep" { print $2, $3 } $1 == "=>" { die = 1 } END { exit die }' | sort -u) ||
		die "a binary was built with a replaced module (=> in go version -m); its licence cannot be looked up"
	while read -r mod ver; do
		dir=$("$GO" list -m -f '{{.Version}} {{.Dir}}' "$mod") || die "module $mod is not in go.mod"
		[ "${dir%% *}" = "$ver" ] || die "$mod: the binaries have $ver, go.mod selects ${dir%% *}: rebuild them (make build)"
		dir=${dir#* }
		lic=$(ls "$dir"/LICEN[CS]E* "$dir"/COPYING* 2>/dev/null | head -n1) || true
		[ -n "$lic" ] || die "module $mod $ver has no LICENSE file in $dir"
		echo
		echo "Files: $mod/*"
		echo "Copyright: $(copyright_holders "$lic" "The $mod authors")"
		if [ -f "$dir/NOTICE" ]; then
			echo "Comment: Go module $mod $ver. Its NOTICE file:"
			sed -e 's/[[:space:]]*$//' -e 's/^$/./' -e 's/^/ /' "$dir/NOTICE"
		else
			echo "Comment: Go module $mod $ver."
		fi
		license_paragraph "$lic" || die "cannot tell the licence of $mod from $lic: teach license_paragraph in $0"
	done <<<"$mods"
} >"$doc/copyright"
chmod 0644 "$doc/copyright"

# Depends: libc6 as dpkg-shlibdeps finds it (from libc6's symbols file, the
# versions that introduced the symbols the binaries use), and the broker.
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$name" "$name" >"$stage/debian/control"
shlibs=$(cd "$stage" && dpkg-shlibdeps -O "-e$pkg/usr/bin/guardctl" "-e$pkg/usr/lib/$name/mosquitto_guard.so")
shlibs=${shlibs#shlibs:Depends=}
[[ $shlibs == libc6* ]] || die "dpkg-shlibdeps: unexpected dependencies: $shlibs"
# The plugin's relative relocations are packed (make's -z
# pack-relative-relocs: 1.4 MB less to map), which needs the loader of glibc
# 2.36 (GLIBC_ABI_DT_RELR). That is a version needed without a symbol, which
# dpkg-shlibdeps does not see: raise its floor.
command -v readelf >/dev/null || die "readelf (binutils) not found: it tells whether the plugin needs glibc 2.36"
if readelf -V "$pkg/usr/lib/$name/mosquitto_guard.so" | grep -q 'Name: GLIBC_ABI_DT_RELR'; then
	[[ $shlibs =~ ^libc6\ \(\>=\ ([0-9.]+)\)$ ]] || die "dpkg-shlibdeps: unexpected libc6 dependency: $shlibs"
	dpkg --compare-versions "${BASH_REMATCH[1]}" ge 2.36 || shlibs="libc6 (>= 2.36)"
fi

# Installed-Size as dpkg-gencontrol counts it: KiB per file, rounded up, and
# one per directory.
size=$(find "$pkg" -path "$pkg/DEBIAN" -prune -o -type f -printf '%s\n' -o -type d -printf '1024\n' |
	awk '{ kib += int(($1 + 1023) / 1024) } END { print kib }')

cat >"$pkg/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: $shlibs, mosquitto (>= 2.0)
Suggests: redis-server
Section: net
Priority: optional
Description: security plugin for the Mosquitto MQTT broker
 mosquitto-guard is loaded into Mosquitto 2.0 with auth_plugin. It checks
 every CONNECT's client ID, IP address and ranges, username and client
 certificate against an allowlist and a blocklist kept in Redis, checks
 passwords itself (mosquitto_passwd files, mosquitto-go-auth hashes or
 users kept in Redis), and bans password guessers automatically, for
 longer at each repeat. It also flags a client ID used by more than one
 principal, across every broker sharing the Redis.
 .
 guardctl, the operators' tool, bans, allows, lists and audits from the
 command line.
 .
 Installing the package does not change the broker: the plugin's lines in
 /etc/mosquitto/conf.d/guard.conf are commented out until you enable them.
EOF
echo /etc/mosquitto/conf.d/guard.conf >"$pkg/DEBIAN/conffiles"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | sort | xargs md5sum) >"$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg"/DEBIAN/*

find "$pkg" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$out"
deb=$out/${name}_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz -z1 --build "$pkg" "$deb" >&2
echo "$deb"
