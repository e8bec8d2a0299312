"""Drift methods: evidently's statistical tests and distances, vectorised.

Each method scores one feature from two *cleaned* samples (nulls, NaN and +/-inf
already removed, as evidently's ``get_one_column_drift`` removes them) and returns
the same number evidently 0.7 returns on the same data. The formulas, default
thresholds and drift rules are evidently's
(``evidently/legacy/calculations/stattests/*.py``, summarised in
``docs/drift.md``); the p-value distributions are scipy's.

A sample is either numerical (:class:`NumericSample`: the finite values sorted
once, so the reference side is computed once per baseline and cached) or
categorical (:class:`CategoricalSample`: value counts).

Where evidently's answer is degenerate (a goodness-of-fit test with zero degrees
of freedom gives NaN; an expected count of 0 gives an infinite statistic) the
method answers what the statistics says instead and records why in
``MethodResult.note`` (real-world cases C01 and C04):

- ``chisquare`` on a single category in both windows: p = 1.0 (the contingency
  test on a 2x1 table), where evidently returns NaN.
- ``chisquare`` with a category absent from the reference: the chi-square test of
  homogeneity on the 2 x k contingency table (no continuity correction), where
  evidently's goodness-of-fit returns p = 0 from an infinite statistic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import stats
from scipy.spatial import distance

ColumnKind = Literal["numerical", "categorical"]
"""Column types the drift methods accept (evidently's ``ColumnType`` names)."""

PSI_EPSILON = 0.0001
"""Share given to an empty bin by PSI and KL divergence (evidently ``get_binned_data``)."""

N_BINS = 30
"""``n_bins`` of PSI, KL and Jensen-Shannon in evidently (unused: sturges decides)."""

_RATIO_BINS_MIN_UNIQUE = 20
"""Numerical columns with more reference unique values than this are binned (sturges)."""


@dataclass(frozen=True)
class NumericSample:
    """Finite values of one numerical column, sorted ascending.

    Attributes:
        values: float64 array, shape (n,), sorted, no NaN or inf.
    """

    values: NDArray[np.float64]
    _unique: NDArray[np.float64] | None = field(default=None, repr=False, compare=False)
    _counts: NDArray[np.int64] | None = field(default=None, repr=False, compare=False)
    _std: float | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_values(cls, values: NDArray[np.float64]) -> NumericSample:
        """Build from finite float64 values in any order (copied, then sorted)."""
        return cls(np.sort(np.asarray(values, dtype=np.float64)))

    @property
    def n(self) -> int:
        """Number of values."""
        return int(self.values.size)

    def unique_counts(self) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """Distinct values (ascending) and how often each occurs; computed once."""
        if self._unique is None:
            v = self.values
            if v.size == 0:
                u, cnt = v, np.zeros(0, dtype=np.int64)
            else:
                starts = np.flatnonzero(np.concatenate(([True], v[1:] != v[:-1])))
                u = v[starts]
                cnt = np.diff(np.append(starts, v.size)).astype(np.int64)
            object.__setattr__(self, "_unique", u)
            object.__setattr__(self, "_counts", cnt)
        assert self._unique is not None and self._counts is not None
        return self._unique, self._counts

    def counts(self) -> dict[Hashable, int]:
        """Value counts as a dict (for the count-based methods)."""
        u, cnt = self.unique_counts()
        return dict(zip(u.tolist(), cnt.tolist(), strict=True))

    def nunique(self) -> int:
        """Number of distinct values."""
        if self._unique is not None:
            return int(self._unique.size)
        v = self.values
        return int(np.count_nonzero(v[1:] != v[:-1])) + 1 if v.size else 0

    def std(self) -> float:
        """Population standard deviation (``np.std``, ddof 0); computed once."""
        if self._std is None:
            object.__setattr__(self, "_std", float(np.std(self.values)))
        assert self._std is not None
        return self._std


@dataclass(frozen=True)
class CategoricalSample:
    """Value counts of one categorical column (nulls excluded).

    Attributes:
        counts: category -> number of rows; categories are str, int, float or bool.
    """

    counts: Mapping[Hashable, int]

    @property
    def n(self) -> int:
        """Number of values."""
        return int(sum(self.counts.values()))

    def nunique(self) -> int:
        """Number of distinct categories."""
        return len(self.counts)


Sample = NumericSample | CategoricalSample


@dataclass(frozen=True)
class MethodResult:
    """The outcome of one method on one feature.

    Attributes:
        score: p-value (``kind == "p_value"``) or distance/divergence, never NaN.
        drifted: the method's drift rule applied to ``score`` and the threshold.
        note: why the score departs from evidently's (a degenerate case), or "".
        details: extra facts for the report (``epsilon``, ``statistic``, ...).
    """

    score: float
    drifted: bool
    note: str = ""
    details: dict[str, float | int | str] = field(default_factory=dict)


Scorer = Callable[[Sample, Sample, ColumnKind], tuple[float, str, dict[str, float | int | str]]]


@dataclass(frozen=True)
class Method:
    """A registered drift method.

    Attributes:
        name: evidently's registry name (``ks``, ``psi``, ...).
        display_name: evidently's ``StatTest.display_name``.
        kind: ``p_value`` (drift when small) or ``distance`` (drift when large).
        default_threshold: evidently's default threshold.
        kinds: column types the method accepts.
        strict: drift when ``score < threshold`` (p-value) or ``score > threshold``;
            otherwise ``<=`` / ``>=``. Mirrors each evidently test exactly.
    """

    name: str
    display_name: str
    kind: Literal["p_value", "distance"]
    default_threshold: float
    kinds: tuple[ColumnKind, ...]
    strict: bool
    scorer: Scorer = field(repr=False)

    def drifted(self, score: float, threshold: float) -> bool:
        """Apply the method's drift rule (evidently's comparison operator)."""
        if self.kind == "p_value":
            return score < threshold if self.strict else score <= threshold
        return score > threshold if self.strict else score >= threshold

    def run(self, ref: Sample, cur: Sample, kind: ColumnKind, threshold: float) -> MethodResult:
        """Score ``cur`` against ``ref``.

        ``kinds`` is not enforced here: evidently's default choice itself gives
        count-based tests to numerical columns with few values. Callers check
        user overrides against ``kinds``.

        Raises:
            ValueError: a sample is empty.
        """
        if ref.n == 0 or cur.n == 0:
            raise ValueError("empty sample")
        score, note, details = self.scorer(ref, cur, kind)
        return MethodResult(float(score), self.drifted(float(score), threshold), note, details)


# --- shared helpers -----------------------------------------------------------


def _counts(sample: Sample) -> Mapping[Hashable, int]:
    return sample.counts() if isinstance(sample, NumericSample) else sample.counts


def _aligned_counts(
    ref: Sample, cur: Sample
) -> tuple[list[Hashable], NDArray[np.float64], NDArray[np.float64]]:
    """Counts of both samples over the union of their values (0 where absent)."""
    rc, cc = _counts(ref), _counts(cur)
    keys = list(rc.keys() | cc.keys())
    r = np.fromiter((rc.get(k, 0) for k in keys), dtype=np.float64, count=len(keys))
    c = np.fromiter((cc.get(k, 0) for k in keys), dtype=np.float64, count=len(keys))
    return keys, r, c


def _fill_zeroes(p: NDArray[np.float64]) -> float:
    """Replace empty bins in place as evidently does; return the value used."""
    nz = p[p != 0]
    lowest = float(nz.min())
    eps = lowest / 10**6 if lowest <= PSI_EPSILON else PSI_EPSILON
    np.place(p, p == 0, eps)
    return eps


def _histogram_counts(
    sorted_values: NDArray[np.float64], edges: NDArray[np.float64]
) -> NDArray[np.float64]:
    """``np.histogram(values, edges)[0]`` from sorted values (bins right-open, last closed)."""
    idx = np.searchsorted(sorted_values, edges, side="left")
    idx[-1] = np.searchsorted(sorted_values, edges[-1], side="right")
    return np.diff(idx).astype(np.float64)


def binned_shares(
    ref: Sample, cur: Sample, kind: ColumnKind, *, fill_zeroes: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64], dict[str, float | int | str]]:
    """Shares per bin of both samples, as evidently's ``get_binned_data``.

    Numerical columns with more than 20 distinct reference values are cut into
    Sturges bins over the combined range; other columns use one bin per value of
    the union. With ``fill_zeroes`` an empty bin gets 1e-4 (or a millionth of the
    smallest non-empty share when that is <= 1e-4).

    Returns:
        (reference shares, current shares, details with ``bins`` and ``epsilon``).
    """
    details: dict[str, float | int | str] = {}
    if (
        isinstance(ref, NumericSample)
        and isinstance(cur, NumericSample)
        and kind == "numerical"
        and ref.nunique() > _RATIO_BINS_MIN_UNIQUE
    ):
        lo = float(min(ref.values[0], cur.values[0]))
        hi = float(max(ref.values[-1], cur.values[-1]))
        edges = sturges_edges(lo, hi, ref.n + cur.n)
        r = _histogram_counts(ref.values, edges) / ref.n
        c = _histogram_counts(cur.values, edges) / cur.n
        details["bins"] = int(edges.size - 1)
    else:
        _, rc, cc = _aligned_counts(ref, cur)
        r = rc / ref.n
        c = cc / cur.n
        details["bins"] = int(r.size)
    if fill_zeroes:
        if (r == 0).any():
            details["epsilon_reference"] = _fill_zeroes(r)
        if (c == 0).any():
            details["epsilon_current"] = _fill_zeroes(c)
    return r, c, details


def sturges_edges(lo: float, hi: float, n: int) -> NDArray[np.float64]:
    """``np.histogram_bin_edges(x, bins="sturges")`` for ``n`` values spanning [lo, hi].

    Replicates numpy's arithmetic step by step (width = range / (log2(n) + 1), bin
    count = ceil(range / width), one bin of width 1 around a constant), so the
    edges are bit-identical without concatenating the two samples.
    """
    if lo == hi:
        return np.linspace(lo - 0.5, hi + 0.5, 2, endpoint=True)
    width = (hi - lo) / (np.log2(n) + 1.0)
    bins = int(np.ceil((hi - lo) / width)) if width else 1
    return np.linspace(lo, hi, bins + 1, endpoint=True)


# --- the methods ----------------------------------------------------------------


def _two_sample_test(test: Callable[..., Any], **options: Any) -> Scorer:
    """A scorer from a scipy two-sample test: its p-value, with its statistic in details."""

    def scorer(
        ref: Sample, cur: Sample, kind: ColumnKind
    ) -> tuple[float, str, dict[str, float | int | str]]:
        assert isinstance(ref, NumericSample) and isinstance(cur, NumericSample)
        res = test(ref.values, cur.values, **options)
        return float(res.pvalue), "", {"statistic": float(res.statistic)}

    return scorer


_ks = _two_sample_test(stats.ks_2samp)
# evidently's mannw is one-sided: reference less than current
_mannw = _two_sample_test(stats.mannwhitneyu, alternative="less")
_t_test = _two_sample_test(stats.ttest_ind)


def _chisquare(
    ref: Sample, cur: Sample, kind: ColumnKind
) -> tuple[float, str, dict[str, float | int | str]]:
    keys, r, c = _aligned_counts(ref, cur)
    if len(keys) == 1:
        return (
            1.0,
            "one category in both windows: no degrees of freedom, p = 1 (C01)",
            {"statistic": 0.0},
        )
    if (r == 0).any():
        res = stats.chi2_contingency(np.vstack([c, r]), correction=False)
        return (
            float(res.pvalue),
            "category absent from the reference: chi-square test of homogeneity (C04)",
            {"statistic": float(res.statistic), "dof": int(res.dof)},
        )
    f_exp = r * (cur.n / ref.n)
    res = stats.chisquare(c, f_exp)
    return float(res.pvalue), "", {"statistic": float(res.statistic)}


def _z(
    ref: Sample, cur: Sample, kind: ColumnKind
) -> tuple[float, str, dict[str, float | int | str]]:
    rc, cc = _counts(ref), _counts(cur)
    if len(rc) == 1 and len(cc) == 1 and next(iter(rc)) == next(iter(cc)):
        return 1.0, "", {}
    keys = _sorted_keys(rc.keys() | cc.keys())
    first = keys[0]
    n1, n2 = ref.n, cur.n
    p1 = float(n1 - rc.get(first, 0)) / n1
    p2 = float(n2 - cc.get(first, 0)) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    p = 2 * (1 - stats.norm.cdf(np.abs(z)))
    return float(p), "", {"statistic": float(z)}


def _sorted_keys(keys: set[Hashable] | frozenset[Hashable]) -> list[Hashable]:
    try:
        return sorted(keys)  # type: ignore[type-var]
    except TypeError:
        return sorted(keys, key=lambda k: (type(k).__name__, str(k)))


def _wasserstein(
    ref: Sample, cur: Sample, kind: ColumnKind
) -> tuple[float, str, dict[str, float | int | str]]:
    assert isinstance(ref, NumericSample) and isinstance(cur, NumericSample)
    wd = wasserstein_1d(ref.values, cur.values)
    norm = max(ref.std(), 0.001)
    return wd / norm, "", {"distance": wd, "reference_std": norm}


def wasserstein_1d(u: NDArray[np.float64], v: NDArray[np.float64]) -> float:
    """First Wasserstein distance of two sorted samples (``scipy.stats.wasserstein_distance``).

    scipy integrates |F_u - F_v| over the merged sorted values, finding each CDF
    with a binary search per merged value. Here both samples are already sorted:
    a stable merge (timsort finds the two runs) orders them, and a running sum of
    +1/n_u and -1/n_v gives F_u - F_v at every merged value. Tied values get
    steps of width 0, so the sum has scipy's terms; only the rounding of the
    running sum differs (about 1e-14 relative).

    Args:
        u, v: float64, shape (n,) and (m,), sorted ascending, finite, non-empty.
    """
    n_u, n_v = u.size, v.size
    both = np.concatenate((u, v))
    order = np.argsort(both, kind="stable")
    step = np.where(order < n_u, 1.0 / n_u, -1.0 / n_v)
    cdf_diff = np.cumsum(step[:-1])
    return float(np.vecdot(np.abs(cdf_diff), np.diff(both[order])))


def _jensenshannon(
    ref: Sample, cur: Sample, kind: ColumnKind
) -> tuple[float, str, dict[str, float | int | str]]:
    r, c, details = binned_shares(ref, cur, kind, fill_zeroes=False)
    return float(distance.jensenshannon(r, c)), "", details


def _psi(
    ref: Sample, cur: Sample, kind: ColumnKind
) -> tuple[float, str, dict[str, float | int | str]]:
    r, c, details = binned_shares(ref, cur, kind, fill_zeroes=True)
    return float(np.sum((r - c) * np.log(r / c))), "", details


def _kl_div(
    ref: Sample, cur: Sample, kind: ColumnKind
) -> tuple[float, str, dict[str, float | int | str]]:
    r, c, details = binned_shares(ref, cur, kind, fill_zeroes=True)
    return float(stats.entropy(r, c)), "", details


def _hellinger(
    ref: Sample, cur: Sample, kind: ColumnKind
) -> tuple[float, str, dict[str, float | int | str]]:
    if (
        kind == "categorical"
        or not isinstance(ref, NumericSample)
        or not isinstance(cur, NumericSample)
    ):
        rc, cc = _counts(ref), _counts(cur)
        total = 0.0
        for key in rc.keys() | cc.keys():
            total += math.sqrt(float(rc.get(key, 0) / ref.n) * float(cc.get(key, 0) / cur.n))
    else:
        keys = np.union1d(ref.unique_counts()[0], cur.unique_counts()[0])
        edges = np.histogram_bin_edges(keys, bins="sturges")
        width = (edges.max() - edges.min()) / (len(edges) - 1)
        h1 = _density(ref.values, edges)
        h2 = _density(cur.values, edges)
        total = 0.0
        for p1, p2 in zip(h1.tolist(), h2.tolist(), strict=True):
            total += math.sqrt(p1 * p2) * width
    total = float(np.clip(total, 0, 1))
    return math.sqrt(1 - total), "", {}


def _density(sorted_values: NDArray[np.float64], edges: NDArray[np.float64]) -> NDArray[np.float64]:
    """``np.histogram(values, edges, density=True)[0]`` from sorted values."""
    counts = _histogram_counts(sorted_values, edges)
    return counts / np.diff(edges) / counts.sum()


def _energy(
    ref: Sample, cur: Sample, kind: ColumnKind
) -> tuple[float, str, dict[str, float | int | str]]:
    assert isinstance(ref, NumericSample) and isinstance(cur, NumericSample)
    return float(stats.energy_distance(ref.values, cur.values)), "", {}


_NUM: tuple[ColumnKind, ...] = ("numerical",)
_CAT: tuple[ColumnKind, ...] = ("categorical",)
_BOTH: tuple[ColumnKind, ...] = ("categorical", "numerical")

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("ks", "K-S p_value", "p_value", 0.05, _NUM, False, _ks),
        Method("chisquare", "chi-square p_value", "p_value", 0.05, _CAT, True, _chisquare),
        Method("z", "Z-test p_value", "p_value", 0.05, _CAT, True, _z),
        Method(
            "wasserstein",
            "Wasserstein distance (normed)",
            "distance",
            0.1,
            _NUM,
            False,
            _wasserstein,
        ),
        Method(
            "jensenshannon",
            "Jensen-Shannon distance",
            "distance",
            0.1,
            _BOTH,
            False,
            _jensenshannon,
        ),
        Method("psi", "PSI", "distance", 0.1, _BOTH, False, _psi),
        Method("kl_div", "Kullback-Leibler divergence", "distance", 0.1, _BOTH, False, _kl_div),
        Method("hellinger", "Hellinger distance", "distance", 0.1, _BOTH, False, _hellinger),
        Method("ed", "Energy-distance", "distance", 0.1, _NUM, True, _energy),
        Method("mannw", "Mann-Whitney U-rank test", "p_value", 0.05, _NUM, True, _mannw),
        Method("t_test", "t_test", "p_value", 0.05, _NUM, True, _t_test),
    )
}
"""Methods by evidently name. ``ks`` ... ``hellinger`` are checked against evidently by
``tests/test_drift_evidently.py``, and so are ``ed``, ``mannw`` (one-sided, reference
less than current, as evidently) and ``t_test``."""


def get_method(name: str) -> Method:
    """Look up a method by its evidently name.

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(
            f"unknown drift method {name!r}; known: {', '.join(sorted(METHODS))}"
        ) from None


def default_method(ref: Sample, cur: Sample, kind: ColumnKind) -> Method:
    """evidently's default choice (``registry._get_default_stattest``).

    Reference <= 1000 rows: numerical with > 5 distinct values (both windows) ->
    ``ks``; otherwise ``chisquare``, or ``z`` with <= 2 distinct values.
    Reference > 1000 rows: numerical with > 5 distinct -> ``wasserstein``;
    otherwise ``jensenshannon``.
    """
    # the rule only compares the distinct count with 2 and 5: a side with more than
    # 5 distinct values settles it without merging the two samples
    n_values = 6 if max(ref.nunique(), cur.nunique()) > 5 else union_nunique(ref, cur)
    if ref.n <= 1000:
        if kind == "numerical" and n_values > 5:
            return METHODS["ks"]
        return METHODS["chisquare"] if n_values > 2 else METHODS["z"]
    if kind == "numerical" and n_values > 5:
        return METHODS["wasserstein"]
    return METHODS["jensenshannon"]


def union_nunique(ref: Sample, cur: Sample) -> int:
    """Distinct values of both samples together."""
    if isinstance(ref, NumericSample) and isinstance(cur, NumericSample):
        return int(np.union1d(ref.unique_counts()[0], cur.unique_counts()[0]).size)
    return len(_counts(ref).keys() | _counts(cur).keys())
