#!/usr/bin/env bash
# Checks everything in deploy/ (called from .ci/run; run it by hand the same way):
#  1. builds the kustomizations (base and the example overlay) with kubectl's kustomize:
#     the machine's kubectl if it has one, and always Debian's kubernetes-client (an
#     old kustomize: the kustomizations must stay within what both read);
#  2. validates every object of every rendering against the Kubernetes schemas (1.30
#     and 1.37, strict), the ServiceMonitor against the Prometheus Operator's CRD, and
#     readtier's rules for running it (deploy/validate.py), then breaks a rendering in
#     twelve ways and fails unless each break is caught;
#  3. `promtool check rules` and `promtool test rules` on deploy/prometheus/, and parses
#     every query of the Grafana dashboard with promtool.
# Tools are pinned: Python packages in deploy/requirements.txt (a virtualenv under the
# cache directory), Debian packages below (unpacked into the cache, not installed).
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_KUBECTL="kubernetes-client=1.20.5+really1.20.2-1.1+deb12u1"
DEBIAN_PROMETHEUS="prometheus=2.42.0+ds-5+deb12u1"
cache=${DEPLOY_CHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/readtier-deploy-check}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mkdir -p "$cache"
log() { echo "deploy: $*"; }

# A binary from a pinned Debian package, unpacked once into the cache.
debian_tool() {
  local pkg=$1 bin=$2 dir="$cache/deb/${1//[=+:]/_}"
  if [ ! -x "$dir/usr/bin/$bin" ]; then
    local tmp
    tmp=$(mktemp -d)
    if ! (cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1); then
      apt-get update -qq >/dev/null
      (cd "$tmp" && apt-get download "$pkg" >/dev/null)
    fi
    mkdir -p "$dir"
    dpkg-deb -x "$tmp"/*.deb "$dir"
    rm -rf "$tmp"
  fi
  echo "$dir/usr/bin/$bin"
}

# The Python tools.
venv="$cache/venv"
stamp="$venv/requirements.txt"
if ! cmp -s deploy/requirements.txt "$stamp" 2>/dev/null; then
  log "installing deploy/requirements.txt into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r deploy/requirements.txt
  cp deploy/requirements.txt "$stamp"
fi
py="$venv/bin/python"

kubectls=("$(debian_tool "$DEBIAN_KUBECTL" kubectl)")
if command -v kubectl >/dev/null 2>&1; then
  kubectls+=("$(command -v kubectl)")
fi
promtool=$(debian_tool "$DEBIAN_PROMETHEUS" promtool)

rendered=()
for k in "${kubectls[@]}"; do
  v=$("$k" version --client 2>/dev/null | grep -o 'v[0-9][0-9.]*' | head -n 1)
  for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
    dir=${dir%/}
    f="$out/$(echo "$dir" | tr / _)-kubectl-$v.yaml"
    log "kubectl $v kustomize $dir"
    # Current kustomize warns of the older fields used on purpose (see the kustomizations).
    "$k" kustomize "$dir" >"$f" 2> >(grep -v "is deprecated" >&2)
    rendered+=("$f")
  done
done
log "validating ${#rendered[@]} renderings"
"$py" deploy/validate.py check "${rendered[@]}"
log "breaking a rendering on purpose: every break must be caught"
"$py" deploy/validate.py self-test "${rendered[-1]}"

log "promtool $("$promtool" --version 2>&1 | head -n 1 | awk '{print $3}')"
"$promtool" check rules deploy/prometheus/alerts.yaml
"$promtool" test rules deploy/prometheus/alerts_test.yaml
"$py" deploy/validate.py dashboard-rules deploy/grafana/readtier.json >"$out/dashboard-rules.yaml"
"$promtool" check rules "$out/dashboard-rules.yaml"
log "ok"
