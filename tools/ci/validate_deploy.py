#!/usr/bin/env python3
"""Checks deploy/ the way a cluster and a Prometheus would, without either.

1. Every Kubernetes manifest against the Kubernetes OpenAPI schemas (kubernetes-validate,
   strict, at each pinned version); prometheus-operator's kinds (ServiceMonitor,
   PrometheusRule), which those schemas lack, against structural schemas written here for the
   fields we use (unknown fields rejected).
2. The manifests against each other and the server: selectors, named ports, probes, the
   ConfigMap's server config (every key one configs/server.yaml documents), grace periods, the
   init container that calibrates into the model volume (same image, writable mount where the
   server reads the model read-only, a corpus the Dockerfile puts in the image).
3. The alert rules: `promtool check rules` and `promtool test rules` (deploy/prometheus/).
4. The Grafana dashboard's structure.
5. Metric names: a real sals-server (fixture model, loopback, ports the kernel picks) takes a
   short bounded sals-loadtest (which also makes it refuse one request), /metrics is scraped, and
   every metric the dashboard, the alerts and prometheus-adapter query must be one it exports.
6. loadtest/plot.py turns those load tests' JSON into PNG charts.

Usage: validate_deploy.py --build-dir build   (run by tools/ci/validate_deploy.sh)
       validate_deploy.py --extract-rules FILE  (the alerts as a plain Prometheus rule file)
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from check_report import fail, failures, ok

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "sals-dashboard.json"
ADAPTER_VALUES = DEPLOY / "prometheus-adapter" / "values.yaml"
RULES_TEST = DEPLOY / "prometheus" / "alerts_test.yaml"
FIXTURE_MODEL = ROOT / "tests" / "fixtures" / "llama31-bpe"
# The oldest Kubernetes we support (gRPC probes are GA since 1.27) and the newest schemas the
# pinned kubernetes-validate carries.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
# Series Prometheus itself makes for every target.
PROMETHEUS_SERIES = {"up"}


def load_manifests():
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.relative_to(ROOT), doc))
    return docs


def one(docs, kind):
    found = [d for _, d in docs if d["kind"] == kind]
    if len(found) != 1:
        fail(f"expected one {kind} in {MANIFESTS.relative_to(ROOT)}, found {len(found)}")
        return {}
    return found[0]


# ---- 1. schemas ----------------------------------------------------------------------------

DURATION = {"type": "string",
            "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                       r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                 "maxLength": 253},
        "namespace": {"type": "string"}, "labels": STRING_MAP, "annotations": STRING_MAP,
    },
}
LABEL_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {"matchLabels": STRING_MAP, "matchExpressions": {"type": "array"}},
}


def custom_resource(kind, spec):
    return {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {"apiVersion": {"const": "monitoring.coreos.com/v1"},
                       "kind": {"const": kind}, "metadata": METADATA, "spec": spec},
    }


# prometheus-operator's monitoring.coreos.com/v1 kinds, for the fields these manifests use
# (field names and types as its API reference documents them).
CUSTOM_SCHEMAS = {
    "ServiceMonitor": custom_resource("ServiceMonitor", {
        "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
        "properties": {
            "jobLabel": {"type": "string"},
            "targetLabels": {"type": "array", "items": {"type": "string"}},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "namespaceSelector": {"type": "object", "additionalProperties": False,
                                  "properties": {"any": {"type": "boolean"},
                                                 "matchNames": {"type": "array",
                                                                "items": {"type": "string"}}}},
            "selector": LABEL_SELECTOR,
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False,
                "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                "properties": {
                    "port": {"type": "string"},
                    "targetPort": {"type": ["string", "integer"]},
                    "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https"]},
                    "interval": DURATION, "scrapeTimeout": DURATION,
                    "honorLabels": {"type": "boolean"}, "honorTimestamps": {"type": "boolean"},
                    "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"},
                    "params": {"type": "object"},
                }}},
        }}),
    "PrometheusRule": custom_resource("PrometheusRule", {
        "type": "object", "required": ["groups"], "additionalProperties": False,
        "properties": {"groups": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "rules"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1}, "interval": DURATION,
                "limit": {"type": "integer"},
                "rules": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["expr"], "additionalProperties": False,
                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                    "properties": {
                        "alert": {"type": "string", "minLength": 1},
                        "record": {"type": "string", "minLength": 1},
                        "expr": {"type": ["string", "integer"]},
                        "for": DURATION, "keep_firing_for": DURATION,
                        "labels": STRING_MAP, "annotations": STRING_MAP,
                    }}},
            }}}}}),
}


def check_schemas(docs):
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate import utils as kv_utils

    for path, doc in docs:
        name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("kind") in CUSTOM_SCHEMAS:
            try:
                jsonschema.Draft202012Validator(CUSTOM_SCHEMAS[doc["kind"]]).validate(doc)
                ok(f"{name} matches its prometheus-operator structural schema")
            except jsonschema.ValidationError as e:
                where = ".".join(str(p) for p in e.absolute_path)
                fail(f"{name}: {where}: {e.message}")
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kv_utils.ValidationError as e:
                where = ".".join(str(p) for p in e.caught.absolute_path)
                fail(f"{name} against Kubernetes {version}: {where}: {e.caught.message}")
            except (kv_utils.SchemaNotFoundError, kv_utils.InvalidSchemaError) as e:
                fail(f"{name}: no schema at Kubernetes {version}: {e.message}")
        ok(f"{name} validates against Kubernetes {', '.join(KUBERNETES_VERSIONS)} (strict)")


# ---- 2. consistency ------------------------------------------------------------------------

def port_of(address):
    return int(str(address).rsplit(":", 1)[1])


def check_consistency(docs):
    deployment = one(docs, "Deployment")
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    pdb = one(docs, "PodDisruptionBudget")
    hpa = one(docs, "HorizontalPodAutoscaler")
    configmap = one(docs, "ConfigMap")
    pvc = one(docs, "PersistentVolumeClaim")
    if failures:
        return
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]

    def subset(small, big):
        return all(big.get(k) == v for k, v in small.items())

    def expect(condition, message):
        (ok if condition else fail)(message)

    expect(subset(selector, pod_labels), "the Deployment's selector matches its pod labels")
    expect(subset(service["spec"]["selector"], pod_labels), "the Service selects the pods")
    expect(pdb["spec"]["selector"]["matchLabels"] == selector,
           "the PodDisruptionBudget selects the Deployment's pods")
    expect(subset(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]),
           "the ServiceMonitor selects the Service")
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        expect(endpoint["port"] in service_ports,
               f"the ServiceMonitor's port '{endpoint['port']}' is a Service port")
    target = hpa["spec"]["scaleTargetRef"]
    expect(target["kind"] == "Deployment" and target["name"] == deployment["metadata"]["name"],
           "the HorizontalPodAutoscaler scales the Deployment")

    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Pods":
            name = metric["pods"]["metric"]["name"]
            expect(name in served,
                   f"the HPA's custom metric '{name}' is one prometheus-adapter serves")

    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for p in service["spec"]["ports"]:
        expect(p["targetPort"] in ports, f"the Service's targetPort '{p['targetPort']}' is named")
    limits = container["resources"].get("limits", {})
    expect(limits.get("nvidia.com/gpu") == 1, "the container asks for one nvidia.com/gpu")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container.get(probe, {})
        expect(spec.get("grpc", {}).get("port") == ports.get("grpc") and
               not spec["grpc"].get("service"),
               f"{probe} asks grpc.health.v1 on the gRPC port")

    # The server config in the ConfigMap: every key documented, ports and grace consistent.
    documented = yaml.safe_load((ROOT / "configs" / "server.yaml").read_text())
    args = container["args"]
    config_path = args[args.index("--config") + 1]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    config_mount = next((m for m in mounts.values()
                         if config_path.startswith(m["mountPath"].rstrip("/") + "/")), None)
    key = config_path.rsplit("/", 1)[1]
    expect(config_mount is not None and
           volumes[config_mount["name"]].get("configMap", {}).get("name") ==
           configmap["metadata"]["name"] and key in configmap["data"],
           f"--config {config_path} is the ConfigMap's '{key}'")
    config = yaml.safe_load(configmap["data"].get(key, "{}"))
    unknown = [f"{section}.{k}" for section, keys in config.items() for k in keys
               if k not in (documented.get(section) or {})]
    expect(not unknown, f"the ConfigMap's server config uses documented keys only {unknown or ''}")
    server = config.get("server", {})
    listen = server.get("listen", documented["server"]["listen"])
    metrics_listen = server.get("metrics_listen", documented["server"]["metrics_listen"])
    expect(port_of(listen) == ports.get("grpc"), "server.listen is the container's grpc port")
    expect(port_of(metrics_listen) == ports.get("metrics"),
           "server.metrics_listen is the container's metrics port")
    expect(config.get("model", {}).get("path") == mounts.get("models", {}).get("mountPath"),
           "model.path is where the models volume is mounted")
    expect(volumes.get("models", {}).get("persistentVolumeClaim", {}).get("claimName") ==
           pvc["metadata"]["name"], "the models volume is the PersistentVolumeClaim")
    check_calibration_init(pod, container, pvc, config, expect)
    grace = server.get("shutdown_grace_seconds", documented["server"]["shutdown_grace_seconds"])
    expect(pod["spec"]["terminationGracePeriodSeconds"] > grace,
           "terminationGracePeriodSeconds outlasts server.shutdown_grace_seconds")
    liveness = container["livenessProbe"]
    expect(liveness["periodSeconds"] * liveness["failureThreshold"] > grace,
           "liveness does not kill a pod that is draining (NOT_SERVING) within the grace")

    # TLS and auth: their Secret volumes are mounted, optional (off until created), and any file
    # the config names lies in one of them.
    for name in ("tls", "auth"):
        secret = volumes.get(name, {}).get("secret", {})
        expect(secret.get("secretName") and secret.get("optional") is True and name in mounts,
               f"the {name} Secret is mounted and optional (off until it exists)")
    for key, path in [(f"{section}.{k}", v) for section in ("tls", "auth")
                      for k, v in (config.get(section) or {}).items() if k.endswith("_file")]:
        expect(any(str(path).startswith(mounts[n]["mountPath"].rstrip("/") + "/")
                   for n in ("tls", "auth") if n in mounts),
               f"{key} ({path}) lies in a mounted Secret")

    # The NetworkPolicy: it selects the pods, admits the gRPC port, and admits the metrics port
    # only from chosen sources.
    policy = one(docs, "NetworkPolicy")
    if failures:
        return
    expect(subset(policy["spec"]["podSelector"]["matchLabels"], pod_labels),
           "the NetworkPolicy selects the pods")
    rules = policy["spec"].get("ingress", [])

    def admits(rule, port):
        listed = rule.get("ports")
        return not listed or any(p.get("port") in (port, ports.get(port)) for p in listed)

    expect(any(admits(r, "grpc") for r in rules), "the NetworkPolicy admits the gRPC port")
    metrics_rules = [r for r in rules if admits(r, "metrics")]
    expect(metrics_rules and all(r.get("from") for r in metrics_rules),
           "the NetworkPolicy admits the metrics port from chosen sources only")


CALIBRATION_FILE = "sals_calibration.safetensors"  # engine/sals/basis.h kCalibrationFileName


def check_calibration_init(pod, server, pvc, config, expect):
    """The init container `calibrate` writes the calibration file into the model volume once, as
    the server's SALS preset needs it."""
    inits = {c["name"]: c for c in pod["spec"].get("initContainers", [])}
    init = inits.get("calibrate")
    fmt = config.get("kv_cache", {}).get("format", "sals-25")
    if init is None:
        expect(fmt == "dense", f"kv_cache.format {fmt} needs the init container 'calibrate'")
        return
    model_path = config.get("model", {}).get("path", "")
    script = " ".join(init.get("command", []) + init.get("args", []))
    words = script.split()

    def flag(name):
        return words[words.index(name) + 1] if name in words[:-1] else None

    target = f"{model_path.rstrip('/')}/{CALIBRATION_FILE}"
    expect(init.get("image") == server.get("image"), "the calibrate init container runs the "
           "server's image")
    expect(f"test -f {target} ||" in script and "sals-calibrate" in script,
           f"the calibrate init container runs sals-calibrate only when {target} is missing")
    expect(flag("--model") == model_path and "--resume" in words and flag("--backend") == "cuda",
           f"it calibrates --model {model_path} on the GPU (--backend cuda), resumably (--resume)")
    mounts = {m["name"]: m for m in init.get("volumeMounts", [])}
    server_mounts = {m["name"]: m for m in server["volumeMounts"]}
    expect(mounts.get("models", {}).get("mountPath") == model_path and
           not mounts["models"].get("readOnly"),
           f"the calibrate init container mounts the models volume writable at {model_path}")
    expect(server_mounts.get("models", {}).get("readOnly") is True,
           "the server mounts the models volume read-only")
    expect(any(mode in pvc["spec"]["accessModes"] for mode in ("ReadWriteMany", "ReadWriteOnce")),
           "the model PersistentVolumeClaim is writable (for the calibration file)")
    expect(init.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") == 1,
           "the calibrate init container asks for the pod's nvidia.com/gpu")
    data = flag("--data") or ""
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = re.findall(r"^COPY --from=\S+ (.+) (\S+/)$", dockerfile, re.MULTILINE)
    in_image = any(data == dest + src.rsplit("/", 1)[1] for sources, dest in copied
                   for src in sources.split())
    expect(in_image, f"the calibrate init container's --data {data} is a file the Dockerfile "
           "copies into the image")


# ---- 3. alert rules ------------------------------------------------------------------------

def rule_groups(docs):
    return {"groups": one(docs, "PrometheusRule")["spec"]["groups"]}


def check_rules(docs):
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "sals-alerts.rules.yaml"
        rules.write_text(yaml.safe_dump(rule_groups(docs), sort_keys=False))
        shutil.copy(RULES_TEST, Path(tmp) / RULES_TEST.name)
        for what, command in (("promtool check rules", ["promtool", "check", "rules", rules]),
                              ("promtool test rules",
                               ["promtool", "test", "rules", Path(tmp) / RULES_TEST.name])):
            run = subprocess.run(command, capture_output=True, text=True, cwd=tmp)
            if run.returncode == 0:
                ok(f"{what}: {run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ''}")
            else:
                fail(f"{what}:\n{run.stdout}{run.stderr}")


# ---- 4. dashboard --------------------------------------------------------------------------

def dashboard_panels(dashboard):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def check_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
    ids = [p.get("id") for p in dashboard_panels(dashboard)]
    problems = []
    if len(ids) != len(set(ids)) or None in ids:
        problems.append("panel ids must be present and unique")
    for panel in dashboard_panels(dashboard):
        if "gridPos" not in panel:
            problems.append(f"panel {panel.get('id')} has no gridPos")
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets", [])
        if not targets or not all(t.get("expr") for t in targets):
            problems.append(f"panel '{panel.get('title')}' has no query")
        for text in [json.dumps(t) for t in targets] + [json.dumps(panel.get("datasource"))]:
            for var in re.findall(r"\$\{?(\w+)\}?", text):
                if not var.startswith("__") and var not in variables:
                    problems.append(f"panel '{panel.get('title')}' uses undefined ${var}")
    if problems:
        for p in problems:
            fail(f"{DASHBOARD.relative_to(ROOT)}: {p}")
    else:
        ok(f"{DASHBOARD.relative_to(ROOT)}: {len(ids)} panels, variables {sorted(variables)}")
    return dashboard


# ---- 5. metric names -----------------------------------------------------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "offset", "and", "or", "unless", "inf", "nan", "atan2"}


def promql_metric_names(expr):
    """Metric names an expression selects: what is left once strings, label matchers, ranges,
    grouping clauses, template variables, functions and keywords are taken out."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', " ", expr)
    s = re.sub(r"<<[^>]*>>", " ", s)  # prometheus-adapter templates
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)  # Grafana variables
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.])[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        if m.group(0) in PROMQL_WORDS or s[m.end():].lstrip().startswith("("):
            continue
        names.add(m.group(0))
    return names


def self_test_extractor():
    cases = {
        'histogram_quantile(0.99, sum by (le, pod) (rate(a:b_bucket{x="y"}[5m]))) > 5': {
            "a:b_bucket"},
        'sum(rate(c_total{pod=~"$pod"}[$__rate_interval])) by (code) / ignoring(code) d': {
            "c_total", "d"},
        "max(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)": set(),
        'up{job="x"} == 0 and on(pod) e offset 5m': {"up", "e"},
        "1e3 * f": {"f"},
    }
    for expr, want in cases.items():
        got = promql_metric_names(expr)
        assert got == want, f"extractor: {expr!r} gave {got}, want {want}"


def queried_metrics(docs, dashboard):
    """(where, metric) for every metric the dashboard, the alerts and the adapter query."""
    out = []
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            out += [(f"dashboard '{panel['title']}'", n) for n in promql_metric_names(target["expr"])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        inner = re.match(r"label_values\((.*),\s*\w+\)$", query.strip())
        if inner:
            out += [(f"dashboard variable ${variable['name']}", n)
                    for n in promql_metric_names(inner.group(1))]
    for group in rule_groups(docs)["groups"]:
        for rule in group["rules"]:
            out += [(f"rule {rule.get('alert') or rule.get('record')}", n)
                    for n in promql_metric_names(str(rule["expr"]))]
    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())
    for rule in adapter["rules"]["custom"]:
        for field in ("seriesQuery", "metricsQuery"):
            out += [(f"prometheus-adapter {field}", n) for n in promql_metric_names(rule[field])]
    return out


class Server:
    """sals-server on the fixture model, loopback, ports the kernel picks."""

    def __init__(self, build_dir, tmp):
        self.log_path = Path(tmp) / "server.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [build_dir / "server" / "sals-server", "--model", FIXTURE_MODEL, "--listen",
             "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.grpc_port = self.metrics_port = None
        deadline = time.time() + 120
        while time.time() < deadline and self.process.poll() is None:
            text = self.log_path.read_text()
            m = re.search(r"gRPC on port (\d+), metrics on port (\d+)", text)
            if m and "serving " in text:
                self.grpc_port, self.metrics_port = int(m.group(1)), int(m.group(2))
                return
            time.sleep(0.1)
        raise RuntimeError(f"sals-server did not start:\n{self.log_path.read_text()}")

    def scrape(self):
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def exported_metrics(text):
    """(every series name a query may use, the metric families) of a /metrics page."""
    names, families = set(), set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\w+)", line)
        if m:
            name, kind = m.groups()
            families.add(name)
            names.add(name)
            if kind == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
            elif kind == "summary":
                names |= {name + "_sum", name + "_count"}
        elif line and not line.startswith("#"):
            names.add(re.match(r"[^{ ]+", line).group(0))
    return names, families


def run_loadtests(build_dir, tmp, server):
    """Short bounded load tests for plot.py, and one request the server must refuse (so the
    rejection counter exists: prometheus-cpp exports a labelled family only once it has a
    series). Returns the JSON files written."""
    loadtest = build_dir / "loadtest" / "sals-loadtest"
    target = f"127.0.0.1:{server.grpc_port}"
    common = ["--target", target, "--timeout-s", "60", "--quiet"]
    synthetic = ["--prompt-len", "16:64", "--output-len", "8:32", "--warmup-requests", "2"]
    dataset = Path(tmp) / "refused.jsonl"
    dataset.write_text(json.dumps({"prompt": "word " * 1500, "output_tokens": 4000}) + "\n")
    runs = {
        "rate.json": [*synthetic, "--request-rate", "20,60", "--num-requests", "16",
                      "--duration-s", "20"],
        "concurrency.json": [*synthetic, "--concurrency", "1,4", "--num-requests", "16",
                             "--duration-s", "20"],
        "refused.json": ["--concurrency", "1", "--num-requests", "1", "--dataset", dataset,
                         "--warmup-requests", "0"],
    }
    written = []
    for name, args in runs.items():
        out = Path(tmp) / name
        run = subprocess.run([loadtest, *common, *args, "--json", out], capture_output=True,
                             text=True, timeout=120)
        if run.returncode != 0:
            fail(f"sals-loadtest {' '.join(map(str, args))}:\n{run.stdout}{run.stderr}")
            continue
        written.append(out)
    return written


def check_plot(json_files, tmp):
    plots = Path(tmp) / "plots"
    run = subprocess.run(["/usr/bin/python3", ROOT / "loadtest" / "plot.py", *json_files,
                          "--out", plots], capture_output=True, text=True, timeout=120)
    pngs = sorted(plots.glob("*.png")) if plots.exists() else []
    if run.returncode != 0 or len(pngs) < 2 or not all(p.stat().st_size > 1000 for p in pngs):
        fail(f"loadtest/plot.py made {[p.name for p in pngs]}:\n{run.stdout}{run.stderr}")
    else:
        ok(f"loadtest/plot.py drew {', '.join(p.name for p in pngs)}")


def check_metric_names(docs, dashboard, build_dir):
    self_test_extractor()
    queried = queried_metrics(docs, dashboard)
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(build_dir, tmp)
        try:
            json_files = run_loadtests(build_dir, tmp, server)
            exported, families = exported_metrics(server.scrape())
        finally:
            server.stop()
        check_plot(json_files, tmp)
    unknown = sorted({(where, name) for where, name in queried
                      if name not in exported and name not in PROMETHEUS_SERIES})
    for where, name in unknown:
        fail(f"{where} queries '{name}', which sals-server does not export")
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for _, name in queried} | {
        name for _, name in queried}
    if not unknown:
        ok(f"all {len({n for _, n in queried})} metrics queried by the dashboard, alerts and "
           f"prometheus-adapter are among the {len(families)} sals-server exports")
    unused = sorted(families - used)
    if unused:
        print(f"info exported, queried nowhere: {', '.join(unused)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", type=Path, help="a Release build with sals-server and "
                        "sals-loadtest (metric names and plot checks)")
    parser.add_argument("--extract-rules", type=Path,
                        help="write the PrometheusRule's groups as a Prometheus rule file, exit")
    args = parser.parse_args()
    docs = load_manifests()
    if args.extract_rules:
        args.extract_rules.write_text(yaml.safe_dump(rule_groups(docs), sort_keys=False))
        return 0
    check_schemas(docs)
    check_consistency(docs)
    check_rules(docs)
    dashboard = check_dashboard()
    if args.build_dir:
        check_metric_names(docs, dashboard, args.build_dir.resolve())
    else:
        print("skip metric names and plot (no --build-dir)")
    if failures:
        print(f"validate_deploy: {len(failures)} failed")
        return 1
    print("validate_deploy: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
