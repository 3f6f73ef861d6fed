"""The built repository served by a real tritonserver (the session stack of tests/conftest.py).

The ``autolabel`` ensemble (one backbone pass, three heads) must give the standalone task
models' probabilities, per image, also when dynamic batching merges concurrent requests of
different sizes into one execution.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from services.settings import TASKS

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-4


@pytest.fixture(scope="module")
def triton(stack: dict[str, object]):
    assert stack["model"] == "autolabel", "the session stack serves the tiny autolabel repository (tests/conftest.py)"
    import tritonclient.grpc as grpcclient

    url = stack["env"]["AUTOLABEL_TRITON_URL"]  # type: ignore[index]
    client = grpcclient.InferenceServerClient(url)
    return client, grpcclient, url


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    from services.images import prepare

    photos = [prepare(p.read_bytes(), (32, 32), "pad") for p in sorted((ROOT / "samples").glob("*.jpg"))[:12]]
    rng = np.random.default_rng(11)
    return np.stack(photos + [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(8)])


def _infer(client, g, model: str, x: np.ndarray, outputs: list[str], titles: list[bytes] | None = None) -> dict[str, np.ndarray]:
    """``titles``: sent as the BYTES ``title`` input (the ensemble needs one: b"" for none); None for photo-only models."""
    i = g.InferInput("image", list(x.shape), "UINT8")
    i.set_data_from_numpy(x)
    inputs = [i]
    if titles is not None:
        t = g.InferInput("title", [len(titles), 1], "BYTES")
        t.set_data_from_numpy(np.array([[v] for v in titles], dtype=object))
        inputs.append(t)
    r = client.infer(model, inputs, outputs=[g.InferRequestedOutput(o) for o in outputs])
    return {o: r.as_numpy(o) for o in outputs}


def test_the_repository_serves_the_contract(triton) -> None:
    client, _, _ = triton
    ready = {m.name for m in client.get_model_repository_index().models if m.state == "READY"}
    assert {"autolabel", "backbone", "scope_head", *TASKS, *(f"{t}_head" for t in TASKS)} <= ready
    meta = client.get_model_metadata("autolabel")
    assert [(i.name, i.datatype, list(i.shape)) for i in meta.inputs] == [("image", "UINT8", [-1, 32, 32, 3]), ("title", "BYTES", [-1, 1])]
    assert [(o.name, o.datatype) for o in meta.outputs] == [(t, "FP32") for t in (*TASKS, "scope")]
    params = {k: v.string_value for k, v in client.get_model_config("autolabel").config.parameters.items()}
    assert params["scope_threshold"] == "1.000000"  # the tiny models' random gate never flags
    assert params["labels_style"] == "casual,formal,sports" and params["weights_source"] == "random"
    for t in TASKS:
        p = {k: v.string_value for k, v in client.get_model_config(t).config.parameters.items()}
        assert p["labels"] == params[f"labels_{t}"] and p["model_version"] == params["model_version"]


def test_shared_backbone_equals_standalone_through_triton(triton, test_images: np.ndarray) -> None:
    client, g, _ = triton
    shared = _infer(client, g, "autolabel", test_images, list(TASKS), [b""] * len(test_images))
    for t in TASKS:
        alone = _infer(client, g, t, test_images, ["probs"])["probs"]
        assert shared[t].shape == alone.shape == (len(test_images), alone.shape[1])
        assert np.abs(shared[t] - alone).max() <= TOL, t
        assert np.ptp(alone, axis=0).max() > 1e-3, "the test set should not get identical probabilities"


def test_dynamic_batching_keeps_each_request_its_own_answer(triton, stack, test_images: np.ndarray) -> None:
    """Concurrent requests of 1, 2 and 3 images are merged by the batcher, split back correctly."""
    import tensorflow as tf

    _, g, url = triton
    repo = Path(stack["repo"])  # type: ignore[arg-type]
    loaded = tf.saved_model.load(str(repo / "style" / "1" / "model.savedmodel"))
    want = loaded.signatures["serving_default"](image=tf.constant(test_images))["probs"].numpy()
    chunks, start = [], 0
    for size in [1, 2, 3] * 4:
        if start >= len(test_images):
            break
        chunks.append((start, test_images[start:start + size]))
        start += size

    def call(item: tuple[int, np.ndarray]) -> tuple[int, dict[str, np.ndarray]]:
        client = g.InferenceServerClient(url)
        return item[0], _infer(client, g, "autolabel", item[1], list(TASKS), [b""] * len(item[1]))

    def backbone_stats() -> tuple[int, int]:
        st = triton[0].get_inference_statistics("backbone").model_stats[0]
        return st.execution_count, st.inference_stats.success.count

    merged = False
    for _ in range(5):  # until the batcher has merged requests at least once
        executions0, requests0 = backbone_stats()
        with ThreadPoolExecutor(len(chunks)) as pool:
            results = list(pool.map(call, chunks))
        for begin, out in results:
            n = len(out["style"])
            assert np.abs(out["style"] - want[begin:begin + n]).max() <= TOL, f"request at image {begin} got another image's labels"
        executions, requests = backbone_stats()
        assert requests - requests0 == len(chunks)
        if executions - executions0 < len(chunks):
            merged = True
            break
    assert merged, "dynamic batching never merged concurrent requests"


def test_the_title_travels_through_the_ensemble(triton, stack, test_images: np.ndarray) -> None:
    """Through tritonserver: titled rows get the head's fused answer for that title, untitled rows
    the photo-only answer, also when both kinds share one request."""
    import tensorflow as tf

    client, g, _ = triton
    repo = Path(stack["repo"])  # type: ignore[arg-type]
    titles = [b"Puma Men Blue Track Pants" if i % 2 else b"" for i in range(len(test_images))]
    got = _infer(client, g, "autolabel", test_images, list(TASKS), titles)
    features = tf.saved_model.load(str(repo / "backbone" / "1" / "model.savedmodel")).signatures["serving_default"](
        image=tf.constant(test_images))["features"]
    for t in TASKS:
        head = tf.saved_model.load(str(repo / f"{t}_head" / "1" / "model.savedmodel")).signatures["serving_default"]
        want = head(features=features, title=tf.constant([[v] for v in titles]))["probs"].numpy()
        alone = _infer(client, g, t, test_images, ["probs"])["probs"]
        assert np.abs(got[t] - want).max() <= TOL, t
        assert np.abs(got[t][0::2] - alone[0::2]).max() <= TOL, f"{t}: rows without a title must keep the photo's labels"
        assert np.abs(got[t][1::2] - alone[1::2]).max() > 1e-3, f"{t}: the title changed nothing"
