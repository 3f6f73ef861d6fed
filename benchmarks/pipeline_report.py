"""`autolabel bench pipeline`'s Markdown: the table and the docs section it updates (benchmarks/pipeline.py)."""

from __future__ import annotations

from pathlib import Path

DOC_START, DOC_END = "<!-- bench-pipeline:start -->", "<!-- bench-pipeline:end -->"


def _cpu_line(run: dict) -> str:
    return ", ".join(f"{name} {ms:.2f}" for name, ms in run["cpu_ms_per_event"].items())


def markdown(result: dict) -> str:
    d, p, t, u = result["direct"], result["pipeline"], result["trivial"], result["sustained"]
    ratio = result["ratio_pipeline_direct"]
    rates = lambda runs: ", ".join(f"{r:.2f}" for r in runs)  # noqa: E731
    verdict = "kept up" if u["kept_up"] else "fell behind"
    lines = [
        DOC_START,
        f"Measured {result['date']} on {result['machine']} with `{result['command']}`.",
        f"Model: {result['model']}. Worker batch size {p['batch']} ({t['batch']} for the trivial model), {p.get('concurrency', 1)} batches in flight;"
        f" photos: the {result['photos']} samples in `samples/`; the broker's log: {result['broker_storage']}.",
        "",
        "| path | items | seconds | items/s | latency p50 ms | latency p99 ms |",
        "|---|---|---|---|---|---|",
        f"| direct: backbone + heads in-process (TensorFlow), {len(d['runs'])} runs between the pipeline's | {d['images']} | {d['seconds']:.1f}"
        f" | {d['images_per_s']:.2f} | {d['latency_p50_ms']:.0f} (batch) | {d['latency_p99_ms']:.0f} (batch) |",
        f"| pipeline: Kafka → worker → Triton → Kafka + S3, same model, {len(p['runs'])} runs | {p['events']} | {p['seconds']:.1f}"
        f" | {p['events_per_s']:.2f} | {p['latency_p50_ms']:.0f} | {p['latency_p99_ms']:.0f} |",
        f"| trivial model, a burst produced at once | {t['events']} | {t['seconds']:.1f} | {t['events_per_s']:.0f}"
        f" | {t['latency_p50_ms']:.0f} | {t['latency_p99_ms']:.0f} |",
        f"| trivial model, {u['offered_per_s']:.0f} events/s offered for {u['offered_seconds']:.0f} s | {u['events']} | {u['seconds']:.1f}"
        f" | {u['labeled_per_s_second_half']:.0f} (second half) | {u['latency_p50_ms']:.0f} | {u['latency_p99_ms']:.0f} |",
        "",
        f"- pipeline / direct = **{ratio:.2f}** (target ≥ 0.9). Direct runs: {rates(d['runs'])} images/s;"
        f" pipeline runs: {rates(p['runs'])} events/s.",
        f"- trivial model, offered {u['offered_per_s']:.0f} events/s for {u['offered_seconds']:.0f} s: **{verdict}**"
        " (target: sustain 500 per worker) —"
        f" backlog {u['backlog_quarter']} events after a quarter of the window, {u['backlog_end']} at the end;"
        f" the last label {u['drain_s']:.1f} s after the last event was sent.",
        f"- trivial model, burst of {t['events']}: {t['events_per_s']:.0f} events/s end to end.",
        f"- the worker's own cost: **{u['worker_cpu_ms_per_event']:.2f} ms CPU per event** sustained"
        f" ({u['events_per_worker_cpu_s']:.0f} events per worker CPU-second),"
        f" {t['worker_cpu_ms_per_event']:.2f} ms in the burst, {p['cpu_ms_per_event']['worker']:.2f} ms with the real model"
        f" (batches of {p['batch']}).",
        "- CPU ms per event of each process (2 cores in all):",
        f"  real model: {_cpu_line(p)};",
        f"  trivial burst: {_cpu_line(t)};",
        f"  trivial sustained: {_cpu_line(u)} (tritonserver's own process: its Python-backend model stubs are separate processes).",
        "- Burst latency is upload-to-label for events produced all at once, so it includes queueing behind the",
        "  whole burst: those rows are throughput runs, not latency-under-light-load figures.",
        DOC_END,
    ]
    return "\n".join(lines)


def write_doc(path: Path, section: str) -> None:
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    if DOC_START in text and DOC_END in text:
        head, rest = text.split(DOC_START, 1)
        text = head + section + rest.split(DOC_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Pipeline\n\n" + section + "\n"
    path.write_text(text)
