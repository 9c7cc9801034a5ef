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

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_tidegate CONFIG: runs the release binary, waits for its listening
# line, sets TG_PID, INGRESS and ADMIN.
start_tidegate() {
  : > "$work/tg.out"
  ./target/release/tidegate serve --config "$1" > "$work/tg.out" 2>> "$work/tg.err" &
  TG_PID=$!
  pids+=("$TG_PID")
  for _ in $(seq 1000); do grep -q listening "$work/tg.out" 2>/dev/null && break; sleep 0.01; done
  INGRESS=$(sed -n 's/.*ingress=\([^ ]*\).*/\1/p' "$work/tg.out")
  ADMIN=$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' "$work/tg.out")
}
