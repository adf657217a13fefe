"""Renders the Helm chart with Helm's own library (helm-python-sdk) and validates every
manifest against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields
are errors), for the default values and for a fleet deployment. The Prometheus Operator's
kinds (ServiceMonitor, PrometheusRule) have no schema there, so their shape and content are
checked here. Run by deploy/helm/check.sh (and so by .ci/run); exits non-zero on any failure.
"""
import json
import pathlib
import sys
import tomllib

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/switchboard"
KUBE_VERSION = "1.31.0"
# The server's own shutdown grace (server.shutdown_grace_ms default, in seconds).
SERVER_GRACE_S = 25

FLEET = {
    "fleet": {"redisUrlSecret": {"name": "redis", "key": "url"}, "artifactsClaim": "switchboard-artifacts"},
    "tracing": {"otlpEndpoint": "http://otel-collector.monitoring:4318"},
    "antiAffinity": "required",
    "autoscaling": {"enabled": False},
    "replicaCount": 3,
}


def render(values):
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name="sb", namespace="prod")
    docs = []
    for name, text in sorted(out.items()):
        if not name.endswith((".yaml", ".yml")):
            continue
        docs.extend((name, d) for d in yaml.safe_load_all(text) if d)
    return docs


def validate(docs):
    kinds = {}
    for name, d in docs:
        kind = d["kind"]
        kinds.setdefault(kind, []).append(d)
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            assert d["metadata"]["name"] and d["spec"], f"{name}: empty {kind}"
            continue
        try:
            kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise SystemExit(f"{name}: {kind} {d['metadata']['name']}: {e.message} at {list(e.path)}")
    return kinds


def check_deployment(dep, fleet):
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 120
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "grpc" in c["livenessProbe"]
    pre = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pre + SERVER_GRACE_S, "kill grace below preStop + server grace"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert env["SWITCHBOARD_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
    assert env["SWITCHBOARD_API_KEYS_FILE"]["value"].startswith("/etc/switchboard/keys/")
    assert c["envFrom"][0]["secretRef"]["name"], "provider keys from a Secret"
    assert "--config=/etc/switchboard/catalog/switchboard.toml" in c["args"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert "subPath" not in mounts["catalog"], "a subPath mount would never see catalog updates"
    aff = spec["affinity"]["podAntiAffinity"]
    if fleet:
        assert dep["spec"]["replicas"] == 3
        assert aff["requiredDuringSchedulingIgnoredDuringExecution"]
        assert env["SWITCHBOARD_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "redis"
        assert env["SWITCHBOARD_ARTIFACT_URL"]["value"] == "file:///var/lib/switchboard/artifacts"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].startswith("http://")
    else:
        assert "replicas" not in dep["spec"], "the HPA owns the replica count"
        assert aff["preferredDuringSchedulingIgnoredDuringExecution"]
        assert "SWITCHBOARD_REDIS_URL" not in env


def check(values, fleet):
    docs = render(values)
    kinds = validate(docs)
    for k in ["Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy",
              "ServiceMonitor", "PrometheusRule"]:
        assert k in kinds, f"no {k} rendered"
    assert ("HorizontalPodAutoscaler" in kinds) != fleet
    check_deployment(kinds["Deployment"][0], fleet)
    services = {s["metadata"]["name"]: s for s in kinds["Service"]}
    assert services["sb-switchboard-headless"]["spec"]["clusterIP"] == "None"
    maps = {m["metadata"]["name"]: m for m in kinds["ConfigMap"]}
    catalog = tomllib.loads(maps["sb-switchboard-catalog"]["data"]["switchboard.toml"])
    assert catalog == tomllib.loads((ROOT / "config/switchboard.toml").read_text()), "catalog"
    dash = json.loads(maps["sb-switchboard-dashboard"]["data"]["switchboard-dashboard.json"])
    assert dash["uid"] == "switchboard-overview"
    rules = kinds["PrometheusRule"][0]["spec"]["groups"]
    assert rules == yaml.safe_load((ROOT / "deploy/observability/alerts.yml").read_text())["groups"]
    mon = kinds["ServiceMonitor"][0]["spec"]
    metrics_svc = services["sb-switchboard-metrics"]["metadata"]["labels"]
    assert all(metrics_svc.get(k) == v for k, v in mon["selector"]["matchLabels"].items())
    return len(docs)


def main():
    lint = helm.lint(str(CHART))
    # Severity 1 is informational (e.g. "icon is recommended"); warnings and errors fail.
    if lint["errors"] or any(m["severity"] > 1 for m in lint["messages"]):
        raise SystemExit(f"helm lint: {lint}")
    n = check({}, fleet=False)
    m = check(FLEET, fleet=True)
    try:
        render({"apiKeys": {"existingSecret": ""}})
    except helm.HelmError as e:
        assert "apiKeys.existingSecret is required" in str(e), e
    else:
        raise SystemExit("a chart without API keys or allowUnauthenticated rendered")
    print(f"chart OK: {n} manifests (default values), {m} (fleet values), valid for Kubernetes {KUBE_VERSION}")


if __name__ == "__main__":
    sys.exit(main())
