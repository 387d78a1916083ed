#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests (the output of `kubectl kustomize`) for
deploy/check.sh, exit 1 naming every problem:

- every object against the Kubernetes API's own schemas (kubernetes-validate, strict:
  unknown fields are errors), for each version given; a kind with no schema is an
  error, except the ServiceMonitor, which is checked against the Prometheus Operator's
  CRD (models generated from its schema: types, patterns, required fields) and must
  round-trip through it unchanged (no unknown field);
- readtier's own rules for running it (`policy`): probes on the admin port with the
  right paths, a grace period above drain + shutdown, non-root, read-only root, the
  data dir on an emptyDir, resource requests, the relay pair naming itself by pod.

`validate.py check FILE...` validates; `validate.py self-test FILE` breaks a valid
rendering in several ways and fails unless each break is caught (so CI shows the
checks can fail); `validate.py dashboard-rules JSON` prints a Prometheus rules file
with one recording rule per dashboard query, for `promtool check rules` to parse.
"""
import copy
import json
import re
import sys
import tomllib

import yaml

K8S_VERSIONS = ["1.30", "1.37"]


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def schema_errors(doc, versions):
    import kubernetes_validate

    kn = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if doc.get("kind") == "ServiceMonitor":
        return [f"{kn}: {e}" for e in service_monitor_errors(doc)]
    errors = []
    for v in versions:
        try:
            kubernetes_validate.validate(doc, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            errors.append(f"{kn} (Kubernetes {v}): {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{kn}: no schema for {doc.get('apiVersion')} {doc.get('kind')} in Kubernetes {v}")
    return errors


def service_monitor_errors(doc):
    import pydantic
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        return [f"apiVersion {doc.get('apiVersion')} is not monitoring.coreos.com/v1"]
    try:
        m = ServiceMonitor.model_validate(doc)
    except pydantic.ValidationError as e:
        return [str(e).replace("\n", "; ")]
    back = m.model_dump(by_alias=True, exclude_unset=True, mode="json")
    if back != doc:
        return [f"fields the CRD does not define (dropped by its schema): {unknown(doc, back)}"]
    return []


def unknown(doc, back, path=""):
    """The paths present in `doc` but not in `back`."""
    if isinstance(doc, dict) and isinstance(back, dict):
        out = []
        for k, v in doc.items():
            if k not in back:
                out.append(f"{path}/{k}")
            else:
                out.extend(unknown(v, back[k], f"{path}/{k}"))
        return out
    if isinstance(doc, list) and isinstance(back, list):
        return [p for i, (a, b) in enumerate(zip(doc, back)) for p in unknown(a, b, f"{path}/{i}")]
    return [] if doc == back else [f"{path} ({doc!r} read as {back!r})"]


def seconds(text):
    """A readtier duration ("250ms", "5s", "2m", "1h") in seconds."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def image_env(dockerfile="Dockerfile"):
    """The `ENV` settings of the image's last stage: they sit between the configuration
    file and the pod's own variables (the image sets READTIER_ADMIN_LISTEN to loopback,
    which a file cannot undo)."""
    with open(dockerfile) as f:
        text = f.read().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            env = {}
        elif words[:1] == ["ENV"]:
            for w in words[1:]:
                k, _, v = w.partition("=")
                env[k] = v
    return env


def policy_errors(docs):
    """readtier's rules for the objects of one rendering (objects too malformed to read
    them in are an error of their own)."""
    try:
        return _policy_errors(docs)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, StopIteration) as e:
        return [f"policy: objects too malformed to check: {type(e).__name__} {e}"]


def _policy_errors(docs):
    errs = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    def component(kind, name):
        found = [d for d in by_kind.get(kind, [])
                 if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == name]
        if len(found) != 1:
            errs.append(f"expected one {kind} with component={name}, found {len(found)}")
            return None
        return found[0]

    serve = component("Deployment", "serve")
    relay = component("Deployment", "relay")
    migrate = component("Job", "migrate")
    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}

    def pod_of(obj):
        return obj["spec"]["template"]["spec"]

    def config_of(obj, container):
        """The effective readtier settings a container runs with: its configuration file
        (READTIER_CONFIG, from a ConfigMap volume), then its READTIER_* variables."""
        env = {e["name"]: e for e in container.get("env", [])}
        path = env.get("READTIER_CONFIG", {}).get("value")
        if not path:
            errs.append(f"{obj['metadata']['name']}: no READTIER_CONFIG")
            return {}, env
        pod = pod_of(obj)
        for mount in container.get("volumeMounts", []):
            prefix = mount["mountPath"].rstrip("/") + "/"
            if not path.startswith(prefix):
                continue
            vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            cm = configmaps.get(vol.get("configMap", {}).get("name"))
            key = path[len(prefix):]
            if cm is None or key not in cm.get("data", {}):
                errs.append(f"{obj['metadata']['name']}: {path} is not a key of a ConfigMap in the rendering")
                return {}, env
            return tomllib.loads(cm["data"][key]), env
        errs.append(f"{obj['metadata']['name']}: {path} is on no mounted volume")
        return {}, env

    baked = image_env()

    def setting(cfg, env, key):
        """A key's value: the pod's READTIER_<KEY> if set, else the image's, else the
        file's, else None."""
        var = "READTIER_" + key.upper().replace(".", "_")
        if var in env and "value" in env[var]:
            return env[var]["value"]
        if var in baked:
            return baked[var]
        node = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    for obj in filter(None, [serve, relay, migrate]):
        name = obj["metadata"]["name"]
        pod = pod_of(obj)
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            errs.append(f"{name}: pod securityContext.runAsNonRoot is not true")
        if pod.get("enableServiceLinks") is not False:
            errs.append(f"{name}: enableServiceLinks is not false")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                errs.append(f"{name}/{c['name']}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                errs.append(f"{name}/{c['name']}: allowPrivilegeEscalation is not false")
            req = c.get("resources", {}).get("requests", {})
            if "cpu" not in req or "memory" not in req:
                errs.append(f"{name}/{c['name']}: no cpu and memory requests")

    if serve:
        pod = pod_of(serve)
        c = pod["containers"][0]
        cfg, env = config_of(serve, c)
        drain = seconds(setting(cfg, env, "http.drain_delay") or "0s")
        shutdown = seconds(setting(cfg, env, "http.shutdown_timeout") or "10s")
        if drain < 5:
            errs.append(f"serve: http.drain_delay is {drain}s, under 5s")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace <= drain + shutdown:
            errs.append(f"serve: terminationGracePeriodSeconds {grace} is not above "
                        f"http.drain_delay + http.shutdown_timeout ({drain + shutdown}s)")
        admin = setting(cfg, env, "admin_listen") or "127.0.0.1:9090"
        host, _, port = admin.rpartition(":")
        if host.startswith("127.") or host in ("localhost", "[::1]"):
            errs.append(f"serve: admin_listen {admin} is loopback: the kubelet cannot probe it")
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        for probe, path in [("startupProbe", "/healthz"), ("readinessProbe", "/readyz"),
                            ("livenessProbe", "/healthz")]:
            p = c.get(probe, {}).get("httpGet")
            if not p:
                errs.append(f"serve: no {probe} over HTTP")
                continue
            if p.get("path") != path:
                errs.append(f"serve: {probe} asks {p.get('path')}, not {path}")
            target = ports.get(p["port"], p["port"])
            if str(target) != port:
                errs.append(f"serve: {probe} probes port {p['port']}, not the admin listener's {port}")
        grpc = setting(cfg, env, "grpc_listen")
        grpc = "0.0.0.0:50051" if grpc is None else grpc
        if grpc.strip():
            grpc_port = grpc.rpartition(":")[2]
            if str(ports.get("grpc")) != grpc_port:
                errs.append(f"serve: the containerPort named grpc is {ports.get('grpc')}, "
                            f"not the gRPC listener's {grpc_port} (grpc_listen {grpc})")
        data_dir = setting(cfg, env, "data_dir") or "./var"
        mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"].rstrip("/") == data_dir.rstrip("/")), None)
        vol = mount and next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), None)
        if not vol or "emptyDir" not in vol:
            errs.append(f"serve: data_dir {data_dir} is not on an emptyDir")

    if relay:
        if relay["spec"].get("replicas") != 2:
            errs.append(f"relay: {relay['spec'].get('replicas')} replicas, not 2 (one active, one standby)")
        c = pod_of(relay)["containers"][0]
        args = c.get("args", [])
        holder = args[args.index("--id") + 1] if "--id" in args and args.index("--id") + 1 < len(args) else None
        env = {e["name"]: e for e in c.get("env", [])}
        var = re.fullmatch(r"\$\((\w+)\)", holder or "")
        field = var and env.get(var.group(1), {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if args[:1] != ["relay"] or field != "metadata.name":
            errs.append(f"relay: args {args}: the lease holder must be the pod's name (--id $(POD_NAME), "
                        "POD_NAME from the downward API metadata.name)")
        # Its admin listener reachable (not loopback) on the port named admin, and a
        # liveness probe on its /healthz (which fails while it stalls).
        listen = env.get("READTIER_RELAY_ADMIN_LISTEN", {}).get("value", "127.0.0.1:0")
        rports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
        if listen.startswith("127.") or listen.startswith("[::1]") or str(rports.get("admin")) != listen.rpartition(":")[2]:
            errs.append(f"relay: the admin listener {listen} is not on the containerPort named admin "
                        f"({rports.get('admin')}) on all interfaces")
        live = c.get("livenessProbe", {}).get("httpGet", {})
        if live.get("path") != "/healthz" or live.get("port") != "admin":
            errs.append(f"relay: no liveness probe on /healthz at the admin port ({live})")

    if migrate and pod_of(migrate)["containers"][0].get("args") != ["migrate"]:
        errs.append("migrate: the Job does not run `readtier migrate`")

    if serve:
        labels = pod_of(serve) and serve["spec"]["template"]["metadata"]["labels"]

        def selects(selector):
            return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

        services = [s for s in by_kind.get("Service", []) if selects(s["spec"].get("selector"))]
        if not any(p.get("targetPort") == "http" for s in services for p in s["spec"]["ports"]):
            errs.append("no Service routes the serving pods' http port")
        if not any(p.get("targetPort") == "grpc" for s in services for p in s["spec"]["ports"]):
            errs.append("no Service routes the serving pods' grpc port")
        if not any(selects(p["spec"].get("selector", {}).get("matchLabels")) for p in by_kind.get("PodDisruptionBudget", [])):
            errs.append("no PodDisruptionBudget covers the serving pods")
        # One ServiceMonitor for the serving pods and one for the relays, each
        # reaching /metrics on the admin port of a Service of its pods.
        monitors = by_kind.get("ServiceMonitor", [])
        for component, deployment in (("serve", serve), ("relay", relay)):
            if not deployment:
                continue
            pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
            mine = [s for s in by_kind.get("Service", [])
                    if s["spec"].get("selector")
                    and all(pod_labels.get(k) == v for k, v in s["spec"]["selector"].items())]
            reaching = []
            for sm in monitors:
                want = sm["spec"]["selector"].get("matchLabels", {})
                targets = [s for s in mine
                           if all(s["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
                names = {p.get("name"): p for s in targets for p in s["spec"]["ports"]}
                if targets and all(
                    (p := names.get(ep.get("port"))) is not None and p.get("targetPort") == "admin"
                    and ep.get("path") == "/metrics"
                    for ep in sm["spec"]["endpoints"]
                ):
                    reaching.append(sm)
            if len(reaching) != 1:
                errs.append(f"{len(reaching)} ServiceMonitors reach /metrics on the admin port of a Service "
                            f"of the {component} pods, not 1")
        if len(monitors) != 2:
            errs.append(f"{len(monitors)} ServiceMonitors, not 2 (the serving pods, the relays)")
    return errs


def check(paths):
    errors = []
    for path in paths:
        docs = load(path)
        for d in docs:
            errors += [f"{path}: {e}" for e in schema_errors(d, K8S_VERSIONS)]
        errors += [f"{path}: {e}" for e in policy_errors(docs)]
    return errors


def self_test(path):
    """Breaks a valid rendering in ways the checks must catch; returns what was missed."""
    docs = load(path)
    assert not check([path]), "self-test needs a valid rendering"

    def find(kind, component):
        for d in docs:
            if d["kind"] == kind and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component:
                return d
        raise SystemExit(f"self-test: no {kind} {component}")

    def serve_container(d):
        return d["spec"]["template"]["spec"]["containers"][0]

    breaks = {
        "replicas as text": lambda ds: find("Deployment", "serve")["spec"].update(replicas="three"),
        "unknown field in a container": lambda ds: serve_container(find("Deployment", "serve")).update(imagePullPolicyy="Always"),
        "probe port a list": lambda ds: serve_container(find("Deployment", "serve"))["livenessProbe"]["httpGet"].update(port=[9090]),
        "ServiceMonitor interval not a duration": lambda ds: find("ServiceMonitor", "serve")["spec"]["endpoints"][0].update(interval="15 seconds"),
        "ServiceMonitor unknown field": lambda ds: find("ServiceMonitor", "serve")["spec"].update(endpointz=[]),
        "grace period not above drain + shutdown": lambda ds: find("Deployment", "serve")["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=15),
        "readiness on /healthz": lambda ds: serve_container(find("Deployment", "serve"))["readinessProbe"]["httpGet"].update(path="/healthz"),
        "root filesystem writable": lambda ds: serve_container(find("Deployment", "serve"))["securityContext"].update(readOnlyRootFilesystem=False),
        "relay holder not the pod name": lambda ds: serve_container(find("Deployment", "relay")).update(args=["relay"]),
        "admin listener left to the image (loopback)": lambda ds: serve_container(find("Deployment", "serve")).update(
            env=[e for e in serve_container(find("Deployment", "serve"))["env"] if e["name"] != "READTIER_ADMIN_LISTEN"]),
        "grpc containerPort not the listener's": lambda ds: next(
            p for p in serve_container(find("Deployment", "serve"))["ports"] if p["name"] == "grpc").update(containerPort=50052),
        "service links on": lambda ds: find("Deployment", "serve")["spec"]["template"]["spec"].update(enableServiceLinks=True),
        "relay without its liveness probe": lambda ds: serve_container(find("Deployment", "relay")).pop("livenessProbe"),
        "relay admin listener on loopback": lambda ds: serve_container(find("Deployment", "relay")).update(
            env=[e for e in serve_container(find("Deployment", "relay"))["env"] if e["name"] != "READTIER_RELAY_ADMIN_LISTEN"]),
        "relay ServiceMonitor on the wrong port": lambda ds: find("ServiceMonitor", "relay")["spec"]["endpoints"][0].update(port="http"),
    }
    missed = []
    original = docs
    for name, brk in breaks.items():
        docs = copy.deepcopy(original)
        brk(docs)
        errs = [e for d in docs for e in schema_errors(d, K8S_VERSIONS)] + policy_errors(docs)
        if errs:
            print(f"self-test: {name}: caught ({errs[0][:150]})")
        else:
            missed.append(name)
    return missed


def dashboard_rules(path):
    """One recording rule per query of a Grafana dashboard, its variables replaced by
    plausible values, so promtool can parse every expression."""
    dash = json.load(open(path))
    rules = []
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"]
            expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
            expr = re.sub(r"\$\{?(\w+)\}?", "x", expr)
            rules.append({"record": f"dashboard:panel_{panel['id']}:{t.get('refId', 'A')}", "expr": expr})
    return {"groups": [{"name": "dashboard", "rules": rules}]}


def main(argv):
    if len(argv) < 3:
        raise SystemExit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "check":
        errors = check(args)
        for e in errors:
            print(e)
        if errors:
            return 1
        print(f"manifests ok: {', '.join(args)} (Kubernetes {' and '.join(K8S_VERSIONS)}, strict; readtier's rules)")
        return 0
    if cmd == "self-test":
        missed = self_test(args[0])
        for m in missed:
            print(f"self-test: {m}: NOT caught")
        return 1 if missed else 0
    if cmd == "dashboard-rules":
        yaml.safe_dump(dashboard_rules(args[0]), sys.stdout, sort_keys=False)
        return 0
    raise SystemExit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
