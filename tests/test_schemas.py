"""The events' JSON Schemas in docs/schemas/ are current, and a change that would break a
consumer (a field or a task removed, a type changed) is caught unless the version is raised."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from typing import Literal

from pydantic import BaseModel

from conftest import ROOT
from services import schemas


def test_the_committed_schemas_are_the_events_as_the_code_defines_them() -> None:
    assert schemas.check() == [], "run `autolabel schemas --write` after a compatible change"
    labeled = json.loads((schemas.SCHEMA_DIR / "product-labeled.v1.json").read_text())
    assert labeled["properties"]["labels"]["propertyNames"]["enum"] == ["style", "gender", "season"]


class V1(BaseModel):
    product_id: str
    score: float
    labels: dict[Literal["style", "gender", "season"], int]
    status: Literal["accepted", "review"]
    note: str | None = None


class Renamed(BaseModel):  # product_id -> product, a task dropped, a type changed, a status removed
    product: str
    score: str
    labels: dict[Literal["style", "gender"], int]
    status: Literal["accepted"]
    note: str | None = None


class Grown(BaseModel):  # an optional field, a new task and a new status: nothing a consumer relied on goes
    product_id: str
    score: float
    labels: dict[Literal["style", "gender", "season", "colour"], int]
    status: Literal["accepted", "review", "advisory"]
    note: str | None = None
    colour: str | None = None


def test_incompatible_changes_are_named_and_compatible_ones_pass() -> None:
    old = schemas.schema_of(V1)
    broken = schemas.incompatible(old, schemas.schema_of(Renamed))
    assert broken == ["$.product_id: removed", "$.score: type ['number'] no longer allowed", "$.labels: keys ['season'] removed",
                      "$.status: values ['review'] removed", "$.product: newly required (breaks producers)"]
    assert schemas.incompatible(old, schemas.schema_of(Grown)) == []
    assert schemas.incompatible(old, old) == []


def test_the_check_fails_on_a_deliberate_incompatible_change_unless_the_version_is_raised(tmp_path) -> None:
    schemas.write(tmp_path)
    path = tmp_path / "product-labeled.v1.json"
    committed = json.loads(path.read_text())
    # the committed schema had a field the code no longer has: to the check, the code removed it
    tampered = copy.deepcopy(committed)
    tampered["properties"]["shelf"] = {"type": "string", "title": "Shelf"}
    tampered["required"] = [*tampered.get("required", []), "shelf"]
    path.write_text(json.dumps(tampered))
    [problem] = schemas.check(tmp_path)
    assert "incompatible" in problem and "schema_version" in problem and "shelf" in problem
    # a compatible difference (the code added an optional field): stale, rewrite it
    grown = copy.deepcopy(committed)
    del grown["properties"]["scope"]
    path.write_text(json.dumps(grown))
    [stale] = schemas.check(tmp_path)
    assert "stale" in stale and "compatible" in stale
    # the command exits 1 naming it; --write makes it current
    cmd = [sys.executable, "-m", "autolabel", "schemas", "--dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 1 and "product-labeled.v1.json" in proc.stderr
    assert subprocess.run([*cmd, "--write"], capture_output=True, text=True, cwd=ROOT, timeout=60).returncode == 0
    assert subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60).returncode == 0
