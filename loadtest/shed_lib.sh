# Shared by the overload scripts (shed.sh, shed_rate.sh; sourced after lib.sh): the
# node they overload and the load they drive it with, so their figures compare.
#
# After sourcing: $P and $A are the node's public and admin ports; `start_node
# [adaptive]` starts a node on core 0 (embedded default, L1 of 20,000 entries, so
# uniform reads of 1,000,000 members are store reads: the path shed first; the
# adaptive shedding on unless "false"), sets $NODE and waits for it; `lt ARGS`
# runs loadtest on core 1 against it, entitlement reads of uniform random members.
# STORE_URL=postgres://… puts the node on that store instead (migrated and seeded with
# 1,000,000 members beforehand: `readtier migrate; readtier seed --members 1000000`),
# so its fills are bound by the store rather than by its own core.

P=$(port); A=$(port); G=$(port)
start_node() {
  READTIER_DATA_DIR=$tmp READTIER_LISTEN=127.0.0.1:$P READTIER_ADMIN_LISTEN=127.0.0.1:$A READTIER_GRPC_LISTEN=127.0.0.1:$G \
    READTIER_STORE_URL=${STORE_URL:-} READTIER_L1_CAPACITY=20000 READTIER_HTTP_ADAPTIVE_WAITING=${1:-true} RUST_LOG=warn \
    taskset -c 0 "$BIN/readtier" >>"$tmp/node.log" 2>&1 &
  NODE=$!
  pids+=($NODE)
  for _ in $(seq 1 240); do curl -s -o /dev/null "http://127.0.0.1:$P/healthz" && break; sleep 0.5; done
}
lt() { taskset -c 1 "$BIN/loadtest" --target "http://127.0.0.1:$P" --mix plans=0,entitlement=1,authorize=0 \
  --zipf 0 --members 1000000 --progress 0 "$@"; }
