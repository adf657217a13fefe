#!/usr/bin/env python3
"""Writes deploy/observability/switchboard-dashboard.json, the Grafana dashboard (schema 39,
Prometheus data source chosen at import through the DS_PROMETHEUS variable). Edit the panels
here and run it again; tests/deploy checks that every metric it names exists in a live
server's /metrics."""
import json
import pathlib

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
W = 12  # half the grid's width


def panel(title, targets, unit="short", kind="timeseries", w=W, h=8, desc=""):
    return {
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)}
            for i, (e, l) in enumerate(targets)
        ],
    }


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"w": 24, "h": 1}, "panels": []}


def q(p, metric, by):
    return (
        f'histogram_quantile({p}, sum by (le, {by}) (rate({metric}_bucket{{instance=~"$instance"}}[$__rate_interval])))',
        f"p{int(p * 100)} {{{{{by}}}}}",
    )


def rate(expr, by, legend=None):
    return (f"sum by ({by}) (rate({expr}[$__rate_interval]))", legend or "{{" + by.split(",")[0].strip() + "}}")


I = '{instance=~"$instance"}'
PANELS = [
    row("Traffic"),
    panel("gRPC requests by method and code", [rate(f"switchboard_grpc_requests_total{I}", "method, code", "{{method}} {{code}}")], "reqps"),
    panel("HTTP requests by route and status", [rate(f"switchboard_http_requests_total{I}", "path, status", "{{path}} {{status}}")], "reqps"),
    panel("Errors by kind", [rate(f"switchboard_errors_total{I}", "type")], "reqps"),
    panel("Completions by outcome", [rate(f"switchboard_proxy_requests_total{I}", "outcome")], "reqps"),
    row("Routing"),
    panel("Decisions by intent", [rate(f"switchboard_decisions_total{I}", "intent")], "reqps"),
    panel("Decisions by domain", [rate(f"switchboard_decisions_total{I}", "domain")], "reqps"),
    panel("Decisions by top backend", [rate(f"switchboard_decisions_total{I}", "backend")], "reqps"),
    panel("Decisions by A/B variant", [rate(f"switchboard_decisions_total{I}", "variant")], "reqps"),
    panel("Decisions by language", [rate(f"switchboard_language_decisions_total{I}", "language")], "reqps",
          w=24, desc="The prompt's detected language (ISO 639-3)"),
    panel("Stage latency p50", [q(0.5, "switchboard_stage_seconds", "stage")], "s"),
    panel("Stage latency p99", [q(0.99, "switchboard_stage_seconds", "stage")], "s"),
    row("Upstreams"),
    panel("Time to first token by backend", [q(0.5, "switchboard_ttft_seconds", "backend"), q(0.99, "switchboard_ttft_seconds", "backend")], "s"),
    panel("Attempts by backend and result", [rate(f"switchboard_proxy_attempts_total{I}", "backend, result", "{{backend}} {{result}}")], "reqps"),
    panel("Failovers", [(f"sum(rate(switchboard_failovers_total{I}[$__rate_interval]))", "failovers")], "reqps",
          desc="Completions served by a backend other than the first tried"),
    panel("Breaker state (0 closed, 1 half-open, 2 open)", [(f"max by (backend) (switchboard_breaker_state{I})", "{{backend}}")], "short",
          kind="state-timeline"),
    row("Encoder"),
    panel("Encoder queue depth", [(f"switchboard_encoder_queue_depth{I}", "{{instance}}")]),
    panel("Overload shedding", [rate(f'switchboard_errors_total{{type="overloaded", instance=~"$instance"}}', "instance")], "reqps",
          desc="Requests refused because the encoder queue was full"),
    panel("Encoder batch size p50", [(f"histogram_quantile(0.5, sum by (le) (rate(switchboard_encoder_batch_size_bucket{I}[$__rate_interval])))", "p50")]),
    panel("Encoder available", [(f"switchboard_encoder_available{I}", "{{instance}}")], kind="state-timeline"),
    row("Spend"),
    panel("Spend per tenant (USD/hour)", [(f'sum by (name) (rate(switchboard_spend_usd_total{{scope="tenant", instance=~"$instance"}}[$__rate_interval])) * 3600', "{{name}}")], "currencyUSD"),
    panel("Spend per backend (USD/hour)", [(f"sum by (backend) (rate(switchboard_cost_usd_total{I}[$__rate_interval])) * 3600", "{{backend}}")], "currencyUSD"),
    panel("Tokens per tenant", [rate(f'switchboard_usage_tokens_total{{scope="tenant", instance=~"$instance"}}', "name")], "short"),
    panel("Tokens per backend", [rate(f"switchboard_tokens_total{I}", "backend, kind", "{{backend}} {{kind}}")], "short"),
    panel("Daily budget used (rolling 24 h)", [(
        'sum by (scope, name) (increase(switchboard_spend_usd_total[1d])) / on (scope, name) max by (scope, name) (switchboard_budget_usd_limit{period="day"})',
        "{{scope}} {{name}}")], "percentunit"),
    panel("Quota rejections", [rate(f"switchboard_quota_rejections_total{I}", "scope, limit", "{{scope}} {{limit}}")], "reqps"),
    row("Lifecycle"),
    panel("Classifier version per replica", [(f"switchboard_classifier_info{I} == 1", "{{instance}} {{version}}")], kind="table",
          desc="More than one version for long means a rollout did not converge"),
    panel("Catalog version per replica", [(f"switchboard_catalog_info{I} == 1", "{{instance}} {{version}}")], kind="table"),
    panel("Classifier swaps", [(f"sum by (op, result, reason) (increase(switchboard_classifier_swaps_total{I}[$__rate_interval]))", "{{op}} {{result}} {{reason}}")]),
    panel("Config reloads", [(f"sum by (origin, outcome) (increase(switchboard_config_reloads_total{I}[$__rate_interval]))", "{{origin}} {{outcome}}")]),
    panel("Shared store up (fleet mode)", [(f"switchboard_shared_store_up{I}", "{{instance}}")], kind="state-timeline", w=24),
]


def layout(panels):
    x = y = 0
    for i, p in enumerate(panels):
        p["id"] = i + 1
        g = p["gridPos"]
        if p["type"] == "row" or x + g["w"] > 24:
            x, y = 0, y + (8 if x else 0)
        g["x"], g["y"] = x, y
        if p["type"] == "row":
            y += 1
        else:
            x += g["w"]
            if x >= 24:
                x, y = 0, y + g["h"]
    return panels


DASHBOARD = {
    "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource", "pluginId": "prometheus"}],
    "title": "switchboard",
    "uid": "switchboard-overview",
    "tags": ["switchboard", "llm", "router"],
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "time": {"from": "now-6h", "to": "now"},
    "refresh": "30s",
    "templating": {"list": [{
        "name": "instance", "label": "Replica", "type": "query", "datasource": DS,
        "query": "label_values(switchboard_encoder_available, instance)",
        "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"},
    }]},
    "panels": layout(PANELS),
}

if __name__ == "__main__":
    out = pathlib.Path(__file__).resolve().parent.parent / "deploy/observability/switchboard-dashboard.json"
    out.write_text(json.dumps(DASHBOARD, indent=2) + "\n")
    print(f"wrote {out}")
