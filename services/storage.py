"""S3: read product photos, write label records. Synchronous boto3; callers run it off the loop.

Keys are derived only through :func:`services.events.label_key` and :func:`image_key`,
which refuse anything that could leave their prefix; only the configured bucket is used.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from services.events import ErrorCode, ProductLabeled, S3Location, label_key
from services.images import ImageError
from services.settings import Settings

MODEL_VERSION_META = "model-version"


class TransientError(RuntimeError):
    """A failure worth retrying (server unreachable, throttled, 5xx). Never dead-lettered."""


def make_s3_client(settings: Settings):  # noqa: ANN201 - botocore client
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id.get_secret_value(),
        aws_secret_access_key=settings.s3_secret_access_key.get_secret_value(),
        verify=settings.s3_verify_tls,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=3,
            read_timeout=10,
            max_pool_connections=32,
        ),
    )


def image_key(prefix: str, data: bytes, suffix: str = ".jpg") -> str:
    """Content-addressed key: the same bytes always land on the same key."""
    return f"{prefix}{hashlib.sha256(data).hexdigest()}{suffix}"


def _is_transient(exc: Exception) -> bool:
    if isinstance(exc, (EndpointConnectionError, BotoCoreError)):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in {"SlowDown", "RequestTimeout", "ServiceUnavailable"}
    return False


class Storage:
    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.client = client or make_s3_client(settings)

    def put_image(self, data: bytes, suffix: str = ".jpg") -> S3Location:
        key = image_key(self.settings.s3_images_prefix, data, suffix)
        self._call(self.client.put_object, Bucket=self.bucket, Key=key, Body=data, ContentType="image/jpeg")
        return S3Location(bucket=self.bucket, key=key)

    def get_image(self, location: S3Location, max_bytes: int) -> bytes:
        """The photo's bytes. Bad input raises ImageError (dead letter); outages TransientError."""
        if location.bucket != self.bucket:
            raise ImageError(ErrorCode.bucket_not_allowed, f"bucket {location.bucket!r} is not the configured bucket")
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=location.key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in {"NoSuchKey", "404", "NotFound"}:
                raise ImageError(ErrorCode.image_not_found, f"s3://{self.bucket}/{location.key} does not exist") from None
            if _is_transient(exc):
                raise TransientError(f"S3 get failed: {code or exc}") from exc
            raise ImageError(ErrorCode.image_not_found, f"S3 refused s3://{self.bucket}/{location.key}: {code}") from None
        except (BotoCoreError, OSError) as exc:
            raise TransientError(f"S3 unreachable: {exc}") from exc
        length = int(resp.get("ContentLength") or 0)
        body = resp["Body"]
        try:
            if length > max_bytes:
                raise ImageError(ErrorCode.image_too_large, f"image has {length} bytes, limit {max_bytes}")
            data = body.read(max_bytes + 1)
        except (BotoCoreError, OSError) as exc:
            raise TransientError(f"S3 read failed: {exc}") from exc
        finally:
            body.close()
        if len(data) > max_bytes:
            raise ImageError(ErrorCode.image_too_large, f"image is over {max_bytes} bytes")
        return data

    def put_label(self, event: ProductLabeled) -> bool:
        """Write ``labels/<product_id>.json``; a record of the same model version stays as it is.

        One conditional PUT (``If-None-Match: *``) in the common case; only when the key
        exists is it read to compare model versions. Returns True when written.
        """
        key = label_key(self.settings.s3_labels_prefix, event.product_id)
        version = event.model.version
        body = event.model_dump_json(indent=2).encode()
        put = {"Bucket": self.bucket, "Key": key, "Body": body, "ContentType": "application/json", "Metadata": {MODEL_VERSION_META: version}}
        try:
            self._call(self.client.put_object, IfNoneMatch="*", **put)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                raise
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchKey", "NotFound"}:
                raise TransientError(f"S3 head failed: {exc}") from exc
            head = {}
        except (BotoCoreError, OSError) as exc:
            raise TransientError(f"S3 unreachable: {exc}") from exc
        if head.get("Metadata", {}).get(MODEL_VERSION_META) == version:
            return False
        self._call(self.client.put_object, **put)  # a new model version replaces the record
        return True

    def get_label(self, product_id: str) -> ProductLabeled | None:
        key = label_key(self.settings.s3_labels_prefix, product_id)
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return ProductLabeled.model_validate(json.loads(resp["Body"].read()))

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def _call(self, fn, **kwargs):  # noqa: ANN001, ANN003, ANN202
        try:
            return fn(**kwargs)
        except ClientError as exc:
            if _is_transient(exc):
                raise TransientError(f"S3 {fn.__name__} failed: {exc}") from exc
            raise
        except (BotoCoreError, OSError) as exc:
            raise TransientError(f"S3 unreachable: {exc}") from exc
