#!/bin/sh
# Takes files out of a wheel from PyPI, for the agent images' installs that need no npm (and for
# Node.js itself where npm is chosen). Needs python3 and curl (the procedural stage has both).
#
#   fetch-wheel.sh PACKAGE VERSION SHA256 MEMBER=DEST...
#
# The wheel is the manylinux one of this machine's architecture (x86_64 or aarch64). Its sha256
# must be SHA256 when that is given; when it is empty, the one pinned for PACKAGE VERSION and the
# architecture in wheels.sha256 (beside this script); when neither pins it (an upgrade by
# `--build-arg ..._VERSION=X` alone), the hash the index publishes, with a warning that names
# the line to add to wheels.sha256.
#
# MEMBER=DEST copies one file of the wheel to DEST (mode 0755); MEMBER/=DEST/ copies the whole
# tree under MEMBER/ into DEST/, keeping the executable bits.
#
# PYPI_INDEX_URL (default https://pypi.org/simple) is the index: any that speaks the JSON simple
# API (PEP 691).
set -eu

[ $# -ge 4 ] || { echo "usage: fetch-wheel.sh PACKAGE VERSION SHA256 MEMBER=DEST..." >&2; exit 2; }
package=$1 version=$2 want=$3
shift 3
here=$(dirname "$0")
index=${PYPI_INDEX_URL:-https://pypi.org/simple}
arch=$(uname -m)
case "$arch" in
  x86_64|aarch64) ;;
  *) echo "fetch-wheel: no $package wheel for the architecture $arch" >&2
     echo "hint: build with CLAUDE_CODE_SOURCE=npm / CODEX_SOURCE=npm on this machine" >&2
     exit 1 ;;
esac

pinned=
if [ -f "$here/wheels.sha256" ]; then
  pinned=$(awk -v p="$package" -v v="$version" -v a="$arch" \
    '$1 == p && $2 == v && $3 == a { print $4 }' "$here/wheels.sha256")
fi
if [ -z "$want" ]; then want=$pinned; fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! curl -fsSL --retry 3 -H 'Accept: application/vnd.pypi.simple.v1+json' \
    "$index/$package/" -o "$tmp/index.json"; then
  echo "fetch-wheel: cannot read $index/$package/" >&2
  echo "hint: the build needs PyPI (or PYPI_INDEX_URL); behind a TLS-intercepting proxy, the base image must trust its CA (scripts/debian-base.sh copies the host's)" >&2
  exit 1
fi
# The manylinux wheel of VERSION for this architecture: its file name, URL and published hash.
python3 - "$tmp/index.json" "$package" "$version" "$arch" > "$tmp/wheel" <<'PY'
import json, re, sys
index, package, version, arch = sys.argv[1:]
name = re.sub(r"[-_.]+", "_", package).lower()
for f in json.load(open(index))["files"]:
    fn = f["filename"]
    if (fn.lower().startswith(f"{name}-{version}-") and fn.endswith(".whl")
            and re.search(rf"manylinux[0-9_]*_{arch}", fn)):
        print(fn, f["url"], f.get("hashes", {}).get("sha256", ""))
        break
PY
read -r file url published < "$tmp/wheel" || {
  echo "fetch-wheel: $package $version has no manylinux $arch wheel on $index" >&2
  echo "hint: check the version (https://pypi.org/project/$package/#history)" >&2
  exit 1
}
if [ -z "$want" ]; then
  [ -n "$published" ] || { echo "fetch-wheel: $index publishes no sha256 for $file, and none is pinned" >&2; exit 1; }
  echo "warning: $package $version is not pinned; checking it against the index's sha256 $published" >&2
  echo "hint: pin it with this line in images/wheels.sha256: $package $version $arch $published" >&2
  want=$published
fi
curl -fsSL --retry 3 "$url" -o "$tmp/$file" || {
  echo "fetch-wheel: downloading $url failed" >&2
  exit 1
}
got=$(sha256sum "$tmp/$file" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  echo "fetch-wheel: $file has sha256 $got, not the pinned $want" >&2
  echo "hint: if the version changed on purpose, update images/wheels.sha256 (or pass the new sha256 as a build argument)" >&2
  exit 1
fi
python3 - "$tmp/$file" "$@" <<'PY'
import os, shutil, sys, zipfile
wheel, pairs = sys.argv[1], sys.argv[2:]
with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    for pair in pairs:
        member, dest = pair.split("=", 1)
        if member.endswith("/"):
            todo = [(n, os.path.join(dest, n[len(member):])) for n in names
                    if n.startswith(member) and not n.endswith("/")]
        else:
            todo = [(member, dest)] if member in names else []
        if not todo:
            sys.exit(f"fetch-wheel: {wheel} has no {member}")
        for name, out in todo:
            os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
            with z.open(name) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            executable = member == name or (z.getinfo(name).external_attr >> 16) & 0o111
            os.chmod(out, 0o755 if executable else 0o644)
PY
echo "fetch-wheel: $file (sha256 $got)"
