"""The review queue and the merge of human labels: pure rules, no Kafka.

The queue's tests run on both backends it supports: a SQLite file, and a real PostgreSQL
server, a throwaway cluster (Debian's ``postgresql`` package, installed by ``make test``)
that the ``postgres_server`` fixture starts once for this module, one database per test.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from services.events import HumanLabel, ImageLocation, ModelInfo, ProductLabeled, S3Location, TaskLabel
from services.review.queue import CLAIMED, AlreadyDecided, Conflict, InProgress, Item, NewerUpload, NotFound, ReviewQueue
from services.settings import Settings
from services.storage import keep_human_labels

POSTGRES_MISSING = (
    "PostgreSQL's server binaries (initdb, postgres) are not installed: the review queue is tested on a real "
    "PostgreSQL. `make test` installs them (Debian: apt-get install -y postgresql); set AUTOLABEL_TEST_POSTGRES_BIN "
    "to the folder holding initdb and postgres if they are elsewhere."
)


def _postgres_bin() -> Path | None:
    """The folder of initdb and postgres: $AUTOLABEL_TEST_POSTGRES_BIN, Debian's newest
    /usr/lib/postgresql/<N>/bin, or PATH."""
    if os.environ.get("AUTOLABEL_TEST_POSTGRES_BIN"):
        return Path(os.environ["AUTOLABEL_TEST_POSTGRES_BIN"])
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name) if
                    Path(p).parent.parent.name.isdigit() else 0)
    if debian:
        return Path(debian[-1]).parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A throwaway PostgreSQL cluster in a temporary folder, trust auth on 127.0.0.1.

    initdb and postgres refuse to run as root: as root (CI, this container) both run as the
    unprivileged ``postgres`` user the Debian package creates (or ``nobody``)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="autolabel-pg-"))
        self.user: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pw = pwd.getpwnam(name)
                except KeyError:
                    continue
                self.user = name
                os.chown(self.root, pw.pw_uid, pw.pw_gid)
                break
            else:
                raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.databases = 0

    def _run_kwargs(self) -> dict:
        kw: dict = {"cwd": self.root, "env": {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}}
        if self.user:
            kw.update(user=self.user, group=pwd.getpwnam(self.user).pw_gid, extra_groups=[])
        return kw

    def start(self, timeout: float = 60.0) -> None:
        res = subprocess.run([str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                              "--no-sync"], capture_output=True, text=True, timeout=120, **self._run_kwargs())
        if res.returncode:
            raise RuntimeError(f"initdb failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        for _attempt in range(5):  # a port taken between _free_port and the bind: try another
            self.port = _free_port()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [str(self.bindir / "postgres"), "-D", str(self.data), "-k", str(self.root), "-p", str(self.port),
                     "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
                    stdout=log, stderr=subprocess.STDOUT, **self._run_kwargs())
            if self._wait_ready(timeout):
                return
            self.stop()
        raise RuntimeError(f"PostgreSQL did not start; its log:\n{self.log.read_text(errors='replace')[-4000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        import psycopg

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        return False

    def dsn(self, db: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={db}"

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        import psycopg

        self.databases += 1
        name = f"queue_{self.databases}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def version(self) -> str:
        import psycopg

        with psycopg.connect(self.dsn("postgres")) as conn:
            return conn.execute("SHOW server_version").fetchone()[0]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_server():
    bindir = _postgres_bin()
    if bindir is None or not (bindir / "initdb").exists() or not (bindir / "postgres").exists():
        pytest.fail(POSTGRES_MISSING, pytrace=False)
    try:
        import psycopg  # noqa: F401 - the driver (the dev extra has it)
    except ImportError:
        pytest.fail("the PostgreSQL driver psycopg is not installed: pip install -e '.[dev]' (or '.[postgres]')", pytrace=False)
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    """The URL of an empty review queue database: a SQLite file, or a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'q.db'}"
    return request.getfixturevalue("postgres_server").new_database()


@pytest.fixture()
def open_queue(url):
    """ReviewQueue(url, ...) for the test, each closed at its end."""
    opened: list[ReviewQueue] = []

    def make(**kw) -> ReviewQueue:
        opened.append(ReviewQueue(url, **kw))
        return opened[-1]

    yield make
    for q in opened:
        q.close()


def _at_once(n: int, fn) -> list:
    """fn(i) for i in range(n) in n threads released together; their results (an exception re-raised)."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _event(pid: str, event_id: str = "e1", at: datetime | None = None, version: str = "v1", flagged: bool = True) -> ProductLabeled:
    def t(label, classes, conf) -> TaskLabel:
        probs = {c: (conf if c == label else (1 - conf) / (len(classes) - 1)) for c in classes}
        return TaskLabel(label=label, confidence=conf, probabilities=probs, threshold=0.6, needs_review=conf < 0.6)

    labels = {"style": t("casual", ("casual", "formal", "sports"), 0.4 if flagged else 0.9),
              "gender": t("men", ("men", "women"), 0.9), "season": t("summer", ("spring-fall", "summer", "winter"), 0.8)}
    return ProductLabeled(product_id=pid, source_event_id=event_id, image=ImageLocation(s3=S3Location(bucket="autolabel", key="images/x.jpg")),
                          labels=labels, model=ModelInfo(name="m", version=version, backbone="b", weights_source="w"),
                          needs_review=flagged, latency_ms=1.0, uploaded_at=at or datetime(2026, 1, 1, tzinfo=UTC))


def test_offer_is_idempotent_by_product_and_upload(open_queue):
    q = open_queue()
    assert q.offer([_event("a"), _event("b"), _event("a")]) == {"added": 2, "updated": 0, "retired": 0, "ignored": 1, "scored": 0}
    assert q.offer([_event("a"), _event("c", flagged=False)])["ignored"] == 2
    assert q.stats().waiting == 2
    later = datetime(2026, 1, 2, tzinfo=UTC)
    assert q.offer([_event("a", "e0", at=datetime(2025, 1, 1, tzinfo=UTC))])["ignored"] == 1  # older upload
    assert q.offer([_event("a", "e2", at=later)])["updated"] == 1  # newer photo
    assert q.get("a").source_event_id == "e2"
    assert q.stats().waiting == 2


def test_two_reviewers_never_hold_the_same_item_and_claims_expire(open_queue):
    q = open_queue(claim_timeout_s=0.5)
    q.offer([_event(f"p{i}") for i in range(5)])
    a = {i.product_id for i in q.claim("alice", 2)}
    b = {i.product_id for i in q.claim("bob", 2)}
    assert len(a) == len(b) == 2 and not a & b
    assert {i.product_id for i in q.claim("alice", 2)} == a  # what alice holds, again
    assert {i.product_id for i in q.claim("carol", 5)} == {"p0", "p1", "p2", "p3", "p4"} - a - b
    time.sleep(0.6)
    assert len(q.claim("carol", 5)) == 5  # the others' claims expired


def test_done_survives_a_new_connection_and_a_relabel_of_the_same_upload(open_queue):
    q = open_queue()
    q.offer([_event("a"), _event("b")])
    item = q.begin_decision("a", "alice", "e1")
    assert q.complete(item, "alice", {"style": "formal"}, 1, datetime.now(UTC))
    q.close()
    q = open_queue()  # a restart
    s = q.stats()
    assert (s.done, s.waiting) == (1, 1)
    assert q.offer([_event("a", version="v2")])["ignored"] == 1  # relabel: stays done
    assert q.offer([_event("a", "e9", at=datetime(2026, 2, 1, tzinfo=UTC))])["updated"] == 1  # new photo: fresh
    assert q.get("a").status == "pending"
    assert q.rate("alice")[0] == 1


def test_reviewers_claiming_at_the_same_time_never_share_an_item(open_queue):
    q = open_queue()
    q.offer([_event(f"p{i:02d}") for i in range(40)])
    queues = [open_queue() for _ in range(4)]  # four app replicas, or four request threads
    got = _at_once(4, lambda i: [it.product_id for it in queues[i].claim(f"r{i}", 10)])
    assert [len(g) for g in got] == [10, 10, 10, 10]
    assert len({p for g in got for p in g}) == 40  # every item once
    with q.sessions() as s:
        rows = s.execute(select(Item.product_id, Item.status, Item.claimed_by)).all()
    assert {(p, st, who) for p, st, who in rows} == {(p, CLAIMED, f"r{i}") for i, g in enumerate(got) for p in g}
    # eight reviewers opening the same product: one holds it, the others are refused
    q.offer([_event("hot")])
    outcome = _at_once(8, lambda i: _claim_one_or_conflict(queues[i % 4], "hot", f"s{i}"))
    assert len([o for o in outcome if o != "conflict"]) == 1
    assert q.get("hot").claimed_by in outcome
    assert q.stats().claimed == 41


def _claim_one_or_conflict(q: ReviewQueue, pid: str, reviewer: str) -> str:
    try:
        return q.begin_decision(pid, reviewer, "e1").claimed_by
    except Conflict:
        return "conflict"


def test_the_same_records_offered_at_the_same_time_appear_once(open_queue):
    """Re-deliveries to two consumers at once (a rebalance): each product once, the newest upload."""
    q = open_queue()
    batches = [[_event(f"p{i}", "e1") for i in range(30)], [_event(f"p{i}", "e2", at=datetime(2026, 1, 2, tzinfo=UTC)) for i in range(30)]]
    queues = [open_queue() for _ in range(4)]
    counts = _at_once(4, lambda i: queues[i].offer(list(reversed(batches[i % 2])) if i > 1 else batches[i % 2]))
    assert sum(c["added"] for c in counts) == 30
    assert q.stats().waiting == 30
    with q.sessions() as s:
        assert Counter(s.scalars(select(Item.source_event_id))) == {"e2": 30}


def test_queues_started_together_on_an_empty_database(url):
    """Replicas starting at once each create the tables if missing (no error on a race)."""
    queues = _at_once(4, lambda _i: ReviewQueue(url))
    try:
        assert queues[0].offer([_event("a")])["added"] == 1
        assert queues[3].get("a") is not None
    finally:
        for q in queues:
            q.close()


def test_done_stale_and_skip(open_queue):
    q = open_queue()
    q.offer([_event("a"), _event("b"), _event("c")])
    a = q.begin_decision("a", "alice", "e1")
    with pytest.raises(Conflict, match="claimed by another reviewer"):
        q.begin_decision("a", "bob", "e1")
    # a newer photo replaced it while alice looked: her decision is logged, the row stays pending
    assert q.offer([_event("a", "e2", at=datetime(2026, 1, 2, tzinfo=UTC))])["updated"] == 1
    assert not q.complete(a, "alice", {"style": "formal"}, 1, datetime.now(UTC))
    assert q.get("a").status == "pending" and q.rate("alice")[0] == 1
    b = q.begin_decision("b", "bob", "e1")
    q.mark_stale(b)
    with pytest.raises(Conflict, match="newer photo"):
        q.begin_decision("b", "bob", "e1")
    c = q.begin_decision("c", "carol", "e1")
    assert q.complete(c, "carol", {}, 0, datetime.now(UTC))
    with pytest.raises(Conflict, match="reviewed already by carol"):
        q.begin_decision("c", "bob", "e1")
    q.mark_stale(c)  # a done row stays done
    assert q.get("c").status == "done"
    [a2] = q.claim("alice", 1)
    assert q.skip("a", "alice") and not q.skip("a", "alice")
    assert q.get("a").queued_at > a2.queued_at  # to the back of the queue
    s = q.stats()
    assert (s.pending, s.claimed, s.done, s.stale) == (1, 0, 1, 1)


def test_a_decision_holds_only_the_upload_it_names_and_one_save_at_a_time(open_queue):
    q = open_queue()
    q.offer([_event("a"), _event("b")])
    [shown] = [i for i in q.claim("alice", 2) if i.product_id == "a"]
    # a newer flagged photo arrives while alice looks at the first: her decision names "e1"
    assert q.offer([_event("a", "e2", at=datetime(2026, 1, 2, tzinfo=UTC))])["updated"] == 1
    with pytest.raises(NewerUpload) as newer:
        q.begin_decision("a", "alice", shown.source_event_id)
    assert newer.value.current_source_event_id == "e2"
    assert q.get("a").status == "pending" and q.get("a").claimed_by is None  # nobody took the new photo
    with pytest.raises(NotFound):
        q.begin_decision("zz", "alice", "e1")
    # one save at a time: the same reviewer's second save waits (InProgress), another reviewer is refused
    item = q.begin_decision("a", "alice", "e2")
    assert q.get("a").status == "saving"
    with pytest.raises(InProgress):
        q.begin_decision("a", "alice", "e2")
    with pytest.raises(Conflict, match="claimed by another reviewer"):
        q.begin_decision("a", "bob", "e2")
    q.abort_decision(item, "alice")  # the store was away: alice's claim again
    assert q.get("a").status == "claimed" and q.get("a").claimed_by == "alice"
    item = q.begin_decision("a", "alice", "e2")
    assert q.complete(item, "alice", {"style": "formal"}, 1, datetime.now(UTC), '{"event_id": "r1"}')
    with pytest.raises(AlreadyDecided) as mine:
        q.begin_decision("a", "alice", "e2")
    assert mine.value.decision is not None and mine.value.decision.reviewed_json == '{"event_id": "r1"}'
    with pytest.raises(AlreadyDecided) as theirs:
        q.begin_decision("a", "bob", "e2")
    assert theirs.value.decision is None  # bob gets no copy of alice's decision
    # a save that died half-way (the app was killed) is claimable again once its hold expires
    short = open_queue(claim_timeout_s=0.2)
    short.offer([_event("c")])
    short.begin_decision("c", "alice", "e1")
    time.sleep(0.3)
    assert short.begin_decision("c", "bob", "e1").claimed_by == "bob"


def test_an_item_that_cannot_be_shown_is_quarantined_and_a_newer_upload_queues_it_again(open_queue):
    q = open_queue()
    q.offer([_event("a"), _event("b")])
    assert {i.product_id for i in q.claim("alice", 2)} == {"a", "b"}
    assert q.quarantine("a") and not q.quarantine("a")
    assert q.get("a").status == "quarantined" and q.get("a").claimed_by is None
    assert q.stats().quarantined == 1 and q.stats().waiting == 1
    assert [i.product_id for i in q.claim("bob", 5)] == []  # b is alice's; a is out of the queue
    assert q.offer([_event("a", "e2", at=datetime(2026, 1, 2, tzinfo=UTC))])["updated"] == 1
    assert q.get("a").status == "pending"


def test_a_queue_created_before_a_column_was_added_gets_it(tmp_path):
    """An older database (review_decisions without reviewed_json) opens, and new decisions keep the event."""
    from sqlalchemy import create_engine, text

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE review_decisions (id INTEGER PRIMARY KEY, product_id VARCHAR(128), source_event_id TEXT, "
                          "reviewer VARCHAR(128), labels_json TEXT, corrected INTEGER, decided_at DATETIME)"))
        conn.execute(text("INSERT INTO review_decisions VALUES (1, 'old', 'e0', 'alice', '{}', 0, '2026-01-01 00:00:00')"))
    engine.dispose()
    q = ReviewQueue(url)
    q.offer([_event("a")])
    item = q.begin_decision("a", "alice", "e1")
    assert q.complete(item, "alice", {}, 0, datetime.now(UTC), '{"event_id": "r"}')
    with pytest.raises(AlreadyDecided) as done:
        q.begin_decision("a", "alice", "e1")
    assert done.value.decision.reviewed_json == '{"event_id": "r"}'
    assert q.rate("alice")[0] == 1  # the old row (January) is outside the hour
    q.close()


def test_a_label_that_needs_no_review_retires_the_item_it_supersedes(open_queue):
    q = open_queue()
    t0, t1, t2 = (datetime(2026, 1, d, tzinfo=UTC) for d in (1, 2, 3))
    q.offer([_event(p, "e1", at=t1) for p in "abcdef"])
    alice = q.begin_decision("b", "alice", "e1")
    done = q.begin_decision("c", "carol", "e1")
    assert q.complete(done, "carol", {}, 0, datetime.now(UTC))
    counts = q.offer([
        _event("a", "e2", at=t2, flagged=False),  # a newer photo, sure of itself: retires the waiting item
        _event("b", "e2", at=t2, flagged=False),  # ... and the one alice holds
        _event("c", "e2", at=t2, flagged=False),  # a reviewed item stays done
        _event("d", "e0", at=t0, flagged=False),  # an older upload changes nothing
        _event("e", "e1", at=t1, flagged=False),  # the same upload by the same model: a re-delivery, nothing
        _event("f", "e1", at=t1, version="v2", flagged=False),  # relabeled by another model, now sure: retired
        _event("g", "e1", at=t1, flagged=False),  # no item at all
    ])
    assert counts == {"added": 0, "updated": 0, "retired": 3, "ignored": 4, "scored": 0}
    assert {p: q.get(p).status for p in "abcdef"} == {"a": "stale", "b": "stale", "c": "done", "d": "pending", "e": "pending",
                                                    "f": "stale"}
    assert q.get("g") is None
    assert not q.complete(alice, "alice", {"style": "formal"}, 1, datetime.now(UTC))  # her save is refused (409 in the app)
    with pytest.raises(Conflict, match="newer photo"):
        q.begin_decision("a", "bob", "e1")
    assert {i.product_id for i in q.claim("bob", 10)} == {"d", "e"}
    # a later flagged photo queues the product again
    assert q.offer([_event("a", "e3", at=datetime(2026, 1, 4, tzinfo=UTC))])["updated"] == 1
    assert q.get("a").status == "pending"


def test_long_identifiers_do_not_wedge_the_queue(open_queue):
    """Fields the event schema does not bound (source_event_id, model version) fit on every backend:
    one record the database refused would fail its whole batch again on every re-read."""
    q = open_queue()
    long = _event("a", "e" * 200, version="v" * 300)
    assert q.offer([long, _event("b")])["added"] == 2
    item = q.begin_decision("a", "x" * 128, "e" * 200)
    assert item.source_event_id == "e" * 200 and item.model_version == "v" * 300
    assert q.complete(item, "x" * 128, {"style": "formal"}, 1, datetime.now(UTC))


def test_a_model_relabel_keeps_human_labels_a_new_upload_does_not():
    human = {"style": HumanLabel(label="formal", reviewer="alice", reviewed_at=datetime.now(UTC), model_label="casual")}
    stored = _event("a").model_copy(update={"human_labels": human})
    relabel = _event("a", version="v2")
    merged = ProductLabeled.model_validate_json(keep_human_labels(relabel, stored, relabel.to_bytes()))
    assert merged.human_labels == human and merged.model.version == "v2"
    new_upload = _event("a", "e2", at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=1), version="v2")
    assert ProductLabeled.model_validate_json(keep_human_labels(new_upload, stored, new_upload.to_bytes())).human_labels is None


def test_reviewer_tokens_parse():
    s = Settings(review_tokens="alice:t1, bob:t2,broken,:t3,carol:")
    assert s.review_reviewers() == {"t1": "alice", "t2": "bob"}


def test_relabel_re_emits_the_same_upload_and_selects_by_version():
    from services.events import supersedes
    from services.review.relabel import upload_again, wanted

    record = _event("a", "e7", at=datetime(2026, 3, 1, 12, tzinfo=UTC), version="v1").model_copy(update={"metadata": {"title": "Shirt"}})
    again = upload_again(record)
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert (again.event_id, again.uploaded_at, again.image, again.metadata) == ("e7", at, record.image, {"title": "Shirt"})
    # labeled again by the same version: no change; by another: it replaces the record
    assert not supersedes(_event("a", "e7", at=again.uploaded_at, version="v1"), record)
    assert supersedes(_event("a", "e7", at=again.uploaded_at, version="v2"), record)
    assert wanted(record, "other-version", "v2") and not wanted(record, "other-version", "v1")
    assert wanted(record, "flagged", None) and not wanted(_event("b", flagged=False), "flagged", None)
    assert wanted(_event("b", flagged=False), "all", None)
