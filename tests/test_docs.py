"""The docs' examples and tables stay true to the code."""

import json
import re
from pathlib import Path

from services.events import DeadLetter, ErrorCode, ProductImageUploaded, ProductLabeled, ProductLabelsReviewed

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _json_blocks(text: str) -> list[dict]:
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S)]


def test_event_examples_validate():
    blocks = _json_blocks((DOCS / "events.md").read_text())
    schemas = {"product.image.uploaded": ProductImageUploaded, "product.labeled": ProductLabeled,
               "product.image.dead_letter": DeadLetter, "product.labels.reviewed": ProductLabelsReviewed}
    for block in blocks:
        schemas[block["type"]].model_validate(block)
    assert {b["type"] for b in blocks} == set(schemas), "an example of every schema"


def test_every_error_code_is_documented():
    text = (DOCS / "events.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.M))
    assert {c.value for c in ErrorCode} <= documented
