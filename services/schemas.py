"""JSON Schemas of the events, for the consumers of our topics (``docs/schemas/``).

Generated from the pydantic models in :mod:`services.events` (what a consumer receives:
serialization mode), one file per event type and schema version. :func:`incompatible`
compares a committed schema with the current one and names what would break a consumer
that relies on it: a property removed or renamed, a type changed, a property no longer always
present (or newly required: that breaks producers), an allowed value or a map key (a task, a
status) removed. Adding an optional property or a new allowed value (a new task) is compatible. An incompatible change
must raise the event's ``schema_version`` (a new file; the old one stays for its readers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from services.events import DeadLetter, ProductImageUploaded, ProductLabeled, ProductLabelsReviewed

EVENTS: dict[str, type[BaseModel]] = {
    "product-image-uploaded": ProductImageUploaded,
    "product-labeled": ProductLabeled,
    "product-labels-reviewed": ProductLabelsReviewed,
    "dead-letter": DeadLetter,
}
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def version_of(model: type[BaseModel]) -> int:
    return int(model.model_fields["schema_version"].default)


def file_name(name: str, model: type[BaseModel]) -> str:
    return f"{name}.v{version_of(model)}.json"


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(mode="serialization")


def current() -> dict[str, dict[str, Any]]:
    """file name -> schema, for every event as the code defines it now."""
    return {file_name(name, model): schema_of(model) for name, model in EVENTS.items()}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, schema in current().items():
        path = directory / name
        path.write_text(render(schema))
        out.append(path)
    return out


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = defs.get(node["$ref"].rsplit("/", 1)[-1], {})
    return node


def _types(node: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    """The JSON types a node allows (through anyOf/oneOf and $ref)."""
    node = _resolve(node, defs)
    if "anyOf" in node or "oneOf" in node:
        return set().union(*(_types(n, defs) for n in node.get("anyOf", node.get("oneOf", []))))
    if "const" in node and "type" not in node:
        value = node["const"]
        return {"null" if value is None else "boolean" if isinstance(value, bool) else "string" if isinstance(value, str)
                else "integer" if isinstance(value, int) else "number"}
    t = node.get("type")
    return set(t) if isinstance(t, list) else {t} if t else {"any"}


def _values(node: dict[str, Any], defs: dict[str, Any]) -> set[Any] | None:
    """The allowed values of an enum/const node (through anyOf), None if unrestricted."""
    node = _resolve(node, defs)
    if "enum" in node:
        return set(map(json.dumps, node["enum"]))
    if "const" in node:
        return {json.dumps(node["const"])}
    if "anyOf" in node:
        parts = [_values(n, defs) for n in node["anyOf"] if _resolve(n, defs).get("type") != "null"]
        return None if any(p is None for p in parts) or not parts else set().union(*parts)  # type: ignore[arg-type]
    return None


def _removed_values(old: dict, new: dict, old_defs: dict, new_defs: dict) -> list[Any]:
    """Allowed values of ``old`` that ``new`` no longer allows (both restricted to a set of values), sorted."""
    old_values, new_values = _values(old, old_defs), _values(new, new_defs)
    if old_values is None or new_values is None:
        return []
    return sorted(map(json.loads, old_values - new_values))


def _compare(old: Any, new: Any, old_defs: dict, new_defs: dict, where: str, out: list[str], depth: int = 0) -> None:
    old, new = _resolve(old, old_defs), _resolve(new, new_defs)
    if depth > 20 or not isinstance(old, dict) or not isinstance(new, dict):
        return
    new_types = _types(new, new_defs)
    lost = _types(old, old_defs) - new_types - {"any"}
    if lost and "any" not in new_types:
        out.append(f"{where}: type {sorted(lost)} no longer allowed")
    if gone := _removed_values(old, new, old_defs, new_defs):
        out.append(f"{where}: values {gone} removed")
    for branch in ("anyOf", "oneOf"):  # an object inside a union (e.g. a nullable one)
        objects = [n for n in new.get(branch, []) if _resolve(n, new_defs).get("properties")]
        for o in (n for n in old.get(branch, []) if _resolve(n, old_defs).get("properties")):
            if objects:
                _compare(o, objects[0], old_defs, new_defs, where, out, depth + 1)
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for prop, sub in old_props.items():
        if prop not in new_props:
            out.append(f"{where}.{prop}: removed")
        else:
            _compare(sub, new_props[prop], old_defs, new_defs, f"{where}.{prop}", out, depth + 1)
    old_required, new_required = set(old.get("required", [])), set(new.get("required", []))
    out += [f"{where}.{p}: no longer always present" for p in sorted(old_required - new_required) if p in new_props]
    out += [f"{where}.{p}: newly required (breaks producers)" for p in sorted(new_required - old_required)]
    if "propertyNames" in old and "propertyNames" in new:  # a map's keys: the tasks of `labels`
        if gone := _removed_values(old["propertyNames"], new["propertyNames"], old_defs, new_defs):
            out.append(f"{where}: keys {gone} removed")
    for part in ("additionalProperties", "items"):
        if isinstance(old.get(part), dict) and isinstance(new.get(part), dict):
            _compare(old[part], new[part], old_defs, new_defs, f"{where}[*]" if part == "additionalProperties" else f"{where}[]",
                     out, depth + 1)


def incompatible(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What in ``new`` would break a consumer written against ``old`` (empty: compatible)."""
    out: list[str] = []
    _compare(old, new, old.get("$defs", {}), new.get("$defs", {}), "$", out)
    return out


def check(directory: Path = SCHEMA_DIR) -> list[str]:
    """Problems with the committed schemas: missing, stale, or changed incompatibly without a new version."""
    problems = []
    for name, model in EVENTS.items():
        path = directory / file_name(name, model)
        schema = schema_of(model)
        if not path.is_file():
            older = sorted(directory.glob(f"{name}.v*.json"))
            problems.append(f"{path.name}: missing (run `autolabel schemas --write`)" + (f"; older: {older[-1].name}" if older else ""))
            continue
        committed = json.loads(path.read_text())
        if committed == schema:
            continue
        broken = incompatible(committed, schema)
        if broken:
            problems.append(f"{path.name}: incompatible with the committed schema (raise {model.__name__}.schema_version): "
                            + "; ".join(broken[:10]))
        else:
            problems.append(f"{path.name}: stale, the change is compatible (run `autolabel schemas --write`)")
    return problems
