# Shared by the scripts that check a live node from another language
# (scripts/schemathesis.sh, scripts/grpc_check.sh); sourced from the repository root
# after `log` is defined. After sourcing: $root is the repository root; $work a
# temporary directory, removed on exit with the node started by `start_node`.

root=$PWD

# Installs a pinned requirements file into a virtualenv under ~/.cache/readtier-ci
# unless it is there and `check` runs in it; sets $venv.
#   ensure_venv NAME REQUIREMENTS DIR-OVERRIDE CHECK...
# NAME's pinned version (`NAME==x` in REQUIREMENTS) and the file's hash name the
# directory; DIR-OVERRIDE, if non-empty, is used instead.
ensure_venv() {
  local name=$1 reqs=$2 override=$3 version
  shift 3
  version=$(sed -n "s/^$name==//p" "$reqs")
  venv=${override:-$HOME/.cache/readtier-ci/$name-$version-$(sha256sum "$reqs" | cut -c1-12)}
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" "$@" >/dev/null 2>&1; then
    log "installing $name $version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$reqs"
  fi
}

# The node binary: $READTIER_BIN, else the debug build (built here). Sets $bin. The
# variable is then unset: a node refuses unknown READTIER_* keys.
bin=${READTIER_BIN:-}
unset READTIER_BIN
if [ -z "$bin" ]; then
  cargo build -q --bin readtier
  bin=${CARGO_TARGET_DIR:-target}/debug/readtier
fi

work=$(mktemp -d)
node_pid=
cleanup() {
  if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Starts `readtier serve` on the embedded store in $work, every listener on a free
# port, 200 members seeded, with any further VAR=value given; waits (up to a minute)
# for its "listening" line and sets $listening to it.
start_node() {
  env -u READTIER_CONFIG READTIER_LISTEN=127.0.0.1:0 READTIER_ADMIN_LISTEN=127.0.0.1:0 \
    READTIER_GRPC_LISTEN=127.0.0.1:0 READTIER_DATA_DIR="$work" READTIER_SEED_MEMBERS=200 \
    "$@" "$bin" serve >"$work/node.log" 2>&1 &
  node_pid=$!
  listening=
  for _ in $(seq 1 600); do
    listening=$(grep -m1 '^readtier listening on ' "$work/node.log" || true)
    [ -n "$listening" ] && return 0
    kill -0 "$node_pid" 2>/dev/null || { cat "$work/node.log"; log "the node exited"; exit 1; }
    sleep 0.1
  done
  cat "$work/node.log"
  log "the node did not start listening"
  exit 1
}
