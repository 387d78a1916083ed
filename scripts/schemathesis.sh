#!/usr/bin/env bash
# Schemathesis against a live node with the node's own OpenAPI document (GET
# /openapi.json, built from docs/openapi.yaml): every operation of each listener, its
# examples, generated boundary and malformed inputs (coverage phase) and random ones
# (fuzzing), with every check that applies (scripts/schemathesis.toml): no server
# error, no undocumented status, content type or header, no answer that breaks its
# schema, schema-valid input accepted, invalid input rejected with a 4xx, 405 with a
# true `Allow` on other methods.
#
# The node runs on the embedded default store in a temporary directory, on free
# ports, seeded with 200 members so entitlement and authorize answer 200s too (the
# document's examples name member 42). Bounded: ST_MAX_EXAMPLES cases per operation
# and phase (default 100; about 10 s of testing on a 2-core machine), a fixed seed
# (ST_SEED, default 1) so a run can be repeated exactly, and each run under `timeout`.
#
# First the served document is validated against the OpenAPI 3.1 schema
# (openapi-spec-validator).
#
# Installs the pinned tools (scripts/schemathesis-requirements.txt) into a
# virtualenv under ~/.cache/readtier-ci unless it is there already. Builds the debug
# binary (or READTIER_BIN). Exit 1 on any failure, with Schemathesis's report.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "schemathesis.sh: $*"; }
. scripts/lib.sh
ensure_venv schemathesis scripts/schemathesis-requirements.txt "${SCHEMATHESIS_VENV:-}" -c 'import schemathesis'

start_node
public=$(echo "$listening" | sed -E 's/^readtier listening on (http:[^ ]+) .*/\1/')
admin=$(echo "$listening" | sed -E 's/.*\(admin (http:[^)]+)\).*/\1/')
log "node at $public (admin $admin)"

# The served document must be valid OpenAPI 3.1 (a misspelt key is otherwise ignored,
# by Schemathesis too).
log "validating $admin/openapi.json against the OpenAPI 3.1 schema"
"$venv/bin/python" - "$admin/openapi.json" <<'PY'
import json, sys, urllib.request
from openapi_spec_validator import validate
validate(json.load(urllib.request.urlopen(sys.argv[1])))
print("schemathesis.sh: the document is valid OpenAPI", flush=True)
PY

status=0
run() { # TAG BASE_URL
  log "operations tagged $1, against $2"
  # From the node's directory: Schemathesis's caches (crashes it replays, examples)
  # go away with it, so every run is the same run.
  (cd "$work" && timeout "${ST_TIMEOUT:-300}" "$venv/bin/st" --config-file "$root/scripts/schemathesis.toml" \
    run "$2/openapi.json" --url "$2" --include-tag "$1" \
    --phases examples,coverage,fuzzing \
    --max-examples "${ST_MAX_EXAMPLES:-100}" --seed "${ST_SEED:-1}" \
    --request-timeout 10 --no-color) || status=1
}
run public "$public"
run admin "$admin"

# The node itself must have survived every input.
kill -0 "$node_pid" 2>/dev/null || { cat "$work/node.log"; log "the node died under test"; exit 1; }
if grep -q 'panicked' "$work/node.log"; then
  cat "$work/node.log"; log "the node panicked"; exit 1
fi
exit $status
