# Shared by the load-test scripts (sourced, not run): a scratch directory
# cleaned up on exit with every process started through `bg`, free ports,
# and starting tidegate on ephemeral ports.

work=$(mktemp -d)
chmod 755 "$work" # nginx workers (user nobody) read files in here
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# need COMMAND PACKAGE: installs the Debian package if the command is missing.
need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_tidegate CONFIG: runs the release binary ($TIDEGATE_BIN for an A/B), waits for its listening
# line, sets TG_PID, INGRESS and ADMIN.
start_tidegate() {
  : > "$work/tg.out"
  "${TIDEGATE_BIN:-./target/release/tidegate}" serve --config "$1" > "$work/tg.out" 2>> "$work/tg.err" &
  TG_PID=$!
  pids+=("$TG_PID")
  # START_TRIES × 10 ms for the listening line (a salvage can take longer).
  for _ in $(seq "${START_TRIES:-1000}"); do grep -q listening "$work/tg.out" 2>/dev/null && break; sleep 0.01; done
  INGRESS=$(sed -n 's/.*ingress=\([^ ]*\).*/\1/p' "$work/tg.out")
  ADMIN=$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' "$work/tg.out")
}

# start_nginx WORKERS: nginx in the background, with $work/nginx/nginx.conf
# made of the common head and, inside `http { }`, the servers and upstreams
# given on stdin.
start_nginx() {
  mkdir -p "$work/nginx"
  {
    cat <<CONF
worker_processes $1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
CONF
    cat
    echo "}"
  } > "$work/nginx/nginx.conf"
  nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
  pids+=($!)
}

# tidegate_config_head: the lines every load-test config starts with
# (ephemeral ports, data in $work, then $STORAGE_TOML: cluster.sh puts the
# queue on JetStream with it); what the caller appends is still inside
# [storage] until its next table.
tidegate_config_head() {
  cat <<CONF
[ingress]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[storage]
path = "$work/data"
${STORAGE_TOML:-}
CONF
}

# start_nats_cluster N: N nats-server processes (the project's, from
# target/ci-tools: scripts/install-test-deps.sh) in one JetStream cluster on
# free loopback ports, fsync before every acknowledgement; sets NATS_URLS
# (a TOML array) and waits until the cluster has a JetStream meta leader.
# jetstream_storage PREFIX: the [storage] keys for the cluster that
# start_nats_cluster started (replicas 3), streams under PREFIX; put in
# $STORAGE_TOML.
jetstream_storage() {
  printf 'backend = "jetstream"\n[storage.jetstream]\nurls = %s\nreplicas = 3\nstream_prefix = "%s"\n' "$NATS_URLS" "$1"
}

start_nats_cluster() {
  local n=$1 i j routes
  local nats=${NATS_SERVER:-./target/ci-tools/bin/nats-server}
  local ports=() cports=()
  for i in $(seq "$n"); do ports+=("$(free_port)"); cports+=("$(free_port)"); done
  NATS_URLS=""
  for i in $(seq 0 $((n - 1))); do
    routes=""
    for j in $(seq 0 $((n - 1))); do [ "$j" = "$i" ] || routes="$routes\"nats-route://127.0.0.1:${cports[$j]}\","; done
    cat > "$work/nats$i.conf" <<CONF
server_name: n$i
listen: "127.0.0.1:${ports[$i]}"
jetstream { store_dir: "$work/nats$i", sync_interval: always }
cluster { name: bench, listen: "127.0.0.1:${cports[$i]}", routes: [${routes%,}] }
CONF
    "$nats" -c "$work/nats$i.conf" 2> "$work/nats$i.log" &
    pids+=($!)
    NATS_URLS="$NATS_URLS\"nats://127.0.0.1:${ports[$i]}\","
  done
  NATS_URLS="[${NATS_URLS%,}]"
  for _ in $(seq 300); do grep -q "JetStream cluster new metadata leader\|Self is new JetStream cluster metadata leader" "$work"/nats*.log 2>/dev/null && break; sleep 0.1; done
  sleep 1
}

# relay_destination URL: the "relay" scenario's destination, no rate limit,
# 64 in flight, then $RELAY_EXTRA (cluster-review.sh adds a review
# station); run.sh measures it and relay-profile.sh profiles the same.
relay_destination() {
  cat <<CONF
[[destination]]
name = "relay"
url = "$1"
owner = "bench@example.com"
[destination.rate_limit]
rate = "unlimited"
max_in_flight = 64
${RELAY_EXTRA:-}
CONF
}

# start_nginx_202: nginx answering every request `202` with a queued-like
# body on $NGINX_PORT: the HTTP ceiling the ingest figures are set beside.
start_nginx_202() {
  NGINX_PORT=$(free_port)
  start_nginx auto <<CONF
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { client_max_body_size 2m; return 202 '{"id":"0","destination":"x","status":"queued"}'; }
  }
CONF
}

# start_nginx_200: one nginx worker answering every request `200` on
# $P_OK: the fast downstream the relay and ordering scripts deliver to.
start_nginx_200() {
  P_OK=$(free_port)
  start_nginx 1 <<CONF
  server { listen 127.0.0.1:$P_OK; location / { client_max_body_size 2m; return 200 '{"ok":true}'; } }
CONF
}
