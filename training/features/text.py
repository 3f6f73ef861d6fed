"""The product title as features: hashed word uni- and bigrams, TF-IDF weighted, inside the graph.

One TensorFlow function turns a batch of titles into a fixed-size vector per title. Training
calls it to make its features and the exported head calls the same function, so the served
graph reads raw title bytes (Triton ``BYTES``) and no tokenizer lives in the worker:

    invalid UTF-8 -> U+FFFD -> lower-case (ASCII) -> every run of characters other than a-z, 0-9 becomes one space
    -> words -> words and word pairs -> hashed into ``buckets`` (FarmHash, stable across
    platforms) -> 1 per present bucket x its IDF -> L2-normalised.

A title with no ASCII letter or digit (an empty one, or one in another script) gives the zero
vector, which the fused head reads as "no title" (its output is then the image model's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.titles import TITLE_MAX_CHARS, WORD_CHARS  # what the worker sends and counts as a word (services.titles)


@dataclass(frozen=True)
class TextConfig:
    buckets: int = 2**18
    ngrams: tuple[int, ...] = (1, 2)

    def to_dict(self) -> dict[str, Any]:
        return {"buckets": self.buckets, "ngrams": list(self.ngrams), "max_chars": TITLE_MAX_CHARS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextConfig:
        return cls(int(data["buckets"]), tuple(int(n) for n in data["ngrams"]))


def hashed_ids(titles: Any, cfg: TextConfig) -> Any:
    """A ``[batch]`` or ``[batch, 1]`` string tensor -> ragged ``[batch, None]`` bucket ids (TensorFlow)."""
    import tensorflow as tf

    t = tf.reshape(titles, [-1])
    t = tf.strings.substr(t, 0, TITLE_MAX_CHARS * 4)  # bytes: a UTF-8 character is at most 4
    # bytes that are not UTF-8 (from a client other than the worker) become U+FFFD, dropped below
    t = tf.strings.unicode_transcode(t, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)
    t = tf.strings.lower(t)  # ASCII only
    t = tf.strings.regex_replace(t, f"[^{WORD_CHARS}]+", " ")
    words = tf.strings.split(tf.strings.strip(t))
    grams = tf.strings.ngrams(words, ngram_width=list(cfg.ngrams), separator=" ")
    return tf.strings.to_hash_bucket_fast(grams, cfg.buckets)


def title_vectors(titles: Any, cfg: TextConfig, idf: Any) -> Any:
    """``[batch, buckets]`` float32: presence x IDF, L2-normalised (zeros for a title without words)."""
    import tensorflow as tf

    ids = hashed_ids(titles, cfg)
    present = tf.math.bincount(ids, minlength=cfg.buckets, maxlength=cfg.buckets, binary_output=True, axis=-1, dtype=tf.float32)
    x = tf.reshape(present, [-1, cfg.buckets]) * tf.reshape(tf.cast(idf, tf.float32), [1, cfg.buckets])
    return tf.math.l2_normalize(x, axis=-1)  # divides by max(norm, eps): zeros stay zeros


def present_buckets(titles: Sequence[str], cfg: TextConfig, batch: int = 4096) -> Any:
    """scipy CSR matrix of bucket presence (0/1), one row per title: the training-side view of :func:`hashed_ids`."""
    import scipy.sparse as sp
    import tensorflow as tf

    rows: list[Any] = []
    for start in range(0, len(titles), batch):
        ids = hashed_ids(tf.constant(list(titles[start : start + batch]), tf.string), cfg)
        m = sp.csr_matrix((np.ones(len(ids.flat_values.numpy())), ids.flat_values.numpy(), ids.row_splits.numpy()),
                          shape=(int(ids.nrows()), cfg.buckets))
        m.sum_duplicates()
        m.data[:] = 1.0
        rows.append(m)
    return sp.vstack(rows).tocsr() if rows else sp.csr_matrix((0, cfg.buckets))


def fit_idf(present: Any) -> np.ndarray:
    """Smooth IDF per bucket from the training titles' presence matrix (sklearn's ``smooth_idf``)."""
    n = present.shape[0]
    df = np.asarray(present.sum(axis=0)).ravel()
    return (np.log((1 + n) / (1 + df)) + 1.0).astype(np.float32)


def tfidf(present: Any, idf: np.ndarray) -> Any:
    """Presence x IDF, rows L2-normalised (scipy; equals :func:`title_vectors` on the same titles)."""
    from sklearn.preprocessing import normalize

    return normalize(present.multiply(idf.reshape(1, -1)).tocsr(), norm="l2")
