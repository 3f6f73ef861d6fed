"""`autolabel bench`: benchmarks, each measuring ratios side by side in one run."""

from __future__ import annotations

import click

from services.cli import LazyGroup

BENCHES = {
    "serving": "training.bench_serving:serving",
    "pipeline": "services.bench_pipeline:pipeline",
    "soak": "services.bench_soak:soak",
    "training": "training.bench_training:training",
}
BENCH_HELP = {
    "serving": "Standalone vs shared-backbone vs in-process inference (images/s, p50/p99).",
    "pipeline": "End-to-end events/s and latency through Kafka -> worker -> Triton -> Kafka+S3.",
    "soak": "Fixed-rate load for N minutes: throughput, latency, RSS, lag, losses.",
    "training": "Feature-cache head training vs a plain Keras fit with the frozen base.",
}


@click.group(cls=LazyGroup, lazy_commands=BENCHES, lazy_help=BENCH_HELP)
def bench() -> None:
    """Benchmarks. Results go to docs/benchmarks.md with the command that made them."""
