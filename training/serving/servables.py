"""The built graphs as servable functions, by Triton model name (training/manifest/read.py builds the graphs).

- ``backbone``: image -> features; ``<task>_head``: features (and the title) -> probs;
  ``scope_head``: features -> [P(in scope), P(out of scope)]; standalone ``<task>``: image -> probs;
  ``autolabel`` (fused, when asked): image (and the title) -> every task and the scope.
- Where the models have heads for the other categories (training/heads/others.py), every function
  that gives a task's ``probs`` gives theirs for the photos above their routing threshold on the
  gate's P(out of scope), so the ensemble, the fused model and the standalone models agree.

Every exported SavedModel has one ``serving_default`` signature whose input and output keys
are these tensor names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.settings import SCOPE_OUTPUT
from training.errors import ModelsError
from training.features.text import TextConfig
from training.heads.title import TaskTitle
from training.serving.graphs import ServingGraphs


@dataclass(frozen=True)
class Servable:
    """One served model: a function of named tensors, its input spec and output names."""

    name: str
    fn: Callable[..., dict[str, Any]]
    input_name: str
    input_shape: tuple[int, ...]  # without the batch dimension
    input_dtype: str  # "uint8" or "float32"
    outputs: dict[str, tuple[int, ...]]  # name -> shape without batch
    tracked: list[Any]
    title: bool = False  # a second input ``title``: [batch, 1] strings (Triton BYTES)

    def tf_signature(self) -> list[Any]:
        import tensorflow as tf

        sig = [tf.TensorSpec([None, *self.input_shape], getattr(tf, self.input_dtype), name=self.input_name)]
        return sig + ([tf.TensorSpec([None, 1], tf.string, name="title")] if self.title else [])

    def check_converted(self, path: Path, tool: str, got_in: dict, got_out: dict) -> None:
        """A converted file's {name: (dtype, dims without batch)} inputs and outputs are this servable's; ModelsError otherwise."""
        want_in = {self.input_name: (self.input_dtype, self.input_shape)}
        want_out = {n: ("float32", s) for n, s in self.outputs.items()}
        if got_in != want_in or got_out != want_out:
            raise ModelsError(f"{path}: {tool} produced inputs {got_in}, outputs {got_out}; expected {want_in}, {want_out}")

    def named_fn(self) -> Callable[..., dict[str, Any]]:
        """``fn`` with its arguments named like the inputs (those names key the signature)."""
        fn = self.fn
        if self.title:
            return {"image": lambda image, title: fn(image, title), "features": lambda features, title: fn(features, title)}[self.input_name]
        return {"image": lambda image: fn(image), "features": lambda features: fn(features)}[self.input_name]



def _with_others(fn: Callable[..., dict[str, Any]], scope: Any, other: Any, threshold: float) -> Callable[..., dict[str, Any]]:
    """``fn``'s ``probs``, or ``other``'s for the photos above ``threshold`` on the gate (the first argument is the features)."""

    def route(features: Any, *rest: Any) -> dict[str, Any]:
        res = dict(fn(features, *rest))
        res["probs"] = routed(scope(features, training=False)[:, 1], res["probs"], other(features, training=False), threshold)
        return res

    return route


def head_fns(graphs: ServingGraphs, with_title: bool = True) -> dict[str, Callable[..., dict[str, Any]]]:
    """Per shared task: features (and titles, where the model reads them and ``with_title``) -> ``probs``
    (``title_probs`` too with a title), the other categories' head for the photos routed to it where there is one."""

    title, out = graphs.title, {}
    for task, head in graphs.heads.items():
        if with_title and title is not None and task in title.tasks:
            fn = title_head_fn(head, title, task)
        else:
            fn = lambda f, h=head: {"probs": h(f, training=False)}  # noqa: E731
        route = graphs.models.others.route_threshold if graphs.models.others else 1.0
        out[task] = _with_others(fn, graphs.scope, graphs.others[task], route) if task in graphs.others else fn
    return out


def _routing(graphs: ServingGraphs, task: str) -> list[Any]:
    return [graphs.scope, graphs.others[task]] if task in graphs.others else []


def servables(graphs: ServingGraphs, fused: bool = False) -> list[Servable]:
    """backbone, <task>_head, standalone <task> (and the fused ``autolabel`` if asked)."""
    image = graphs.input_shape
    feats = graphs.feature_shape
    classes = {t: (len(e.classes),) for t, e in graphs.models.tasks.items()}
    bb = graphs.backbone
    out = [Servable("backbone", lambda x: {"features": bb(x, training=False)}, "image", image, "uint8", {"features": feats}, [bb])]
    titled = {t for t in graphs.heads if graphs.title is not None and t in graphs.title.tasks}
    heads, image_only = head_fns(graphs), head_fns(graphs, with_title=False)
    for task, head in graphs.heads.items():
        outputs = {"probs": classes[task]} | ({"title_probs": classes[task]} if task in titled else {})
        out.append(Servable(f"{task}_head", heads[task], "features", feats, "float32", outputs, [head, *_routing(graphs, task)],
                            title=task in titled))
    scope = graphs.scope
    if scope is not None:
        out.append(Servable("scope_head", lambda f: {"probs": scope(f, training=False)}, "features", feats, "float32", {"probs": (2,)},
                            [scope]))
    for task, fn in graphs.standalone.items():
        if task in graphs.others:  # a shared task: the same mixture as its head, from the image
            fn = lambda x, g=image_only[task]: g(bb(x, training=False))["probs"]  # noqa: E731
        out.append(Servable(task, lambda x, f=fn: {"probs": f(x)}, "image", image, "uint8", {"probs": classes[task]},
                            [*graphs.tracked[task], *_routing(graphs, task)]))
    if fused:
        own = {t: f for t, f in graphs.standalone.items() if t not in heads}

        def all_tasks(x: Any, titles: Any = None) -> dict[str, Any]:
            f = bb(x, training=False)
            res = {t: (h(f, titles) if t in titled else h(f))["probs"] for t, h in heads.items()}
            res.update({t: g(x) for t, g in own.items()})
            return {t: res[t] for t in graphs.models.tasks} | ({SCOPE_OUTPUT: scope(f, training=False)} if scope is not None else {})

        keep = [bb, *graphs.heads.values(), *(o for t in own for o in graphs.tracked[t]), *([scope] if scope is not None else []),
                *graphs.others.values()]
        outputs = classes | ({SCOPE_OUTPUT: (2,)} if scope is not None else {})
        out.append(Servable("autolabel", all_tasks, "image", image, "uint8", outputs, keep, title=bool(titled)))
    return out


def fused_probs(image_probs: Any, image_logits: Any, titles: Any, text: TextConfig, idf: Any, task: TaskTitle) -> tuple[Any, Any]:
    """TensorFlow: (fused probabilities, title-only probabilities) of a batch.

    ``image_logits`` are the calibrated image logits, ``image_probs`` the image head's output:
    where a title has no words the output is ``image_probs`` itself, bit for bit."""
    import tensorflow as tf

    from training.features.text import title_vectors

    x = title_vectors(titles, text, idf)
    zt = tf.matmul(x, tf.constant(task.weights, tf.float32)) + tf.constant(task.bias, tf.float32)
    has_words = tf.reduce_any(x != 0, axis=-1, keepdims=True)
    fused = (tf.constant(task.fuse_image, tf.float32) * image_logits + tf.constant(task.fuse_title, tf.float32) * zt
             + tf.constant(task.fuse_bias, tf.float32)) / task.fused_temperature
    k = len(task.classes)
    probs = tf.where(has_words, tf.nn.softmax(fused), image_probs)
    return tf.ensure_shape(probs, [None, k]), tf.ensure_shape(tf.nn.softmax(zt / task.title_temperature), [None, k])



def title_head_fn(head: Any, title: Any, task: str) -> Callable[[Any, Any], dict[str, Any]]:
    """features, titles -> fused ``probs`` (the image head's own where a title has no words) and ``title_probs``."""
    import keras
    import tensorflow as tf

    names = {layer.name for layer in head.layers}
    # logits / temperature (a trained head); an untrained test head has none: its log-probabilities
    both = keras.Model(head.input, [head.get_layer("temperature").output if "temperature" in names else head.output, head.output])
    model = title.tasks[task]

    def fn(features: Any, titles: Any) -> dict[str, Any]:
        logits, image_probs = both(features, training=False)
        if "temperature" not in names:
            logits = tf.math.log(tf.clip_by_value(image_probs, 1e-12, 1.0))
        probs, title_probs = fused_probs(image_probs, logits, titles, title.text, title.idf, model)
        return {"probs": probs, "title_probs": title_probs}

    return fn


def routed(p_out: Any, apparel: Any, others: Any, threshold: float) -> Any:
    """Per photo, ``others`` where ``p_out`` > ``threshold``, else ``apparel``, each row exactly as given
    (TF tensors or Keras inputs, as served; ``p_out`` [batch], probabilities [batch, classes])."""
    import keras

    flagged = keras.ops.greater(keras.ops.expand_dims(p_out, 1), threshold)
    return keras.ops.where(flagged, others, apparel)
