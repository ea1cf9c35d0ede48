#!/usr/bin/env bash
# Builds (or removes) the local test images: FROM scratch plus Debian's static busybox, and on top
# of it an image with fake `claude` and `codex` that replay recorded transcripts, and one with
# this host's curl and the libraries it loads (a TLS client that honours CURL_CA_BUNDLE), and one
# with this host's git (Debian's package) and the libraries it loads.
# Nothing is pulled. Usage: scripts/test-image.sh build|build-agents|build-tls|build-git|remove|name|name-agents|name-tls|name-git
set -euo pipefail
busybox=${BERTH_TEST_BUSYBOX:-/bin/busybox}
tag="berth-test-busybox:$(sha256sum "$busybox" | cut -c1-12)"
root=$(cd "$(dirname "$0")/.." && pwd)
agents_inputs() { cat "$root"/crates/berth/tests/fake-agents/* "$root"/crates/berth-agents/tests/data/*/*.jsonl; }
agents_tag() { echo "berth-test-agents:$( (echo "$tag"; agents_inputs) | sha256sum | cut -c1-12)"; }
curl_bin=${BERTH_TEST_CURL:-/usr/bin/curl}
# curl and every library it loads, as ldd resolves them on this host.
tls_files() { echo "$curl_bin"; ldd "$curl_bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'; }
git_bin=${BERTH_TEST_GIT:-/usr/bin/git}
# git and every library it loads.
git_files() { echo "$git_bin"; ldd "$git_bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'; }
git_tag() { echo "berth-test-git:$( (echo "$tag"; git_files | xargs cat) | sha256sum | cut -c1-12)"; }
# Copies the files $2.. (each with its path) into the context root $1, links resolved.
copy_files() {
  local root=$1; shift
  for file in "$@"; do
    mkdir -p "$root$(dirname "$file")"
    cp -L "$file" "$root$file"
  done
}
tls_tag() { echo "berth-test-tls:$( (echo "$tag"; tls_files | xargs cat) | sha256sum | cut -c1-12)"; }
# Builds the context directory $2 as $1, quietly unless it fails.
docker_build() {
  DOCKER_BUILDKIT=0 docker build -q --label berth.test=true -t "$1" "$2" >/dev/null 2>&1 \
    || { echo "building $1 failed" >&2; DOCKER_BUILDKIT=0 docker build -t "$1" "$2" >&2; exit 1; }
}
case "${1:-build}" in
  name) echo "$tag" ;;
  name-agents) agents_tag ;;
  name-tls) tls_tag ;;
  name-git) git_tag ;;
  build-git)
    [ -x "$git_bin" ] || { echo "building the git test image needs git on this host ($git_bin; set BERTH_TEST_GIT)" >&2; exit 1; }
    "$0" build >/dev/null
    gtag=$(git_tag)
    if docker image inspect "$gtag" >/dev/null 2>&1; then echo "$gtag"; exit 0; fi
    ctx=$(mktemp -d)
    trap 'rm -rf "$ctx"' EXIT
    # shellcheck disable=SC2046
    copy_files "$ctx/root" $(git_files)
    printf 'FROM %s\nCOPY root /\n' "$tag" > "$ctx/Dockerfile"
    docker_build "$gtag" "$ctx"
    echo "$gtag" ;;
  build-tls)
    [ -x "$curl_bin" ] || { echo "building the TLS test image needs curl on this host ($curl_bin; set BERTH_TEST_CURL)" >&2; exit 1; }
    "$0" build >/dev/null
    ttag=$(tls_tag)
    if docker image inspect "$ttag" >/dev/null 2>&1; then echo "$ttag"; exit 0; fi
    ctx=$(mktemp -d)
    trap 'rm -rf "$ctx"' EXIT
    mkdir -p "$ctx/root/usr/bin"
    cp "$curl_bin" "$ctx/root/usr/bin/curl"
    for lib in $(tls_files | tail -n +2); do
      mkdir -p "$ctx/root$(dirname "$lib")"
      cp -L "$lib" "$ctx/root$lib"
    done
    printf 'FROM %s\nCOPY root /\n' "$tag" > "$ctx/Dockerfile"
    docker_build "$ttag" "$ctx"
    echo "$ttag" ;;
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
    docker_build "$atag" "$ctx"
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
    docker_build "$tag" "$ctx"
    echo "$tag" ;;
  remove)
    docker image rm -f "$(agents_tag)" "$tag" >/dev/null 2>&1 || true
    [ -x "$curl_bin" ] && docker image rm -f "$(tls_tag)" >/dev/null 2>&1 || true
    [ -x "$git_bin" ] && docker image rm -f "$(git_tag)" >/dev/null 2>&1 || true
    # Stages of multi-stage test builds stay behind untagged; they carry the test label.
    docker image prune -f --filter label=berth.test=true >/dev/null 2>&1 || true ;;
  *) echo "usage: $0 build|build-agents|build-tls|build-git|remove|name|name-agents|name-tls|name-git" >&2; exit 2 ;;
esac
