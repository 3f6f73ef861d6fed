"""The docs' examples and tables stay true to the code."""

import json
import re
from pathlib import Path

from services.events import DeadLetter, ErrorCode, ProductImageUploaded, ProductLabeled

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _json_blocks(text: str) -> list[dict]:
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S)]


def test_event_examples_validate():
    blocks = _json_blocks((DOCS / "events.md").read_text())
    by_type = {b["type"]: b for b in blocks}
    ProductImageUploaded.model_validate(by_type["product.image.uploaded"])
    ProductLabeled.model_validate(by_type["product.labeled"])
    DeadLetter.model_validate(by_type["product.image.dead_letter"])


def test_every_error_code_is_documented():
    text = (DOCS / "events.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.M))
    assert {c.value for c in ErrorCode} <= documented
