"""structlog JSON logs and the worker's Prometheus metrics."""

from __future__ import annotations

import logging
import sys

import structlog
from prometheus_client import Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

EVENTS_IN = Counter("autolabel_events_in_total", "Product-image events consumed")
EVENTS_OUT = Counter("autolabel_events_out_total", "Label events published and stored")
REVIEW_OUT = Counter("autolabel_review_total", "Label events flagged needs_review")
AUDIT_OUT = Counter("autolabel_audit_sampled_total", "Label events that skip review sampled for a blind audit (AUTOLABEL_AUDIT_RATE)")
OUT_OF_SCOPE = Counter("autolabel_out_of_scope_total", "Label events whose photo the scope gate called out of scope (every label flagged)")
DEAD_LETTERS = Counter("autolabel_dead_letters_total", "Events dead-lettered", ["code"])
UNDELIVERABLE = Counter(
    "autolabel_undeliverable_total", "Events acknowledged with neither a label nor a dead letter: even the dead letter was refused", ["code"]
)
LABEL_WRITE_CONFLICTS = Counter(
    "autolabel_label_write_conflicts_total", "Conditional label-record writes refused (412): another writer came first; compared again"
)
RETRIES = Counter("autolabel_transient_retries_total", "Transient failures retried", ["stage"])
BATCH_SIZE = Histogram("autolabel_batch_size", "Images per inference batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
E2E_LATENCY = Histogram("autolabel_e2e_latency_seconds", "Upload to label published", buckets=_LATENCY_BUCKETS)
TRITON_LATENCY = Histogram("autolabel_triton_latency_seconds", "One Triton inference call", buckets=_LATENCY_BUCKETS)
IN_FLIGHT = Gauge("autolabel_in_flight", "Events consumed and not yet acknowledged")


def start_metrics_server(port: int) -> None:
    if port:
        start_http_server(port, addr="0.0.0.0")  # noqa: S104 - scraped by Prometheus


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr; stdlib loggers (Faust, aiokafka) go through the same renderer."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(),
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(lvl, logging.WARNING))  # libraries: warnings and up


QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3", "aiokafka", "kafka", "faust", "mode", "grpc")


def quiet_libraries(level: str = "info") -> None:
    """Libraries log from warnings up (below that their records cost CPU on every request)."""
    lvl = logging.DEBUG if level == "debug" else logging.WARNING
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(lvl)


def get_logger(**bound: object) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger("autolabel").bind(**bound)
