"""Triton client: find out what the repository serves, then batch -> probabilities per task.

The worker calls one model for all three labels (``AUTOLABEL_TRITON_MODEL``, default the
``autolabel`` ensemble: one backbone pass per image). Where the repository has no such
model, it calls the standalone ``style``, ``gender`` and ``season`` models. Class names,
model version and weight source come from the served configs (docs/model-repository.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.errors import InferenceError, ModelMissing, classify_triton_error
from services.events import ModelInfo
from services.images import ResizeMode
from services.settings import SCOPE_OUTPUT, TASKS, Settings
from services.titles import title_bytes

__all__ = ["Call", "InferenceError", "ServedModel", "TritonLabeler", "describe", "parse_class_thresholds", "parse_threshold"]

@dataclass(frozen=True)
class Call:
    """One Triton model to call: its input and which output holds which task."""

    model: str
    input_name: str
    outputs: dict[str, str]  # output name -> task
    title: bool = False  # the model also takes ``title`` (BYTES [N, 1])


@dataclass(frozen=True)
class ServedModel:
    calls: tuple[Call, ...]
    input_size: tuple[int, int]  # (height, width)
    resize: ResizeMode
    classes: dict[str, list[str]]
    info: ModelInfo
    max_batch: int = 0
    thresholds: dict[str, float] = field(default_factory=dict)  # task -> auto-accept threshold shipped with the model
    title_thresholds: dict[str, tuple[float, ...]] = field(default_factory=dict)  # task -> per class, when a title was read
    scope_threshold: float | None = None  # the scope gate's (output ``scope``), None: the model has no gate
    other_thresholds: dict[str, float] = field(default_factory=dict)  # task -> threshold of its heads for the other categories
    others_route: float | None = None  # above this P(out of scope) the labels are those heads' (None: the gate's threshold)

    @property
    def reads_title(self) -> bool:
        return any(c.title for c in self.calls)


def _params(config: dict) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}


def _input_hw(config: dict) -> tuple[int, int]:
    dims = [int(d) for d in config["input"][0]["dims"]]
    if len(dims) == 4:  # without max_batch_size the batch dim is explicit
        dims = dims[1:]
    if len(dims) != 3 or dims[2] != 3:
        raise InferenceError(f"model input dims {dims} are not H x W x 3")
    return dims[0], dims[1]


def parse_threshold(text: str | None) -> float | None:
    """A served config's ``threshold_<task>`` parameter: a probability, or None (absent or not one)."""
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and 0.0 <= value <= 1.0 else None


def parse_class_thresholds(text: str | None, n_classes: int) -> tuple[float, ...] | None:
    """A served ``threshold_<task>_title`` parameter: one probability per class (class order), or None."""
    values = tuple(parse_threshold(v.strip()) for v in (text or "").split(","))
    if len(values) != n_classes or any(v is None for v in values):
        return None
    return values  # type: ignore[return-value]


def describe(model_name: str, configs: dict[str, dict]) -> ServedModel:
    """Pure: from Triton model configs (JSON form) to what the worker needs."""
    if model_name in configs:
        cfg = configs[model_name]
        params = _params(cfg)
        outputs = {o["name"]: o["name"] for o in cfg["output"] if o["name"] in (*TASKS, SCOPE_OUTPUT)}
        missing = set(TASKS) - set(outputs)
        if SCOPE_OUTPUT in outputs and parse_threshold(params.get("scope_threshold")) is None:
            raise InferenceError(f"model {model_name!r} has a {SCOPE_OUTPUT} output but no scope_threshold parameter in [0, 1]")
        if missing:
            raise InferenceError(f"model {model_name!r} has no output for {sorted(missing)}")
        classes = {t: params.get(f"labels_{t}", "").split(",") for t in TASKS}
        names = [i["name"] for i in cfg["input"]]
        image_input = next((n for n in names if n != "title"), names[0])
        calls = (Call(model_name, image_input, outputs, title="title" in names),)
        main = cfg
    elif all(t in configs for t in TASKS):
        calls_list, classes, params = [], {}, {}
        for t in TASKS:
            cfg = configs[t]
            p = _params(cfg)
            params = params or p
            classes[t] = p.get("labels", "").split(",")
            calls_list.append(Call(t, cfg["input"][0]["name"], {cfg["output"][0]["name"]: t}))
        calls = tuple(calls_list)
        main = configs[TASKS[0]]
    else:
        raise InferenceError(
            f"Triton serves neither {model_name!r} nor the standalone models {', '.join(TASKS)}: "
            "run `autolabel models build`"
        )
    for t, names in classes.items():
        if not names or names == [""]:
            raise InferenceError(f"no class names for task {t!r} in the served config (parameters labels_*)")
    info = ModelInfo(
        name=model_name if len(calls) == 1 else "+".join(TASKS),
        version=params.get("model_version", "unknown"),
        backbone=params.get("backbone", "unknown"),
        weights_source=params.get("weights_source", "unknown"),
    )
    resize = params.get("resize", "pad")
    thresholds = {t: v for t in TASKS if (v := parse_threshold(params.get(f"threshold_{t}"))) is not None}
    title_thresholds = {t: v for t in TASKS
                        if (v := parse_class_thresholds(params.get(f"threshold_{t}_title"), len(classes[t]))) is not None}
    gated = any(SCOPE_OUTPUT in c.outputs for c in calls)  # the model has the scope gate
    return ServedModel(
        calls=calls,
        input_size=_input_hw(main),
        resize="stretch" if resize == "stretch" else "pad",
        classes=classes,
        info=info,
        max_batch=int(main.get("max_batch_size", 0) or 0),
        thresholds=thresholds,
        title_thresholds=title_thresholds,
        scope_threshold=parse_threshold(params.get("scope_threshold")) if gated else None,
        other_thresholds={t: v for t in TASKS if (v := parse_threshold(params.get(f"threshold_{t}_others"))) is not None} if gated else {},
        others_route=parse_threshold(params.get("others_route_threshold")),
    )


class TritonLabeler:
    """Async gRPC (or HTTP) client for the served labeler."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client = None
        self.served: ServedModel | None = None

    async def _connect(self):  # noqa: ANN202
        if self._client is None:
            if self.settings.triton_protocol.value == "grpc":
                import tritonclient.grpc.aio as tc

                self._client = tc.InferenceServerClient(url=self.settings.triton_url, channel_args=self._channel_args(tc))
            else:
                import tritonclient.http.aio as tc

                self._client = tc.InferenceServerClient(url=self.settings.triton_url)
            self._tc = tc
        return self._client

    def _channel_args(self, tc) -> list[tuple[str, int]]:  # noqa: ANN001
        """tritonclient's defaults, plus a reconnect backoff capped at AUTOLABEL_RETRY_MAX_S.

        gRPC's own backoff grows to 120 s and fails every call fast meanwhile, so after an
        outage the worker would wait for the channel long after Triton is back.
        """
        from tritonclient.grpc import KeepAliveOptions

        keepalive = KeepAliveOptions()
        cap_ms = int(self.settings.retry_max_s * 1000)
        return [
            ("grpc.max_send_message_length", tc.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", tc.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", min(1000, cap_ms)),
            ("grpc.min_reconnect_backoff_ms", min(1000, cap_ms)),
            ("grpc.max_reconnect_backoff_ms", cap_ms),
        ]

    async def discover(self) -> ServedModel:
        """Ask the repository what it serves. Unreachable Triton -> TransientError."""
        client = await self._connect()
        try:
            index = await client.get_model_repository_index(as_json=True) if self._grpc else await client.get_model_repository_index()
            models = index.get("models", index) if isinstance(index, dict) else index
            ready = {m["name"] for m in models if m.get("state") == "READY"}
            wanted = [self.settings.triton_model] if self.settings.triton_model in ready else [t for t in TASKS if t in ready]
            configs = {}
            for name in wanted:
                cfg = await client.get_model_config(name, as_json=True) if self._grpc else await client.get_model_config(name)
                configs[name] = cfg.get("config", cfg)
        except Exception as exc:  # classified in services.errors
            raise classify_triton_error(exc, "discover") from exc
        self.served = describe(self.settings.triton_model, configs)
        return self.served

    @property
    def _grpc(self) -> bool:
        return self.settings.triton_protocol.value == "grpc"

    async def infer(self, images: np.ndarray, titles: list[str] | None = None) -> dict[str, np.ndarray]:
        """uint8 (N, H, W, 3) and the N titles ('' for none; services.titles.clean_title) -> {task: (N, C)
        probabilities} (and ``scope``: (N, 2) where the model has the scope gate), in requests of at most
        the served model's max_batch_size. A model without a ``title`` input gets the photos alone."""
        if self.served is None:
            await self.discover()
        assert self.served is not None
        names = np.array([[title_bytes(t)] for t in (titles or [""] * len(images))], dtype=object)
        step = self.served.max_batch or len(images)
        parts = [await self._infer_once(images[i:i + step], names[i:i + step]) for i in range(0, len(images), step)]
        return {t: np.concatenate([p[t] for p in parts]) for t in parts[0]}

    async def _infer_once(self, images: np.ndarray, titles: np.ndarray) -> dict[str, np.ndarray]:
        served = self.served
        assert served is not None
        client = await self._connect()
        tc = self._tc
        results: dict[str, np.ndarray] = {}
        try:
            for call in served.calls:
                inp = tc.InferInput(call.input_name, list(images.shape), "UINT8")
                inp.set_data_from_numpy(images)
                inputs = [inp]
                if call.title:
                    text = tc.InferInput("title", list(titles.shape), "BYTES")
                    text.set_data_from_numpy(titles)
                    inputs.append(text)
                outs = [tc.InferRequestedOutput(name) for name in call.outputs]
                kwargs = {"client_timeout": self.settings.triton_timeout_s} if self._grpc else {"timeout": int(self.settings.triton_timeout_s * 1e6)}
                resp = await client.infer(call.model, inputs, outputs=outs, **kwargs)
                for name, task in call.outputs.items():
                    results[task] = resp.as_numpy(name)
        except Exception as exc:  # classified in services.errors
            err = classify_triton_error(exc, "infer")
            if isinstance(err, ModelMissing):
                self.served = None  # the repository changed: discover again, and retry
            raise err from exc
        for task, probs in results.items():
            if probs is None or probs.shape[0] != images.shape[0]:
                raise InferenceError(f"Triton returned {None if probs is None else probs.shape} for {task}")
        return results

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
