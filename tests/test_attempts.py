"""Attempt counts that survive the worker process (services/attempts.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.attempts import AttemptLedger, Gate, failed_attempts, marker_body, marker_prefix
from services.pipeline import RawMessage


def _msg(partition: int, offset: int) -> RawMessage:
    return RawMessage("images", partition, offset, b"k", b"{}")


def test_a_marker_left_behind_counts_one_failed_attempt_more_than_it_says():
    batch = marker_body("w1", "images", [(_msg(0, 5), 0), (_msg(1, 9), 0)])
    alone = marker_body("w2", "images", [(_msg(0, 5), 1)])
    assert json.loads(alone)["records"] == [{"partition": 0, "offset": 5, "attempts": 1}]
    assert failed_attempts([batch]) == {(0, 5): 1, (1, 9): 1}
    assert failed_attempts([batch, alone, b"not json", b'{"records": [{"partition": "x"}]}']) == {(0, 5): 2, (1, 9): 1}


def test_marker_keys_stay_under_their_prefix():
    assert marker_prefix("group/../x", "t o/p") == "in-flight/group_.._x/t_o_p/"


def test_a_suspect_runs_with_nothing_else_in_flight():
    async def scenario() -> list[str]:
        gate, log = Gate(), []

        async def batch(name: str, exclusive: bool, hold: float) -> None:
            async with (gate.exclusive() if exclusive else gate.shared()):
                log.append(f"+{name}")
                await asyncio.sleep(hold)
                log.append(f"-{name}")

        first = asyncio.create_task(batch("a", False, 0.05))
        await asyncio.sleep(0.01)
        suspect = asyncio.create_task(batch("s", True, 0.05))
        await asyncio.sleep(0.01)
        later = asyncio.create_task(batch("b", False, 0.01))  # held back while the suspect waits
        await asyncio.gather(first, suspect, later)
        return log

    assert asyncio.run(scenario()) == ["+a", "-a", "+s", "-s", "+b", "-b"]


@pytest.mark.stack
def test_the_ledger_in_s3_counts_batches_that_never_finished(stack_settings):
    from services.storage import LabelStore

    settings, _ = stack_settings
    store = LabelStore(settings)

    async def scenario() -> None:
        dead = AttemptLedger(store, settings.consumer_group, settings.topic_images, "w1")
        await dead.load()
        assert dead.failed == {}
        finished = await dead.begin([(_msg(0, 1), 0)])
        await dead.end(finished, [_msg(0, 1)])
        await dead.begin([(_msg(0, 2), 0), (_msg(0, 3), 0), (_msg(1, 7), 0)])  # the process dies here
        assert len(await store.list_keys(dead.prefix)) == 1, "a finished batch leaves no marker"

        after = AttemptLedger(store, settings.consumer_group, settings.topic_images, "w2")
        await after.load()
        assert [after.failed_before(m) for m in (_msg(0, 2), _msg(0, 3), _msg(1, 7), _msg(1, 8))] == [1, 1, 1, 0]
        alone = await after.begin([(_msg(0, 2), 1)])  # the suspect, alone; this process dies too
        third = AttemptLedger(store, settings.consumer_group, settings.topic_images, "w3")
        await third.load()
        assert third.failed_before(_msg(0, 2)) == 2
        # the rest of the first batch settles here: the dead markers go once nothing they name is pending
        await third.end(None, [_msg(0, 3), _msg(1, 7)])
        assert len(await store.list_keys(third.prefix)) == 2
        await third.end(None, [_msg(0, 2)])
        assert await store.list_keys(third.prefix) == []
        assert alone.startswith(marker_prefix(settings.consumer_group, settings.topic_images) + "w2.")

    asyncio.run(scenario())
