"""The retry policy: the one decision on an error while handling a record.

- :class:`~services.errors.TransientError` (a server away or busy): retried with capped
  exponential backoff, forever; never the record's fault.
- :class:`~services.errors.BadInput`: the record's fault at once (its dead letter).
- anything else: a failed attempt, counted per record; after ``max_attempts`` the record's
  fault (``processing_failed``), so that no record blocks its partition.

:meth:`Retry.settle` applies all three to one record's step; :meth:`Retry.forever` only
the first, for steps that belong to no record (discovering the model, the attempt ledger,
storing a batch's outputs). Both are the same loop. :meth:`Retry.dead_letter` turns a
record's fault into its dead letter, counting the tries it had.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from services import observability as obs
from services.dead_letters import Subject, build_dead_letter, subject_ids
from services.errors import BadInput, TransientError
from services.events import DeadLetter, ErrorCode, RawMessage
from services.settings import Settings

T = TypeVar("T")


class Backoff:
    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum, self.delay = initial, maximum, initial

    async def sleep(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.maximum, self.delay * 2)


class Retry:
    """Backoff and attempt counts of one worker (``AUTOLABEL_RETRY_*``, ``AUTOLABEL_MAX_ATTEMPTS``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.attempts: dict[tuple[str, int, int], int] = {}  # record -> failed attempts so far
        self.log = obs.get_logger(worker=settings.worker_name)

    def _backoff(self) -> Backoff:
        return Backoff(self.settings.retry_initial_s, self.settings.retry_max_s)

    def tries(self, msg: RawMessage) -> int:
        """How many times ``msg`` was tried, this last try included; forgets its count."""
        return self.attempts.pop(msg.ref, 0) + 1

    async def forever(self, stage: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` until it does not raise TransientError (capped backoff, forever);
        any other error is raised."""
        return await self._run(stage, fn, None, None)  # type: ignore[return-value]

    async def settle(self, msg: RawMessage, subject: Subject, stage: str, fn: Callable[[], Awaitable[T]]) -> T | BadInput:
        """Await ``fn()`` until it succeeds, or until ``msg`` is found at fault (the returned BadInput)."""
        return await self._run(stage, fn, msg, subject)

    async def _run(self, stage: str, fn: Callable[[], Awaitable[T]], msg: RawMessage | None, subject: Subject) -> T | BadInput:
        transient: Backoff | None = None  # made on the first failure: the happy path allocates nothing
        failed: Backoff | None = None
        while True:
            try:
                return await fn()
            except TransientError as exc:
                obs.RETRIES.labels(stage=stage).inc()
                transient = transient or self._backoff()
                self.log.warning("transient_failure", stage=stage, error=str(exc)[:300], retry_in_s=transient.delay)
                await transient.sleep()
            except asyncio.CancelledError:
                raise
            except BadInput as exc:
                if msg is None:
                    raise
                return exc
            except Exception as exc:  # a failed attempt, whatever it is
                if msg is None:
                    raise
                n = self.attempts.get(msg.ref, 0) + 1
                self.attempts[msg.ref] = n
                self.log.error("processing_failed", stage=stage, attempt=n, error=repr(exc)[:300], **subject_ids(subject))
                if n >= self.settings.max_attempts:
                    self.attempts[msg.ref] = n - 1  # tries() adds this last one
                    return BadInput(ErrorCode.processing_failed, f"{stage}: {exc!r} (after {n} attempts)")
                failed = failed or self._backoff()
                await failed.sleep()
                transient = None  # a new attempt starts its transient backoff afresh

    def dead_letter(self, msg: RawMessage, code: ErrorCode, message: str, subject: Subject = None) -> DeadLetter:
        """The dead letter of ``msg`` (bounded in size: :mod:`services.dead_letters`), counted and logged."""
        obs.DEAD_LETTERS.labels(code=code.value).inc()
        self.log.warning("dead_letter", code=code.value, reason=message[:300], partition=msg.partition, offset=msg.offset,
                         size=len(msg.value), **subject_ids(subject))
        s = self.settings
        return build_dead_letter(msg, code, message, subject=subject, worker=s.worker_name, attempts=self.tries(msg),
                                 bucket=s.s3_bucket, max_original_bytes=s.dead_letter_max_original_bytes)
