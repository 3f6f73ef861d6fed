"""The review app's tables and their database: SQLite under the state dir by default, any
SQLAlchemy URL (PostgreSQL) through ``AUTOLABEL_REVIEW_DATABASE_URL``; tables created by
replicas starting together one at a time, columns added since a table was created added
on start (:func:`create_tables`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Boolean, DateTime, Integer, String, Text, TypeDecorator, create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.events import ProductLabeled
from services.settings import Settings

PENDING, CLAIMED, SAVING, DONE, STALE, QUARANTINED = "pending", "claimed", "saving", "done", "stale", "quarantined"
_DDL_LOCK = 0x6175746F6C616265  # PostgreSQL advisory lock key held while creating the tables ("autolabe")


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite keeps no zone: store naive UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):  # noqa: ANN001, ANN201
        if value is None:
            return None
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):  # noqa: ANN001, ANN201
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "review_items"

    product_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # Text: the event schema does not bound them, and a value PostgreSQL refused would fail
    # its whole batch again on every re-read of the topic
    source_event_id: Mapped[str] = mapped_column(Text)
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    model_version: Mapped[str] = mapped_column(Text)
    event_json: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True, default=PENDING)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    reviewed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # a blind audit (the label event's `audit`): shown without the model's labels; None in rows older than it
    audit: Mapped[bool | None] = mapped_column(Boolean, nullable=True, default=False)

    @property
    def event(self) -> ProductLabeled:
        return ProductLabeled.model_validate_json(self.event_json)


class Decision(Base):
    """Every review decision (the reviewer's rate, an audit trail)."""

    __tablename__ = "review_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    product_id: Mapped[str] = mapped_column(String(128), index=True)
    source_event_id: Mapped[str] = mapped_column(Text)
    reviewer: Mapped[str] = mapped_column(String(128), index=True)
    labels_json: Mapped[str] = mapped_column(Text)
    corrected: Mapped[int] = mapped_column(Integer)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    # the ProductLabelsReviewed event published for it: a repeated save answers with it
    reviewed_json: Mapped[str | None] = mapped_column(Text, nullable=True)


class OutcomeRow(Base):
    """One task of one decision: the model's label against the person's (live precision, agreement)."""

    __tablename__ = "review_outcomes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)  # audit (blind) or flagged
    product_id: Mapped[str] = mapped_column(String(128))
    source_event_id: Mapped[str] = mapped_column(Text)
    task: Mapped[str] = mapped_column(String(32))
    model_version: Mapped[str] = mapped_column(Text)
    model_label: Mapped[str] = mapped_column(Text)
    human_label: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # the model label's: accepted, review, advisory
    reviewer: Mapped[str] = mapped_column(String(128))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


def database_url(settings: Settings) -> str:
    if settings.review_database_url.get_secret_value():
        return settings.review_database_url.get_secret_value()
    path = Path(settings.state_dir).resolve() / "review.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record) -> None:  # noqa: ANN001
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def create_tables(engine: Engine, attempts: int = 5) -> None:
    """The tables, where missing. Replicas starting together race to create them: on
    PostgreSQL one at a time under an advisory lock; elsewhere a loser tries again (and then
    finds them)."""
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _DDL_LOCK})
                Base.metadata.create_all(conn)
                _add_missing_columns(conn)
            return
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _add_missing_columns(conn) -> None:  # noqa: ANN001
    """Columns added since a table was first created (nullable: old rows read as None)."""
    from sqlalchemy import inspect

    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in inspect(conn).get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable:
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}'))
