"""Review page logins kept on the server (the review queue's database).

The signed cookie holds only a random session id and the CSRF token; who is logged in, and
until when, is a row here. Logging out deletes the row, so a copied cookie stops working at
once; a row past ``expires_at`` is refused and cleaned up at the next login.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import String, delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from services.review.tables import Base, UTCDateTime


class LoginSession(Base):
    __tablename__ = "review_sessions"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    reviewer: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class LoginSessions:
    def __init__(self, engine: Engine, max_age_s: float) -> None:
        Base.metadata.create_all(engine, tables=[LoginSession.__table__])
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.max_age = timedelta(seconds=max_age_s)

    def start(self, reviewer: str) -> str:
        """A new login of ``reviewer``: its session id (expired ones are removed meanwhile)."""
        now = datetime.now(UTC)
        session_id = secrets.token_urlsafe(32)
        with self.sessions.begin() as s:
            s.execute(delete(LoginSession).where(LoginSession.expires_at < now))
            s.add(LoginSession(session_id=session_id, reviewer=reviewer, created_at=now, expires_at=now + self.max_age))
        return session_id

    def reviewer(self, session_id: str | None) -> str | None:
        """Who this session is, while it lasts; None for an unknown, ended or expired one."""
        if not session_id or not isinstance(session_id, str) or len(session_id) > 64:
            return None
        with self.sessions() as s:
            row = s.scalars(select(LoginSession).where(LoginSession.session_id == session_id)).first()
        if row is None or row.expires_at < datetime.now(UTC):
            return None
        return row.reviewer

    def end(self, session_id: str | None) -> None:
        if session_id and isinstance(session_id, str):
            with self.sessions.begin() as s:
                s.execute(delete(LoginSession).where(LoginSession.session_id == session_id))
