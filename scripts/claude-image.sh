#!/usr/bin/env bash
# Builds (or removes) the test image with the REAL Claude Code CLI, for the end-to-end test of
# the claude-code profile through berth's egress proxy and credential broker
# (crates/berth/tests/claude_cli.rs).
#
# The CLI comes from PyPI: the wheel of claude-agent-sdk (the agent images' pinned version and
# sha256) bundles the native `claude` binary (glibc, x86_64) at claude_agent_sdk/_bundled/claude.
# The image is
# FROM scratch: that binary, Debian's static busybox (sh and the usual tools), this machine's
# bash (Claude Code's Bash tool wants bash or zsh, not sh), the glibc libraries both need as
# `ldd` names them, the user agent (1000:1000) with HOME=/home/agent, and /workspace.
# Nothing is pulled: the local engine builds it.
#
# Usage: scripts/claude-image.sh build|remove|name|wheel
#   build   builds the image unless it exists, prints its tag
#   remove  removes it (and any other berth-test-claude image)
#   name    prints the tag the build makes
#   wheel   downloads the wheel into the cache unless there, prints its path
# Environment:
#   BERTH_CLAUDE_CACHE   where the wheel is kept (default ${XDG_CACHE_HOME:-~/.cache}/berth-test)
#   BERTH_TEST_BUSYBOX   the static busybox (default /bin/busybox)
# A failed download is an error, never a skip.
set -euo pipefail

# The pin is the agent images': images/Dockerfile's default version, images/wheels.sha256's hash.
images=$(cd "$(dirname "$0")/../images" && pwd)
SDK_VERSION=$(sed -n 's/^ARG CLAUDE_AGENT_SDK_VERSION=//p' "$images/Dockerfile")
WHEEL=claude_agent_sdk-$SDK_VERSION-py3-none-manylinux_2_17_x86_64.whl
WHEEL_SHA256=$(awk -v v="$SDK_VERSION" '$1 == "claude-agent-sdk" && $2 == v && $3 == "x86_64" { print $4 }' \
  "$images/wheels.sha256")
[ -n "$SDK_VERSION" ] && [ -n "$WHEEL_SHA256" ] || {
  echo "claude-image: no pinned claude-agent-sdk in images/Dockerfile and images/wheels.sha256" >&2
  exit 1
}

busybox=${BERTH_TEST_BUSYBOX:-/bin/busybox}
bash_bin=$(readlink -f /bin/bash)
cache=${BERTH_CLAUDE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/berth-test}

# The tag changes with anything that goes into the image.
tag() {
  local sum
  # Contents only: the same script reached by another path makes the same tag.
  sum=$( (echo "$SDK_VERSION $WHEEL_SHA256"; cat "$busybox" "$bash_bin" "$0") | sha256sum | cut -c1-12)
  echo "berth-test-claude:$sum"
}

wheel() {
  local path=$cache/$WHEEL
  if [ -f "$path" ] && echo "$WHEEL_SHA256  $path" | sha256sum -c --status; then
    echo "$path"
    return
  fi
  mkdir -p "$cache"
  local tmp
  tmp=$(mktemp -d "$cache/download.XXXXXX")
  local pip=(python3 -m pip)
  if ! python3 -m pip --version >/dev/null 2>&1; then
    # No pip for this python3 (Debian's without python3-pip): one in a venv of the cache.
    [ -x "$cache/venv/bin/pip" ] || python3 -m venv "$cache/venv" >&2
    pip=("$cache/venv/bin/pip")
  fi
  "${pip[@]}" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux_2_17_x86_64 --python-version 3.11 \
    -d "$tmp" "claude-agent-sdk==$SDK_VERSION" >&2 \
    || { rm -rf "$tmp"; echo "claude-image: downloading claude-agent-sdk==$SDK_VERSION failed" >&2; exit 1; }
  if ! echo "$WHEEL_SHA256  $tmp/$WHEEL" | sha256sum -c --status; then
    echo "claude-image: $WHEEL does not have the pinned sha256 $WHEEL_SHA256" >&2
    rm -rf "$tmp"
    exit 1
  fi
  mv "$tmp/$WHEEL" "$path"
  rm -rf "$tmp"
  echo "$path"
}

# Copies the shared libraries that `ldd` names for $1 into $2, at the paths ldd gives.
copy_libs() {
  local lib
  for lib in $(ldd "$1" | grep -o '/[^ ]*'); do
    mkdir -p "$2$(dirname "$lib")"
    cp -L "$lib" "$2$lib"
  done
}

build() {
  local t
  t=$(tag)
  if docker image inspect "$t" >/dev/null 2>&1; then echo "$t"; return; fi
  local whl
  whl=$(wheel)
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  mkdir -p "$ctx/root/bin" "$ctx/root/usr/local/bin" "$ctx/root/etc"
  python3 - "$whl" "$ctx/root/usr/local/bin/claude" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("claude_agent_sdk/_bundled/claude") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  chmod 0755 "$ctx/root/usr/local/bin/claude"
  cp "$busybox" "$ctx/root/bin/busybox"
  cp "$bash_bin" "$ctx/root/bin/bash"
  copy_libs "$ctx/root/usr/local/bin/claude" "$ctx/root"
  copy_libs "$bash_bin" "$ctx/root"
  printf 'root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000:agent:/home/agent:/bin/bash\n' > "$ctx/root/etc/passwd"
  printf 'root:x:0:\nagent:x:1000:\n' > "$ctx/root/etc/group"
  cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY root/ /
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/mkdir", "-p", "-m", "1777", "/tmp"]
RUN ["/bin/mkdir", "-p", "/home/agent", "/workspace", "/usr/bin"]
RUN ["/bin/chown", "1000:1000", "/home/agent", "/workspace"]
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    HOME=/home/agent \
    SHELL=/bin/bash \
    DISABLE_AUTOUPDATER=1 \
    IS_SANDBOX=1
WORKDIR /workspace
USER agent
DOCKERFILE
  DOCKER_BUILDKIT=0 docker build -q --label berth.test=true -t "$t" "$ctx" >/dev/null 2>&1 \
    || { echo "building $t failed" >&2; DOCKER_BUILDKIT=0 docker build -t "$t" "$ctx" >&2; exit 1; }
  echo "$t"
}

case "${1:-build}" in
  name) tag ;;
  wheel) wheel ;;
  build) build ;;
  # Every tag of the repository: images of an earlier pin or script go too.
  remove)
    docker images --format '{{.Repository}}:{{.Tag}}' berth-test-claude \
      | xargs -r docker image rm -f >/dev/null 2>&1 || true ;;
  *) echo "usage: $0 build|remove|name|wheel" >&2; exit 2 ;;
esac
