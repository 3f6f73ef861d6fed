"""The review app as its own service in docker compose and Kubernetes (no engine needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_compose_runs_the_review_app_with_a_volume_and_metrics() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    review = compose["services"]["review"]
    assert review["command"] == ["review"] and review["image"].startswith("autolabel:")
    port = int(review["environment"]["AUTOLABEL_REVIEW_PORT"])
    assert port == Settings(_env_file=None).review_port
    assert any(str(p).endswith(f":{port}:{port}") and str(p).startswith("${PUBLISH_ADDRESS:-127.0.0.1}") for p in review["ports"])
    state = review["environment"]["AUTOLABEL_STATE_DIR"]
    assert any(v == f"review-data:{state}" for v in review["volumes"]) and "review-data" in compose["volumes"]
    assert f"{port}/healthz" in " ".join(review["healthcheck"]["test"])
    assert review["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
    prom = yaml.safe_load((ROOT / "deploy/compose/prometheus/prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert f"review:{port}" in targets
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert '[review]"' in dockerfile and "/app/state" in dockerfile


def test_k8s_review_deployment_service_volume_and_secret() -> None:
    base = {(d["kind"], d["metadata"]["name"]): d for f in yaml.safe_load((K8S / "base/kustomization.yaml").read_text())["resources"]
            for d in _docs(K8S / "base" / f)}
    dep = base[("Deployment", "autolabel-review")]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["review"]
    env = {e["name"]: e for e in c["env"]}
    port = int(env["AUTOLABEL_REVIEW_PORT"]["value"])
    assert c["ports"][0]["containerPort"] == port
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert env["AUTOLABEL_REVIEW_TOKENS"]["valueFrom"]["secretKeyRef"]["name"] == "autolabel-review"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["data"] == env["AUTOLABEL_STATE_DIR"]["value"]
    assert mounts["kafka-tls"] == "/etc/autolabel/kafka"  # the private-CA component's path
    claim = dep["spec"]["template"]["spec"]["volumes"]
    assert {"claimName": "autolabel-review-data"} in [v.get("persistentVolumeClaim") for v in claim]
    assert ("PersistentVolumeClaim", "autolabel-review-data") in base
    assert base[("Service", "autolabel-review")]["spec"]["ports"][0]["port"] == port
    template = {d["metadata"]["name"]: d for d in _docs(K8S / "base/secrets.template.yaml")}
    assert "AUTOLABEL_REVIEW_TOKENS" in template["autolabel-review"]["stringData"]
    monitors = {d["metadata"]["name"] for d in _docs(K8S / "overlays/prod-gpu/servicemonitors.yaml")}
    assert "autolabel-review" in monitors


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_overlays_build_with_the_review_app() -> None:
    for overlay in ("dev", "prod-gpu"):
        out = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, check=True).stdout
        kinds = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out) if d}
        assert ("Deployment", "autolabel-review") in kinds and ("Service", "autolabel-review") in kinds, overlay
