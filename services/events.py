"""Versioned event schemas: what goes on the topics and into S3.

``ProductImageUploaded`` (topic_images) -> ``ProductLabeled`` (topic_labels, and
topic_review when ``needs_review``) or ``DeadLetter`` (topic_dlq); a reviewer's decision on a
flagged one -> ``ProductLabelsReviewed`` (topic_reviewed). Keys are product ids.
Every schema carries ``schema_version``; readers accept the versions they know.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A product id becomes part of S3 keys and Kafka keys: keep it to a safe alphabet.
PRODUCT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One consumed Kafka record, as it came: where it sits and its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes

    @property
    def ref(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)


def _now() -> datetime:
    return datetime.now(UTC)


def validate_product_id(value: str) -> str:
    """Refuse ids that could escape a key prefix (``..``, ``/``, control characters)."""
    if not PRODUCT_ID_RE.fullmatch(value) or ".." in value:
        raise ValueError(
            "product_id must be 1-128 characters of letters, digits, '.', '_' or '-', "
            "start with a letter or digit and contain no '..'"
        )
    return value


ProductId = Annotated[str, Field(min_length=1, max_length=128)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class S3Location(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    bucket: str = Field(min_length=3, max_length=63)
    key: str = Field(min_length=1, max_length=1024)

    @field_validator("key")
    @classmethod
    def _safe_key(cls, key: str) -> str:
        if key.startswith("/") or any(part == ".." for part in key.split("/")):
            raise ValueError("key must be relative and contain no '..' segment")
        if _CONTROL_CHARS.search(key):
            raise ValueError("key must contain no control characters")
        return key


class ImageLocation(BaseModel):
    """Where the photo is: an object in the configured bucket, or an allow-listed URL."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    s3: S3Location | None = None
    url: str | None = Field(None, max_length=2048, pattern=r"^https?://")

    @model_validator(mode="after")
    def _exactly_one(self) -> "ImageLocation":
        if (self.s3 is None) == (self.url is None):
            raise ValueError("give exactly one of s3 or url")
        return self


class ProductImageUploaded(_Event):
    schema_version: Literal[1] = 1
    type: Literal["product.image.uploaded"] = "product.image.uploaded"
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)
    product_id: ProductId
    image: ImageLocation
    uploaded_at: datetime = Field(default_factory=_now)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=32)

    @field_validator("product_id")
    @classmethod
    def _check_product_id(cls, value: str) -> str:
        return validate_product_id(value)

    @field_validator("uploaded_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        """A time without a zone is UTC (it is compared with aware times: labels' order and latency)."""
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value


ReviewPolicy = Literal["threshold", "advisory", "always"]
LabelStatus = Literal["accepted", "review", "advisory"]


class TaskLabel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str
    confidence: float = Field(ge=0, le=1)
    probabilities: dict[str, float]
    threshold: float = Field(ge=0, le=1)
    needs_review: bool = Field(description="The label waits for a person (status `review`).")
    # optional, newer: records written before it existed have `accepted` or `review` (from needs_review)
    status: LabelStatus = Field(
        None, validate_default=False,  # type: ignore[arg-type] - filled in from needs_review below
        description="accepted: at or above its threshold, no person needed; review: waits for a person (under its threshold, "
        "or its task's policy is `always`); advisory: under its threshold, but its task's policy is `advisory` (published "
        "with its probabilities, not queued, not to be trusted as accepted).")

    @model_validator(mode="before")
    @classmethod
    def _status_from_needs_review(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("status") is None and "needs_review" in data:
            return {**data, "status": "review" if data["needs_review"] else "accepted"}
        return data

    @model_validator(mode="after")
    def _status_agrees(self) -> "TaskLabel":
        if self.needs_review != (self.status == "review"):
            raise ValueError("needs_review must be true exactly when the status is review")
        return self


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    version: str
    backbone: str
    weights_source: str


class ScopeCheck(BaseModel):
    """The scope gate's verdict on the photo: is it a product the model was trained for?"""

    model_config = ConfigDict(extra="forbid")

    in_scope: bool = Field(description="False: every label of this photo needs review, whatever its confidence (unless other_heads).")
    probability: float = Field(ge=0, le=1, description="P(out of scope): not a product of the categories the model was trained for.")
    threshold: float = Field(ge=0, le=1, description="Out of scope above this probability.")
    # optional, newer: absent in older records (False)
    other_heads: bool = Field(
        False, description="The labels are the model's heads for the other categories (autolabel train-others; the photo is "
        "above the gate's shipped threshold), each judged by their own threshold, instead of all going to review.")


class ProductLabeled(_Event):
    schema_version: Literal[1] = 1
    type: Literal["product.labeled"] = "product.labeled"
    product_id: ProductId
    source_event_id: str
    image: ImageLocation
    labels: dict[Literal["style", "gender", "season"], TaskLabel]
    model: ModelInfo
    needs_review: bool
    latency_ms: float = Field(ge=0, description="From uploaded_at to labeled_at (upload to label).")
    labeled_at: datetime = Field(default_factory=_now)
    # optional: records written before it existed lack it (their upload time is labeled_at - latency_ms)
    uploaded_at: datetime | None = Field(None, description="uploaded_at of the upload event this labels.")
    # optional: records written before it existed were read from the photo alone
    inputs: list[Literal["image", "title"]] = Field(
        default_factory=lambda: ["image"], min_length=1, max_length=2,
        description="What the labels were read from: the photo, and the upload's metadata.title where the model read it.")
    # optional, newer fields: absent in older records
    metadata: dict[str, str] | None = Field(None, description="The upload event's catalog metadata, if it had any.")
    scope: ScopeCheck | None = Field(
        None, description="The scope gate's verdict, where the model has one: out of scope sends every label to review, "
        "or with heads for the other categories, each label that falls under their threshold.")
    # optional, newer: absent in older records (False)
    audit: bool = Field(
        False, description="Sampled for a blind audit (AUTOLABEL_AUDIT_RATE): no label needs review, but the product is "
        "queued for a person all the same, shown without the model's labels; the outcome measures live precision.")
    human_labels: dict[Literal["style", "gender", "season"], "HumanLabel"] | None = Field(
        None, description="In the stored record only: what a reviewer decided for this upload (source: human)."
    )

    def upload_order(self) -> tuple[datetime, str]:
        """Which upload this labels, in upload order: (uploaded_at, then event id).

        A record without ``uploaded_at`` (written before it existed) had it as
        ``labeled_at - latency_ms``."""
        at = self.uploaded_at or self.labeled_at - timedelta(milliseconds=self.latency_ms)
        return (at if at.tzinfo else at.replace(tzinfo=UTC), self.source_event_id)

    @model_validator(mode="after")
    def _all_tasks(self) -> "ProductLabeled":
        missing = {"style", "gender", "season"} - set(self.labels)
        if missing:
            raise ValueError(f"labels missing for {sorted(missing)}")
        if self.needs_review != any(t.needs_review for t in self.labels.values()):
            raise ValueError("needs_review must be true exactly when a task needs review")
        if self.audit and self.needs_review:
            raise ValueError("only a product whose labels skip review is audited")
        if (self.scope is not None and not self.scope.in_scope and not self.scope.other_heads
                and any(t.status == "accepted" for t in self.labels.values())):
            raise ValueError("a photo out of scope has no task accepted (unless the model has heads for it)")
        return self


class HumanLabel(BaseModel):
    """A reviewer's decision on one task of one upload, kept in the label record."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str
    source: Literal["human"] = "human"
    reviewer: str = Field(min_length=1, max_length=128)
    reviewed_at: datetime
    model_label: str | None = Field(None, description="The model's label (equal to label: accepted); the reviewer saw it, except in a blind audit.")


ProductLabeled.model_rebuild()


class ProductLabelsReviewed(_Event):
    """A reviewer's decision on a flagged product (topic_reviewed): the labels as a person set them."""

    schema_version: Literal[1] = 1
    type: Literal["product.labels.reviewed"] = "product.labels.reviewed"
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)
    product_id: ProductId
    source_event_id: str = Field(description="The upload event whose labels were reviewed.")
    uploaded_at: datetime | None = None
    image: ImageLocation
    labels: dict[Literal["style", "gender", "season"], str] = Field(description="Every task's label as decided.")
    model_labels: dict[Literal["style", "gender", "season"], str] = Field(description="What the model said.")
    corrected: list[Literal["style", "gender", "season"]] = Field(description="Tasks where the reviewer changed the label.")
    model: ModelInfo
    reviewer: str = Field(min_length=1, max_length=128)
    reviewed_at: datetime = Field(default_factory=_now)
    # optional, newer: absent in older records (False)
    audit: bool = Field(False, description="A blind audit: the reviewer chose every label without seeing the model's.")


class ErrorCode(StrEnum):
    """Why an event was dead-lettered. Only bad input lands here, never a transient failure."""

    event_too_large = "event_too_large"
    malformed_json = "malformed_json"
    schema_invalid = "schema_invalid"
    bucket_not_allowed = "bucket_not_allowed"
    url_not_allowed = "url_not_allowed"
    image_not_found = "image_not_found"
    image_too_large = "image_too_large"
    image_empty = "image_empty"
    image_unreadable = "image_unreadable"
    image_too_many_pixels = "image_too_many_pixels"
    image_unsupported = "image_unsupported"
    processing_failed = "processing_failed"  # failed max_attempts times (poison message)
    publish_refused = "publish_refused"  # the broker refuses this record's output for good (too large)


class DeadLetter(_Event):
    schema_version: Literal[1] = 1
    type: Literal["product.image.dead_letter"] = "product.image.dead_letter"
    code: ErrorCode
    message: str = Field(max_length=2000)
    original_b64: str = Field(
        description="The original record value, base64: all of it, or its first "
        "AUTOLABEL_DEAD_LETTER_MAX_ORIGINAL_BYTES bytes when original_truncated."
    )
    # optional: dead letters written before these fields existed lack them
    original_size: int | None = Field(None, ge=0, description="Bytes in the whole original value.")
    original_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the whole original value, hex."
    )
    original_truncated: bool = Field(False, description="original_b64 holds only a prefix of the original.")
    original_ref: S3Location | None = Field(
        None, description="Where the whole original value is stored when original_b64 holds only a prefix."
    )
    original_key: str | None = None
    topic: str
    partition: int
    offset: int
    product_id: str | None = None
    event_id: str | None = None
    worker: str
    attempts: int = 1
    failed_at: datetime = Field(default_factory=_now)

    @property
    def original(self) -> bytes:
        """The original value as carried here: the whole of it unless ``original_truncated``."""
        return base64.b64decode(self.original_b64)

    @staticmethod
    def encode_original(raw: bytes) -> str:
        return base64.b64encode(raw).decode()


Outcome = ProductLabeled | DeadLetter  # what handling one consumed record comes to


def supersedes(new: ProductLabeled, stored: ProductLabeled) -> bool:
    """Whether ``new`` replaces ``stored`` as a product's label record.

    The record follows the newest upload (:meth:`ProductLabeled.upload_order`): a later
    upload replaces it, an earlier one does not; the same upload labeled again replaces it
    only with another model version (a relabeling), never with the same one (a re-delivery).
    """
    a, b = new.upload_order(), stored.upload_order()
    if a != b:
        return a > b
    return new.model.version != stored.model.version


def label_key(prefix: str, product_id: str) -> str:
    """The S3 key of a product's label record (``labels/<product_id>.json``).

    It holds the label of the product's newest upload (:func:`supersedes`).
    """
    return f"{prefix}{validate_product_id(product_id)}.json"
