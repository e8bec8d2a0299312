"""Compare a replica's outputs with the golden ones, with tolerance for numbers.

Rules (the same for every protocol, applied to the outputs the protocol adapter reads
from a response, ``{output name: per-row values}``):

* a float passes when ``|actual - expected| <= abs_tolerance + rel_tolerance * |expected|``
  (numpy ``isclose``'s rule; NaN equals only NaN);
* integers (class indices), strings, booleans and ``null`` must be equal;
* lists must have the same length, element by element; objects the same keys;
* an output missing from the answer, or one the golden set lacks, fails.

``max_abs_error`` is the largest ``|actual - expected|`` over every pair of numbers
compared (integers included: a flipped 0/1 class is an error of 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Comparison", "compare_outputs"]

_MAX_MISMATCHES = 5
"""Mismatches kept for the log line; the verdict counts them all."""


@dataclass
class Comparison:
    """Verdict of one comparison."""

    mismatches: list[str] = field(default_factory=list)
    """Where the answer differs, e.g. ``predict_proba[3][1]: 0.91 != 0.87`` (at most 5)."""
    mismatch_count: int = 0
    max_abs_error: float | None = None
    """Largest absolute difference between two compared numbers; None when none were."""

    @property
    def ok(self) -> bool:
        """Whether every output is within tolerance."""
        return self.mismatch_count == 0

    def _fail(self, where: str, why: str) -> None:
        self.mismatch_count += 1
        if len(self.mismatches) < _MAX_MISMATCHES:
            self.mismatches.append(f"{where}: {why}")

    def _error(self, err: float) -> None:
        if self.max_abs_error is None or err > self.max_abs_error:
            self.max_abs_error = err


def compare_outputs(
    expected: dict[str, Any],
    actual: dict[str, Any],
    *,
    abs_tolerance: float,
    rel_tolerance: float,
    into: Comparison | None = None,
    prefix: str = "",
) -> Comparison:
    """Compare two ``{output name: values}`` maps (see the module docstring).

    ``into`` accumulates several cases into one verdict; ``prefix`` names the case in
    mismatch messages (``case 2: predict[0]: 1 != 0``).
    """
    result = into if into is not None else Comparison()
    for name in expected.keys() | actual.keys():
        where = f"{prefix}{name}"
        if name not in actual:
            result._fail(where, "missing from the answer")
        elif name not in expected:
            result._fail(where, "not in the golden set")
        else:
            _walk(expected[name], actual[name], where, result, abs_tolerance, rel_tolerance)
    return result


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _walk(e: Any, a: Any, where: str, out: Comparison, atol: float, rtol: float) -> None:
    if _is_number(e) and _is_number(a):
        if isinstance(e, int) and isinstance(a, int):
            out._error(abs(a - e))
            if a != e:
                out._fail(where, f"{a} != {e}")
            return
        ef, af = float(e), float(a)
        if math.isnan(ef) or math.isnan(af):
            if not (math.isnan(ef) and math.isnan(af)):
                out._fail(where, f"{a!r} != {e!r}")
            return
        if math.isinf(ef) or math.isinf(af):
            if ef != af:
                out._fail(where, f"{a!r} != {e!r}")
            return
        err = abs(af - ef)
        out._error(err)
        if err > atol + rtol * abs(ef):
            out._fail(where, f"{af!r} != {ef!r} (|error| {err:.3g})")
        return
    if isinstance(e, list) and isinstance(a, list):
        if len(e) != len(a):
            out._fail(where, f"{len(a)} values != {len(e)}")
            return
        for i, (ei, ai) in enumerate(zip(e, a, strict=True)):
            _walk(ei, ai, f"{where}[{i}]", out, atol, rtol)
        return
    if isinstance(e, dict) and isinstance(a, dict):
        for k in e.keys() | a.keys():
            if k not in a or k not in e:
                out._fail(f"{where}.{k}", "missing" if k not in a else "unexpected")
            else:
                _walk(e[k], a[k], f"{where}.{k}", out, atol, rtol)
        return
    if type(e) is not type(a) or e != a:
        out._fail(where, f"{a!r} != {e!r}")
