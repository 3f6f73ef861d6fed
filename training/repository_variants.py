"""Several backbones side by side in one served repository (benchmarks and tests).

:func:`add_backbone_variant` copies another build's ``backbone`` (e.g. the OpenVINO bf16 or
int8 one) into a repository as ``backbone_<suffix>`` and writes ``autolabel_<suffix>``: the
``autolabel`` ensemble with that backbone in its first step and the same heads. One
tritonserver then serves both, so they can be measured and compared in one run.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def _renamed(config: str, old: str, new: str) -> str:
    first, rest = config.split("\n", 1)
    if first != f'name: "{old}"':
        raise ValueError(f"expected the config of {old!r}, got {first!r}")
    return f'name: "{new}"\n{rest}'


def add_backbone_variant(repo: Path, other: Path, suffix: str) -> str:
    """Serve ``other``'s backbone in ``repo`` as ``backbone_<suffix>`` behind ``autolabel_<suffix>``; return that name."""
    from google.protobuf import text_format

    from training.repository_check import parse_config

    backbone, ensemble = f"backbone_{suffix}", f"autolabel_{suffix}"
    shutil.rmtree(repo / backbone, ignore_errors=True)
    shutil.copytree(other / "backbone", repo / backbone)
    for cfg in [repo / backbone / "config.pbtxt", *sorted((repo / backbone / "configs").glob("*.pbtxt"))]:
        cfg.write_text(_renamed(cfg.read_text(), "backbone", backbone))
    top = parse_config(repo / "autolabel" / "config.pbtxt")
    if top.platform != "ensemble":
        raise ValueError(f"{repo}/autolabel is not an ensemble (build with --serving ensemble)")
    top.name = ensemble
    for step in top.ensemble_scheduling.step:
        if step.model_name == "backbone":
            step.model_name = backbone
    shutil.rmtree(repo / ensemble, ignore_errors=True)
    (repo / ensemble / "1").mkdir(parents=True)
    (repo / ensemble / "config.pbtxt").write_text(text_format.MessageToString(top))
    for label_file in (repo / "autolabel").glob("*.txt"):
        shutil.copyfile(label_file, repo / ensemble / label_file.name)
    return ensemble
