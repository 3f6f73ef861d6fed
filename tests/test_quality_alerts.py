"""The quality alerts (deploy/compose/prometheus/alerts.yml, group autolabel-quality) under
Prometheus' own rule tests (`promtool test rules`, Debian's `prometheus` package, which
`make test` installs): a drift injection, a precision regression and an auto-accept collapse
make them fire; a normal stream does not.

The series are not made up: the drift values are what :class:`services.drift.DriftMonitor`
computes on a normal stream and on an injected one (one style class only), and the precision
bounds are what :func:`services.audit.estimates` says of simulated audit outcomes. The rules are
the real ones with their annotations left out (promtool would compare the rendered texts).
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from services.audit import Outcome, estimates
from services.drift import DriftMonitor, build_reference
from test_drift import stream

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "compose" / "prometheus" / "alerts.yml"
STEP_MIN = 5  # minutes between samples
WORKER = 'job="autolabel-worker", instance="w1"'
REVIEW = 'job="autolabel-review", instance="review:8088"'


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make test` installs Debian's `prometheus` package (apt-get install prometheus)"
    return path


def _rules_without_annotations(tmp: Path) -> Path:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for g in groups:
        for r in g["rules"]:
            r.pop("annotations", None)
    out = tmp / "rules.yml"
    out.write_text(yaml.safe_dump({"groups": groups}))
    return out


def _values(xs: list[float]) -> str:
    return " ".join(f"{x:.6g}" for x in xs)


def drift_series(inject_after: int | None, steps: int = 48) -> list[dict]:
    """A worker's drift gauges, one sample per step; from ``inject_after`` on, its photos are all called sports."""
    monitor = DriftMonitor(build_reference(stream(3000, seed=1)), window=500)
    monitor.observe(stream(500, seed=2))
    psi: dict[tuple[str, str], list[float]] = {}
    labels: dict[str, list[float]] = {}
    for step in range(steps):
        injected = inject_after is not None and step >= inject_after
        monitor.observe(stream(100, seed=100 + step, only="sports" if injected else None))
        for task in ("style", "gender", "season"):
            s = monitor.summary(task)
            psi.setdefault((task, "class"), []).append(s["class_psi"])
            psi.setdefault((task, "top_probability"), []).append(s["top_probability_psi"])
            labels.setdefault(task, []).append(s["n"])
    out = [{"series": f'autolabel_drift_psi{{task="{t}", feature="{f}", {WORKER}}}', "values": _values(v)} for (t, f), v in psi.items()]
    out += [{"series": f'autolabel_drift_window_labels{{task="{t}", {WORKER}}}', "values": _values(v)} for t, v in labels.items()]
    return out


def precision_series(wrong_every: int, steps: int = 48, per_step: int = 20) -> list[dict]:
    """The review app's live precision bounds as audits of one model version accumulate (1 in ``wrong_every`` wrong)."""
    outcomes: list[Outcome] = []
    upper, lower = [], []
    for step in range(steps):
        for i in range(per_step):
            k = step * per_step + i
            human = "formal" if k % wrong_every == 0 else "casual"
            outcomes.append(Outcome("audit", "style", "v2", "casual", human, "accepted", datetime(2026, 1, 1, tzinfo=UTC)))
        (overall,) = [e for e in estimates(outcomes) if e.model_version == "v2" and not e.label_class]
        lower.append(overall.interval[0])
        upper.append(overall.interval[1])
    sel = f'task="style", model_version="v2", class="all", {REVIEW}'
    return [{"series": f"autolabel_live_precision_upper{{{sel}}}", "values": _values(upper)},
            {"series": f"autolabel_live_precision_lower{{{sel}}}", "values": _values(lower)},
            {"series": f"autolabel_target_precision{{{REVIEW}}}", "values": f"0.95+0x{steps}"}]


def accept_series(collapse: bool) -> list[dict]:
    """Two days at 70 % auto-accepted (100 style labels per step), then 2 hours at 20 % (or still 70 %)."""
    days, tail = 2 * 24 * 60 // STEP_MIN, 120 // STEP_MIN
    accepted = f"0+70x{days} {70 * days}+{20 if collapse else 70}x{tail}"
    other = f"0+30x{days} {30 * days}+{80 if collapse else 30}x{tail}"
    return [{"series": f'autolabel_task_labels_total{{task="style", status="accepted", {WORKER}}}', "values": accepted},
            {"series": f'autolabel_task_labels_total{{task="style", status="review", {WORKER}}}', "values": other}]


def _case(series: list[dict], checks: list[tuple[str, str, list[dict]]]) -> dict:
    return {"interval": f"{STEP_MIN}m", "input_series": series,
            "alert_rule_test": [{"eval_time": t, "alertname": a, "exp_alerts": [{"exp_labels": e} for e in exp]}
                                for t, a, exp in checks]}


def run_promtool(tmp_path: Path, tests: list[dict]) -> subprocess.CompletedProcess:
    rules = _rules_without_annotations(tmp_path)
    spec = tmp_path / "tests.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}))
    return subprocess.run([_promtool(), "test", "rules", str(spec)], capture_output=True, text=True, timeout=120)


def test_drift_injection_fires_and_a_normal_stream_does_not(tmp_path: Path) -> None:
    fired = {"severity": "warning", "task": "style", "feature": "class"}
    proc = run_promtool(tmp_path, [
        _case(drift_series(inject_after=None), [("3h", "AutolabelPredictionDrift", [])]),
        # injected at 2h: the window is mostly sports within a few steps, and the alert waits its 30 minutes
        _case(drift_series(inject_after=24), [("2h", "AutolabelPredictionDrift", []),
                                              ("3h", "AutolabelPredictionDrift", [fired])]),
    ])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_precision_below_target_fires_only_for_a_regression(tmp_path: Path) -> None:
    fired = {"severity": "critical", "task": "style", "model_version": "v2", "class": "all", "job": "autolabel-review",
             "instance": "review:8088"}
    proc = run_promtool(tmp_path, [
        _case(precision_series(wrong_every=40), [("3h", "AutolabelLivePrecisionBelowTarget", [])]),  # 97.5 % right
        _case(precision_series(wrong_every=6), [("10m", "AutolabelLivePrecisionBelowTarget", []),  # 83 % right, few audits
                                                ("3h", "AutolabelLivePrecisionBelowTarget", [fired])]),
    ])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_auto_accept_collapse_fires_and_a_steady_rate_does_not(tmp_path: Path) -> None:
    proc = run_promtool(tmp_path, [
        _case(accept_series(collapse=False), [("50h", "AutolabelAutoAcceptCollapsed", [])]),
        _case(accept_series(collapse=True), [("48h", "AutolabelAutoAcceptCollapsed", []),
                                             ("50h", "AutolabelAutoAcceptCollapsed", [{"severity": "warning", "task": "style"}])]),
    ])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("backlog, fires", [(100, False), (800, True)])
def test_audit_backlog(tmp_path: Path, backlog: int, fires: bool) -> None:
    series = [{"series": f'autolabel_audit_backlog{{model_version="all", {REVIEW}}}', "values": f"{backlog}+0x400"}]
    exp = [{"severity": "warning", "model_version": "all", "job": "autolabel-review", "instance": "review:8088"}] if fires else []
    proc = run_promtool(tmp_path, [_case(series, [("25h", "AutolabelAuditBacklogGrowing", exp)])])
    assert proc.returncode == 0, proc.stdout + proc.stderr
