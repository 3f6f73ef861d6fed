"""A saved model that contains a backbone reloads (no Python lambdas in the graph)."""

import numpy as np


def test_backbone_model_saves_and_reloads(tmp_path):
    import keras

    from training.features.backbones import BackboneSpec, build_backbone

    model = build_backbone(BackboneSpec("tiny", "random", (32, 32)))
    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    path = tmp_path / "backbone.keras"
    model.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
