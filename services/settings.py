"""Every setting of autolabel, typed and env-driven (prefix ``AUTOLABEL_``).

The embedded stack and production differ only in these values. ``autolabel stack up``
writes the endpoints it started to ``<state_dir>/stack.env``; :func:`load_settings`
reads that file (and ``.env``) beneath the real environment, so a variable you export
always wins.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "AUTOLABEL_"
TASKS: tuple[str, ...] = ("style", "gender", "season")
SCOPE_OUTPUT = "scope"  # the served scope gate: [P(in scope), P(out of scope)] (docs/model-repository.md)
SCOPE_CLASSES: tuple[str, str] = ("in-scope", "out-of-scope")


class TritonProtocol(StrEnum):
    grpc = "grpc"
    http = "http"


class KafkaSecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class Settings(BaseSettings):
    """All settings. Field ``foo_bar`` is read from ``AUTOLABEL_FOO_BAR``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", case_sensitive=False, validate_default=True
    )

    # --- Kafka -------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers."
    )
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        KafkaSecurityProtocol.PLAINTEXT, description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism when the protocol is SASL_*."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for SSL/SASL_SSL.")
    topic_images: str = Field("product-images", description="Input topic: ProductImageUploaded.")
    topic_labels: str = Field("product-labels", description="Output topic: every ProductLabeled.")
    topic_review: str = Field(
        "product-labels-review", description="Low-confidence ProductLabeled (also on topic_labels)."
    )
    topic_dlq: str = Field("product-images-dlq", description="Dead-letter records.")
    topic_partitions: int = Field(4, ge=1, le=1024, description="Partitions when topics are created.")
    consumer_group: str = Field("autolabel-worker", description="Consumer group of the workers.")
    kafka_session_timeout_s: float = Field(
        10.0, gt=0, description="Consumer session timeout (a group join waits about half of it)."
    )

    # --- S3 ----------------------------------------------------------------------
    s3_endpoint_url: str | None = Field(
        "http://127.0.0.1:8333", description="S3 endpoint; empty for AWS's default."
    )
    s3_bucket: str = Field("autolabel", description="The one bucket read and written.")
    s3_region: str = Field("us-east-1", description="S3 region (signature v4).")
    s3_access_key_id: SecretStr = Field(SecretStr("autolabel"), description="S3 access key (secret).")
    s3_secret_access_key: SecretStr = Field(
        SecretStr("autolabel-secret"), description="S3 secret key (secret)."
    )
    s3_verify_tls: bool = Field(True, description="Verify the S3 endpoint's TLS certificate.")
    s3_images_prefix: str = Field("images/", description="Key prefix of uploaded images.")
    s3_labels_prefix: str = Field("labels/", description="Key prefix of label records.")

    # --- Triton ------------------------------------------------------------------
    triton_url: str = Field("127.0.0.1:8001", description="Triton endpoint host:port (gRPC or HTTP).")
    triton_protocol: TritonProtocol = Field(TritonProtocol.grpc, description="grpc or http.")
    triton_model: str = Field(
        "autolabel", description="Model to call for all three labels (ensemble or multi-output)."
    )
    triton_timeout_s: float = Field(30.0, gt=0, description="Timeout of one inference call.")
    model_repository: Path = Field(
        Path("model_repository"), description="Model repository Triton loads (embedded stack)."
    )

    # --- Worker ------------------------------------------------------------------
    batch_max_size: int = Field(8, ge=1, le=256, description="Events per inference batch at most.")
    batch_max_ms: int = Field(50, ge=0, le=60_000, description="Wait at most this long to fill a batch.")
    worker_concurrency: int = Field(
        2, ge=1, le=16,
        description="Batches one worker has in flight at once (Triton works on one while another is fetched or "
        "published); above 1, two events of the same product may be labeled out of order.",
    )
    threshold_style: float | None = Field(
        None, ge=0, le=1,
        description="needs_review below this confidence, for every label of the task (with or without a title); unset = the "
        "thresholds shipped with the model (chosen on validation for `AUTOLABEL_TARGET_PRECISION`: one for labels read from "
        "the photo, one per class for labels read with a title; 0.5 for a model that ships none).",
    )
    threshold_gender: float | None = Field(None, ge=0, le=1, description="As `AUTOLABEL_THRESHOLD_STYLE`, for gender.")
    threshold_season: float | None = Field(None, ge=0, le=1, description="As `AUTOLABEL_THRESHOLD_STYLE`, for season.")
    review_policy: Annotated[dict[str, Literal["threshold", "advisory", "always"]], NoDecode] = Field(
        default_factory=dict,
        description="Per task, when its label goes to review, as `task=policy,...` (e.g. `season=advisory`): `threshold` (the "
        "default) when under its threshold; `advisory` never (a label under its threshold is published as advisory, not "
        "accepted, and does not send the product to review); `always` whatever its confidence.",
    )
    scope_threshold: float | None = Field(
        None, ge=0, le=1,
        description="Every label goes to review when the scope gate's P(out of scope) is above this (a photo of a product "
        "the heads were not trained for, e.g. a shoe for apparel heads); unset = the threshold shipped with the model "
        "(chosen on validation to flag at most 1 % of in-scope photos); a model without a gate: no check.",
    )
    target_precision: float = Field(
        0.95, gt=0, le=1,
        description="`autolabel train`: each task's threshold is the lowest whose auto-accepted validation labels reach "
        "this precision (Wilson lower bound); live precision from audits is held to it (`autolabel quality`, alerts).",
    )
    audit_rate: float = Field(
        0.0, ge=0, le=1,
        description="Share of the products whose labels skip review that are also queued for a blind audit (chosen by a hash "
        "of the product id: a relabel audits the same products); their outcomes measure live precision. 0 = off.",
    )
    drift_reference: Path | None = Field(
        None, description="The worker's drift reference: per task class shares, top-probability histogram and auto-accept "
        "rate (`autolabel quality reference`); unset = no drift metrics but the auto-accept rate.",
    )
    drift_window: int = Field(1000, ge=10, le=1_000_000, description="The worker's drift metrics cover its last this many labels.")
    quality_window_s: float = Field(
        7 * 86400.0, gt=0, description="Live precision and reviewer agreement cover the audit outcomes of this many seconds."
    )
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Larger images are dead-lettered.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Larger images are dead-lettered.")
    max_event_bytes: int = Field(64 * 1024, ge=256, description="Larger events are dead-lettered.")
    dead_letter_max_original_bytes: int = Field(
        16 * 1024, ge=0, le=512 * 1024,
        description="A dead letter carries at most this many bytes of its original record; a longer original is "
        "stored whole at `s3://<bucket>/dead-letters/<topic>/<partition>/<offset>` and the dead letter says where.",
    )
    url_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts whose http(s) image URLs may be fetched (comma-separated); empty = none.",
    )
    retry_initial_s: float = Field(0.5, gt=0, description="First backoff of a transient failure.")
    retry_max_s: float = Field(10.0, gt=0, description="Longest backoff of a transient failure.")
    max_attempts: int = Field(
        5, ge=1, description="Attempts before an event failing in processing is dead-lettered."
    )
    worker_name: str = Field(
        default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}",
        description="Name of this worker in dead-letter records and logs.",
    )
    decode_threads: int = Field(2, ge=1, le=64, description="Threads decoding images off the loop.")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="The worker's event loop: uvloop (faster), or the standard asyncio one."
    )
    shutdown_timeout_s: float = Field(
        20.0, gt=0, le=3600,
        description="After SIGTERM/SIGINT or an agent crash the worker exits within this many seconds whatever it is "
        "doing (batches in flight get until then; unfinished ones are not committed and are consumed again); exit 1 "
        "after a crash or when the stop overran.",
    )
    metrics_port: int = Field(9108, ge=0, le=65535, description="Prometheus port of the worker; 0 = off.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")

    # --- Human review (`autolabel review`, `autolabel relabel`) -----------------------
    review_port: int = Field(8088, ge=1, le=65535, description="Port of the review web app (page, JSON API, /metrics).")
    review_tokens: SecretStr = Field(
        SecretStr(""), description="Reviewers allowed in, comma-separated `name:token` pairs (secret); empty = nobody."
    )
    review_database_url: SecretStr = Field(
        SecretStr(""), description="SQLAlchemy URL of the review queue (e.g. `postgresql+psycopg://...`; secret: it may hold "
        "a password); empty = SQLite `<state_dir>/review.db`.",
    )
    review_claim_timeout_s: float = Field(
        600.0, gt=0, description="A claimed item nobody reviewed goes back to the queue after this many seconds."
    )
    review_consumer_group: str = Field(
        "autolabel-review", description="Consumer group of the review app reading topic_labels."
    )
    review_session_secret: SecretStr = Field(
        SecretStr(""), description="Key signing the review page's session cookies (secret); empty = derived from "
        "the review tokens.",
    )
    review_session_max_age_s: int = Field(
        12 * 3600, gt=0, description="A review page login lasts this many seconds at most (logging out ends it at once)."
    )
    review_cookie_secure: bool = Field(
        False, description="Mark the review session cookie `Secure` (sent over HTTPS only): turn on whenever reviewers "
        "reach the app through HTTPS (a TLS ingress or proxy); off only for plain-HTTP local use.",
    )
    review_auth_failures_per_client: int = Field(
        10, ge=1, description="Wrong logins or API tokens one client address may send per minute; then 429 with Retry-After."
    )
    review_auth_failures_total: int = Field(
        100, ge=1, description="Wrong logins or API tokens from all clients together per minute; then 429 for everyone "
        "who sends a credential it cannot check yet.",
    )
    review_max_body_bytes: int = Field(
        64 * 1024, ge=1024, description="Larger request bodies get 413 (never read whole, never echoed)."
    )
    review_api_docs: bool = Field(
        False, description="Serve the API's Swagger page at /api/docs (for logged-in reviewers, from installed files)."
    )
    topic_reviewed: str = Field(
        "product-labels-reviewed", description="ProductLabelsReviewed: each human review decision."
    )
    relabel_rate: float = Field(
        50.0, gt=0, description="`autolabel relabel`: upload events re-emitted per second at most."
    )

    # --- Embedded stack ----------------------------------------------------------
    state_dir: Path = Field(Path(".autolabel"), description="Data, logs, PIDs of the embedded stack.")
    stack_timeout_s: float = Field(90.0, gt=0, description="How long `stack up` waits for health.")
    stack_broker_storage: Literal["s3", "memory"] = Field(
        "s3", description="Embedded broker's log: s3 (durable, in the embedded S3) or memory (faster, lost on stop)."
    )
    stack_triton_models: str = Field(
        "", description="Models the embedded Triton loads at start (comma-separated); empty = all."
    )
    stack_broker_port: int = Field(0, ge=0, le=65535, description="Embedded broker port; 0 = a free one.")
    stack_s3_port: int = Field(0, ge=0, le=65535, description="Embedded S3 port; 0 = a free one.")
    stack_triton_http_port: int = Field(0, ge=0, le=65535, description="Embedded Triton HTTP port; 0 = free.")
    stack_triton_grpc_port: int = Field(0, ge=0, le=65535, description="Embedded Triton gRPC port; 0 = free.")
    stack_triton_metrics_port: int = Field(0, ge=0, le=65535, description="Embedded Triton metrics; 0 = free.")

    @field_validator("threshold_style", "threshold_gender", "threshold_season", "scope_threshold", "drift_reference", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("review_policy", mode="before")
    @classmethod
    def _split_policies(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = [p.strip() for p in value.split(",") if p.strip()]
            if any("=" not in p for p in pairs):
                raise ValueError("expected task=policy pairs separated by commas, e.g. season=advisory")
            value = {t.strip(): v.strip() for t, _, v in (p.partition("=") for p in pairs)}
        if isinstance(value, dict) and set(value) - set(TASKS):
            raise ValueError(f"unknown task(s) {sorted(set(value) - set(TASKS))}; the tasks are {list(TASKS)}")
        return value

    @field_validator("url_allow_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip().lower() for h in value.split(",") if h.strip()]
        return value

    @field_validator("s3_images_prefix", "s3_labels_prefix")
    @classmethod
    def _prefix_form(cls, value: str) -> str:
        if value.startswith("/") or ".." in value or not value.endswith("/"):
            raise ValueError("must be relative, end with '/' and contain no '..'")
        return value

    def review_reviewers(self) -> dict[str, str]:
        """token -> reviewer name, from ``review_tokens`` (``name:token,...``)."""
        out: dict[str, str] = {}
        for pair in self.review_tokens.get_secret_value().split(","):
            name, sep, token = pair.strip().partition(":")
            if sep and name.strip() and token.strip():
                out[token.strip()] = name.strip()
        return out

    def threshold(self, task: str) -> float | None:
        """The operator's override of ``task``'s auto-accept threshold, or None (use the model's)."""
        value = getattr(self, f"threshold_{task}")
        return None if value is None else float(value)

    @property
    def kafka_ca_path(self) -> str | None:
        """The CA bundle brokers are verified with; None (the system's CAs) when unset or an empty
        file (a secret's empty ca.crt: a public CA)."""
        path = self.kafka_ssl_cafile
        if path is None or (path.is_file() and path.stat().st_size == 0):
            return None
        return str(path)

    def kafka_client_kwargs(self) -> dict[str, object]:
        """Security settings in kafka-python's keyword names."""
        kw: dict[str, object] = {
            "bootstrap_servers": self.kafka_bootstrap_servers.split(","),
            "security_protocol": self.kafka_security_protocol.value,
        }
        if self.kafka_security_protocol.value.startswith("SASL"):
            kw["sasl_mechanism"] = self.kafka_sasl_mechanism
            kw["sasl_plain_username"] = self.kafka_sasl_username
            kw["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        if self.kafka_ca_path:
            kw["ssl_cafile"] = self.kafka_ca_path
        return kw


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def stack_env_file(state_dir: Path | None = None) -> Path:
    if state_dir is None:
        state_dir = Path(os.environ.get(f"{ENV_PREFIX}STATE_DIR", ".autolabel"))
    return state_dir / "stack.env"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, over ``.env`` and the running stack's ``stack.env``."""
    env_files = [p for p in (Path(".env"), stack_env_file()) if p.is_file()]
    try:
        return Settings(_env_file=env_files or None, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = f"{ENV_PREFIX}{str(err['loc'][0]).upper()}" if err["loc"] else "settings"
            lines.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("invalid setting: " + "; ".join(lines)) from None


def settings_table() -> list[tuple[str, str, str]]:
    """(env var, default, description) for every setting, for the README."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=False)
        if field.default_factory is not None:
            default = "(computed)" if name == "worker_name" else "(empty)"
        elif isinstance(default, SecretStr):
            default = "(secret)"
        elif hasattr(default, "value"):
            default = default.value
        rows.append((f"{ENV_PREFIX}{name.upper()}", str(default), field.description or ""))
    return rows
