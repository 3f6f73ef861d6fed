"""Pure: an upload's metadata -> the title the model reads (no I/O, no tokenizer).

The served heads turn the title into features themselves (hashed words, docs/accuracy.md);
the worker only makes it safe to send and bounded:

- ``metadata["title"]`` (schema 1's free string map; producers without it keep working);
- control and format characters become spaces, runs of whitespace one space;
- cut to :data:`TITLE_MAX_CHARS` characters (a 10 kB title is read by its first 256);
- text that cannot be encoded as UTF-8 (lone surrogates from JSON escapes) is replaced, never raised.

A title with no ASCII letter or digit left (empty, or in another script) adds nothing: the
served model then answers exactly as the image-only model, and the label event says
``inputs: ["image"]`` (:func:`has_words`, the same rule as the served graph's).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

TITLE_KEY = "title"
TITLE_MAX_CHARS = 256
_SPACES = re.compile(r"\s+")
WORD_CHARS = "a-z0-9"  # what the served graph keeps of a title after ASCII lower-casing (training/features/text.py)
_WORD = re.compile(f"[{WORD_CHARS}]", re.ASCII | re.IGNORECASE)


def clean_title(metadata: Mapping[str, str] | None) -> str:
    """The title to send with the photo ('' when there is none)."""
    raw = (metadata or {}).get(TITLE_KEY) or ""
    if not isinstance(raw, str):
        return ""
    raw = raw[: TITLE_MAX_CHARS * 4]  # bound the work before looking at characters
    text = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in raw)
    text = _SPACES.sub(" ", text).strip()[:TITLE_MAX_CHARS].strip()
    return text.encode("utf-8", errors="replace").decode("utf-8")


def title_bytes(title: str) -> bytes:
    """What goes into Triton's BYTES tensor."""
    return title.encode("utf-8", errors="replace")


def has_words(title: str) -> bool:
    """Whether the served model reads anything in ``title`` (else its labels are the photo's alone)."""
    return bool(_WORD.search(title))
