#!/usr/bin/env bash
# Builds Flotilla's static release binaries (musl) and, with --images, the
# container images of images/Containerfile; then checks the result.
#
#   images/build.sh                  binaries + checks
#   images/build.sh --images         binaries + checks + images (buildah or podman) + image checks
#   images/build.sh --check-only     checks of binaries built before
#
# Environment:
#   PROFILE   cargo profile (default dist: release, stripped; see Cargo.toml)
#   REGISTRY  image name prefix (default ghcr.io/flotilla-gitops)
#   TAG       image tag (default the workspace version)
#
# Output: target/images/context/{bin,rootfs} (the image build context) and,
# with --images, the images REGISTRY/flotilla-{hub,agent,cli}:TAG in the
# local container storage (push them with `buildah push`).
#
# The checks, each fatal:
#   1. every binary is statically linked (file, ldd);
#   2. every binary prints --version and --help from an empty root
#      directory holding nothing but the binary (chroot as UID 65532, or
#      `unshare -r chroot` when not run as root);
#   3. in the image's root filesystem (CA certificates, passwd, /tmp) and as
#      UID 65532, `flotilla-hub serve` starts, generates its CA, answers
#      /readyz, the CLI talks to it over TLS (`flotilla cluster add`) and
#      `flotilla-hub print-ca` prints its CA;
#   4. with --images: each image runs as 65532, holds no shell, and its
#      binary starts from the image's own root filesystem.
set -euo pipefail
cd "$(dirname "$0")/.."

want_images=false
build=true
for arg in "$@"; do
  case "$arg" in
    --images) want_images=true ;;
    --check-only) build=false ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "build.sh: unknown argument $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

PROFILE=${PROFILE:-dist}
REGISTRY=${REGISTRY:-ghcr.io/flotilla-gitops}
TRIPLE=x86_64-unknown-linux-musl
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
TAG=${TAG:-$VERSION}
BINS=(flotilla-hub flotilla-agent flotilla)
OUT=target/$TRIPLE/$PROFILE
CTX=target/images/context
UID_NONROOT=65532

say() { printf '==> %s\n' "$*"; }
fail() {
  printf 'build.sh: %s\n' "$*" >&2
  exit 1
}

if $build; then
  command -v musl-gcc >/dev/null ||
    fail "musl-gcc not found: install musl-tools (the agent's vendored Lua and aws-lc are C)"
  rustup target list --installed 2>/dev/null | grep -qx "$TRIPLE" ||
    fail "Rust target $TRIPLE missing: rustup target add $TRIPLE"
  say "cargo build --profile $PROFILE --target $TRIPLE (flotilla-hub, flotilla-agent, flotilla)"
  start=$(date +%s)
  # aws-lc-sys and mlua's vendored Lua are built with musl-gcc.
  CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build --locked --profile "$PROFILE" --target "$TRIPLE" \
    -p flotilla-hub -p flotilla-agent --bins
  say "built in $(($(date +%s) - start)) s"
fi

for b in "${BINS[@]}"; do
  [ -x "$OUT/$b" ] || fail "$OUT/$b is missing (build first, without --check-only)"
done

# --- the image build context ----------------------------------------------
say "staging $CTX"
rm -rf "$CTX"
mkdir -p "$CTX/bin" "$CTX/rootfs/etc/ssl/certs" "$CTX/rootfs/tmp"
for b in "${BINS[@]}"; do
  cp "$OUT/$b" "$CTX/bin/$b"
done
ca_bundle=
for f in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do
  if [ -s "$f" ]; then
    ca_bundle=$f
    break
  fi
done
[ -n "$ca_bundle" ] || fail "no CA certificate bundle on this machine (install ca-certificates)"
cp "$ca_bundle" "$CTX/rootfs/etc/ssl/certs/ca-certificates.crt"
cat >"$CTX/rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:$UID_NONROOT:$UID_NONROOT:nonroot:/tmp:/sbin/nologin
EOF
cat >"$CTX/rootfs/etc/group" <<EOF
root:x:0:
nonroot:x:$UID_NONROOT:
EOF
chmod 0644 "$CTX/rootfs/etc/passwd" "$CTX/rootfs/etc/group" "$CTX/rootfs/etc/ssl/certs/ca-certificates.crt"
chmod 1777 "$CTX/rootfs/tmp"

# --- 1. statically linked -----------------------------------------------
for b in "${BINS[@]}"; do
  desc=$(file -L "$CTX/bin/$b")
  case "$desc" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) fail "$b is not static: $desc" ;;
  esac
  if ldd "$CTX/bin/$b" 2>&1 | grep -q '=>'; then
    fail "$b links shared libraries: $(ldd "$CTX/bin/$b" 2>&1)"
  fi
  say "$b: static, $(du -h "$CTX/bin/$b" | cut -f1)"
done

# Runs a command in root directory $1 as the non-root user.
in_root() {
  local root=$1
  shift
  if [ "$(id -u)" = 0 ]; then
    chroot --userspec=$UID_NONROOT:$UID_NONROOT "$root" "$@"
  else
    unshare -r chroot "$root" "$@"
  fi
}

work=$(mktemp -d)
hub_pid=
cleanup() {
  if [ -n "$hub_pid" ]; then
    kill "$hub_pid" 2>/dev/null || true
    wait "$hub_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- 2. start from an empty root ----------------------------------------
for b in "${BINS[@]}"; do
  empty=$work/empty-$b
  mkdir "$empty"
  cp "$CTX/bin/$b" "$empty/$b"
  chmod 0755 "$empty" "$empty/$b"
  in_root "$empty" "/$b" --version >"$work/out" 2>&1 || fail "$b --version failed in an empty root: $(cat "$work/out")"
  grep -q "$VERSION" "$work/out" || fail "$b --version printed no version: $(cat "$work/out")"
  version_line=$(head -n1 "$work/out")
  in_root "$empty" "/$b" --help >"$work/out" 2>&1 || fail "$b --help failed in an empty root: $(cat "$work/out")"
  grep -qi usage "$work/out" || fail "$b --help printed no usage: $(cat "$work/out")"
  say "$b: --version and --help from an empty root ($version_line)"
done

# --- 3. the hub serves and the CLI talks to it, in the image's root --------
root=$work/root
mkdir -p "$root/usr/local/bin" "$root/data"
cp -a "$CTX/rootfs/." "$root/"
cp "$CTX/bin/flotilla-hub" "$CTX/bin/flotilla" "$root/usr/local/bin/"
chmod 0755 "$root" "$root/usr" "$root/usr/local" "$root/usr/local/bin"
if [ "$(id -u)" = 0 ]; then chown "$UID_NONROOT:$UID_NONROOT" "$root/data"; fi
in_root "$root" /usr/local/bin/flotilla-hub serve --data-dir /data \
  --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 >"$work/hub.log" 2>&1 &
hub_pid=$!
hub_url=
metrics_url=
for _ in $(seq 1 300); do
  hub_url=$(sed -n 's/^flotilla-hub listening on \(https:[^ ]*\).*/\1/p' "$work/hub.log" | head -n1)
  metrics_url=$(sed -n 's/^flotilla-hub metrics listening on \(http:[^ ]*\)\/metrics.*/\1/p' "$work/hub.log" | head -n1)
  if [ -n "$hub_url" ] && [ -n "$metrics_url" ] && curl -fsS "$metrics_url/readyz" >/dev/null 2>&1; then
    break
  fi
  kill -0 "$hub_pid" 2>/dev/null || fail "flotilla-hub serve exited in the image root: $(cat "$work/hub.log")"
  sleep 0.1
done
curl -fsS "$metrics_url/readyz" >/dev/null 2>&1 || fail "flotilla-hub not ready after 30 s: $(cat "$work/hub.log")"
in_root "$root" /usr/local/bin/flotilla --hub "$hub_url" --ca-file /data/ca.crt \
  --token-file /data/admin.token cluster add static-check --bootstrap-token >"$work/cli.out" 2>&1 ||
  fail "flotilla cluster add against the hub failed: $(cat "$work/cli.out")"
grep -q 'flt1\.' "$work/cli.out" || fail "flotilla cluster add printed no token: $(cat "$work/cli.out")"
in_root "$root" /usr/local/bin/flotilla-hub print-ca --data-dir /data >"$work/ca.pem" 2>"$work/pin.out" ||
  fail "flotilla-hub print-ca failed: $(cat "$work/pin.out")"
cmp -s "$work/ca.pem" "$root/data/ca.crt" || fail "flotilla-hub print-ca did not print the hub CA"
grep -q '^hub CA pin: sha256:[0-9a-f]\{64\}$' "$work/pin.out" || fail "flotilla-hub print-ca printed no pin: $(cat "$work/pin.out")"
# Into a file first: `curl | grep -q` fails under pipefail whenever grep
# stops reading before curl has written the whole body.
curl -fsS "$metrics_url/metrics" >"$work/metrics.txt" || fail "the hub's metrics cannot be read"
grep -q '^flotilla_clusters 1' "$work/metrics.txt" || fail "the hub's metrics do not count the cluster: $(grep '^flotilla_clusters' "$work/metrics.txt")"
say "flotilla-hub serve (UID $UID_NONROOT, image root): ready at $hub_url; flotilla cluster add over TLS and print-ca work"
kill "$hub_pid"
wait "$hub_pid" 2>/dev/null || true
hub_pid=

if ! $want_images; then
  say "static binaries in $CTX/bin (images: images/build.sh --images)"
  exit 0
fi

# --- 4. images -------------------------------------------------------------
if command -v buildah >/dev/null; then
  builder=(buildah)
elif command -v podman >/dev/null; then
  builder=(podman)
else
  fail "--images needs buildah or podman (apt-get install buildah)"
fi
# vfs works everywhere, also inside containers without overlay support.
storage=(--storage-driver "${STORAGE_DRIVER:-vfs}")

declare -A image_bin=([hub]=flotilla-hub [agent]=flotilla-agent [cli]=flotilla)
for target in hub agent cli; do
  image=$REGISTRY/flotilla-$target:$TAG
  say "${builder[0]} build --target $target -t $image"
  "${builder[@]}" "${storage[@]}" build --isolation chroot -f images/Containerfile \
    --target "$target" -t "$image" "$CTX" >"$work/build-$target.log" 2>&1 ||
    fail "image $image: $(tail -n 20 "$work/build-$target.log")"
  user=$("${builder[@]}" "${storage[@]}" inspect --type image --format '{{.OCIv1.Config.User}}' "$image" 2>/dev/null ||
    "${builder[@]}" "${storage[@]}" image inspect --format '{{.Config.User}}' "$image")
  [ "$user" = "$UID_NONROOT:$UID_NONROOT" ] || fail "$image runs as '$user', not $UID_NONROOT"
  if [ "${builder[0]}" = buildah ]; then
    ctr=$(buildah "${storage[@]}" from "$image")
    mnt=$(buildah "${storage[@]}" mount "$ctr")
    status=0
    if [ -e "$mnt/bin/sh" ] || [ -e "$mnt/usr/bin/sh" ]; then status=1; fi
    in_root "$mnt" "/usr/local/bin/${image_bin[$target]}" --version >"$work/out" 2>&1 || status=2
    buildah "${storage[@]}" umount "$ctr" >/dev/null
    buildah "${storage[@]}" rm "$ctr" >/dev/null
    [ $status = 1 ] && fail "$image holds a shell"
    [ $status = 2 ] && fail "$image: ${image_bin[$target]} --version failed: $(cat "$work/out")"
  fi
  size=$("${builder[@]}" "${storage[@]}" images --format '{{.Size}}' "$image" | head -n1)
  say "$image: user $user, no shell, starts ($size)"
done
