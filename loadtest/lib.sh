# Shared by the loadtest scripts (sourced, from the repository root): the binaries,
# a temporary directory and the processes cleaned up on exit, free ports.
#
# After sourcing: $BIN is an absolute directory holding readtier, loadtest and
# baseline (BIN=dir as given, else target/release, built first); $tmp a temporary
# directory; `pids+=($!)` registers a process killed on exit; define
# `cleanup_extra` before exit for more (it runs after the kills).

if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p readtier -p loadtest
  BIN=target/release
fi
BIN=$(cd "$BIN" && pwd)
tmp=$(mktemp -d)
pids=()
cleanup_extra() { :; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  cleanup_extra
  rm -rf "$tmp"
}
trap cleanup EXIT

# A free TCP port on loopback.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (up to 2 minutes) until something answers HTTP on the port.
wait_port() {
  for _ in $(seq 1 600); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.2; done
  echo "nothing on port $1" >&2
  exit 1
}
