"""Prometheus alert rules: deploy/compose/prometheus/alerts.yml (compose's Prometheus) and the
same groups as a PrometheusRule in the prod-gpu overlay, checked without a Prometheus.

Every expression is parsed with promql-parser (a PromQL parser, the `dev` extra), and every
metric it reads must be one the worker really exports (services/observability.py) or a
documented Triton / kafka-exporter / Prometheus metric. Where promtool is installed
(Debian's `prometheus` package), `promtool check rules` and `promtool check config` run too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import promql_parser as promql
import pytest
import yaml
from settings_helpers import default_of

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "compose" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "alerts.yml"
PROD = ROOT / "deploy" / "k8s" / "overlays" / "prod-gpu"
K8S_BASE = ROOT / "deploy" / "k8s" / "base"

# Metrics the rules may read that the project does not export, and who documents them.
THIRD_PARTY_METRICS = {
    "up": "Prometheus: 1 when a scrape target answered, 0 when not",
    "kafka_consumergroup_lag": "kafka-exporter (danielqsj/kafka_exporter): lag per consumergroup/topic/partition",
    "nv_inference_request_success": "Triton metrics docs: successful inference requests per model/version",
    "nv_inference_request_failure": "Triton metrics docs: failed inference requests per model/version",
    "nv_inference_queue_duration_us": "Triton metrics docs: cumulative queue time per model/version",
}
# What the issue asks to be alerted on, by the metric that shows it.
REQUIRED = {
    "consumer lag growing": "kafka_consumergroup_lag",
    "dead-letter rate": "autolabel_dead_letters_total",
    "worker down": "up",
    "Triton errors": "nv_inference_request_failure",
    "upload-to-label p99": "autolabel_e2e_latency_seconds_bucket",
    "live precision below target": "autolabel_live_precision_upper",
    "drift": "autolabel_drift_psi",
    "auto-accept rate collapsing": "autolabel_task_labels_total",
}
SEVERITIES = {"warning", "critical"}


# --- helpers ---------------------------------------------------------------------------


def compose_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def prometheus_rule() -> dict:
    kust = yaml.safe_load((PROD / "kustomization.yaml").read_text())
    found = [
        doc
        for res in kust["resources"]
        if (PROD / res).is_file()
        for doc in yaml.safe_load_all((PROD / res).read_text())
        if doc and doc.get("kind") == "PrometheusRule"
    ]
    assert len(found) == 1, "prod-gpu must have one PrometheusRule among its resources"
    return found[0]


def rules() -> list[dict]:
    return [r for g in compose_groups() for r in g["rules"]]


def selectors(expr: str) -> list[promql.VectorSelector]:
    found: list[promql.VectorSelector] = []

    def visit(node: object) -> None:
        if isinstance(node, promql.VectorSelector):
            found.append(node)

    promql.walk(promql.parse(expr), visit)
    return found


def metric_name(sel: promql.VectorSelector) -> str:
    if sel.name:
        return sel.name
    (name,) = [m.value for m in sel.matchers.matchers if m.name == "__name__"]
    return name


def label_values(expr: str, label: str) -> set[str]:
    return {m.value for sel in selectors(expr) for m in sel.matchers.matchers if m.name == label}


def worker_metric_names() -> set[str]:
    """Every sample name services/observability.py's metrics expose (counters add _total,
    histograms _bucket/_sum/_count), read from the prometheus_client objects themselves."""
    from prometheus_client.metrics import MetricWrapperBase

    import services.drift as drift
    import services.observability as obs
    import services.review.api as review_api
    import services.review.consumer as review_consumer
    import services.review.quality as review_quality
    import services.review.security as review_security

    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"), "gauge": ("",)}
    names: set[str] = set()
    for value in [v for m in (obs, drift, review_api, review_consumer, review_quality, review_security) for v in vars(m).values()]:
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names |= {family.name + s for s in suffixes[family.type]}
    assert {"autolabel_events_in_total", "autolabel_e2e_latency_seconds_bucket", "autolabel_in_flight"} <= names
    return names


def k8s_scrape_jobs() -> set[str]:
    """Job names the prod ServiceMonitors give: the selected Service's `jobLabel` label
    (Prometheus Operator's default without jobLabel would be the Service's name)."""
    services = [
        d
        for f in K8S_BASE.glob("*service.yaml")
        for d in yaml.safe_load_all(f.read_text())
        if d and d["kind"] == "Service"
    ]
    jobs = set()
    for sm in yaml.safe_load_all((PROD / "servicemonitors.yaml").read_text()):
        if not sm:
            continue
        sel = sm["spec"]["selector"]["matchLabels"]
        (svc,) = [s for s in services if sel.items() <= s["metadata"]["labels"].items()]
        job_label = sm["spec"].get("jobLabel")
        jobs.add(svc["metadata"]["labels"][job_label] if job_label else svc["metadata"]["name"])
    return jobs


# --- wiring -------------------------------------------------------------------------------


def test_compose_prometheus_loads_the_rules() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == [RULES.name], "rule_files resolve relative to prometheus.yml"
    prometheus = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["prometheus"]
    (config_flag,) = [a for a in prometheus["command"] if a.startswith("--config.file=")]
    config_dir = str(Path(config_flag.split("=", 1)[1]).parent)
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prometheus["volumes"]}
    assert mounts[f"./{RULES.relative_to(ROOT)}"] == f"{config_dir}/{RULES.name}"


def test_prod_prometheus_rule_has_the_same_groups() -> None:
    rule = prometheus_rule()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == compose_groups(), "edit alerts.yml and prometheusrule.yaml together"
    # Picked up by the same Prometheus as the ServiceMonitors (its ruleSelector).
    monitors = [d for d in yaml.safe_load_all((PROD / "servicemonitors.yaml").read_text()) if d]
    for sm in monitors:
        assert sm["metadata"]["labels"].items() <= rule["metadata"]["labels"].items()


# --- the rules ------------------------------------------------------------------------------


def test_rules_are_well_formed() -> None:
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    for r in rules():
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, r["alert"]
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", r["alert"])
        promql.parse(r["expr"])  # raises ValueError on a syntax error
        if "for" in r:
            assert promql.parse_duration(r["for"]).total_seconds() > 0
        assert r["labels"]["severity"] in SEVERITIES, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


def test_a_bad_expression_is_caught() -> None:
    """The parser really rejects what Prometheus would (the test above relies on it)."""
    with pytest.raises(ValueError):
        promql.parse("sum(rate(autolabel_events_in_total[5m])")
    with pytest.raises(ValueError):
        promql.parse("rate(autolabel_events_in_total)")  # rate needs a range vector


def test_rule_metrics_exist() -> None:
    known = worker_metric_names() | set(THIRD_PARTY_METRICS)
    for r in rules():
        for sel in selectors(r["expr"]):
            name = metric_name(sel)
            assert name in known, f"{r['alert']}: {name} is neither exported by the worker nor a documented metric"


def test_required_alerts_exist() -> None:
    used = {metric_name(sel): r["alert"] for r in rules() for sel in selectors(r["expr"])}
    for what, metric in REQUIRED.items():
        assert metric in used, f"no alert on {what} ({metric})"
    p99 = [r for r in rules() if "autolabel_e2e_latency_seconds_bucket" in r["expr"]]
    assert p99 and all(re.search(r"histogram_quantile\(0\.99,", r["expr"]) for r in p99)


def test_rule_jobs_and_group_match_the_scrape_configs() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    compose_jobs = {j["job_name"] for j in config["scrape_configs"]}
    k8s_jobs = k8s_scrape_jobs()
    for r in rules():
        for job in label_values(r["expr"], "job"):
            assert job in compose_jobs, f"{r['alert']}: job {job} is not scraped by compose's Prometheus"
            assert job in k8s_jobs, f"{r['alert']}: job {job} is not a ServiceMonitor job {sorted(k8s_jobs)}"
        for group in label_values(r["expr"], "consumergroup"):
            assert group == default_of("consumer_group"), r["alert"]
    # Both worker alerts: some targets down, and none up at all (a scaled-away or crashed
    # replica disappears from service discovery instead of reporting up == 0).
    worker_up = [r["expr"] for r in rules() if label_values(r["expr"], "job") == {"autolabel-worker"}]
    assert any(e.startswith("absent(") for e in worker_up) and any("== 0" in e for e in worker_up)


# --- promtool, where installed ------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`): PromQL checked by promql-parser only")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


def test_promtool_checks_rules_and_config(tmp_path: Path) -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spec = tmp_path / "prometheusrule-spec.yml"
    spec.write_text(yaml.safe_dump(prometheus_rule()["spec"]))
    proc = promtool("check", "rules", str(spec))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The config: scrape jobs, and rule_files resolved beside it (no DNS look-ups).
    proc = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_is_explained_in_the_docs() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    assert "## Alerts" in doc
    for r in rules():
        assert f"| `{r['alert']}` | {r['labels']['severity']} |" in doc, f"docs/deploy.md does not explain {r['alert']}"
