"""`autolabel train --reviewed`: the reviewers' labels from the S3 records join the training
data (overriding the catalog's labels of the same photo), on the real stack's S3."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from conftest import SAMPLES
from review_helpers import flagged_event, send_flagged

from services.events import HumanLabel
from services.storage import Storage

pytestmark = pytest.mark.stack


def _review(settings, event, labels: dict[str, str]) -> None:
    now = datetime.now(UTC)
    Storage(settings).put_human_labels(event, {t: HumanLabel(label=lab, reviewer="alice", reviewed_at=now,
                                                             model_label=event.labels[t].label) for t, lab in labels.items()})


def test_train_uses_reviewed_labels_human_over_catalog(stack_settings, tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    from training.cli import train as cli
    from training.data.datasets import load
    from training.data.reviewed import add_reviewed
    from training.data.synthetic import make_fpi

    settings, env = stack_settings
    data = tmp_path / "fpi"
    make_fpi(data, n_per_combo=2)
    # product 1000 of the catalog (Casual / Men / Summer) reviewed as formal; a photo the catalog lacks, reviewed too
    in_catalog = flagged_event(settings, "1000", (data / "images" / "1000.jpg").read_bytes())
    new_photo = flagged_event(settings, "shop-77", sorted(SAMPLES.glob("*.jpg"))[0].read_bytes())
    unreviewed = flagged_event(settings, "1001", (data / "images" / "1001.jpg").read_bytes())
    send_flagged(settings, [in_catalog, new_photo, unreviewed])
    _review(settings, in_catalog, {"style": "formal", "gender": "men", "season": "summer"})
    _review(settings, new_photo, {"style": "sports", "gender": "women", "season": "winter"})

    ds, report = add_reviewed(load(f"fpi:{data}", progress=False), settings, tmp_path / "cache")
    assert (report.records, report.labels_used, report.overrode, report.rows_matched, report.rows_added) == (2, 6, 1, 1, 1)
    rows = {s.key: s for s in ds.samples}
    assert rows["1000"].labels["style"] == "formal"  # human over catalog
    assert rows["1001"].labels["style"] == "casual"  # not reviewed: the catalog's
    added = rows["reviewed:shop-77"]
    assert dict(added.labels) == {"style": "sports", "gender": "women", "season": "winter"} and added.path.is_file()

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "models"
    result = CliRunner().invoke(cli.train, ["--data", f"fpi:{data}", "--reviewed", "--backbone", "tiny", "--weights", "random",
                                            "--input-size", "32", "--quiet", "--cache-dir", str(tmp_path / "cache"),
                                            "--out", str(out), "--run-dir", str(tmp_path / "run"), "--set", "all.epochs=2",
                                            "--balance", "none"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "reviewed labels: 6 task label(s) from 2 reviewed record(s) used (1 overriding catalog labels" in result.output
    assert (out / "manifest.json").is_file()

    # with a saved split made before the review, the reviewers' new photo joins train
    from training.data.split import Split, make_split

    make_split(load(f"fpi:{data}", progress=False), 0, progress=False).save(tmp_path / "before.json")
    again = CliRunner().invoke(cli.train, ["--data", f"fpi:{data}", "--reviewed", "--backbone", "tiny", "--weights", "random",
                                           "--input-size", "32", "--quiet", "--cache-dir", str(tmp_path / "cache"),
                                           "--out", str(tmp_path / "models2"), "--split", str(tmp_path / "before.json"),
                                           "--run-dir", str(tmp_path / "run2"), "--set", "all.epochs=2", "--balance", "none"],
                               catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "split: 1 row(s) the saved split did not have added to train" in again.output
    used = Split.load(tmp_path / "models2" / "split.json")
    assert all("reviewed:shop-77" in used.keys(t, "train") for t in ("style", "gender", "season"))
