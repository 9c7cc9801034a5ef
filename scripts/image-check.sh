#!/usr/bin/env bash
# Builds the container image from the Dockerfile with podman and proves its
# contract on a running container (issue 30):
#   - it runs as uid 10001, on a read-only root filesystem, with only the
#     volume writable;
#   - the Dockerfile's HEALTHCHECK reports healthy;
#   - a message sent into the container reaches a downstream on the host;
#   - `podman stop` and `podman kill -s KILL`, each followed by a start on
#     the same volume, keep every acknowledged message;
#   - SIGTERM drains within the grace period;
#   - the image's size is printed.
#
#   scripts/image-check.sh            the whole Dockerfile (its Rust build
#                                     stage included: minutes)
#   scripts/image-check.sh --runtime [BINARY]
#                                     the runtime stage only, around a binary
#                                     already built (target/release/tidegate
#                                     unless named; .ci/run names the debug
#                                     binary its tests built), stripped as
#                                     the build stage strips it
#
# The base images the Dockerfile names are made here when they cannot be
# pulled (no registry on this machine): debian:bookworm-slim from Debian's
# packages with mmdebstrap, and the Rust build image from that base plus the
# toolchain this machine has, building offline from its cargo registry. The
# Dockerfile itself is unchanged: with Docker Hub, `docker build .` works.
#
# podman runs with runc and cgroupfs (crun refuses this machine's hybrid
# cgroup layout) and explicit rlimits (podman's defaults are above what a
# process without CAP_SYS_RESOURCE may set). Everything it starts is
# removed on exit; 127.0.0.1 only. Images are built in the docker format:
# the OCI format has no HEALTHCHECK.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=full
BINARY=${CARGO_TARGET_DIR:-target}/release/tidegate
if [ "${1:-}" = "--runtime" ]; then
  MODE=runtime
  BINARY=${2:-$BINARY}
fi

# (Its complaints that there is no systemd for healthcheck timers are
# dropped: the checks here run the HEALTHCHECK on demand.)
podman() {
  command podman --runtime runc --cgroup-manager cgroupfs "$@" 2> >(grep -v 'systemd connection' >&2)
}
LIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
IMAGE=localhost/tidegate:check
NAME=tidegate-image-check-$$
VOLUME=tidegate-image-check-$$
BASE=docker.io/library/debian:bookworm-slim
RUST_FROM=$(sed -n 's/^FROM \(rust:[^ ]*\) AS build$/\1/p' Dockerfile)
RUST=docker.io/library/$RUST_FROM
work=$(mktemp -d)
ds_pid=""
cleanup() {
  podman rm -f "$NAME" >/dev/null 2>&1 || true
  podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
  [ -z "$ds_pid" ] || kill "$ds_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
say() { printf '%s\n' "$*"; }
fail() { say "FAIL: $*"; podman logs "$NAME" 2>&1 | tail -20 || true; exit 1; }
started=$(date +%s)

# --- base images ---------------------------------------------------------
SLIM=(
  # merged /usr as Debian's images have it, without the usrmerge package
  # (and the Perl it would bring)
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*'
)
if ! podman image exists "$BASE"; then
  if ! timeout 30 podman pull -q "$BASE" >/dev/null 2>&1; then
    say "making $BASE with mmdebstrap (no registry)"
    # As Debian's own slim images are: no documentation, manuals or
    # locales, no apt lists or caches.
    mmdebstrap --quiet --variant=minbase "${SLIM[@]}" bookworm "$work/base.tar" 2>/dev/null
    podman import -q "$work/base.tar" "$BASE" >/dev/null
    rm -f "$work/base.tar"
  fi
fi

if [ "$MODE" = full ]; then
  if ! podman image exists "$RUST"; then
    if ! timeout 30 podman pull -q "$RUST" >/dev/null 2>&1; then
      say "making $RUST from Debian's packages and this machine's toolchain (no registry)"
      # The official image is Debian with gcc (Rust's linker) and rustup's
      # toolchain; this one is the same parts, built offline from the
      # machine's cargo registry.
      mkdir -p "$work/rust"
      mmdebstrap --quiet --variant=minbase --include=gcc,libc6-dev,ca-certificates \
        "${SLIM[@]}" bookworm "$work/rust-base.tar" 2>/dev/null
      podman import -q "$work/rust-base.tar" localhost/tidegate-rust-base:bookworm >/dev/null
      rm -f "$work/rust-base.tar"
      cp -a "$(rustc --print sysroot)" "$work/rust/toolchain"
      cat > "$work/rust/Containerfile" <<'EOF'
FROM localhost/tidegate-rust-base:bookworm
COPY toolchain /usr/local/rust
ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_HOME=/usr/local/cargo CARGO_NET_OFFLINE=true
EOF
      podman build -q -t "$RUST" "$work/rust" >/dev/null
      rm -rf "$work/rust"
    fi
  fi
  say "building the Dockerfile (the Rust build stage included)"
  build_started=$(date +%s)
  podman build -q --format docker -t "$IMAGE" \
    -v "${CARGO_HOME:-$HOME/.cargo}/registry:/usr/local/cargo/registry" \
    -f Dockerfile . >/dev/null
  say "built in $(($(date +%s) - build_started)) s"
else
  # The runtime stage around the binary CI already built: the build stage
  # is a stand-in image holding it where the Dockerfile's COPY finds it.
  if [ ! -x "$BINARY" ]; then
    cargo build --release --locked --quiet
    BINARY=${CARGO_TARGET_DIR:-target}/release/tidegate
  fi
  say "the runtime stage around $BINARY"
  mkdir -p "$work/ctx/deploy"
  sed -n '/^FROM debian:bookworm-slim$/,$p' Dockerfile > "$work/ctx/Dockerfile.runtime"
  sed -i 's|COPY --from=build /src/target/release/tidegate|COPY tidegate|' "$work/ctx/Dockerfile.runtime"
  cp "$BINARY" "$work/ctx/tidegate"
  strip "$work/ctx/tidegate"
  cp deploy/tidegate.container.toml "$work/ctx/deploy/"
  podman build -q --format docker -t "$IMAGE" -f "$work/ctx/Dockerfile.runtime" "$work/ctx" >/dev/null
fi

# --- what the image is ------------------------------------------------------
bytes=$(podman image inspect "$IMAGE" --format '{{.Size}}')
compressed=$(podman save -q "$IMAGE" 2>/dev/null | gzip -6 | wc -c)
say "image: $((bytes / 1000000)) MB, $((compressed / 1000000)) MB compressed (podman save | gzip -6; goal 40)"
user=$(podman image inspect "$IMAGE" --format '{{.Config.User}}')
[ "$user" = "10001:10001" ] || fail "the image runs as '$user', not 10001:10001"

# --- a downstream on the host -----------------------------------------------
# Records each delivered message id; answers 503 while $work/down exists,
# and takes $work/slow's seconds per answer when it exists.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ds_port=$(free_port)
in_port=$(free_port)
python3 - "$ds_port" "$work" <<'PY' &
import http.server, os, sys, time
port, work = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if os.path.exists(f"{work}/down"):
            self.send_response(503); self.send_header("content-length", "0"); self.end_headers(); return
        if os.path.exists(f"{work}/slow"):
            time.sleep(float(open(f"{work}/slow").read()))
        with open(f"{work}/delivered", "a") as f:
            f.write(self.headers.get("x-tidegate-message-id", "?") + "\n")
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
ds_pid=$!
touch "$work/delivered"

# The shipped container config, its downstream on the host (slirp4netns
# shows the host's loopback to the container as 10.0.2.2).
sed "s|http://crm.internal:8080/api|http://10.0.2.2:$ds_port/api|" deploy/tidegate.container.toml > "$work/tidegate.toml"
grep -q "10.0.2.2:$ds_port" "$work/tidegate.toml" || fail "the container config's downstream was not where this script expects it"
chmod 0644 "$work/tidegate.toml"
TOKEN=image-check-producer-token
podman volume create "$VOLUME" >/dev/null
podman create --name "$NAME" --read-only \
  --network slirp4netns:allow_host_loopback=true -p "127.0.0.1:$in_port:8080" \
  -v "$VOLUME:/var/lib/tidegate" -v "$work/tidegate.toml:/etc/tidegate/tidegate.toml:ro" \
  -e TIDEGATE_PRODUCER_TOKEN="$TOKEN" --stop-timeout 30 "${LIMITS[@]}" "$IMAGE" >/dev/null

healthy() { # waits for the HEALTHCHECK command to pass, 60 s at most
  for _ in $(seq 120); do
    podman healthcheck run "$NAME" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  fail "the HEALTHCHECK never passed"
}
send() { # COUNT messages; every one must be acknowledged with 202
  python3 - "$in_port" "$1" "$TOKEN" <<'PY'
import http.client, sys
port, n, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
for i in range(n):
    c.request("POST", "/crm/orders", body=b'{"n": %d}' % i,
              headers={"content-type": "application/json", "authorization": "Bearer " + token})
    r = c.getresponse(); r.read()
    if r.status != 202:
        sys.exit(f"message {i}: {r.status}")
PY
}
delivered() { sort -u "$work/delivered" | grep -vc '^?$' || true; }
wait_delivered() { # COUNT distinct messages at the downstream, 60 s at most
  for _ in $(seq 240); do
    [ "$(delivered)" -ge "$1" ] && return 0
    sleep 0.25
  done
  fail "$(delivered) of $1 messages reached the downstream"
}

podman start "$NAME" >/dev/null
healthy
say "ok: the HEALTHCHECK command reports healthy"
[ "$(podman exec "$NAME" id -u)" = 10001 ] || fail "the process does not run as uid 10001"
say "ok: runs as uid 10001"
podman exec "$NAME" sh -c 'touch /usr/local/bin/x' 2>/dev/null && fail "the root filesystem is writable"
podman exec "$NAME" sh -c 'touch /var/lib/tidegate/.w && rm /var/lib/tidegate/.w' || fail "the volume is not writable"
say "ok: read-only root filesystem, the volume writable"

send 20
wait_delivered 20
say "ok: 20 messages sent into the container reached the downstream on the host"

# Acknowledged while the downstream is down, then a graceful stop; then
# the same with kill -9. Each start on the same volume delivers them all.
total=20
for how in stop kill; do
  touch "$work/down"
  send 50
  total=$((total + 50))
  if [ "$how" = stop ]; then podman stop -t 10 "$NAME" >/dev/null; else podman kill -s KILL "$NAME" >/dev/null; fi
  podman wait "$NAME" >/dev/null 2>&1 || true
  rm -f "$work/down"
  podman start "$NAME" >/dev/null
  healthy
  wait_delivered "$total"
  say "ok: podman $how with 50 acknowledged messages queued, then start: all $total delivered"
done

# SIGTERM while a slow downstream has attempts in flight: tidegate ends
# them and exits by itself, inside the grace period (exit 0, not the 137 of
# a SIGKILL at its end).
printf '0.5' > "$work/slow"
send 20
total=$((total + 20))
t0=$(date +%s.%N)
podman stop -t 30 "$NAME" >/dev/null
took=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")
code=$(podman inspect "$NAME" --format '{{.State.ExitCode}}')
[ "$code" = 0 ] || fail "SIGTERM: exit code $code after ${took}s (not a drain within the 30 s grace)"
drained=$(delivered)
[ "$drained" -gt $((total - 20)) ] || fail "SIGTERM: no attempt in flight was finished ($drained delivered)"
rm -f "$work/slow"
podman start "$NAME" >/dev/null
healthy
wait_delivered "$total"
say "ok: SIGTERM drained in ${took} s of a 30 s grace (exit 0, $((drained - total + 20)) of 20 delivered first), the rest after a start: all $total delivered"
say "image check passed in $(($(date +%s) - started)) s ($MODE)"
