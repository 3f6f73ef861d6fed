"""The scope gate: is the photo a product the heads were trained for? If not, every label goes to review.

The heads were trained on apparel; on shoes and bags they are confidently wrong (gender right
44 % of the time on test footwear, yet accepted at the 0.50 gender threshold). The gate is a
logistic regression on the same readout vector the heads read (one backbone pass, a 4096 x 2
layer more), trained on the honest split's training part: in scope = the training categories
(Apparel), out of scope = every other category of the catalog. Its threshold on
``P(out of scope)`` is chosen on validation so that at most ``max_false_flags`` (1 %) of
in-scope photos are flagged; the worker then sends every label of a flagged photo to review
and says why in the label event (``scope``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SCOPE_HEAD = "heads/scope.keras"  # under the models folder
STRENGTHS = (0.001, 0.01, 0.1)  # logistic regression C, chosen on validation
MAX_FALSE_FLAGS = 0.01  # share of in-scope validation photos the threshold may flag
OUT_ROWS = {"train": 3000, "val": 1200, "test": 1200}  # out-of-scope photos per part (a seeded sample: features cost)


@dataclass
class ScopeGate:
    """``P(out of scope) = sigmoid(x @ weights + bias)`` on the raw readout (standardisation folded in)."""

    weights: np.ndarray  # [dims]
    bias: float
    threshold: float  # flag when P(out of scope) > threshold
    strength: float

    def p_out(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(np.asarray(x, np.float64) @ self.weights + self.bias)))

    def keras_head(self) -> Any:
        """features -> softmax ``[P(in scope), P(out of scope)]``: the same function as :meth:`p_out`."""
        import keras

        dims = len(self.weights)
        inputs = keras.Input(shape=(dims,), name="features")
        dense = keras.layers.Dense(2, activation="softmax", name="probs")
        outputs = dense(inputs)
        half = (self.weights / 2).astype(np.float32)
        dense.set_weights([np.stack([-half, half], axis=1), np.array([-self.bias / 2, self.bias / 2], np.float32)])
        return keras.Model(inputs, outputs, name="scope")


def budget_threshold(p_in_val: np.ndarray, max_false_flags: float) -> float:
    """The smallest cut on P(out of scope) above which at most ``max_false_flags`` of the in-scope validation photos lie."""
    return float(np.quantile(p_in_val, 1.0 - max_false_flags, method="higher"))


def fit_gate(x: np.ndarray, out: np.ndarray, parts: Mapping[str, np.ndarray], max_false_flags: float = MAX_FALSE_FLAGS) -> ScopeGate:
    """``x`` readout rows, ``out`` True where out of scope, ``parts[part]`` row indices. C is chosen on validation:
    the most out-of-scope photos caught at the threshold that flags ``max_false_flags`` of in-scope ones."""
    from sklearn.linear_model import LogisticRegression

    tr, va = parts["train"], parts["val"]
    for name, idx in (("training", tr), ("validation", va)):
        if not out[idx].any() or out[idx].all():
            raise ValueError(f"the {name} part needs photos in scope and out of scope (has {int(out[idx].sum())} of {len(idx)} out)")
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-6
    z = (x - mean) / std
    best: tuple[float, ScopeGate] | None = None
    for c in STRENGTHS:
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit(z[tr], out[tr])
        w = lr.coef_[0] / std
        gate = ScopeGate(w, float(lr.intercept_[0] - (mean / std) @ lr.coef_[0]), 0.0, c)
        p = gate.p_out(x[va])
        gate.threshold = budget_threshold(p[~out[va]], max_false_flags)
        caught = float((p[out[va]] > gate.threshold).mean())
        if best is None or caught > best[0]:
            best = (caught, gate)
    assert best is not None
    return best[1]


def gate_metrics(gate: ScopeGate, x: np.ndarray, out: np.ndarray, categories: Sequence[str], rows: np.ndarray) -> dict[str, Any]:
    """Of ``rows``: the in-scope share flagged, the out-of-scope share caught, and caught per category."""
    flagged = gate.p_out(x[rows]) > gate.threshold
    o = out[rows]
    cats = np.asarray(categories)[rows]
    per = {str(c): round(float(flagged[o & (cats == c)].mean()), 4) for c in sorted(set(cats[o]))}
    return {"in_scope": int((~o).sum()), "out_of_scope": int(o.sum()),
            "in_scope_flagged": round(float(flagged[~o].mean()), 4) if (~o).any() else None,
            "out_of_scope_caught": round(float(flagged[o].mean()), 4) if o.any() else None, "caught_by_category": per}


