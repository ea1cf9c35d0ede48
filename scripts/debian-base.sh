#!/usr/bin/env bash
# Makes the Debian base that images/Dockerfile starts from (BASE_IMAGE, default
# debian:bookworm-slim) without any registry: `debootstrap --variant=minbase` from Debian's
# mirror into a directory, then `docker import`. Nothing is pulled.
#
# Idempotent: when the tag already exists (imported earlier, or pulled on a machine with a
# registry), it is left alone and only its name is printed.
#
# The base gets this machine's local CA certificates (/usr/local/share/ca-certificates/*.crt),
# so that a build behind a TLS-intercepting proxy can reach PyPI; the base stage's
# `apt-get install ca-certificates` adds them to the bundle. BERTH_BASE_LOCAL_CA=0 leaves them out.
#
# Usage: scripts/debian-base.sh [TAG]       (default debian:bookworm-slim)
# Environment:
#   BERTH_DEBIAN_SUITE    the suite (default bookworm)
#   BERTH_DEBIAN_MIRROR   the mirror (default http://deb.debian.org/debian)
#   BERTH_BASE_LOCAL_CA   1 (default) copies the local CA certificates into the base, 0 does not
# Needs root (debootstrap) and debootstrap (`apt-get install debootstrap`).
set -euo pipefail

tag=${1:-debian:bookworm-slim}
suite=${BERTH_DEBIAN_SUITE:-bookworm}
mirror=${BERTH_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi
command -v debootstrap >/dev/null || {
  echo "debian-base: debootstrap is not installed" >&2
  echo "hint: apt-get install debootstrap" >&2
  exit 1
}
[ "$(id -u)" = 0 ] || {
  echo "debian-base: debootstrap needs root" >&2
  echo "hint: run it as root, or with sudo" >&2
  exit 1
}

root=$(mktemp -d /tmp/berth-debian-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
log=$root.log
if ! debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  echo "debian-base: debootstrap $suite from $mirror failed (log: $log)" >&2
  echo "hint: check that the mirror is reachable, or set BERTH_DEBIAN_MIRROR" >&2
  exit 1
fi
rm -f "$log"

# What Debian's own slim images leave out, and what a container has no use for.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
printf 'deb %s %s main\ndeb %s %s-updates main\n' "$mirror" "$suite" "$mirror" "$suite" \
  > "$root/etc/apt/sources.list"
if [ "${BERTH_BASE_LOCAL_CA:-1}" = 1 ] && compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi

tar --numeric-owner -C "$root" -c . \
  | docker import --change 'CMD ["bash"]' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      - "$tag" >/dev/null
echo "$tag"
