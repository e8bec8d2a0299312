"""``monitor demo``: the whole loop on real model servers (:mod:`monitor.demo.run`).

Modules: :mod:`~monitor.demo.data` (models, baseline, golden set, rows),
:mod:`~monitor.demo.stack` (the processes), :mod:`~monitor.demo.traffic` (the
client), :mod:`~monitor.demo.timeline` (what is printed while it runs),
:mod:`~monitor.demo.report` (report.html).
"""

from __future__ import annotations

import math

from monitor.demo.run import DemoResult, main, run_demo

__all__ = ["DemoResult", "histogram_quantile", "main", "run_demo"]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Quantile ``q`` (0-1) from cumulative ``(upper bound, count)`` buckets.

    Same linear interpolation as PromQL's ``histogram_quantile``: returns the
    top finite bound when the rank falls in the ``+Inf`` bucket (case C20 is why
    the buckets must reach well above the latencies), NaN with no observations.
    """
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound
