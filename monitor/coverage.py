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
from collections.abc import Iterable, Sequence
from itertools import chain, islice, repeat
from typing import Any

from monitor import conventions as c
from monitor.payload import MISSING, Rows
from monitor.spec import FeatureSpec

__all__ = ["STATE_INDEX", "CoverageEvaluator", "category_key"]

STATE_INDEX = {s: i for i, s in enumerate(c.FEATURE_STATES)}
"""State name -> index into a feature's count vector."""

_PRESENT, _MISSING, _NULL, _WRONG, _RANGE, _UNSEEN = range(6)
_MAX = sys.float_info.max
_Spec = tuple[bool, float, float, frozenset[str] | None, list[int]]


def _bounds(lo: float | None, hi: float | None) -> tuple[float, float]:
    # Unbounded sides become the largest finite float: one chained comparison then
    # also sends +/-Infinity to out_of_range.
    return (-_MAX if lo is None else lo), (_MAX if hi is None else hi)


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
        # Per feature: (numerical?, lo, hi, known categories, counts). Categories
        # compare by category_key, so 1, 1.0 and "1" all match a declared 1 or "1"
        # (JSON clients disagree on quoting class codes).
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

        Row-major ``records`` are read as they are (one pass per record). In the
        column form, a feature absent from ``rows.columns`` counts ``rows.n`` x
        ``missing``, and a column shorter than ``rows.n`` counts the shortfall.
        """
        n = rows.n
        if n <= 0:
            return
        specs = self._specs
        records: Iterable[Sequence[Any]]
        if rows.records is not None:
            records = rows.records  # one value per spec feature, in spec order
        else:
            # Columns to records with a C-level transpose; a missing column or the
            # tail of a short one reads as MISSING, a long one is cut at n.
            columns = rows.columns
            cols: list[Iterable[Any]] = []
            for f in self.features:
                col = columns.get(f.name)
                if col is None:
                    cols.append(repeat(MISSING, n))
                elif len(col) == n:
                    cols.append(col)
                else:
                    cols.append(islice(chain(col, repeat(MISSING)), n))
            records = zip(*cols, strict=False)
        for rec in records:
            _count(zip(rec, specs, strict=False))

    def state_count(self, feature: str, state: str) -> int:
        """Return the count so far of ``state`` for ``feature`` (for tests and reports).

        Raises:
            KeyError: unknown feature or state.
        """
        for f, counts in zip(self.features, self.counts, strict=True):
            if f.name == feature:
                return counts[STATE_INDEX[state]]
        raise KeyError(feature)


def _count(pairs: Iterable[tuple[Any, _Spec]]) -> None:
    """Count the state of each ``(value, feature spec)`` pair: the one loop that both
    row-major and column-major rows go through."""
    for v, (numerical, lo, hi, known, counts) in pairs:
        t = type(v)
        if numerical:
            if t is float or t is int:
                if v != v:  # NaN
                    counts[_NULL] += 1
                elif lo <= v <= hi:
                    counts[_PRESENT] += 1
                else:
                    counts[_RANGE] += 1
            elif v is None:
                counts[_NULL] += 1
            elif v is MISSING:
                counts[_MISSING] += 1
            else:  # str, bool, list, dict, ...: bool is an int subclass but not a number here
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
