"""Fault injection (`make test-faults`): no accepted event is lost whatever fails.

Each test runs on an embedded stack of its own (the numpy ``trivial`` model, so Triton
restarts in seconds; the broker keeps its log in S3), streams a few hundred events while
the fault happens, and then checks every product id sent:

- zero lost: every event ends as a label event or (only the poison message) a dead letter;
- every label object in S3 written once (the bucket has versioning on: one version per
  key) with the model version of its label events;
- nothing dead-lettered that was only a transient failure;
- the worker recovered by itself: the same process, no manual step.

Servers are stopped by SIGKILL of their process group (the PID in stack.json) and brought
back on the same ports with ``Stack.restart_component``. Set ``AUTOLABEL_FAULT_REPORT`` to
a file to get each test's figures as JSON lines (docs/reliability.md quotes them).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from benchmarks.harness import Feeder, LocalStack, upload_images
from benchmarks.outcomes import Outcome, enable_versioning, outcomes
from deploy.local.processes import WorkerProcess

pytestmark = [pytest.mark.faults, pytest.mark.stack, pytest.mark.timeout(900)]

EVENTS = 300
RATE = 10.0  # events/s: the stream lasts 30 s and the fault lands inside it
OUTAGE_S = 30.0
LABELED_RE = re.compile(r'"product_id": "([^"]+)"[^\n]*"event": "labeled"[^\n]*"timestamp": "([^"]+)"')


class Scenario:
    """One test's stack, topics, workers and producer."""

    def __init__(self, stack: LocalStack, tmp: Path, **env: str) -> None:
        from services.topics import ensure_topics

        self.stack = stack
        self.tmp = tmp
        self.env = stack.run_env(**env)
        self.settings = stack.settings_for(self.env)
        ensure_topics(self.settings)
        enable_versioning(self.settings)
        self.images = upload_images(self.settings)
        self.feeder = Feeder(self.settings, self.images)
        self.workers: list[WorkerProcess] = []
        self.errors: list[BaseException] = []
        self.thread: threading.Thread | None = None

    def worker(self, name: str = "w1", **env: str) -> WorkerProcess:
        w = WorkerProcess({**self.env, **env}, self.tmp / f"worker-{name}.log", name).start()
        self.workers.append(w)
        return w

    @staticmethod
    def labeled(worker: WorkerProcess) -> list[tuple[str, float]]:
        """(product id, time) of each label the worker published, from its log."""
        return [(pid, datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())
                for pid, ts in LABELED_RE.findall(worker.output())]

    def stream(self, count: int = EVENTS, rate: float = RATE, special: dict[int, object] | None = None) -> None:
        """Send in a background thread (resending what the broker did not acknowledge)."""

        def run() -> None:
            try:
                began = time.monotonic()
                for i in range(count):
                    delay = began + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    self.feeder.send(i, image=(special or {}).get(i))
                    if i % 10 == 0:
                        self.feeder.settle()
                self.feeder.finish(timeout=240)
            except BaseException as exc:  # noqa: BLE001 - reported by join()
                self.errors.append(exc)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> set[str]:
        assert self.thread is not None
        self.thread.join(300)
        assert not self.thread.is_alive(), "the producer never finished"
        assert not self.errors, self.errors
        assert len(self.feeder.acked) == EVENTS
        return set(self.feeder.acked)

    def wait_until_done(self, sent: set[str], timeout: float = 300) -> Outcome:
        """Until every product sent has a label or a dead letter (or the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            result = outcomes(self.settings, sent, read_s3=False, idle_s=1.0)
            if not result.lost or time.monotonic() > deadline:
                break
            time.sleep(3)
        time.sleep(2)  # let the last S3 writes and commits land
        return outcomes(self.settings, sent, versions=True, idle_s=1.0)

    def wait_labeled(self, worker: WorkerProcess, n: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while len(self.labeled(worker)) < n:
            assert worker.alive(), worker.output()[-3000:]
            assert time.monotonic() < deadline, f"fewer than {n} labels in {timeout} s:\n{worker.output()[-3000:]}"
            time.sleep(0.1)

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        self.feeder.close()


@pytest.fixture()
def scenario(tmp_path: Path) -> Iterator:
    """A factory of Scenario on a stack of this test's own, torn down afterwards."""
    stack = LocalStack(tmp_path / "stack")
    made: list[Scenario] = []
    try:
        stack.start()

        def make(**env: str) -> Scenario:
            sc = Scenario(stack, tmp_path, **env)
            made.append(sc)
            return sc

        yield make
    finally:
        for sc in made:
            sc.close()
        stack.close()


def first_label_after(labels: list[tuple[str, float]], t: float) -> float | None:
    after = [at for _, at in labels if at >= t]
    return min(after) - t if after else None


def record(name: str, result: Outcome, **figures: object) -> None:
    """Print the figures; append them to $AUTOLABEL_FAULT_REPORT when it is set."""
    row = {"scenario": name, "sent": result.sent, "labeled": result.labeled, "label_events": result.label_events,
           "duplicates": result.duplicates, "dead_lettered": result.dead_lettered, "lost": len(result.lost),
           "label_objects": result.stored, "objects_written_twice": len(result.written_twice), **figures}
    print(json.dumps(row))
    path = os.environ.get("AUTOLABEL_FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def assert_no_loss(result: Outcome, dead_letters: int = 0) -> None:
    assert not result.lost, f"{len(result.lost)} events lost: {result.lost[:10]}"
    assert result.dead_lettered == dead_letters, f"dead letters: {result.dead_letter_codes}"
    assert result.labeled == result.sent - dead_letters
    assert result.stored == result.labeled, "one label object per labeled product"
    assert not result.stored_missing and not result.wrong_version
    assert not result.written_twice, f"label objects written more than once: {result.written_twice[:10]}"
    assert not result.rewritten, result.rewritten[:10]


def _outage(sc: Scenario, component: str, worker: WorkerProcess, outage_s: float) -> tuple[float, float]:
    """SIGKILL ``component`` once the worker is mid-stream; bring it back after ``outage_s``."""
    sc.wait_labeled(worker, 60)
    t_kill = time.time()
    sc.stack.kill(component, signal.SIGKILL)
    time.sleep(outage_s)
    assert worker.alive(), worker.output()[-3000:]
    sc.stack.restart(component)
    return t_kill, time.time()


def test_broker_sigkill_and_restart_mid_stream(scenario) -> None:
    sc = scenario()
    worker = sc.worker()
    sc.stream()
    t_kill, t_back = _outage(sc, "broker", worker, outage_s=3)
    sent = sc.join()
    result = sc.wait_until_done(sent)
    recovered = first_label_after(sc.labeled(worker), t_back)
    record("broker SIGKILL, restarted after 3 s", result, resends=sc.feeder.resends,
           recovered_s=None if recovered is None else round(recovered, 1))
    assert worker.alive(), "the worker recovered by itself"
    assert_no_loss(result)


def test_triton_down_30s_mid_stream(scenario) -> None:
    sc = scenario()
    worker = sc.worker()
    sc.stream()
    t_kill, t_back = _outage(sc, "triton", worker, OUTAGE_S)
    sent = sc.join()
    result = sc.wait_until_done(sent)
    labels = sc.labeled(worker)
    recovered = first_label_after(labels, t_back)
    during = sum(1 for _, at in labels if t_kill + 2 < at < t_back)
    record("Triton SIGKILL, down 30 s", result, recovered_s=None if recovered is None else round(recovered, 1),
           labeled_while_down=during)
    assert worker.alive(), "the worker recovered by itself"
    assert recovered is not None
    assert_no_loss(result)


def test_s3_down_30s_mid_stream(scenario) -> None:
    sc = scenario()
    worker = sc.worker()
    sc.stream()
    t_kill, t_back = _outage(sc, "s3", worker, OUTAGE_S)
    # the broker keeps its log in S3: it refuses produce/fetch while S3 is away, and serves again after
    assert sc.stack.stack.running()["broker"], "the broker survived the S3 outage"
    sent = sc.join()
    result = sc.wait_until_done(sent)
    recovered = first_label_after(sc.labeled(worker), t_back)
    record("S3 SIGKILL, down 30 s", result, resends=sc.feeder.resends,
           recovered_s=None if recovered is None else round(recovered, 1))
    assert worker.alive(), "the worker recovered by itself"
    assert_no_loss(result)


def test_worker_sigkill_rebalances_to_the_other(scenario) -> None:
    sc = scenario()
    w1 = sc.worker("w1")
    w2 = sc.worker("w2")
    sc.stream()
    sc.wait_labeled(w1, 20)
    sc.wait_labeled(w2, 20)
    owned = {sc.feeder.partition_of.get(pid) for pid, _ in sc.labeled(w1)[-20:]} - {None}
    t_kill = time.time()
    w1.kill()
    sent = sc.join()
    result = sc.wait_until_done(sent)
    taken = [at for pid, at in sc.labeled(w2) if sc.feeder.partition_of.get(pid) in owned and at >= t_kill]
    recovered = min(taken) - t_kill if taken else None
    record("worker SIGKILL, 2 workers (rebalance)", result, partitions_moved=sorted(owned),
           recovered_s=None if recovered is None else round(recovered, 1),
           labeled_by={"w1": len(sc.labeled(w1)), "w2": len(sc.labeled(w2))})
    assert w2.alive(), "the surviving worker carried on"
    assert recovered is not None, "the survivor took over the killed worker's partitions"
    assert_no_loss(result)


def _poison_png() -> bytes:
    """The trivial model's documented poison image: every pixel pure magenta."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 0, 255)).save(buf, format="PNG")
    return buf.getvalue()


def test_poison_message_is_dead_lettered_after_bounded_attempts(scenario) -> None:
    from services.storage import Storage

    attempts = 3
    sc = scenario(AUTOLABEL_MAX_ATTEMPTS=str(attempts))
    poison = Storage(sc.settings).put_image(_poison_png(), suffix=".png")
    poison_index = 100
    poison_id = sc.feeder.product_id(poison_index)
    worker = sc.worker()
    sc.stream(special={poison_index: poison})
    sent = sc.join()
    result = sc.wait_until_done(sent)

    from services.events import DeadLetter
    from services.topics import read_topic

    dead = [DeadLetter.model_validate_json(r.value) for r in read_topic(sc.settings, sc.settings.topic_dlq, idle_s=1.0)]
    assert [d.product_id for d in dead] == [poison_id]
    letter = dead[0]
    assert letter.code.value == "processing_failed"
    assert letter.attempts == attempts
    assert "poison" in letter.message
    assert json.loads(letter.original)["product_id"] == poison_id, "the original record, byte for byte"
    held_s = letter.failed_at.timestamp() - sc.feeder.sent_at[poison_id]
    partition = sc.feeder.partition_of[poison_id]
    later_same_partition = [pid for pid in sent if sc.feeder.partition_of[pid] == partition and pid > poison_id]
    record("poison message (fails every time)", result, attempts=letter.attempts, dead_lettered_after_s=round(held_s, 1),
           later_events_same_partition_labeled=len(later_same_partition))
    assert later_same_partition, "events behind the poison on its partition"
    assert worker.alive()
    assert_no_loss(result, dead_letters=1)


def _produce(sc: Scenario, records: list[tuple[str, bytes]]) -> dict[str, tuple[bytes, int, int]]:
    """Send raw records in this order, each acknowledged before the next: key -> (value, partition, offset).

    kafka-python's producer refuses a record over its ``max_request_size`` (1,000,000 bytes by
    default) before sending it; raised to 8 MiB here. The embedded broker (Tansu) has no
    limit of its own below that (5 MB tried)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**sc.settings.kafka_client_kwargs(), acks="all", max_request_size=8 * 1024 * 1024)
    sent = {}
    try:
        for key, value in records:
            meta = producer.send(sc.settings.topic_images, key=key.encode(), value=value).get(timeout=60)
            sent[key] = (value, meta.partition, meta.offset)
    finally:
        producer.close()
    return sent


def _padded(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes (not an event)."""
    return b'{"pad": "' + b"x" * (size - 11) + b'"}'


def _committed_past(sc: Scenario, ends: dict[int, int], timeout: float = 60) -> dict[int, int]:
    """The group's committed offsets, once each partition's passed ``ends`` (or the timeout)."""
    from benchmarks.outcomes import LagReader

    reader = LagReader(sc.settings)
    try:
        deadline = time.monotonic() + timeout
        while True:
            committed = reader.committed(list(range(sc.settings.topic_partitions))) or {}
            if all(committed.get(p, 0) >= end for p, end in ends.items()) or time.monotonic() > deadline:
                return committed
            time.sleep(1)
    finally:
        reader.close()


def _holders(sc: Scenario, ref: tuple[int, int]) -> set[str]:
    """Names of the workers whose in-flight markers name the record at ``ref`` (partition, offset)."""
    from services.attempts import marker_prefix
    from services.storage import Storage

    client = Storage(sc.settings).client
    prefix = marker_prefix(sc.settings.consumer_group, sc.settings.topic_images)
    found = set()
    for obj in client.list_objects_v2(Bucket=sc.settings.s3_bucket, Prefix=prefix).get("Contents", []):
        try:
            body = json.loads(client.get_object(Bucket=sc.settings.s3_bucket, Key=obj["Key"])["Body"].read())
        except Exception:  # noqa: BLE001 - deleted meanwhile: its batch finished
            continue
        if any((r["partition"], r["offset"]) == ref for r in body["records"]):
            found.add(obj["Key"][len(prefix):].split(".", 1)[0])
    return found


def _markers_left(sc: Scenario) -> list[str]:
    """In-flight markers still in S3 after a while (none once everything is settled)."""
    from services.attempts import marker_prefix
    from services.storage import Storage

    prefix = marker_prefix(sc.settings.consumer_group, sc.settings.topic_images)
    client = Storage(sc.settings).client
    left: list[str] = []
    for _ in range(20):
        left = [o["Key"] for o in client.list_objects_v2(Bucket=sc.settings.s3_bucket, Prefix=prefix).get("Contents", [])]
        if not left:
            break
        time.sleep(0.5)
    return left


def test_hostile_records_among_uploads_two_workers_one_restart(tmp_path: Path) -> None:
    """Issue 13: records of 1, 2 and 4 MB, 300 kB of JSON nested 50,000 deep, a 300 kB JSON
    array, and a record that kills the worker process, among 48 uploads, with two workers.

    The huge records used to crash the agent (their dead letter embedded them whole, over
    the producer's limit) and a restarted worker crashed on them again; a killing record
    was retried after every restart. Here every upload is labeled, each bad record is
    dead-lettered with its documented code and a bounded body (16 KiB prefix, size,
    SHA-256, the whole original in S3), the killing record after AUTOLABEL_MAX_ATTEMPTS
    (2) deaths: the worker that had it in flight is SIGKILLed (its in-flight marker names
    it) and replaced once (w3); the worker that takes it over is SIGKILLed too, and the
    last one dead-letters it without handling it. Offsets end committed at the end of
    every partition; the surviving worker never crashed."""
    from services.events import DeadLetter, ErrorCode
    from services.storage import Storage
    from services.topics import read_topic

    attempts = 2
    max_event_bytes = 400_000  # the 300 kB records reach the parser; the MB ones are over it
    # a slow model (1 s per execution) keeps the killing record's batch in flight long enough to be seen
    stack = LocalStack(tmp_path / "stack", delay_ms=1000).start()
    sc = Scenario(stack, tmp_path, AUTOLABEL_MAX_ATTEMPTS=str(attempts), AUTOLABEL_MAX_EVENT_BYTES=str(max_event_bytes))
    try:
        depth = 50_000
        bad = {  # key -> (value, code)
            "huge-1mb": (_padded(1_000_330), ErrorCode.event_too_large),
            "huge-2mb": (_padded(2_000_000), ErrorCode.event_too_large),
            "huge-4mb": (_padded(4 * 1024 * 1024), ErrorCode.event_too_large),
            # valid JSON, deeper than the parser's recursion limit: refused as not JSON, nothing raised
            "nested-300kb": (b'{"a":' * depth + b"1" + b"}" * depth, ErrorCode.malformed_json),
            "array-300kb": (b"[" + b"0," * 149_999 + b"0]", ErrorCode.schema_invalid),
        }
        normal = 48
        killer = sc.feeder.product_id(normal // 2)
        # all on the topic before the workers start: full batches, so the bad records share theirs with uploads
        records: list[tuple[str, bytes]] = []
        uploads = iter(range(normal + 1))
        for name, (value, _) in bad.items():
            records += [sc.feeder.event_bytes(next(uploads)) for _ in range(8)]
            records.append((name, value))
        records += [sc.feeder.event_bytes(i) for i in uploads]
        produced = _produce(sc, records)
        ref = produced[killer][1:]
        sent = set(produced)
        ends: dict[int, int] = {}
        for _, partition, offset in produced.values():
            ends[partition] = max(ends.get(partition, 0), offset + 1)

        started = time.monotonic()
        live = {name: sc.worker(name) for name in ("w1", "w2")}
        kills: list[str] = []
        deadline = time.monotonic() + 240
        while len(kills) < attempts:  # SIGKILL whoever has the killing record in flight
            for name in _holders(sc, ref) & set(live):
                live.pop(name).kill()  # no exception, no log line, nothing committed
                kills.append(name)
                if len(kills) == 1:
                    live["w3"] = sc.worker("w3")  # the one restart
            for name, w in live.items():
                assert w.alive(), f"{name} died:\n{w.output()[-3000:]}"
            assert killer not in {pid for w in sc.workers for pid, _ in sc.labeled(w)}, "the killing record was labeled unseen"
            assert time.monotonic() < deadline, f"kills so far: {kills}"
            time.sleep(0.1)
        result = sc.wait_until_done(sent, timeout=240)
        done_s = time.monotonic() - started
        records_dlq = list(read_topic(sc.settings, sc.settings.topic_dlq, idle_s=1.0))
        letters: dict[str, list[DeadLetter]] = {}
        for r in records_dlq:
            d = DeadLetter.model_validate_json(r.value)
            letters.setdefault(d.original_key, []).append(d)
        committed = _committed_past(sc, ends)
        (survivor,) = live.values()
        record("1, 2, 4 MB, 300 kB nested and array, a killing record among 48 uploads, 2 workers, 1 restart", result,
               sizes={k: len(v) for k, (v, _) in bad.items()}, kills=kills, done_s=round(done_s, 1),
               dead_letter_codes={k: [d.code.value for d in v] for k, v in letters.items()},
               committed_at_end=committed == {p: ends.get(p, 0) for p in committed})

        assert survivor.alive() and "Crashed" not in survivor.output(), survivor.output()[-3000:]
        assert not result.lost, f"{len(result.lost)} lost: {result.lost[:10]}"
        assert result.labeled == normal, "every upload labeled"
        assert result.stored == normal and not result.stored_missing and not result.wrong_version
        assert not result.written_twice and not result.rewritten, (result.written_twice[:10], result.rewritten[:10])
        assert set(letters) == set(bad) | {killer}, sorted(letters)
        assert max(len(r.value) for r in records_dlq) < 32 * 1024, "dead letters stay small"
        # a worker killed after publishing a dead letter but before its commit makes a re-delivery
        # publish it again (at-least-once): the copies must agree
        for key, copies in letters.items():
            assert len({(d.code, d.partition, d.offset, d.original_sha256) for d in copies}) == 1, copies
        s3 = Storage(sc.settings).client
        for name, (value, code) in bad.items():
            letter = letters[name][0]
            _, partition, offset = produced[name]
            assert letter.code == code and (letter.partition, letter.offset) == (partition, offset), letter
            assert letter.original == value[: sc.settings.dead_letter_max_original_bytes] and letter.original_truncated
            assert letter.original_size == len(value) and letter.original_sha256 == hashlib.sha256(value).hexdigest()
            assert letter.original_ref is not None
            assert letter.original_ref.key == f"dead-letters/{sc.settings.topic_images}/{partition}/{offset}"
            stored = s3.get_object(Bucket=letter.original_ref.bucket, Key=letter.original_ref.key)["Body"].read()
            assert stored == value, "the whole original is in S3"
        letter = letters[killer][0]
        assert letter.code == ErrorCode.processing_failed and letter.attempts == attempts, letter
        assert (letter.partition, letter.offset) == ref and json.loads(letter.original)["product_id"] == killer
        assert not letter.original_truncated and letter.original_ref is None
        assert all(committed.get(p, 0) >= end for p, end in ends.items()), (committed, ends)
        assert not _markers_left(sc), "nothing left in flight"
    finally:
        sc.close()
        stack.close()


def test_a_record_that_kills_the_worker_process_is_dead_lettered_after_max_attempts(tmp_path: Path) -> None:
    """Issue 13: a record that kills the process (no exception to count) used to be retried
    after every restart. Here each worker is SIGKILLed as soon as it has taken that record
    in hand (its in-flight marker names it), which is what a crash looks like from outside.
    After AUTOLABEL_MAX_ATTEMPTS deaths it is dead-lettered processing_failed; the records
    that shared its batches are labeled (each retried alone once)."""
    from services.events import DeadLetter, ErrorCode
    from services.topics import read_topic

    attempts = 3
    # a slow model (1 s per execution) keeps each batch in flight long enough to be seen
    stack = LocalStack(tmp_path / "stack", delay_ms=1000).start()
    sc = Scenario(stack, tmp_path, AUTOLABEL_MAX_ATTEMPTS=str(attempts))
    try:
        normal = 24
        for i in range(normal + 1):
            sc.feeder.send(i)
        sc.feeder.finish(timeout=60)
        killer = sc.feeder.product_id(normal // 2)
        record_of = {r.key.decode(): (r.partition, r.offset) for r in read_topic(sc.settings, sc.settings.topic_images, idle_s=1.0)}
        ref = record_of[killer]
        sent = set(sc.feeder.acked)
        started = time.monotonic()
        for n in range(1, attempts + 1):
            worker = sc.worker(f"w{n}")
            deadline = time.monotonic() + 180
            while f"w{n}" not in _holders(sc, ref):
                assert worker.alive(), worker.output()[-3000:]
                assert time.monotonic() < deadline, f"w{n} never took the record in hand:\n{worker.output()[-3000:]}"
                time.sleep(0.1)
            worker.kill()  # SIGKILL: no exception, no log line, nothing committed
        last = sc.worker("w-last")
        result = sc.wait_until_done(sent, timeout=240)
        dead = [DeadLetter.model_validate_json(r.value) for r in read_topic(sc.settings, sc.settings.topic_dlq, idle_s=1.0)]
        record("a record that kills the worker process", result, kills=attempts, attempts=[d.attempts for d in dead],
               done_s=round(time.monotonic() - started, 1))
        assert [d.product_id for d in dead] == [killer]
        assert dead[0].code == ErrorCode.processing_failed and dead[0].attempts == attempts, dead[0]
        assert (dead[0].partition, dead[0].offset) == ref and json.loads(dead[0].original)["product_id"] == killer
        assert "suspect_retried_alone" in sc.workers[1].output()
        assert last.alive(), last.output()[-3000:]
        assert result.labeled == normal and not result.lost
        # nothing left in flight: the dead workers' markers went once what they named was settled
        assert not _markers_left(sc)
    finally:
        sc.close()
        stack.close()
