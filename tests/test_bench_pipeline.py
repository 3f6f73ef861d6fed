"""The pipeline benchmark's arithmetic and its Markdown (the runs themselves need the stack and minutes)."""

from __future__ import annotations

import pytest

from benchmarks.pipeline import _pooled, backlog_summary, markdown, write_doc


def samples(rate: float, capacity: float, seconds: int = 40, in_flight: int = 300) -> list[tuple[float, int, int]]:
    """(elapsed, sent, labeled) of a worker that labels up to ``capacity`` a second, holding ``in_flight``."""
    out, done = [], 0
    for t in range(seconds):
        sent = int(rate * t)
        done = min(max(0, sent - in_flight), done + int(capacity))
        out.append((float(t), sent, done))
    return out


def test_a_worker_faster_than_the_offered_rate_keeps_up() -> None:
    s = backlog_summary(samples(rate=500, capacity=620), rate=500)
    assert s["kept_up"]
    assert s["backlog_end"] == s["backlog_quarter"] == 300
    assert s["labeled_per_s_second_half"] == pytest.approx(500, rel=0.01)


def test_a_worker_slower_than_the_offered_rate_falls_behind() -> None:
    s = backlog_summary(samples(rate=500, capacity=480), rate=500)
    assert not s["kept_up"]
    assert s["backlog_end"] > s["backlog_quarter"]
    assert s["labeled_per_s_second_half"] == pytest.approx(480, rel=0.01)
    # 4 % short is enough to tell
    assert not backlog_summary(samples(rate=500, capacity=485), rate=500)["kept_up"]


def test_backlog_summary_needs_a_few_seconds() -> None:
    with pytest.raises(ValueError):
        backlog_summary(samples(500, 600, seconds=3), rate=500)


def run(rate: float, seconds: float, n: int, worker_ms: float) -> dict:
    return {"events": n, "seconds": seconds, "events_per_s": rate, "latency_p50_ms": 100.0, "latency_p99_ms": 900.0,
            "batch": 16, "concurrency": 2, "cpu_ms_per_event": {"s3 (SeaweedFS)": 1.5, "worker": worker_ms},
            "worker_cpu_ms_per_event": worker_ms, "events_per_worker_cpu_s": 1000 / worker_ms}


def test_runs_are_pooled_by_summing_items_and_seconds() -> None:
    d = _pooled([{"images": 240, "seconds": 15.0, "images_per_s": 16.0, "latency_p50_ms": 900.0, "latency_p99_ms": 1000.0, "batch": 16},
                 {"images": 240, "seconds": 17.0, "images_per_s": 240 / 17, "latency_p50_ms": 1000.0, "latency_p99_ms": 1300.0, "batch": 16}])
    assert d["images_per_s"] == pytest.approx(480 / 32)
    assert d["latency_p99_ms"] == 1300.0 and d["runs"] == [16.0, 240 / 17]
    p = _pooled([run(14.0, 240 / 14, 240, 4.0), run(15.0, 16.0, 240, 6.0)], "events")
    assert p["events_per_s"] == pytest.approx(480 / (240 / 14 + 16))
    assert p["cpu_ms_per_event"]["worker"] == pytest.approx(5.0)


def test_markdown_states_ratio_verdict_and_command(tmp_path) -> None:
    direct = _pooled([{"images": 240, "seconds": 16.0, "images_per_s": 15.0, "latency_p50_ms": 1.0, "latency_p99_ms": 2.0, "batch": 16}])
    piped = _pooled([run(14.0, 240 / 14, 240, 5.0)], "events")
    sustained = {**run(480, 44.0, 20000, 1.4), "offered_per_s": 500.0, "offered_seconds": 40.0, "drain_s": 3.0,
                 **backlog_summary(samples(500, 480), 500)}
    result = {"date": "2026-11-28", "machine": "2 CPU cores", "command": "autolabel bench pipeline", "model": "vgg16",
              "photos": 12, "broker_storage": "memory", "direct": direct, "pipeline": piped,
              "trivial": {**run(420, 12.0, 5000, 1.6), "batch": 128}, "sustained": sustained,
              "ratio_pipeline_direct": piped["events_per_s"] / direct["images_per_s"]}
    text = markdown(result)
    assert f"pipeline / direct = **{14.0 / 15.0:.2f}**" in text
    assert "**fell behind**" in text and "`autolabel bench pipeline`" in text
    doc = tmp_path / "b.md"
    doc.write_text("# B\n\nbefore\n" + text + "\nafter\n")
    write_doc(doc, markdown({**result, "sustained": {**sustained, **backlog_summary(samples(500, 620), 500)}}))
    new = doc.read_text()
    assert "**kept up**" in new and "fell behind" not in new and new.startswith("# B\n\nbefore\n") and new.endswith("\nafter\n")
