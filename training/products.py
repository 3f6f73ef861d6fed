"""What a store gets per product from the served labels: who skips review, and how right the
accepted labels are, under each task's review policy (the worker's ``services.labeling.with_policy``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from training.calibration import accepted_mask


class Scored(Protocol):
    """One task's scored photos (training.evaluate.TaskEvaluation)."""

    keys: list[str]
    y: np.ndarray
    probs: np.ndarray
    threshold: Any


def product_summary(results: Mapping[str, Scored], policies: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Over the products scored for every task, under each task's review policy (services.labeling.with_policy:
    ``threshold`` by default, ``advisory``, ``always``): how many skip review (no task waits for a person), how
    many of those have every accepted label right, and each task's accepted labels' precision over all products
    (what a store gets from the labels that skip review). An advisory label is neither queued nor accepted."""
    policies = dict(policies or {})
    tasks = list(results)
    if not tasks or any(r.threshold is None for r in results.values()):
        return {}
    per = {t: {k: i for i, k in enumerate(r.keys)} for t, r in results.items()}
    common = sorted(set.intersection(*(set(p) for p in per.values())))
    unflagged = right = 0
    accepted = dict.fromkeys(tasks, 0)
    accepted_right = dict.fromkeys(tasks, 0)
    for k in common:
        skips, all_right = True, True
        for t, r in results.items():
            i = per[t][k]
            sure = bool(accepted_mask(r.probs[i : i + 1], r.threshold)[0])
            policy = policies.get(t, "threshold")
            is_accepted = sure and policy != "always"
            skips &= is_accepted or policy == "advisory"
            ok = bool(r.probs[i].argmax() == r.y[i])
            accepted[t] += is_accepted
            accepted_right[t] += is_accepted and ok
            all_right &= ok or not is_accepted
        unflagged += skips
        right += skips and all_right
    return {"products": len(common), "policies": {t: policies.get(t, "threshold") for t in tasks}, "unflagged": unflagged,
            "unflagged_share": unflagged / len(common) if common else 0.0, "unflagged_all_right": right,
            "unflagged_all_right_share": right / unflagged if unflagged else float("nan"),
            "accepted": {t: {"labels": accepted[t], "share": accepted[t] / len(common) if common else 0.0,
                             "precision": accepted_right[t] / accepted[t] if accepted[t] else float("nan")} for t in tasks}}
