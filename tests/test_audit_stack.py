"""Blind audits, live precision and drift on the real embedded stack (Tansu, SeaweedFS, Triton),
with real catalog photos and a simulated reviewer answering from the catalog's own labels
(the shared fashion-product-images styles.csv, mapped to the tasks as training maps it).

- audit items appear for exactly the products the hash picks among those whose labels skip
  review (about AUTOLABEL_AUDIT_RATE of them), and are shown blind by the API and the page;
- the live precision per task (the review app's metrics and `autolabel quality`) holds the
  precision of every auto-accepted label of the run (the census, known here from the catalog)
  within its Wilson interval;
- the worker's drift metrics stay low on photos like the reference's and move on altered ones.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, wait_for
from deploy.local.processes import free_ports
from review_helpers import review_apps
from services.audit import audited
from services.events import ProductLabeled
from services.publisher import publish_files
from services.topics import read_labels
from training.data.datasets import map_fpi_labels

pytestmark = pytest.mark.stack

CATALOG = Path("/work/shared/data/fashion-product-images")
RATE = 0.5
N_PRODUCTS = 160


@pytest.fixture()
def review_app(stack_settings, tmp_path):
    yield from review_apps(stack_settings, tmp_path)


def catalog(n: int, skip: int = 0) -> dict[str, tuple[Path, dict[str, str], str]]:
    """``n`` apparel products with a photo and a label for every task: id -> (photo, labels, title)."""
    if not (CATALOG / "styles.csv").is_file():
        pytest.skip(f"the shared catalog is not at {CATALOG}")
    out: dict[str, tuple[Path, dict[str, str], str]] = {}
    with open(CATALOG / "styles.csv", newline="", encoding="utf-8", errors="replace") as f:
        rows = [r for r in csv.DictReader(f) if r.get("masterCategory") == "Apparel"]
    for row in sorted(rows, key=lambda r: int(r["id"]))[skip:]:
        labels, _ = map_fpi_labels(row)
        photo = CATALOG / "images" / f"{row['id']}.jpg"
        if all(labels.values()) and photo.is_file():
            out[row["id"]] = (photo, labels, row.get("productDisplayName", ""))  # type: ignore[assignment]
        if len(out) == n:
            break
    return out


def metrics(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample at ``url``; none while the endpoint does not answer yet (a worker starting)."""
    try:
        text = httpx.get(url, timeout=10).text
    except httpx.TransportError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


def sample(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def wait_labels(settings, ids: set[str], timeout: float = 300) -> dict[str, ProductLabeled]:
    def done():
        events = {e.product_id: e for e in read_labels(settings, idle_s=1.0)}
        return events if set(events) >= ids else None

    got = wait_for(done, timeout, interval=2.0)
    assert got, "labels did not arrive"
    return got


def claim_all(app, n: int) -> list[dict]:
    items: list[dict] = []
    with app.api("alice") as c:
        while len(items) < n:
            batch = c.get("/api/queue", params={"limit": 100}).json()
            new = [i for i in batch if i["product_id"] not in {x["product_id"] for x in items}]
            if not new:
                break
            items += new
    return items


def test_audits_are_sampled_shown_blind_and_measure_live_precision(stack_settings, worker_factory, review_app, tmp_path):
    settings, env = stack_settings
    products = catalog(N_PRODUCTS)
    port = free_ports(1)[0]
    # style and gender: every label auto-accepted; season: advisory (under its threshold, published, not queued)
    worker_factory(AUTOLABEL_AUDIT_RATE=str(RATE), AUTOLABEL_METRICS_PORT=str(port), AUTOLABEL_THRESHOLD_STYLE="0",
                   AUTOLABEL_THRESHOLD_GENDER="0", AUTOLABEL_THRESHOLD_SEASON="1.0", AUTOLABEL_REVIEW_POLICY="season=advisory")
    app = review_app()
    files = [p for p, _, _ in products.values()]
    publish_files(settings, files, progress=False, metadata={pid: {"title": t} for pid, (_, _, t) in products.items()})
    events = wait_labels(settings, set(products))

    # the sample: exactly the products the hash picks, about RATE of those whose labels skip review (all of them here)
    assert not any(e.needs_review for e in events.values())
    expected = {pid for pid in products if audited(pid, RATE)}
    assert {pid for pid, e in events.items() if e.audit} == expected
    assert 0.35 * N_PRODUCTS < len(expected) < 0.65 * N_PRODUCTS
    app.wait_waiting(len(expected), timeout=120)
    items = claim_all(app, len(expected))
    assert {i["product_id"] for i in items} == expected

    # blind: no model label, probability or threshold in the API, nothing pre-selected or highlighted on the page
    for item in items:
        assert item["audit"] is True and item["scope"] is None
        for task, view in item["labels"].items():
            assert view["status"] == "audit" and view["label"] is None and view["probabilities"] is None
            assert view["confidence"] is None and view["threshold"] is None
            assert view["classes"] == list(events[item["product_id"]].labels[task].probabilities)
    page = app.login("alice").get("/").text
    assert 'id="audit"' in page and "checked" not in page and "<meter" not in page and "predicted" not in page
    assert page.count("required") == sum(len(v["classes"]) for v in items[0]["labels"].values())
    shown = next(i for i in items if f'data-product="{i["product_id"]}"' in page)
    for cls_probs in (events[shown["product_id"]].labels[t].probabilities for t in shown["labels"]):
        assert not any(f"{p:.2f}" in page.split('id="review-form"')[1] for p in cls_probs.values() if 0 < p < 1)

    # the simulated reviewer answers from the catalog; an audit must name every task
    with app.api("alice") as c:
        first = items[0]
        partial = c.post(f"/api/products/{first['product_id']}/review",
                         json={"source_event_id": first["source_event_id"], "labels": {"style": "casual"}})
        assert partial.status_code == 422 and "every task" in partial.text
        for item in items:
            labels = products[item["product_id"]][1]
            r = c.post(f"/api/products/{item['product_id']}/review", json={"source_event_id": item["source_event_id"], "labels": labels})
            assert r.status_code == 200, r.text
            assert r.json()["audit"] is True
    assert app.stats()["waiting"] == 0

    # live precision (audits of accepted labels) against the census: every accepted label of the run vs the catalog
    found = metrics(f"{app.url}/metrics")
    for task in ("style", "gender"):
        accepted = [pid for pid, e in events.items() if e.labels[task].status == "accepted"]
        census = sum(events[p].labels[task].label == products[p][1][task] for p in accepted) / len(accepted)
        audited_accepted = [p for p in accepted if p in expected]
        sel = {"task": task, "model_version": "all", "class": "all"}
        live = sum(events[p].labels[task].label == products[p][1][task] for p in audited_accepted) / len(audited_accepted)
        assert sample(found, "autolabel_live_precision_audits", **sel) == len(audited_accepted)
        assert sample(found, "autolabel_live_precision", **sel) == pytest.approx(live)
        lower, upper = sample(found, "autolabel_live_precision_lower", **sel), sample(found, "autolabel_live_precision_upper", **sel)
        print(f"{task}: live {live:.3f} [{lower:.3f}, {upper:.3f}] from {len(audited_accepted)} audits; census {census:.3f} "
              f"of {len(accepted)} accepted labels")
        assert lower <= census <= upper, f"{task}: census precision {census:.3f} outside the live interval [{lower:.3f}, {upper:.3f}]"
        version = next(iter(events.values())).model.version
        assert sample(found, "autolabel_live_precision_audits", task=task, model_version=version, **{"class": "all"}) == len(audited_accepted)
    assert sample(found, "autolabel_live_precision_audits", task="season", model_version="all", **{"class": "all"}) is None  # advisory
    assert sample(found, "autolabel_audit_backlog", model_version="all") == 0
    assert sample(found, "autolabel_target_precision") == settings.target_precision

    # the worker counted what it sampled and exports its accept rate
    worker = metrics(f"http://127.0.0.1:{port}/metrics")
    assert sample(worker, "autolabel_audit_sampled_total") == len(expected)
    assert sample(worker, "autolabel_accept_rate", task="style") == 1.0 and sample(worker, "autolabel_accept_rate", task="season") == 0.0

    # `autolabel quality`: the same numbers for scripts, and a plot
    plot = tmp_path / "quality.png"
    proc = subprocess.run([sys.executable, "-m", "autolabel", "quality", "--json", "--plot", str(plot),
                           "--worker-metrics", f"http://127.0.0.1:{port}/metrics"], env={**app.env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    overall = {e["task"]: e for e in report["estimates"] if e["signal"] == "precision" and e["model_version"] is None and e["class"] is None}
    for task in ("style", "gender"):
        sel = {"task": task, "model_version": "all", "class": "all"}
        assert overall[task]["n"] == sample(found, "autolabel_live_precision_audits", **sel)
        assert overall[task]["upper"] == pytest.approx(sample(found, "autolabel_live_precision_upper", **sel), abs=1e-4)
    assert report["drift"]["style"]["accept_rate"] == 1.0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = subprocess.run([sys.executable, "-m", "autolabel", "quality"], env={**app.env, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert table.returncode == 0 and "precision  style" in table.stdout and "audit backlog: 0 waiting" in table.stdout


def _altered(photo: Path, out: Path) -> Path:
    """The same product photographed differently: a small, washed-out, tinted version."""
    img = Image.open(photo).convert("RGB").resize((40, 53))
    Image.blend(img, Image.new("RGB", img.size, (255, 160, 0)), 0.7).save(out, format="JPEG")
    return out


def test_drift_metrics_stay_low_on_normal_photos_and_move_on_altered_ones(stack_settings, worker_factory, tmp_path):
    settings, env = stack_settings
    products = catalog(60, skip=400)
    files = [p for p, _, _ in products.values()]
    w1 = worker_factory("w1")
    publish_files(settings, files, progress=False)
    events = wait_labels(settings, set(products))
    w1.kill()
    labels_file = tmp_path / "labels.jsonl"
    labels_file.write_text("".join(e.model_dump_json() + "\n" for e in events.values()))
    ref = tmp_path / "reference.json"
    proc = subprocess.run([sys.executable, "-m", "autolabel", "quality", "reference", "--labels", str(labels_file), "--out", str(ref)],
                          env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(ref.read_text())["tasks"]["style"]["n"] == len(products)

    port = free_ports(1)[0]
    worker_factory("w2", AUTOLABEL_DRIFT_REFERENCE=str(ref), AUTOLABEL_DRIFT_WINDOW="40", AUTOLABEL_METRICS_PORT=str(port))
    url = f"http://127.0.0.1:{port}/metrics"

    def psis() -> dict[tuple[str, str], float]:
        found = metrics(url)
        return {(dict(k)["task"], dict(k)["feature"]): v for (name, k), v in found.items() if name == "autolabel_drift_psi"}

    # the same kind of photos again (new uploads of the same products): low drift
    publish_files(settings, files, progress=False)
    assert wait_for(lambda: (sample(metrics(url), "autolabel_events_out_total") or 0) >= len(files), 180, interval=1.0)
    normal = psis()
    print("PSI, normal photos:", {f"{t}/{f}": round(v, 3) for (t, f), v in normal.items()})
    assert len(normal) == 6 and max(normal.values()) < 0.1, normal

    # altered photos of other products: the drift metrics move
    altered = [_altered(p, tmp_path / f"alt-{pid}.jpg") for pid, (p, _, _) in catalog(40, skip=800).items()]
    publish_files(settings, altered, progress=False)
    assert wait_for(lambda: (sample(metrics(url), "autolabel_events_out_total") or 0) >= len(files) + len(altered), 180, interval=1.0)
    moved = psis()
    print("PSI, altered photos:", {f"{t}/{f}": round(v, 3) for (t, f), v in moved.items()})
    assert max(moved.values()) > 0.25, moved
    assert max(moved.values()) > 3 * max(normal.values())
    assert Image.open(io.BytesIO(altered[0].read_bytes())).size == (40, 53)
