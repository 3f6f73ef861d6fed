"""`autolabel bench audit`: blind audits end to end on a running stack, with a simulated reviewer.

On the stack `autolabel stack up` started (with the served models): a worker with
``AUTOLABEL_AUDIT_RATE`` and the review app on topics of their own; ``--photos`` apparel photos
of the committed test split (products the model never saw) published with their titles; a
simulated reviewer answers every audit item from the catalog's labels (mapped as training maps
them), seeing only what the blind page shows. Printed per task: the live precision the review
app measured (with its Wilson 95 % interval) and the precision of every auto-accepted label of
the run's products that skipped review, against the catalog (the census: what an offline
evaluation of the same photos says), and of every accepted label, on flagged products too.
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
import uuid
from pathlib import Path

import click
import httpx

ROOT = Path(__file__).resolve().parent.parent
CATALOG = Path("/work/shared/data/fashion-product-images")


def split_products(catalog: Path, n: int, split: Path) -> dict[str, tuple[Path, dict[str, str], str]]:
    """``n`` apparel products of the test split with a photo and a label for every task."""
    from training.data.datasets import map_fpi_labels

    test = set(json.loads(split.read_text())["tasks"]["style"]["test"])
    out: dict[str, tuple[Path, dict[str, str], str]] = {}
    with open(catalog / "styles.csv", newline="", encoding="utf-8", errors="replace") as f:
        rows = [r for r in csv.DictReader(f) if r.get("masterCategory") == "Apparel" and r["id"] in test]
    for row in sorted(rows, key=lambda r: int(r["id"])):
        labels, _ = map_fpi_labels(row)
        photo = catalog / "images" / f"{row['id']}.jpg"
        if all(labels.values()) and photo.is_file():
            out[row["id"]] = (photo, labels, row.get("productDisplayName", ""))  # type: ignore[assignment]
        if len(out) == n:
            break
    return out


def _wait(what: str, predicate, timeout: float, interval: float = 2.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(interval)
    raise click.ClickException(f"timed out waiting for {what}")


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def answer_audits(url: str, token: str, products: dict) -> int:
    """The simulated reviewer: every audit item answered from the catalog (it reads only the item's product id)."""
    answered = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        while True:
            items = c.get("/api/queue", params={"limit": 50}).json()
            if not items:
                return answered
            for item in items:
                if item["audit"]:
                    assert all(v["label"] is None and v["probabilities"] is None for v in item["labels"].values()), "not blind"
                    labels = products[item["product_id"]][1]
                else:  # a flagged item: the reviewer corrects what the catalog says otherwise
                    labels = {t: products[item["product_id"]][1][t] for t in item["labels"]}
                r = c.post(f"/api/products/{item['product_id']}/review", json={"source_event_id": item["source_event_id"], "labels": labels})
                r.raise_for_status()
                answered += item["audit"]


def report(events: dict, products: dict, found: dict, rate: float) -> dict:
    from services.audit import audited

    skip = [p for p, e in events.items() if not e.needs_review]
    out: dict = {"photos": len(events), "skipped_review": len(skip), "audited": sum(e.audit for e in events.values()),
                 "expected_audited": sum(audited(p, rate) for p in skip), "rate": rate, "tasks": {}}
    def precision(task: str, pids: list[str]) -> float | None:
        return round(sum(events[p].labels[task].label == products[p][1][task] for p in pids) / len(pids), 4) if pids else None

    for task in ("style", "gender", "season"):
        # the population audits sample: accepted labels of the products that skip review
        accepted = [p for p in skip if events[p].labels[task].status == "accepted"]
        every = [p for p, e in events.items() if e.labels[task].status == "accepted"]
        sel = (("class", "all"), ("model_version", "all"), ("task", task))
        n = found.get(("autolabel_live_precision_audits", sel))
        out["tasks"][task] = {
            "accepted": len(accepted), "census_precision": precision(task, accepted),
            "accepted_anywhere": len(every), "precision_anywhere": precision(task, every),
            "audits": int(n) if n else 0, "live_precision": found.get(("autolabel_live_precision", sel)),
            "lower": found.get(("autolabel_live_precision_lower", sel)), "upper": found.get(("autolabel_live_precision_upper", sel)),
        }
    return out


@click.command("audit")
@click.option("--photos", default=300, show_default=True, help="Test-split apparel photos to label.")
@click.option("--rate", default=0.3, show_default=True, help="AUTOLABEL_AUDIT_RATE of the run's worker.")
@click.option("--catalog", type=click.Path(path_type=Path, file_okay=False), default=CATALOG, show_default=True)
@click.option("--timeout", default=1800.0, show_default=True, help="Seconds to wait for the labels.")
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write the report as JSON.")
def audit(photos: int, rate: float, catalog: Path, timeout: float, out_path: Path | None) -> None:
    """Blind audits end to end on the running stack: live precision vs the census of the same photos."""
    from autolabel.review import ReviewProcess
    from benchmarks.harness import isolated_env
    from deploy.local.processes import WorkerProcess, free_ports
    from services.events import ProductLabeled
    from services.publisher import publish_files
    from services.settings import load_settings
    from services.topics import ensure_topics, read_labels

    products = split_products(catalog, photos, ROOT / "models" / "split.json")
    work = Path(tempfile.mkdtemp(prefix="autolabel-audit-"))
    worker_port, review_port = free_ports(2)
    token = uuid.uuid4().hex
    env = {**isolated_env(), "AUTOLABEL_AUDIT_RATE": str(rate), "AUTOLABEL_METRICS_PORT": str(worker_port),
           "AUTOLABEL_REVIEW_POLICY": "season=advisory", "AUTOLABEL_REVIEW_PORT": str(review_port),
           "AUTOLABEL_REVIEW_TOKENS": f"sim:{token}", "AUTOLABEL_REVIEW_DATABASE_URL": f"sqlite:///{work / 'review.db'}"}
    settings = load_settings(**{k.removeprefix("AUTOLABEL_").lower(): v for k, v in env.items()})
    ensure_topics(settings)
    worker = WorkerProcess(env, work / "worker.log").start()
    review = ReviewProcess(env, work / "review.log", "review").start()
    try:
        publish_files(settings, [p for p, _, _ in products.values()], progress=False,
                      metadata={pid: {"title": t} for pid, (_, _, t) in products.items()})

        def labeled() -> dict[str, ProductLabeled] | None:
            got = {e.product_id: e for e in read_labels(settings, idle_s=1.0)}
            click.echo(f"  labeled {len(got)}/{len(products)}", err=True)
            return got if set(got) >= set(products) else None

        events = _wait("the labels", labeled, timeout, interval=10)
        url = f"http://127.0.0.1:{review_port}"
        audits = sum(e.audit for e in events.values())
        _wait("the review queue", lambda: httpx.get(f"{url}/api/stats", headers={"Authorization": f"Bearer {token}"}, timeout=10)
              .json()["waiting"] >= audits, 120)
        answered = answer_audits(url, token, products)
        result = report(events, products, _scrape(f"{url}/metrics"), rate)
        result["answered_audits"] = answered
    finally:
        worker.kill()
        review.kill()
    click.echo(json.dumps(result, indent=2))
    if out_path is not None:
        out_path.write_text(json.dumps(result, indent=2) + "\n")
