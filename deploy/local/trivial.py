"""A trivial served labeler: numpy only, no TensorFlow, same contract as the real `autolabel`.

It measures the pipeline's own overhead (`autolabel bench pipeline --model trivial`) and
gives the stack tests a model that loads in a second. Its "probabilities" are a softmax
of mean colour statistics (of a 1-in-16 pixel grid, a few ms per batch of 128):
deterministic, input-dependent, meaningless as labels.

Two knobs exist for fault and load tests, in this test model only (never in the worker):

- ``delay_ms`` (model-config parameter): each execution sleeps that long, a slow Triton;
- a *poison* image: a request holding an image whose every pixel is pure magenta
  (255, 0, 255) is answered with an error, every time. The worker sees a non-transient
  inference failure and must dead-letter that event after ``AUTOLABEL_MAX_ATTEMPTS``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

CLASSES = {"style": ["casual", "formal", "sports"], "gender": ["men", "women"], "season": ["spring-fall", "summer", "winter"]}

MODEL_PY = textwrap.dedent(
    '''
    import json
    import time
    import numpy as np
    import triton_python_backend_utils as pb_utils

    SIZES = {"style": 3, "gender": 2, "season": 3}
    MAGENTA = np.array([255, 0, 255], dtype=np.uint8)


    def _softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


    class TritonPythonModel:
        def initialize(self, args):
            self.config = json.loads(args["model_config"])
            params = self.config.get("parameters") or {}
            self.delay_s = float(params.get("delay_ms", {}).get("string_value") or 0) / 1000.0

        def execute(self, requests):
            if self.delay_s:
                time.sleep(self.delay_s)
            responses = []
            for request in requests:
                image = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
                if image.dtype != np.uint8 or image.ndim != 4 or image.shape[-1] != 3:
                    responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("image must be uint8 NxHxWx3")))
                    continue
                flat = image.reshape(image.shape[0], -1, 3)
                # only an image whose first pixel is magenta can be all magenta: the full scan is rare
                if any((img[0] == MAGENTA).all() and (img == MAGENTA).all() for img in flat):
                    # the documented poison image of this test model: refused every time
                    responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("poison image (all magenta) refused")))
                    continue
                # mean colour of a 1-in-16 pixel grid: the model must cost next to nothing
                stats = image[:, ::4, ::4, :].reshape(image.shape[0], -1, 3).mean(axis=1) / 64.0
                outs = []
                for task, n in SIZES.items():
                    logits = np.stack([stats[:, i % 3] * (i + 1) for i in range(n)], axis=1)
                    outs.append(pb_utils.Tensor(task, _softmax(logits)))
                responses.append(pb_utils.InferenceResponse(output_tensors=outs))
            return responses
    '''
).lstrip()


def config_pbtxt(name: str, size: tuple[int, int], max_batch: int, version: str, delay_ms: float = 0) -> str:
    h, w = size
    outputs = "\n".join(
        f'  {{ name: "{t}" data_type: TYPE_FP32 dims: [ {len(c)} ] label_filename: "{t}_labels.txt" }},'
        for t, c in CLASSES.items()
    ).rstrip(",")
    params = {
        "model_version": version,
        "backbone": "trivial",
        "weights_source": "none (numpy statistics; pipeline-overhead benchmark)",
        "resize": "pad",
        **{f"labels_{t}": ",".join(c) for t, c in CLASSES.items()},
    }
    if delay_ms:
        params["delay_ms"] = f"{delay_ms:g}"
    param_text = "\n".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}' for k, v in params.items())
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch}\n'
        f'input [ {{ name: "image" data_type: TYPE_UINT8 dims: [ {h}, {w}, 3 ] }} ]\n'
        f"output [\n{outputs}\n]\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: 1000 }}\n"
        f"instance_group [ {{ count: 1 kind: KIND_CPU }} ]\n{param_text}\n"
    )


def write_trivial_repository(
    repo: Path, name: str = "autolabel", size: tuple[int, int] = (32, 32), max_batch: int = 64,
    version: str = "trivial-1", delay_ms: float = 0,
) -> Path:
    """The trivial model in ``repo/name``; ``delay_ms`` makes every execution that slow."""
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / "model.py").write_text(MODEL_PY)
    (model_dir / "config.pbtxt").write_text(config_pbtxt(name, size, max_batch, version, delay_ms))
    for task, classes in CLASSES.items():
        (model_dir / f"{task}_labels.txt").write_text("\n".join(classes) + "\n")
    return repo
