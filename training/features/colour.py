"""The colour signal the edge-tuned VGG16 weights lack: a histogram layer inside the served graph.

``ColourHistogram`` turns the float RGB image (0..255) into 89 numbers describing the
garment's colours (the white background ignored). It uses only elementwise ops, average
pooling and one-hot sums, so TensorFlow, the SavedModel and ONNX Runtime compute it alike.
Keras is imported on first use (``ColourHistogram(...)``), not at module import.
"""

from __future__ import annotations

COLOUR = "colour"  # the pseudo-layer of :class:`ColourHistogram` features (cached like a layer)
COLOUR_VERSION = 2  # bump when ColourHistogram changes: it is part of the feature cache key


def _colour_layer():  # noqa: ANN202 - the class, defined once keras is imported
    import keras
    import tensorflow as tf

    def _hsv(x):  # noqa: ANN001, ANN202 - RGB in [0, 1] -> hue, saturation, value in [0, 1] (elementwise ops only)
        r, g, b = x[..., 0], x[..., 1], x[..., 2]
        v = tf.reduce_max(x, axis=-1)
        c = v - tf.reduce_min(x, axis=-1)
        safe_c = tf.where(c > 0, c, tf.ones_like(c))
        hue = tf.where(v == r, (g - b) / safe_c, tf.where(v == g, (b - r) / safe_c + 2.0, (r - g) / safe_c + 4.0))
        hue = tf.where(hue < 0, hue + 6.0, hue)
        hue = tf.where(c > 0, hue / 6.0, tf.zeros_like(hue))
        sat = tf.where(v > 0, c / tf.where(v > 0, v, tf.ones_like(v)), tf.zeros_like(v))
        return hue, sat, v

    @keras.saving.register_keras_serializable(package="autolabel")
    class ColourHistogram(keras.layers.Layer):
        """float RGB image (0..255) -> colour features of the garment (white background ignored).

        On the image shrunk to 56x56 (area): the share of non-white pixels, a 12-bin hue
        histogram weighted by saturation, 4 saturation bins, 8 value (brightness) bins and a
        4x4x4 RGB histogram, each over the garment's pixels: 89 numbers.
        """

        SIZE = 1 + 12 + 4 + 8 + 64

        def call(self, x):  # noqa: ANN001, ANN202
            x = tf.cast(x, tf.float32) / 255.0
            k = max(1, min(int(x.shape[1]), int(x.shape[2])) // 56)  # about 56x56 (exactly at 224): plain average
            x = tf.nn.avg_pool2d(x, k, k, "VALID")  # pooling, which every runtime (ONNX too) computes alike
            fg = tf.cast(tf.reduce_min(x, axis=-1) < 0.9, tf.float32)  # (B, 56, 56): not the white background
            n = tf.reduce_sum(fg, axis=[1, 2])[:, None] + 1e-6
            h, sat, v = _hsv(x)

            def hist(values, bins: int, weight):  # noqa: ANN001, ANN202
                idx = tf.minimum(tf.cast(values * bins, tf.int32), bins - 1)
                return tf.reduce_sum(tf.one_hot(idx, bins) * (weight * fg)[..., None], axis=[1, 2]) / n

            q = tf.minimum(tf.cast(x * 4, tf.int32), 3)
            rgb = q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]
            parts = [tf.reduce_mean(fg, axis=[1, 2])[:, None], hist(h, 12, sat), hist(sat, 4, 1.0), hist(v, 8, 1.0),
                     tf.reduce_sum(tf.one_hot(rgb, 64) * fg[..., None], axis=[1, 2]) / n]
            return tf.concat(parts, axis=-1)

        def compute_output_shape(self, input_shape):  # noqa: ANN001, ANN202
            return (input_shape[0], self.SIZE)

    return ColourHistogram


class _LazyColour:
    """``ColourHistogram(...)`` without importing keras at module import time."""

    SIZE = 1 + 12 + 4 + 8 + 64
    _cls = None

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        if _LazyColour._cls is None:
            _LazyColour._cls = _colour_layer()
        return _LazyColour._cls(*args, **kwargs)


ColourHistogram = _LazyColour()
