#!/usr/bin/env bash
# Builds (or removes) the local test images: FROM scratch plus Debian's static busybox, and on top
# of it an image with fake `claude` and `codex` that replay recorded transcripts.
# Nothing is pulled. Usage: scripts/test-image.sh build|build-agents|remove|name|name-agents
set -euo pipefail
busybox=${BERTH_TEST_BUSYBOX:-/bin/busybox}
tag="berth-test-busybox:$(sha256sum "$busybox" | cut -c1-12)"
root=$(cd "$(dirname "$0")/.." && pwd)
agents_inputs() { cat "$root"/crates/berth/tests/fake-agents/* "$root"/crates/berth-agents/tests/data/*/*.jsonl; }
agents_tag() { echo "berth-test-agents:$( (echo "$tag"; agents_inputs) | sha256sum | cut -c1-12)"; }
case "${1:-build}" in
  name) echo "$tag" ;;
  name-agents) agents_tag ;;
  build-agents)
    "$0" build >/dev/null
    atag=$(agents_tag)
    if docker image inspect "$atag" >/dev/null 2>&1; then echo "$atag"; exit 0; fi
    ctx=$(mktemp -d)
    trap 'rm -rf "$ctx"' EXIT
    mkdir -p "$ctx/fixtures"
    cp "$root"/crates/berth/tests/fake-agents/claude "$root"/crates/berth/tests/fake-agents/codex "$ctx/"
    cp -r "$root"/crates/berth-agents/tests/data/claude "$root"/crates/berth-agents/tests/data/codex "$ctx/fixtures/"
    printf 'FROM %s\nCOPY claude codex /usr/local/bin/\nCOPY fixtures /fixtures\n' "$tag" > "$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q --label berth.test=true -t "$atag" "$ctx" >/dev/null 2>&1 \
      || { echo "building $atag failed" >&2; DOCKER_BUILDKIT=0 docker build -t "$atag" "$ctx" >&2; exit 1; }
    echo "$atag" ;;
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
  remove)
    docker image rm -f "$(agents_tag)" "$tag" >/dev/null 2>&1 || true
    # Stages of multi-stage test builds stay behind untagged; they carry the test label.
    docker image prune -f --filter label=berth.test=true >/dev/null 2>&1 || true ;;
  *) echo "usage: $0 build|build-agents|remove|name|name-agents" >&2; exit 2 ;;
esac
