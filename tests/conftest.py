"""Shared fixtures: the real embedded stack (started once per session), workers, topics.

No server is mocked: the broker is Tansu, S3 is SeaweedFS, inference is tritonserver.
The served repository holds the numpy ``trivial`` model and the tiny TensorFlow models
built by ``training.serving.repository`` (same contract as the real VGG16 models, on a tiny backbone);
a failure to build them fails the session, it never falls back to the trivial model.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.processes import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
# The session stack's S3 identity: distinctive values, so tests can grep logs and
# dead letters for them (tests/test_security.py). Never the settings' defaults.
STACK_S3_ACCESS_KEY_ID = "AKIDx7Qm2StackTestKey"
STACK_S3_SECRET_ACCESS_KEY = "s3cr3t-Zq8v-DO-NOT-LOG-4f1c"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


def _build_repository(repo: Path) -> str:
    """Write the served models; return the name the worker should call."""
    from deploy.local.trivial import write_trivial_repository
    from training.serving.repository import build_repository
    from training.manifest.untrained import make_tiny_models

    write_trivial_repository(repo, name="trivial", size=(32, 32))
    models_dir = make_tiny_models(repo.parent / "tiny-models", input_size=(32, 32))
    build_repository(models_dir, repo, target="cpu")
    return "autolabel"


@pytest.fixture(scope="session")
def stack(stack_dir: Path) -> Iterator[dict[str, object]]:
    """The embedded stack, up for the whole test session; yields its environment."""
    from deploy.local.stack import Stack
    from services.settings import Settings

    repo = stack_dir / "model_repository"
    repo.mkdir()
    model_name = _build_repository(repo)
    settings = Settings(state_dir=stack_dir / "state", model_repository=repo, stack_timeout_s=180,
                        s3_access_key_id=STACK_S3_ACCESS_KEY_ID, s3_secret_access_key=STACK_S3_SECRET_ACCESS_KEY)
    st = Stack(settings)
    st.up(log=lambda m: None)
    env_lines = (settings.state_dir / "stack.env").read_text().splitlines()
    env = {k: v for k, v in (line.split("=", 1) for line in env_lines if "=" in line and not line.startswith("#"))}
    env.update({"AUTOLABEL_STATE_DIR": str(settings.state_dir), "AUTOLABEL_TRITON_MODEL": model_name,
                "AUTOLABEL_S3_ACCESS_KEY_ID": STACK_S3_ACCESS_KEY_ID, "AUTOLABEL_S3_SECRET_ACCESS_KEY": STACK_S3_SECRET_ACCESS_KEY})
    try:
        yield {"env": env, "stack": st, "settings": settings, "model": model_name, "repo": repo}
    finally:
        st.down(log=lambda m: None)


@pytest.fixture()
def stack_settings(stack: dict[str, object]):
    """Settings pointing at the session stack, with fresh topics and group for this test."""
    from benchmarks.harness import isolated_env
    from services.settings import Settings
    from services.topics import ensure_topics

    suffix = uuid.uuid4().hex[:8]
    env = dict(stack["env"])  # type: ignore[arg-type]
    env.update(isolated_env(suffix))
    kwargs = {k.removeprefix("AUTOLABEL_").lower(): v for k, v in env.items()}
    settings = Settings(**kwargs)
    ensure_topics(settings)
    return settings, env


@pytest.fixture()
def worker_factory(stack_settings, tmp_path: Path) -> Iterator:
    _, env = stack_settings
    workers: list[WorkerProcess] = []

    def make(name: str = "w1", **extra_env: str) -> WorkerProcess:
        w = WorkerProcess({**env, **extra_env}, tmp_path / f"worker-{name}-{len(workers)}.log", name).start()
        workers.append(w)
        return w

    yield make
    for w in workers:
        w.kill()


def wait_for(predicate, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    return predicate()
