"""Errors a person sees are one line, within seconds, naming the endpoint and the fix.

`autolabel publish` and `autolabel labels` (and `worker`, `review`, `relabel`) with no stack running used to print a
kafka-python traceback after 30 s ("KafkaTimeoutError: Unable to bootstrap"). The command
runs as a subprocess, as a person runs it; the time bound is generous (a behaviour check:
seconds, not the client's 30 s), not a benchmark.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autolabel.cli import one_line
from services.endpoints import Unreachable

ROOT = Path(__file__).resolve().parent.parent
BOUND_S = 20


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def listening() -> Iterator[int]:
    """A port that accepts connections (and says nothing): a server that is there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _run(args: list[str], tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    full = {**os.environ, "AUTOLABEL_STATE_DIR": str(tmp_path / "no-stack"), **env}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "autolabel", *args], env=full, capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    return proc, time.monotonic() - started


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize("args", [["publish", "samples/"], ["labels"], ["worker"], ["review"], ["relabel"]])
def test_no_broker_is_one_line_within_seconds(args: list[str], tmp_path: Path) -> None:
    port = _closed_port()
    proc, took = _run(args, tmp_path, AUTOLABEL_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}")
    line = _one_line(proc)
    assert proc.returncode != 0 and took < BOUND_S
    assert f"127.0.0.1:{port}" in line and "autolabel stack up" in line and "AUTOLABEL_KAFKA_BOOTSTRAP_SERVERS" in line
    assert proc.stdout == ""


def test_no_s3_is_one_line_within_seconds(tmp_path: Path, listening: int) -> None:
    port = _closed_port()
    proc, took = _run(["publish", "samples/"], tmp_path, AUTOLABEL_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{listening}",
                      AUTOLABEL_S3_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    line = _one_line(proc)
    assert proc.returncode != 0 and took < BOUND_S
    assert f"http://127.0.0.1:{port}" in line and "autolabel stack up" in line and "AUTOLABEL_S3_ENDPOINT_URL" in line


def test_what_is_shown_as_one_line() -> None:
    assert one_line(Unreachable("cannot reach S3 at x: do y")) == "cannot reach S3 at x: do y"
    from kafka.errors import KafkaTimeoutError

    shown = one_line(KafkaTimeoutError("Unable to bootstrap from\n['127.0.0.1:9092']"))
    assert shown is not None and "\n" not in shown and "autolabel stack status" in shown
    assert one_line(ZeroDivisionError("a bug")) is None  # a bug keeps its traceback
    assert one_line(FileExistsError(17, "File exists", "/tmp/repo")) == "/tmp/repo: File exists"  # a path the user gave
    assert one_line(OSError("no path in it")) is None


def test_bad_input_is_refused_before_any_server_is_asked(tmp_path: Path) -> None:
    """A bad --product-id or --title-column says so, not that the (absent) broker is unreachable."""
    no_broker = {"AUTOLABEL_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_closed_port()}"}
    proc, _ = _run(["publish", "samples/13212.jpg", "--product-id", "../etc"], tmp_path, **no_broker)
    assert proc.returncode == 2 and "--product-id" in proc.stderr and "cannot reach" not in proc.stderr
    csv = tmp_path / "catalog.csv"
    csv.write_text("id,productDisplayName\nshirt-1,Puma Men Blue Tshirt\n")
    proc, _ = _run(["publish", "samples/13212.jpg", "--metadata-csv", str(csv), "--title-column", "name"], tmp_path, **no_broker)
    assert proc.returncode == 2 and "no `name` column; columns: id, productDisplayName" in proc.stderr
    assert "cannot reach" not in proc.stderr


def test_demo_passes_the_build_output_through_without_tensorflow_start_up_lines() -> None:
    """`make demo` shows the build's progress bar and errors as they come, not TF's 'failed call to cuInit' on a CPU machine."""
    import io

    from autolabel.demo import pass_stderr

    child = io.BytesIO(b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                       b"I0000 00:00:1796336740.742185   16787 port.cc:153] oneDNN custom operations are on.\n"
                       b"export cpu:   0%|  | 0/8\rexport cpu: 100%|##| 8/8\n"
                       b"E0000 00:00:1796336742.938275   16787 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
                       b"error: /tmp/repo: File exists")
    shown = io.StringIO()
    pass_stderr(child, shown)
    assert shown.getvalue() == "export cpu:   0%|  | 0/8\rexport cpu: 100%|##| 8/8\nerror: /tmp/repo: File exists"
