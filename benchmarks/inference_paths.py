"""The ways to get the three labels (`autolabel bench serving`), and their drivers.

(a) :class:`TritonPaths` ``standalone``: the three task models through Triton; (b) the same
class, ``shared``: the ``autolabel`` model (one backbone pass), photo only; (c) :class:`InProcess`:
the backbone + head SavedModels in this process; (d) ``shared`` with each photo's title (the
text branch's cost beside (b)). :func:`run_clients` drives one at a given
client concurrency, :func:`run_batched` in fixed batches; :func:`load_images` makes inputs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from benchmarks.stats import percentile

Outputs = dict[str, np.ndarray]


@dataclass
class PathResult:
    path: str
    images: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        lat = self.latencies_ms or [0.0]
        return {
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images / self.seconds, 3) if self.seconds else 0.0,
            "p50_ms": round(percentile(lat, 50), 1),
            "p99_ms": round(percentile(lat, 99), 1),
            "requests": len(self.latencies_ms),
        }


# --- images ------------------------------------------------------------------------------------


def load_images(n: int, size: tuple[int, int], images_dir: Path | None, resize: str, seed: int = 0) -> tuple[np.ndarray, str]:
    """``n`` uint8 images (cycled from ``images_dir`` photos, else seeded noise) and their origin."""
    found = images_dir.iterdir() if images_dir and images_dir.is_dir() else []
    files = sorted(p for p in found if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    if files:
        from services.images import prepare

        base = [prepare(f.read_bytes(), size, resize) for f in files[:n]]  # type: ignore[arg-type]
        return np.stack([base[i % len(base)] for i in range(n)]), f"{min(n, len(files))} photos from {images_dir} (cycled to {n})"
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *size, 3), dtype=np.uint8), f"{n} seeded random images"


# --- the three paths ---------------------------------------------------------------------------


class TritonPaths:
    """(a) and (b) through Triton's gRPC API; one client per worker thread."""

    def __init__(self, url: str, tasks: Sequence[str]) -> None:
        import tritonclient.grpc as grpcclient

        self._g = grpcclient
        self.url = url
        self.tasks = list(tasks)
        self._local = threading.local()

    def _client(self):  # noqa: ANN202
        if not hasattr(self._local, "c"):
            self._local.c = self._g.InferenceServerClient(self.url)
        return self._local.c

    def _input(self, x: np.ndarray):  # noqa: ANN202
        i = self._g.InferInput("image", list(x.shape), "UINT8")
        i.set_data_from_numpy(x)
        return i

    @property
    def takes_title(self) -> bool:
        """Whether the ``autolabel`` model has a ``title`` input (heads trained with `autolabel train-title`)."""
        if not hasattr(self, "_takes_title"):
            meta = self._client().get_model_metadata("autolabel")
            self._takes_title = any(i.name == "title" for i in meta.inputs)
        return self._takes_title

    def _titles(self, titles: Sequence[str]):  # noqa: ANN202
        t = self._g.InferInput("title", [len(titles), 1], "BYTES")
        t.set_data_from_numpy(np.array([[v.encode()] for v in titles], dtype=object))
        return t

    def outputs_of(self, model: str) -> list[str]:
        """Every output ``model`` has (the tasks, and ``scope`` with a scope gate): asked for, as the worker does."""
        cache = self.__dict__.setdefault("_outputs", {})
        if model not in cache:
            cache[model] = [o.name for o in self._client().get_model_metadata(model).outputs]
        return cache[model]

    def shared(self, x: np.ndarray, titles: Sequence[str] | None = None, model: str = "autolabel") -> Outputs:
        """(b) the ``autolabel`` model; with ``titles`` (d) each image's title too (else an empty one where it takes one);
        ``model``: another ensemble of the same steps (e: without the scope gate)."""
        inputs = [self._input(x)]
        if self.takes_title:
            inputs.append(self._titles(titles if titles is not None else [""] * len(x)))
        r = self._client().infer(model, inputs, outputs=[self._g.InferRequestedOutput(t) for t in self.outputs_of(model)])
        return {t: r.as_numpy(t) for t in self.tasks}

    def standalone(self, x: np.ndarray) -> Outputs:
        c = self._client()
        done: dict[str, object] = {}
        ev = threading.Event()
        lock = threading.Lock()

        def cb(task: str):  # noqa: ANN202
            def _cb(result, error) -> None:  # noqa: ANN001
                with lock:
                    done[task] = error if error is not None else result.as_numpy("probs")
                    if len(done) == len(self.tasks):
                        ev.set()
            return _cb

        for t in self.tasks:
            c.async_infer(t, [self._input(x)], cb(t), outputs=[self._g.InferRequestedOutput("probs")])
        if not ev.wait(600):
            raise TimeoutError("standalone models did not answer in 600 s")
        errors = [v for v in done.values() if not isinstance(v, np.ndarray)]
        if errors:
            raise RuntimeError(f"Triton error: {errors[0]}")
        return {t: done[t] for t in self.tasks}  # type: ignore[misc]


class InProcess:
    """(c): the repository's backbone + head models, in this process: the heads with TensorFlow, the backbone
    with TensorFlow (a SavedModel) or OpenVINO (an IR, compiled with its config's ``ov_*`` parameters)."""

    def __init__(self, repo: Path, tasks: Sequence[str], backbone: str = "backbone") -> None:
        import tensorflow as tf

        self._tf = tf
        self._keep = []
        folder = repo / backbone
        self.runtime = "openvino" if (folder / "1" / "model.xml").is_file() else "tensorflow"
        self.backbone = self._openvino(folder) if self.runtime == "openvino" else self._load(folder / "1" / "model.savedmodel")
        self.heads = {t: self._load(repo / f"{t}_head" / "1" / "model.savedmodel") for t in tasks}

    def _load(self, path: Path):  # noqa: ANN202
        if not path.is_dir():
            raise click.ClickException(f"{path} is missing: the in-process path needs the cpu/cpu-openvino/gpu-tf repository layout")
        m = self._tf.saved_model.load(str(path))
        self._keep.append(m)
        return m.signatures["serving_default"]

    def _openvino(self, folder: Path):  # noqa: ANN202
        """The IR compiled as the Python backend's model.py compiles it (training/triton_openvino_model.py)."""
        from training.openvino_runtime import openvino_runner

        run, _, _ = openvino_runner(folder)
        return lambda image: {"features": self._tf.constant(run(image.numpy()))}

    def __call__(self, x: np.ndarray) -> Outputs:
        f = self.backbone(image=self._tf.constant(x))["features"]
        out = {}
        for t, h in self.heads.items():
            reads_title = "title" in h.structured_input_signature[1]
            out[t] = (h(features=f, title=self._tf.constant([[""]] * len(x))) if reads_title else h(features=f))["probs"].numpy()
        return out


def sample_titles(n: int) -> list[str]:
    """``n`` product titles for the title path: the samples' catalog titles, cycled."""
    import csv

    path = Path(__file__).resolve().parent.parent / "samples" / "labels.csv"
    with path.open(newline="") as f:
        titles = [row["productDisplayName"] for row in csv.DictReader(f) if row.get("productDisplayName")]
    return [titles[i % len(titles)] for i in range(n)]


def run_clients(call: Callable[[np.ndarray], Outputs], images: np.ndarray, concurrency: int, request_batch: int) -> tuple[PathResult, Outputs]:
    """``concurrency`` threads send ``request_batch``-image requests until the images are done."""
    chunks = [(i, images[i:i + request_batch]) for i in range(0, len(images), request_batch)]
    res = PathResult("")
    outs: dict[int, Outputs] = {}

    def one(item: tuple[int, np.ndarray]) -> float:
        i, x = item
        t0 = time.perf_counter()
        outs[i] = call(x)
        return (time.perf_counter() - t0) * 1000

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        res.latencies_ms = list(pool.map(one, chunks))
    res.seconds = time.perf_counter() - started
    res.images = len(images)
    return res, {t: np.concatenate([outs[i][t] for i, _ in chunks]) for t in outs[0]}


def run_batched(call: Callable[[np.ndarray], Outputs], images: np.ndarray, batch: int) -> tuple[PathResult, Outputs]:
    """In process: batches of ``batch`` images; every image's latency is its batch's time."""
    res = PathResult("")
    parts: list[Outputs] = []
    started = time.perf_counter()
    for i in range(0, len(images), batch):
        t0 = time.perf_counter()
        parts.append(call(images[i:i + batch]))
        ms = (time.perf_counter() - t0) * 1000
        res.latencies_ms += [ms] * len(range(i, min(i + batch, len(images))))
    res.seconds = time.perf_counter() - started
    res.images = len(images)
    return res, {t: np.concatenate([p[t] for p in parts]) for t in parts[0]}
