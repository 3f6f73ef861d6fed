"""What a failure means, decided in one place.

Every error met while handling one record is one of three kinds, and the worker treats
each kind the same way wherever it happens (fetch, decode, inference, publish):

- :class:`TransientError`: the infrastructure (broker, S3, Triton, the network) is away,
  throttled or overloaded. Retried with capped backoff, forever; the record's offset is
  not committed meanwhile. Never dead-lettered.
- :class:`BadInput`: the record's own fault (an unparseable event, a bad photo, a refused
  URL, an output the broker refuses whatever the retry). Dead-lettered at once with its
  :class:`~services.events.ErrorCode`.
- anything else (:class:`InferenceError` among them): a failed attempt; after
  ``AUTOLABEL_MAX_ATTEMPTS`` the record is dead-lettered ``processing_failed``, so no
  record can block its partition.

The loop applying this is :class:`services.retry.Retry`. Library exceptions become these
kinds through the classifiers here, one per kind of server: :func:`classify_publish_error`
(Kafka producer, through Faust), :func:`classify_s3_error` (botocore; obstore's errors
other than "not found" are all outages: :func:`s3_outage`), :func:`classify_triton_error`
(tritonclient, by gRPC or HTTP status, never by the words of a message the served model
may write) and :func:`transient_http_status` (URL fetches).
"""

from __future__ import annotations

from collections.abc import Iterator

from services.events import ErrorCode

__all__ = [
    "AutolabelError", "BadInput", "InferenceError", "ModelMissing", "TransientError", "classify_publish_error",
    "classify_s3_error", "classify_triton_error", "is_transient_s3_error", "s3_outage", "transient_http_status",
]


class AutolabelError(Exception):
    """The root of autolabel's own errors."""


class TransientError(AutolabelError, RuntimeError):
    """A failure worth retrying (server unreachable, throttled, 5xx). Never dead-lettered."""


class BadInput(AutolabelError, ValueError):
    """The record's own fault: dead-lettered at once; ``code`` says why."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class InferenceError(AutolabelError, RuntimeError):
    """Triton answered but refused this input: not transient, counts as a failed attempt."""


class ModelMissing(TransientError):
    """Triton does not serve the model any more (its repository changed): find out what it
    serves again, and retry."""


def transient_http_status(status: int) -> bool:
    """An HTTP status worth retrying: a 5xx, or 429 (throttled)."""
    return status >= 500 or status == 429


# Kafka errors (aiokafka and kafka-python share these names) that say this one record can
# never be written as it is: over the producer's max_request_size or the broker's
# message.max.bytes. Retrying sends the same bytes and gets the same answer.
_RECORD_REFUSED = frozenset({"MessageSizeTooLargeError", "RecordListTooLargeError", "RecordTooLargeError"})
_KAFKA_MODULES = ("aiokafka", "kafka")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes (Faust wraps aiokafka's errors in ``ProducerSendError``)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__


def classify_publish_error(exc: BaseException) -> BaseException:
    """An error from sending one record to Kafka, as one of the three kinds.

    - the broker or producer refuses this record for good (too large) -> :class:`BadInput`
      ``publish_refused``: the record is dead-lettered, never retried forever;
    - any other Kafka error, a timeout or a socket error -> :class:`TransientError`;
    - anything else is returned as it is (a failed attempt).
    """
    if isinstance(exc, AutolabelError):
        return exc
    chain = list(_chain(exc))
    kind: AutolabelError | None = None
    if any(type(link).__name__ in _RECORD_REFUSED for link in chain):
        kind = BadInput(ErrorCode.publish_refused, f"the broker refuses this record for good: {exc!r}"[:1000])
    elif any(isinstance(link, OSError) or type(link).__module__.startswith(_KAFKA_MODULES) for link in chain):
        kind = TransientError(f"publish: {exc!r}"[:1000])  # OSError includes TimeoutError
    if kind is None:
        return exc
    kind.__cause__ = exc
    return kind


def is_transient_s3_error(exc: Exception) -> bool:
    """A botocore error worth retrying: unreachable, throttled, timed out or a 5xx."""
    from botocore.exceptions import BotoCoreError, ClientError  # here: services.images stays free of boto

    if isinstance(exc, BotoCoreError):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return transient_http_status(status) or code in {"SlowDown", "RequestTimeout", "ServiceUnavailable"}
    return False


def classify_s3_error(exc: Exception, what: str) -> Exception:
    """A boto3 call's failure: an outage -> :class:`TransientError`; anything else as it is."""
    if is_transient_s3_error(exc) or isinstance(exc, OSError):
        return TransientError(f"S3 {what} failed: {exc}")
    return exc


def s3_outage(exc: BaseException, what: str) -> TransientError:
    """An obstore failure that is not "no such key": the store is away, never the record's fault."""
    return TransientError(f"S3 {what} failed: {type(exc).__name__}: {str(exc)[:300]}")


# gRPC status codes that mean "Triton (or the way to it) is away or busy": retried forever
_GRPC_TRANSIENT = frozenset({
    "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED",
    "StatusCode.CANCELLED", "StatusCode.ABORTED", "StatusCode.UNKNOWN",
})
# Triton's own words (status INTERNAL) when a Python-backend stub process died; it restarts it
_STUB_DOWN = ("Stub process", "is not healthy")
# Triton's own words for a model it does not serve (gRPC NOT_FOUND; over HTTP a 400)
_MODEL_MISSING = "request for unknown model"


def classify_triton_error(exc: BaseException, what: str) -> TransientError | InferenceError:
    """A tritonclient failure, as :class:`TransientError` (:class:`ModelMissing` when the
    model is gone from the repository) or :class:`InferenceError` (a counted attempt).

    Decided by the answer's status (a gRPC status code, or an HTTP status): Triton away,
    busy or timing out is transient; an answer refusing the input is not, whatever its
    message says. Without an answer (no status), a socket error, a timeout or an aiohttp
    client error is transient.
    """
    text = str(exc)
    message = f"Triton {what} failed: {text[:300]}"
    status = exc.status() if callable(getattr(exc, "status", None)) else None
    if isinstance(status, str) and status:
        if status == "StatusCode.NOT_FOUND" or _MODEL_MISSING in text.lower():
            return ModelMissing(message)
        if status.startswith("StatusCode."):
            transient = status in _GRPC_TRANSIENT or (status == "StatusCode.INTERNAL" and all(m in text for m in _STUB_DOWN))
        else:
            transient = status.isdigit() and transient_http_status(int(status))
    else:
        transient = isinstance(exc, (OSError, TimeoutError)) or type(exc).__module__.startswith("aiohttp")
    return TransientError(message) if transient else InferenceError(message)
