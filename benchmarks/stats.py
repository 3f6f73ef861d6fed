"""The one percentile every benchmark reports (p50, p99).

Linear interpolation between the two nearest ranks (numpy's default ``linear`` method,
Hyndman & Fan type 7): for sorted values ``x[0..n-1]`` the q-th percentile is read at the
fractional rank ``q / 100 * (n - 1)``. An empty list has no percentile: ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, interpolated linearly; nan if empty."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        return float("nan")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not in 0..100")
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
