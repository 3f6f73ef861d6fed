"""What a failure means, decided in one place.

Every error met while handling one record is one of three kinds, and the worker treats
each kind the same way wherever it happens (fetch, decode, inference, publish):

- :class:`TransientError`: the infrastructure (broker, S3, Triton, the network) is away,
  throttled or overloaded. Retried with capped backoff, forever; the record's offset is
  not committed meanwhile. Never dead-lettered.
- :class:`BadInput`: the record's own fault (an unparseable event, a bad photo, an output
  the broker refuses whatever the retry). Dead-lettered at once with its
  :class:`~services.events.ErrorCode`.
- anything else: a failed attempt; after ``AUTOLABEL_MAX_ATTEMPTS`` the record is
  dead-lettered ``processing_failed``, so no record can block its partition.

The loop applying this is :meth:`services.pipeline.Pipeline.settle`. Library exceptions
become these kinds through the classifiers here: :func:`classify_publish_error` (Kafka
producer, through Faust) and :func:`is_transient_s3_error` (botocore). Three still
classify where they call their library, raising these same classes: Triton's errors in
``TritonLabeler._classify`` (:mod:`services.inference`, by gRPC status code; its
``InferenceError`` is a counted attempt), obstore's in :class:`services.storage.LabelStore`
and URL fetches in :mod:`services.sources`.
"""

from __future__ import annotations

from collections.abc import Iterator

from services.events import ErrorCode

__all__ = [
    "AutolabelError", "BadInput", "TransientError", "classify_publish_error", "is_transient_s3_error",
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
        return status >= 500 or status == 429 or code in {"SlowDown", "RequestTimeout", "ServiceUnavailable"}
    return False
