"""S3: upload photos and read records (boto3, :class:`Storage`); the worker's hot path,
reading photos and writing label records (obstore, :class:`LabelStore`).

The worker's two requests per event go through obstore (Rust ``object_store``, async,
measured ~0.2 ms CPU per request here against ~2 ms for botocore: botocore alone would cap
a worker far below its throughput target). Everything else uses boto3.

Keys are derived only through :func:`services.events.label_key` and :func:`image_key`,
which refuse anything that could leave their prefix; only the configured bucket is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import timedelta
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from services.errors import BadInput, TransientError, classify_s3_error, s3_outage
from services import observability as obs
from services.events import ErrorCode, ProductLabeled, S3Location, label_key, supersedes
from services.settings import Settings


LABEL_WRITE_TRIES = 5  # read-compare-conditional-write rounds of one label record before giving up for now


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


def keep_human_labels(new: ProductLabeled, stored: ProductLabeled, body: bytes) -> bytes:
    """The body to write over ``stored``: a model relabel of the same upload keeps the
    reviewers' labels (a person's decision is never overwritten by a model); a new upload
    starts fresh."""
    if stored.human_labels and not new.human_labels and new.upload_order() == stored.upload_order():
        return new.model_copy(update={"human_labels": stored.human_labels}).to_bytes()
    return body


class ReviewConflict(Exception):
    """The label record is not of the reviewed upload (a newer photo came), or it is gone."""


class Storage:
    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.client = client or make_s3_client(settings)

    def put_image(self, data: bytes, suffix: str = ".jpg") -> S3Location:
        key = image_key(self.settings.s3_images_prefix, data, suffix)
        self._call(self.client.put_object, Bucket=self.bucket, Key=key, Body=data, ContentType="image/jpeg")
        return S3Location(bucket=self.bucket, key=key)

    def get_label(self, product_id: str) -> ProductLabeled | None:
        key = label_key(self.settings.s3_labels_prefix, product_id)
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return ProductLabeled.model_validate(json.loads(resp["Body"].read()))

    def get_label_with_etag(self, product_id: str) -> tuple[ProductLabeled | None, str | None]:
        key = label_key(self.settings.s3_labels_prefix, product_id)
        try:
            resp = self._call(self.client.get_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None, None
            raise
        return ProductLabeled.model_validate_json(resp["Body"].read()), resp.get("ETag")

    def put_human_labels(self, reviewed: ProductLabeled, human: dict[str, Any]) -> ProductLabeled:
        """Add reviewers' labels (``task -> HumanLabel``) to the record of the upload
        ``reviewed`` labels, with a PUT conditional on the ETag read (``If-Match``; a new
        record ``If-None-Match: *``), read again on a 412. ReviewConflict when the record
        is of another upload now; the record written otherwise."""
        key = label_key(self.settings.s3_labels_prefix, reviewed.product_id)
        for _ in range(LABEL_WRITE_TRIES):
            stored, etag = self.get_label_with_etag(reviewed.product_id)
            base = stored if stored is not None else reviewed
            if base.upload_order() != reviewed.upload_order():
                raise ReviewConflict(f"the record of {reviewed.product_id} is of another upload now")
            record = base.model_copy(update={"human_labels": {**(base.human_labels or {}), **human}})
            cond = {"IfMatch": etag} if stored is not None else {"IfNoneMatch": "*"}
            try:
                self._call(self.client.put_object, Bucket=self.bucket, Key=key, Body=record.to_bytes(),
                           ContentType="application/json", **cond)
                return record
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                    obs.LABEL_WRITE_CONFLICTS.inc()
                    continue
                raise
        raise TransientError(f"S3 {key} changed under the review app {LABEL_WRITE_TRIES} times in a row")

    def get_object_bytes(self, location: S3Location) -> tuple[bytes, str]:
        """An object of the configured bucket (bytes, content type); FileNotFoundError if absent."""
        if location.bucket != self.bucket:
            raise FileNotFoundError(f"bucket {location.bucket!r} is not the configured bucket")
        try:
            resp = self._call(self.client.get_object, Bucket=self.bucket, Key=location.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                raise FileNotFoundError(location.key) from None
            raise
        return resp["Body"].read(), resp.get("ContentType") or "application/octet-stream"

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def _call(self, fn, **kwargs):  # noqa: ANN001, ANN003, ANN202
        try:
            return fn(**kwargs)
        except Exception as exc:  # an outage becomes TransientError (services.errors)
            err = classify_s3_error(exc, fn.__name__)
            if err is exc:
                raise
            raise err from exc


class LabelStore:
    """The worker's S3 access, async: read photos, write label records (newest upload wins)."""

    def __init__(self, settings: Settings) -> None:
        from obstore.store import S3Store

        self.settings = settings
        self.bucket = settings.s3_bucket
        endpoint = settings.s3_endpoint_url or None
        self.store = S3Store(
            settings.s3_bucket,
            endpoint=endpoint,
            access_key_id=settings.s3_access_key_id.get_secret_value(),
            secret_access_key=settings.s3_secret_access_key.get_secret_value(),
            region=settings.s3_region,
            virtual_hosted_style_request=False,
            client_options={
                "allow_http": bool(endpoint and endpoint.startswith("http://")),
                "allow_invalid_certificates": not settings.s3_verify_tls,
                "connect_timeout": "3s",
                "timeout": "15s",
            },
            # our own loop retries transient failures forever; the client only smooths blips
            retry_config={"max_retries": 1, "backoff": {"init_backoff": timedelta(milliseconds=100)}, "retry_timeout": timedelta(seconds=5)},
        )

    async def get_image(self, location: S3Location, max_bytes: int) -> bytes:
        """The photo's bytes. Bad input raises BadInput (dead letter); outages TransientError."""
        import obstore
        from obstore.exceptions import NotFoundError

        if location.bucket != self.bucket:
            raise BadInput(ErrorCode.bucket_not_allowed, f"bucket {location.bucket!r} is not the configured bucket")
        try:
            result = await obstore.get_async(self.store, location.key)
            size = int(result.meta["size"])
            if size > max_bytes:
                raise BadInput(ErrorCode.image_too_large, f"image has {size} bytes, limit {max_bytes}")
            data = bytes(await result.bytes_async())
        except BadInput:
            raise
        except (NotFoundError, FileNotFoundError):  # obstore raises the builtin for a GET 404
            raise BadInput(ErrorCode.image_not_found, f"s3://{self.bucket}/{location.key} does not exist") from None
        except Exception as exc:  # anything else is the store, not the event
            raise s3_outage(exc, "get") from exc
        if len(data) > max_bytes:
            raise BadInput(ErrorCode.image_too_large, f"image is over {max_bytes} bytes")
        return data

    async def get_images(self, locations: list[S3Location], max_bytes: int) -> list[bytes | None]:
        """Many photos at once: one ranged GET each, all in flight together, no task per request.

        None where a photo needs :meth:`get_image` instead (not found, empty, too large, another
        bucket, any error): that path classifies it as bad input or an outage.
        """
        import obstore

        def start(loc: S3Location) -> asyncio.Future | None:
            if loc.bucket != self.bucket:
                return None
            try:
                # up to max_bytes + 1 bytes: a longer photo is found too large without reading it all
                return obstore.get_range_async(self.store, loc.key, start=0, end=max_bytes + 1)
            except Exception:  # noqa: BLE001 - the one-by-one path says what it is
                return None

        futures = [start(loc) for loc in locations]
        done = iter(await asyncio.gather(*(f for f in futures if f is not None), return_exceptions=True))
        out: list[bytes | None] = []
        for f in futures:
            result = next(done) if f is not None else None
            ok = result is not None and not isinstance(result, BaseException) and 0 < len(result) <= max_bytes
            out.append(bytes(result) if ok else None)  # type: ignore[arg-type]
        return out

    async def put_label(self, event: ProductLabeled, body: bytes | None = None) -> bool:
        """Write ``labels/<product_id>.json`` unless the stored record supersedes ``event``.

        The record follows the product's newest upload (:func:`services.events.supersedes`:
        ``uploaded_at``, then event id; the same upload only with another model version).
        One create-only PUT (``If-None-Match: *``) in the common case; when the key exists it
        is read, compared, and replaced only by a PUT conditional on the ETag read
        (``If-Match``), so two workers cannot interleave a stale write. True when written.
        """
        return (await self.put_labels([(event, body if body is not None else event.to_bytes())]))[0]

    async def put_labels(self, items: list[tuple[ProductLabeled, bytes]]) -> list[bool]:
        """:meth:`put_label` for a batch, ``(event, body)`` each (the body is the label event's
        bytes): the create-only PUTs all in flight together, one future each and no task.

        Raises TransientError if any write failed for want of S3; written ones are then
        found in place (same upload, same version) when the batch is retried.
        """
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        attrs = {"Content-Type": "application/json"}
        keys = [label_key(self.settings.s3_labels_prefix, event.product_id) for event, _ in items]
        results = await asyncio.gather(
            *(obstore.put_async(self.store, key, body, mode="create", attributes=attrs) for key, (_, body) in zip(keys, items, strict=True)),
            return_exceptions=True,
        )
        written: list[bool] = []
        for key, (event, body), result in zip(keys, items, results, strict=True):
            if not isinstance(result, BaseException):
                written.append(True)
            elif isinstance(result, (AlreadyExistsError, PreconditionError, FileExistsError)):
                written.append(await self._replace_if_newer(key, event, body, attrs))
            else:
                raise s3_outage(result, "put") from result  # type: ignore[arg-type]
        return written

    async def put_objects(self, items: list[tuple[str, bytes]]) -> None:
        """Write ``(key, body)`` objects, all in flight together; a key written again is
        overwritten (the callers' keys name their content: writing twice is harmless).

        Raises TransientError if any write failed; the caller retries the whole list.
        """
        import obstore

        results = await asyncio.gather(*(obstore.put_async(self.store, key, body) for key, body in items), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise s3_outage(result, "put") from result  # type: ignore[arg-type]

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a folder: ends with ``/``). TransientError if S3 fails."""
        import obstore

        try:
            return [meta["path"] for chunk in [c async for c in obstore.list(self.store, prefix)] for meta in chunk]
        except Exception as exc:
            raise s3_outage(exc, "list") from exc

    async def get_objects(self, keys: list[str]) -> list[bytes | None]:
        """The bytes of each key, None where there is none; all in flight together."""
        import obstore
        from obstore.exceptions import NotFoundError

        async def get(key: str) -> bytes | None:
            try:
                return bytes(await (await obstore.get_async(self.store, key)).bytes_async())
            except (NotFoundError, FileNotFoundError):
                return None

        try:
            return list(await asyncio.gather(*(get(k) for k in keys)))
        except Exception as exc:
            raise s3_outage(exc, "get") from exc

    async def delete_objects(self, keys: list[str]) -> None:
        """Delete these keys (one already gone is fine). TransientError if S3 fails."""
        import obstore

        try:
            await obstore.delete_async(self.store, keys[0] if len(keys) == 1 else keys)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise s3_outage(exc, "delete") from exc

    async def _replace_if_newer(self, key: str, event: ProductLabeled, body: bytes, attrs: dict[str, str]) -> bool:
        """The key exists: read it, and replace it if ``event`` supersedes it, conditionally on
        the ETag read. Another writer in between (412) -> read and compare again, at most
        :data:`LABEL_WRITE_TRIES` times, then TransientError (the batch's store is retried)."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError

        original = body
        for _ in range(LABEL_WRITE_TRIES):
            try:
                got = await obstore.get_async(self.store, key)
                raw, etag = bytes(await got.bytes_async()), got.meta.get("e_tag")
            except (NotFoundError, FileNotFoundError):
                raw, etag = None, None  # deleted meanwhile: create it again
            except Exception as exc:
                raise s3_outage(exc, "get") from exc
            if raw is not None:
                try:
                    stored = ProductLabeled.model_validate_json(raw)
                except ValueError:
                    stored = None  # an unreadable record is replaced
                if stored is not None:
                    if not supersedes(event, stored):
                        return False
                    body = keep_human_labels(event, stored, original)
            mode = "create" if raw is None else ({"e_tag": etag} if etag else "overwrite")
            try:
                await obstore.put_async(self.store, key, body, mode=mode, attributes=attrs)  # type: ignore[arg-type]
                return True
            except (PreconditionError, AlreadyExistsError, FileExistsError):
                obs.LABEL_WRITE_CONFLICTS.inc()
                continue  # written by another worker since it was read: compare with that
            except Exception as exc:
                raise s3_outage(exc, "put") from exc
        raise TransientError(f"S3 {key} changed under this worker {LABEL_WRITE_TRIES} times in a row")
