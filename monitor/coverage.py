"""Feature coverage: classify every value of every spec feature into one state.

For each row of an inference request and each feature of the spec, exactly one
state is counted (``conventions.FEATURE_STATES``):

=================  ==========================================================
state              when
=================  ==========================================================
present            a usable value (numerical: a finite number in [min, max];
                   categorical: a scalar in ``categories`` when declared)
missing            the feature is absent from the row (key or column missing)
null               JSON ``null``, or NaN for a numerical feature
wrong_type         numerical got a string, bool, list or object; categorical
                   got a list or object
out_of_range       numerical outside [min, max], or +/-Infinity
unseen_category    categorical scalar not in the declared ``categories``
=================  ==========================================================

Coverage of a feature is ``present / sum(all states)``; the Prometheus form is
``rate(mlmon_feature_values_total{state="present"}[5m]) / ignoring(state)
sum without(state) (rate(mlmon_feature_values_total[5m]))``.

This runs on the sidecar's hot path: one plain loop per column, no allocation
per value.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from monitor import conventions as c
from monitor.payload import MISSING, Rows
from monitor.spec import FeatureSpec

__all__ = ["STATE_INDEX", "CoverageEvaluator", "category_key"]

STATE_INDEX = {s: i for i, s in enumerate(c.FEATURE_STATES)}
"""State name -> index into a feature's count vector."""

_PRESENT, _MISSING, _NULL, _WRONG, _RANGE, _UNSEEN = range(6)
_MAX = sys.float_info.max


def _bounds(lo: float | None, hi: float | None) -> tuple[float, float]:
    # Unbounded sides become the largest finite float: one chained comparison then
    # also sends +/-Infinity to out_of_range.
    return (-_MAX if lo is None else lo), (_MAX if hi is None else hi)


def _numerical(lo: float | None, hi: float | None) -> Callable[[Sequence[Any], list[int]], None]:
    lo_, hi_ = _bounds(lo, hi)

    def classify(values: Sequence[Any], counts: list[int]) -> None:
        for v in values:
            t = type(v)
            if t is float or t is int:
                if v != v:  # NaN
                    counts[_NULL] += 1
                elif lo_ <= v <= hi_:
                    counts[_PRESENT] += 1
                else:
                    counts[_RANGE] += 1
            elif v is None:
                counts[_NULL] += 1
            elif v is MISSING:
                counts[_MISSING] += 1
            else:  # str, bool, list, dict, ...: bool is an int subclass but not a number here
                counts[_WRONG] += 1

    return classify


def _categorical(categories: list[Any] | None) -> Callable[[Sequence[Any], list[int]], None]:
    # Compare by string form so that 1, 1.0 and "1" in the payload all match a
    # declared category 1 or "1" (JSON clients disagree on quoting class codes).
    known = None if categories is None else frozenset(category_key(x) for x in categories)

    def classify(values: Sequence[Any], counts: list[int]) -> None:
        for v in values:
            t = type(v)
            if t is str or t is int or t is bool or t is float:
                if t is float and v != v:
                    counts[_NULL] += 1
                elif known is None or category_key(v) in known:
                    counts[_PRESENT] += 1
                else:
                    counts[_UNSEEN] += 1
            elif v is None:
                counts[_NULL] += 1
            elif v is MISSING:
                counts[_MISSING] += 1
            else:
                counts[_WRONG] += 1

    return classify


def category_key(v: Any) -> str:
    """Canonical string of a categorical scalar: ``1``, ``1.0`` and ``"1"`` -> ``"1"``;
    booleans -> ``"true"``/``"false"``. Coverage, class counts and the capture
    store all compare and write categories in this form."""
    if type(v) is float and v.is_integer():
        return str(int(v))
    if type(v) is bool:
        return "true" if v else "false"
    return str(v)


class CoverageEvaluator:
    """Counts feature states for the spec's features.

    Args:
        features: the model's spec features, in spec order.

    ``counts`` is a list (one per feature, spec order) of 6-int lists indexed
    like ``conventions.FEATURE_STATES``; :meth:`evaluate` adds to it in place,
    so a metrics collector can expose it without copying.
    """

    def __init__(self, features: Sequence[FeatureSpec]) -> None:
        self.features = list(features)
        self.counts: list[list[int]] = [[0] * len(c.FEATURE_STATES) for _ in self.features]
        self._classifiers = [
            _numerical(f.min, f.max) if f.type == "numerical" else _categorical(f.categories)
            for f in self.features
        ]
        # Per feature, for the row-major path: (numerical?, lo, hi, known categories, counts).
        self._specs = [
            (
                f.type == "numerical",
                *_bounds(f.min, f.max),
                None if f.categories is None else frozenset(category_key(x) for x in f.categories),
                counts,
            )
            for f, counts in zip(self.features, self.counts, strict=True)
        ]

    def evaluate(self, rows: Rows) -> None:
        """Add one state per (row, feature) of ``rows`` to :attr:`counts`.

        A feature absent from ``rows.columns`` counts ``rows.n`` x ``missing``.
        A column shorter than ``rows.n`` counts the shortfall as ``missing``.
        """
        n = rows.n
        if n <= 0:
            return
        if rows.records is not None:
            self._evaluate_records(rows.records)
            return
        columns = rows.columns
        for f, classify, counts in zip(self.features, self._classifiers, self.counts, strict=True):
            col = columns.get(f.name)
            if col is None:
                counts[_MISSING] += n
                continue
            classify(col, counts)
            if len(col) < n:
                counts[_MISSING] += n - len(col)

    def _evaluate_records(self, records: list[list[Any]]) -> None:
        """Row-major twin of the column loop (same states): one pass per record, no
        call per feature. Records hold one value per spec feature, in spec order."""
        specs = self._specs
        for rec in records:
            for v, (numerical, lo, hi, known, counts) in zip(rec, specs, strict=False):
                t = type(v)
                if numerical:
                    if t is float or t is int:
                        if v != v:
                            counts[_NULL] += 1
                        elif lo <= v <= hi:
                            counts[_PRESENT] += 1
                        else:
                            counts[_RANGE] += 1
                    elif v is None:
                        counts[_NULL] += 1
                    elif v is MISSING:
                        counts[_MISSING] += 1
                    else:
                        counts[_WRONG] += 1
                elif t is str or t is int or t is bool or t is float:
                    if t is float and v != v:
                        counts[_NULL] += 1
                    elif known is None or category_key(v) in known:
                        counts[_PRESENT] += 1
                    else:
                        counts[_UNSEEN] += 1
                elif v is None:
                    counts[_NULL] += 1
                elif v is MISSING:
                    counts[_MISSING] += 1
                else:
                    counts[_WRONG] += 1

    def state_count(self, feature: str, state: str) -> int:
        """Return the count so far of ``state`` for ``feature`` (for tests and reports).

        Raises:
            KeyError: unknown feature or state.
        """
        for f, counts in zip(self.features, self.counts, strict=True):
            if f.name == feature:
                return counts[STATE_INDEX[state]]
        raise KeyError(feature)
