"""Training's one error: the trained or served models are missing or do not fit together."""

from __future__ import annotations

from services.errors import AutolabelError


class ModelsError(AutolabelError, RuntimeError):
    """The models are missing or inconsistent; the message says what to do."""
