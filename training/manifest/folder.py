"""The models folder's manifest file: the one module that names it, reads it raw and writes it.

:func:`training.manifest.read.read_models` reads it validated; the writers (``autolabel train``, the add-ons
``train-title``/``train-scope``/``train-others``, the untrained fixtures) read, change and write it through here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def manifest_file(models_dir: Path) -> Path:
    """``<models_dir>/manifest.json``."""
    return Path(models_dir) / MANIFEST


def load_manifest(models_dir: Path) -> dict[str, Any]:
    """The manifest as written (no checks: :func:`training.manifest.read.read_models` checks)."""
    return json.loads(manifest_file(models_dir).read_text())


def save_manifest(models_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` (indented, one trailing newline, as every writer always has)."""
    path = manifest_file(models_dir)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
