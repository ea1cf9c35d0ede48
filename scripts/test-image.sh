#!/usr/bin/env bash
# Builds (or removes) the local test image: FROM scratch plus Debian's static busybox.
# Nothing is pulled. Usage: scripts/test-image.sh build|remove|name
set -euo pipefail
busybox=${BERTH_TEST_BUSYBOX:-/bin/busybox}
tag="berth-test-busybox:$(sha256sum "$busybox" | cut -c1-12)"
case "${1:-build}" in
  name) echo "$tag" ;;
  build)
    if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag"; exit 0; fi
    ctx=$(mktemp -d)
    trap 'rm -rf "$ctx"' EXIT
    cp "$busybox" "$ctx/busybox"
    cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/mkdir", "-p", "-m", "1777", "/tmp"]
RUN ["/bin/mkdir", "-p", "/etc", "/home/agent", "/workspace"]
DOCKERFILE
    DOCKER_BUILDKIT=0 docker build -q --label berth.test=true -t "$tag" "$ctx" >/dev/null 2>&1 \
      || { echo "building $tag failed" >&2; DOCKER_BUILDKIT=0 docker build -t "$tag" "$ctx" >&2; exit 1; }
    echo "$tag" ;;
  remove) docker image rm -f "$tag" >/dev/null 2>&1 || true ;;
  *) echo "usage: $0 build|remove|name" >&2; exit 2 ;;
esac
