"""Compare a current window with a reference: :func:`compute` and :class:`DriftResult`.

The pipeline, for every engine:

1. **Columns.** Declared features (``features=``) keep their declared type; the
   others are typed as evidently's ``infer_column_type`` types them (float ->
   numerical; int -> categorical with <= 10 distinct values, else numerical;
   bool/category -> categorical; strings -> categorical unless more than half
   the values are distinct). Undeclared datetime, id-like and text columns are
   skipped with a reason (C08).
2. **Cleaning.** Nulls and +/-inf are removed and counted per column (C07), as
   evidently removes them; values a numerical column cannot hold are counted as
   ``invalid``.
3. **Status.** A feature missing from a window, empty in the reference (C02) or
   with fewer than ``min_rows`` usable current values gets a status and a reason
   instead of a score; only ``ok`` features count in the drifted share.
4. **Scoring** by the engine: ``fast`` (:mod:`monitor.drift.methods`),
   ``evidently`` (:mod:`monitor.drift.evidently_engine`) or ``spark``.

The dataset drifts when the share of drifted features among the scored ones is
at least ``drift_share`` (evidently's ``DataDriftPreset`` rule, default 0.5).
"""

from __future__ import annotations

import html
import math
import time
import warnings
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from monitor.coverage import category_key
from monitor.drift.methods import (
    METHODS,
    CategoricalSample,
    ColumnKind,
    Method,
    NumericSample,
    Sample,
    default_method,
    get_method,
)
from monitor.errors import DriftError

if TYPE_CHECKING:
    from monitor.drift.reference import ReferenceProfile

SCHEMA_VERSION = 1
"""Version of the drift.json structure."""

ENGINES = ("fast", "evidently", "spark")
"""Engines :func:`compute` accepts."""

INTEGER_CARDINALITY_LIMIT = 10
"""Integer columns with at most this many distinct values are categorical (evidently)."""

Status = Literal["ok", "insufficient_data", "skipped", "undefined"]

_ID_NAMES = frozenset({"id", "uuid", "request_id", "trace_id", "span_id"})

MethodArg = str | Mapping[str, str] | None
ThresholdArg = float | Mapping[str, float] | None


@dataclass
class ColumnStats:
    """Row accounting of one feature in one window.

    Attributes:
        rows: rows in the window (all values).
        used: values the methods saw (finite, not null, valid).
        null: null/NaN/None values.
        nonfinite: +inf and -inf values.
        invalid: values a numerical feature cannot hold (a string in a number column).
    """

    rows: int = 0
    used: int = 0
    null: int = 0
    nonfinite: int = 0
    invalid: int = 0

    def ratio(self, count: int) -> float:
        """``count / rows`` (0.0 for an empty window)."""
        return count / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form, with ``missing_ratio`` (null) and ``nonfinite_ratio``."""
        return {
            "rows": self.rows,
            "used": self.used,
            "null": self.null,
            "nonfinite": self.nonfinite,
            "invalid": self.invalid,
            "missing_ratio": self.ratio(self.null),
            "nonfinite_ratio": self.ratio(self.nonfinite),
        }


@dataclass
class FeatureDrift:
    """The drift verdict of one feature.

    Attributes:
        name: column name.
        type: ``numerical`` or ``categorical`` (or the skipped column's kind).
        status: ``ok``; ``insufficient_data`` (fewer than ``min_rows`` values, no
            verdict); ``skipped`` (not comparable: ``reason`` says why);
            ``undefined`` (the method gave NaN).
        reason: why the status is not ``ok`` (``empty_reference``,
            ``missing_in_current``, ``datetime``, ...), else "".
        method: evidently name of the method, None when not scored.
        score: p-value or distance; None when not scored. Never NaN.
        threshold: the threshold applied.
        drifted: verdict; None unless ``status == "ok"``.
        reference, current: row accounting per window.
        unseen_categories: categories of the current window absent from the reference.
        unseen_category_ratio: share of current values in those categories.
        note: why the score departs from evidently's, if it does.
        details: method facts (``statistic``, ``bins``, ``epsilon_reference``, ...).
    """

    name: str
    type: str
    status: Status
    reason: str = ""
    method: str | None = None
    score: float | None = None
    threshold: float | None = None
    drifted: bool | None = None
    reference: ColumnStats = field(default_factory=ColumnStats)
    current: ColumnStats = field(default_factory=ColumnStats)
    unseen_categories: list[str] = field(default_factory=list)
    unseen_category_ratio: float = 0.0
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    method_source: Literal["default", "override"] = "default"
    threshold_source: Literal["default", "override"] = "default"

    @property
    def method_kind(self) -> str | None:
        """``p_value`` or ``distance`` for the method used."""
        return METHODS[self.method].kind if self.method in METHODS else None

    def to_dict(self) -> dict[str, Any]:
        """The drift.json entry of this feature."""
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "method": self.method,
            "method_source": self.method_source,
            "score_kind": self.method_kind,
            "score": self.score,
            "threshold": self.threshold,
            "drifted": self.drifted,
            "rows": {"reference": self.reference.rows, "current": self.current.rows},
            "reference": self.reference.to_dict(),
            "current": self.current.to_dict(),
            "unseen_categories": self.unseen_categories,
            "unseen_category_ratio": self.unseen_category_ratio,
            "note": self.note,
            "details": {k: _json_number(v) for k, v in self.details.items()},
        }


@dataclass
class DriftResult:
    """Drift of a current window against a reference, per feature and overall.

    ``to_dict()`` is the drift.json document (schema in ``docs/drift.md``);
    ``to_frame()`` gives one row per feature; in Jupyter the object renders as a
    table (``_repr_html_``) that lists skipped features with their reasons.
    """

    features: dict[str, FeatureDrift]
    drift_share: float
    engine: str
    rows_reference: int
    rows_current: int
    min_rows: int = 1
    window_start: float | None = None
    window_end: float | None = None
    duration_seconds: float = 0.0
    model: str | None = None
    warnings: list[str] = field(default_factory=list)
    quality: dict[str, Any] | None = None

    @property
    def scored(self) -> list[FeatureDrift]:
        """Features with a verdict (status ``ok``)."""
        return [f for f in self.features.values() if f.status == "ok"]

    @property
    def drifted_features(self) -> list[str]:
        """Names of the drifted features."""
        return [f.name for f in self.scored if f.drifted]

    @property
    def share_of_drifted(self) -> float | None:
        """Drifted / scored features; None when none could be scored."""
        scored = self.scored
        return len(self.drifted_features) / len(scored) if scored else None

    @property
    def dataset_drift(self) -> bool | None:
        """Share >= ``drift_share``; None (no verdict) when no feature was scored."""
        share = self.share_of_drifted
        return None if share is None else share >= self.drift_share

    @property
    def status(self) -> str:
        """``ok``, or ``insufficient_data`` when no feature could be scored."""
        return "ok" if self.scored else "insufficient_data"

    def to_dict(self) -> dict[str, Any]:
        """The drift.json document (``docs/drift.md`` describes every field)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "engine": self.engine,
            "duration_seconds": self.duration_seconds,
            "window": {"start": _iso(self.window_start), "end": _iso(self.window_end)},
            "dataset": {
                "status": self.status,
                "rows": {"reference": self.rows_reference, "current": self.rows_current},
                "min_rows": self.min_rows,
                "features": len(self.features),
                "features_scored": len(self.scored),
                "drifted_features": len(self.drifted_features),
                "share_of_drifted_features": self.share_of_drifted,
                "drift_share": self.drift_share,
                "dataset_drift": self.dataset_drift,
            },
            "features": {name: f.to_dict() for name, f in self.features.items()},
            "quality": self.quality,
            "warnings": list(self.warnings),
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per feature: type, status, reason, method, score, threshold, drifted, ..."""
        rows = []
        for f in self.features.values():
            rows.append(
                {
                    "feature": f.name,
                    "type": f.type,
                    "status": f.status,
                    "reason": f.reason,
                    "method": f.method,
                    "score": f.score,
                    "threshold": f.threshold,
                    "drifted": f.drifted,
                    "rows_reference": f.reference.rows,
                    "rows_current": f.current.rows,
                    "missing_ratio_current": f.current.ratio(f.current.null),
                    "nonfinite_ratio_current": f.current.ratio(f.current.nonfinite),
                    "unseen_category_ratio": f.unseen_category_ratio,
                }
            )
        columns = [
            "feature", "type", "status", "reason", "method", "score", "threshold", "drifted",
            "rows_reference", "rows_current", "missing_ratio_current", "nonfinite_ratio_current",
            "unseen_category_ratio",
        ]  # fmt: skip
        return pd.DataFrame(rows, columns=columns).set_index("feature")

    def summary_html(self) -> str:
        """A self-contained HTML table of the verdicts (used by Jupyter and report.html)."""
        share = self.share_of_drifted
        verdict = {True: "DRIFT", False: "no drift", None: "no verdict"}[self.dataset_drift]
        of_model = f" of model {html.escape(self.model)}" if self.model else ""
        share_text = (
            "" if share is None else f" (share {share:.3f}, dataset drift at >= {self.drift_share})"
        )
        head = (
            f"<h3>Data drift{of_model}: {verdict}</h3>"
            f"<p>{len(self.drifted_features)} of {len(self.scored)} scored features drifted"
            f"{share_text}; "
            f"{self.rows_reference} reference rows, {self.rows_current} current rows; engine "
            f"{html.escape(self.engine)}.</p>"
        )
        cells = []
        for f in self.features.values():
            score = "" if f.score is None else f"{f.score:.6g}"
            mark = {True: "&#9888; drift", False: "ok", None: ""}[f.drifted]
            why = html.escape(f.reason) + (f" &mdash; {html.escape(f.note)}" if f.note else "")
            cells.append(
                "<tr>"
                + "".join(
                    f"<td>{v}</td>"
                    for v in (
                        html.escape(f.name),
                        f.type,
                        f.status,
                        html.escape(f.method or ""),
                        score,
                        "" if f.threshold is None else f"{f.threshold:g}",
                        mark,
                        why,
                    )
                )
                + "</tr>"
            )
        table = (
            '<table class="monitor-drift"><thead><tr><th>feature</th><th>type</th><th>status</th>'
            "<th>method</th><th>score</th><th>threshold</th><th>verdict</th><th>reason / note</th>"
            f"</tr></thead><tbody>{''.join(cells)}</tbody></table>"
        )
        warn = "".join(f"<p>&#9888; {html.escape(w)}</p>" for w in self.warnings)
        return f'<div class="monitor-drift-summary">{head}{warn}{table}</div>'

    def _repr_html_(self) -> str:
        return self.summary_html()

    def __repr__(self) -> str:
        return (
            f"DriftResult(engine={self.engine!r}, dataset_drift={self.dataset_drift}, "
            f"drifted={self.drifted_features}, scored={len(self.scored)}/{len(self.features)})"
        )


def _json_number(v: Any) -> Any:
    """NaN and +/-inf have no JSON form: they become None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _iso(ts: float | None) -> str | None:
    return (
        None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    )


# --- column typing and cleaning --------------------------------------------------


def infer_kind(s: pd.Series) -> str:
    """evidently's ``infer_column_type`` (``evidently/core/datasets.py``) on one column.

    Returns:
        ``numerical``, ``categorical``, ``text``, ``datetime`` or ``unknown``.
    """
    name = s.dtype.name
    if name.startswith("float") or name.startswith("Float"):
        return "numerical"
    if (
        name.startswith("int")
        or name.startswith("uint")
        or name.startswith("Int")
        or name.startswith("UInt")
    ):
        return "categorical" if s.nunique() <= INTEGER_CARDINALITY_LIMIT else "numerical"
    if name in ("string", "str"):
        return "text" if s.nunique() > s.count() * 0.5 else "categorical"
    if name == "object":
        values = s.dropna()
        if values.empty:
            return "unknown"
        if isinstance(values.iloc[0], str) and isinstance(values.iloc[-1], str):
            return "text" if s.nunique() > s.count() * 0.5 else "categorical"
        return "unknown"
    if name in ("bool", "boolean", "category"):
        return "categorical"
    if name.startswith("datetime"):
        return "datetime"
    return "unknown"


def is_id_like(name: str) -> bool:
    """Column names that identify rows rather than describe them (``id``, ``*_id``, ``uuid``)."""
    low = name.lower()
    return low in _ID_NAMES or low.endswith("_id") or low.endswith("_uuid")


def numeric_values(s: pd.Series) -> tuple[NDArray[np.float64], int]:
    """A column as float64 with nulls, unparsable values and +/-inf as NaN.

    Accepts float, int, bool, pandas nullable, datetime (as epoch seconds) and
    object/string columns (parsed with ``pd.to_numeric``).

    Returns:
        (values, shape (len(s),); number of values that were not null but could not be parsed).
    """
    arr, invalid = float_values(s)
    return np.where(np.isfinite(arr), arr, np.nan), invalid


def float_values(s: pd.Series) -> tuple[NDArray[np.float64], int]:
    """A column as float64 (nulls and unparsable values NaN, +/-inf kept) and the
    number of non-null values that could not be parsed."""
    invalid = 0
    dtype = s.dtype
    if dtype.kind == "f" and isinstance(dtype, np.dtype):
        arr = s.to_numpy()
    elif isinstance(dtype, np.dtype) and dtype.kind in "iub":
        arr = s.to_numpy().astype(np.float64)
    elif dtype.kind == "M" or isinstance(dtype, pd.DatetimeTZDtype):
        ts = pd.to_datetime(s, utc=True)
        arr = np.where(ts.isna(), np.nan, ts.astype("int64", copy=False).to_numpy() / 1e9)
    elif pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        arr = s.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        null = s.isna().to_numpy()
        parsed = pd.to_numeric(s, errors="coerce")
        arr = np.asarray(parsed.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
        invalid = int((np.isnan(arr) & ~null).sum())
    return np.asarray(arr, dtype=np.float64), invalid


def numeric_sample(s: pd.Series) -> tuple[NumericSample, ColumnStats]:
    """Clean one column as numbers: drop and count nulls, +/-inf and invalid values (C07).

    See :func:`numeric_values` for the accepted dtypes.
    """
    stats = ColumnStats(rows=int(s.size))
    arr, stats.invalid = float_values(s)
    finite = np.isfinite(arr)
    nan = np.isnan(arr)
    stats.null = int(nan.sum()) - stats.invalid
    stats.nonfinite = int(arr.size - finite.sum() - nan.sum())
    sample = NumericSample.from_values(arr[finite] if not finite.all() else arr)
    stats.used = sample.n
    return sample, stats


def categorical_sample(s: pd.Series) -> tuple[CategoricalSample, ColumnStats]:
    """Clean one column as categories: value counts without nulls and +/-inf.

    Categories are keyed by their canonical string (:func:`monitor.coverage.category_key`:
    ``1``, ``1.0`` and ``"1"`` are one category, ``True`` is ``"true"``), the form the
    sidecar and the capture store use, so a baseline read with integer labels and
    a capture window holding strings compare value for value.
    """
    stats = ColumnStats(rows=int(s.size))
    counts = s.value_counts(dropna=True, sort=False)
    out: dict[Hashable, int] = {}
    for key, n in zip(counts.index.tolist(), counts.to_numpy().tolist(), strict=True):
        if isinstance(key, float) and math.isinf(key):
            stats.nonfinite += int(n)
            continue
        k = category_key(key)
        out[k] = out.get(k, 0) + int(n)
    sample = CategoricalSample(out)
    stats.used = sample.n
    stats.null = stats.rows - stats.used - stats.nonfinite
    return sample, stats


def prepare(s: pd.Series, kind: ColumnKind) -> tuple[Sample, ColumnStats]:
    """Clean ``s`` as a ``kind`` column (see :func:`numeric_sample`, :func:`categorical_sample`)."""
    return numeric_sample(s) if kind == "numerical" else categorical_sample(s)


# --- compute ----------------------------------------------------------------------


def _per_feature(arg: Any, name: str) -> Any:
    if isinstance(arg, Mapping):
        return arg.get(name)
    return arg


def resolve_columns(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: Mapping[str, str] | list[str] | None,
) -> tuple[dict[str, ColumnKind], dict[str, FeatureDrift]]:
    """Decide which columns are compared and as what.

    Args:
        features: None (every shared column, typed like evidently, id-like,
            datetime and text columns skipped); a list of names (typed like
            evidently, but datetime and id-like names are kept as declared); or
            ``{name: "numerical" | "categorical"}``.

    Returns:
        (columns to score with their kind, features already decided: skipped).
    """
    decided: dict[str, FeatureDrift] = {}
    kinds: dict[str, ColumnKind] = {}
    declared: dict[str, str | None]
    if features is None:
        declared = {c: None for c in reference.columns if c in current.columns}
        for c in current.columns:
            if c not in reference.columns:
                decided[str(c)] = FeatureDrift(str(c), "unknown", "skipped", "missing_in_reference")
    elif isinstance(features, Mapping):
        declared = dict(features)
    else:
        declared = {c: None for c in features}
    for name, kind in declared.items():
        name = str(name)
        if kind is not None and kind not in ("numerical", "categorical"):
            raise DriftError(
                f"feature {name!r}: type must be numerical or categorical, not {kind!r}"
            )
        in_ref, in_cur = name in reference.columns, name in current.columns
        if not in_ref or not in_cur:
            reason = "missing_in_reference" if not in_ref else "missing_in_current"
            if not in_ref and not in_cur:
                reason = "missing_in_both"
            decided[name] = FeatureDrift(name, kind or "unknown", "skipped", reason)
            continue
        if kind is None:
            inferred = infer_kind(reference[name])
            if inferred in ("unknown", "text") and reference[name].isna().all():
                inferred = infer_kind(current[name]) if not current[name].isna().all() else "empty"
            if features is None and is_id_like(name):
                decided[name] = FeatureDrift(name, inferred, "skipped", "id_like")
                continue
            if inferred == "datetime" and features is None:
                decided[name] = FeatureDrift(name, "datetime", "skipped", "datetime")
                continue
            if inferred == "datetime":
                inferred = "numerical"
            if inferred == "text":
                decided[name] = FeatureDrift(name, "text", "skipped", "text")
                continue
            if inferred == "empty":
                inferred = "numerical"
            if inferred not in ("numerical", "categorical"):
                decided[name] = FeatureDrift(name, inferred, "skipped", "unsupported_type")
                continue
            kind = inferred
        kinds[name] = kind  # type: ignore[assignment]
    return kinds, decided


def compute(
    reference: pd.DataFrame | ReferenceProfile,
    current: pd.DataFrame,
    *,
    features: Mapping[str, str] | list[str] | None = None,
    method: MethodArg = None,
    threshold: ThresholdArg = None,
    drift_share: float = 0.5,
    min_rows: int = 1,
    engine: str = "fast",
    model: str | None = None,
    window: tuple[float, float] | None = None,
) -> DriftResult:
    """Compare ``current`` with ``reference`` feature by feature.

    Args:
        reference: the baseline DataFrame, or a :class:`ReferenceProfile` built
            (and cached) from one by :func:`monitor.drift.reference.load_reference`.
        current: the window to test, a DataFrame.
        features: columns to compare (see :func:`resolve_columns`); default all
            shared columns.
        method: evidently method name for every feature, or ``{feature: name}``;
            unset features get evidently's default choice.
        threshold: threshold for every feature or ``{feature: value}``; default
            the method's evidently default.
        drift_share: dataset drift when this share of scored features drifted
            (evidently's ``DataDriftPreset`` default 0.5).
        min_rows: fewer usable current values than this -> ``insufficient_data``.
        engine: ``fast`` (default), ``evidently`` or ``spark``.
        model, window: recorded in the result (window = (start, end) unix seconds).

    Returns:
        A :class:`DriftResult`; no single bad column raises.

    Raises:
        DriftError: unknown engine or method, a method that does not accept the
            column's type, or an engine whose library is missing.
    """
    from monitor.drift.reference import ReferenceProfile, build_profile

    started = time.perf_counter()
    if not isinstance(reference, ReferenceProfile):
        reference = _frame_arg(reference, "reference")
    current = _frame_arg(current, "current")
    if isinstance(features, str) or (
        features is not None and not isinstance(features, Mapping | list | tuple)
    ):
        raise DriftError(
            "features must be a list of column names or a dict name -> type, "
            f"not {type(features).__name__}"
        )
    if features is not None and not isinstance(features, Mapping):
        features = [str(n) for n in features]
    elif features is not None:
        features = {str(k): v for k, v in features.items()}
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 1:
        raise DriftError(f"min_rows must be an integer >= 1, not {min_rows!r}")
    if engine not in ENGINES:
        raise DriftError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if not 0 < drift_share <= 1:
        raise DriftError(f"drift_share must be in (0, 1], not {drift_share}")
    profile: ReferenceProfile | None
    if isinstance(reference, ReferenceProfile):
        profile = reference
        kinds, decided = profile.resolve(current, features)
    else:
        kinds, decided = resolve_columns(reference, current, features)
        profile = None
    for arg, what in ((method, "method"), (threshold, "threshold")):
        if isinstance(arg, Mapping):
            unknown = sorted(str(k) for k in arg if str(k) not in kinds and str(k) not in decided)
            if unknown:
                raise DriftError(f"{what} names features that are not compared: {unknown}")
    for name in kinds:
        m = _per_feature(method, name)
        if m is not None:
            try:
                chosen = get_method(m)
            except KeyError as e:
                raise DriftError(f"feature {name!r}: {e.args[0]}") from None
            if kinds[name] not in chosen.kinds:
                raise DriftError(
                    f"feature {name!r}: method {m!r} does not accept {kinds[name]} columns"
                )
    if profile is None:
        assert isinstance(reference, pd.DataFrame)
        profile = build_profile(reference, kinds)

    result = DriftResult(
        features={},
        drift_share=drift_share,
        engine=engine,
        rows_reference=profile.rows,
        rows_current=len(current),
        min_rows=min_rows,
        window_start=window[0] if window else None,
        window_end=window[1] if window else None,
        model=model,
    )
    to_score: dict[str, tuple[Sample, Sample, FeatureDrift]] = {}
    for name, kind in kinds.items():
        ref_sample, ref_stats = profile.sample(name)
        cur_sample, cur_stats = prepare(current[name], kind)
        f = FeatureDrift(name, kind, "ok", reference=ref_stats, current=cur_stats)
        if kind == "categorical":
            _unseen(f, ref_sample, cur_sample)
        if ref_sample.n == 0:
            f.status, f.reason = "skipped", "empty_reference"
        elif cur_sample.n == 0:
            f.status, f.reason = "insufficient_data", "empty_current"
        elif cur_sample.n < min_rows:
            f.status, f.reason = (
                "insufficient_data",
                f"fewer_than_min_rows ({cur_sample.n} < {min_rows})",
            )
        else:
            m_name = _per_feature(method, name)
            meth: Method = (
                get_method(m_name) if m_name else default_method(ref_sample, cur_sample, kind)
            )
            f.method = meth.name
            f.method_source = "override" if m_name else "default"
            t = _per_feature(threshold, name)
            f.threshold = (
                _check_threshold(name, meth, t) if t is not None else meth.default_threshold
            )
            f.threshold_source = "override" if t is not None else "default"
            to_score[name] = (ref_sample, cur_sample, f)
        result.features[name] = f
    for name, f in decided.items():
        result.features[name] = f

    if engine == "fast":
        _score_fast(to_score)
    elif engine == "evidently":
        from monitor.drift import evidently_engine

        evidently_engine.score(profile.frame(), current, to_score)
    else:
        from monitor.drift import spark_engine

        spark_engine.score(profile.frame(), current, to_score)
    _check_accounted(result, features)
    for f in result.features.values():
        if f.status in ("skipped", "undefined"):
            result.warnings.append(f"feature {f.name!r} {f.status}: {f.reason}")
    short = [f.name for f in result.features.values() if f.status == "insufficient_data"]
    if short:
        result.warnings.append(
            f"{len(short)} feature(s) without a verdict: fewer than min_rows={min_rows} usable "
            f"current values ({', '.join(short[:5])}{', ...' if len(short) > 5 else ''})"
        )
    result.duration_seconds = time.perf_counter() - started
    return result


def _frame_arg(frame: Any, what: str) -> pd.DataFrame:
    """``frame`` as a DataFrame with unique string column names.

    Integer column names (``pd.DataFrame(ndarray)``) become their string form.

    Raises:
        DriftError: not a DataFrame, or two columns share a name.
    """
    if not isinstance(frame, pd.DataFrame):
        raise DriftError(f"{what} must be a pandas DataFrame, not {type(frame).__name__}")
    if not all(isinstance(c, str) for c in frame.columns):
        frame = frame.rename(columns=str)
    dup = frame.columns[frame.columns.duplicated()].unique().tolist()
    if dup:
        raise DriftError(f"{what} has duplicate column names: {dup}")
    return frame


def _check_threshold(name: str, meth: Method, t: Any) -> float:
    """A user threshold as a float, or a DriftError saying why it cannot be one."""
    if isinstance(t, bool) or not isinstance(t, int | float | np.integer | np.floating):
        raise DriftError(f"feature {name!r}: threshold must be a number, not {t!r}")
    value = float(t)
    if meth.kind == "p_value" and not 0 < value < 1:
        raise DriftError(
            f"feature {name!r}: threshold {value} of p-value method {meth.name!r} must be in (0, 1)"
        )
    if meth.kind == "distance" and not (math.isfinite(value) and value >= 0):
        raise DriftError(
            f"feature {name!r}: threshold {value} of distance method {meth.name!r} "
            "must be finite and >= 0"
        )
    return value


def _check_accounted(result: DriftResult, features: Mapping[str, str] | list[str] | None) -> None:
    """Every requested feature has a score or a reason (case C10: none may vanish).

    Raises:
        DriftError: a feature is missing from the result, or has neither a score
            nor a reason (an engine bug, reported instead of exported as "no drift").
    """
    wanted = list(features) if features is not None else []
    lost = [n for n in wanted if n not in result.features]
    lost += [n for n, f in result.features.items() if f.score is None and not f.reason]
    lost += [n for n, f in result.features.items() if f.status == "ok" and f.score is None]
    if lost:
        raise DriftError(
            f"engine {result.engine!r} returned no score and no reason for {sorted(set(lost))}"
        )


def _unseen(f: FeatureDrift, ref: Sample, cur: Sample) -> None:
    assert isinstance(ref, CategoricalSample) and isinstance(cur, CategoricalSample)
    unseen = [k for k in cur.counts if k not in ref.counts]
    if unseen and cur.n:
        f.unseen_categories = sorted(str(k) for k in unseen)
        f.unseen_category_ratio = sum(cur.counts[k] for k in unseen) / cur.n


def _score_fast(to_score: Mapping[str, tuple[Sample, Sample, FeatureDrift]]) -> None:
    for ref_sample, cur_sample, f in to_score.values():
        assert f.method is not None and f.threshold is not None
        meth = METHODS[f.method]
        try:
            # scipy warns on degenerate input (constant samples, ties); the result
            # then says so itself (NaN -> undefined), so the warnings add nothing
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = meth.run(ref_sample, cur_sample, f.type, f.threshold)  # type: ignore[arg-type]
        except (ValueError, ArithmeticError) as e:
            f.status, f.reason = "undefined", f"method_error: {e}"
            continue
        set_score(f, res.score, res.drifted, note=res.note, details=res.details)


def set_score(
    f: FeatureDrift,
    score: float,
    drifted: bool,
    *,
    note: str = "",
    details: dict[str, Any] | None = None,
) -> None:
    """Record an engine's score on ``f``; a NaN score makes the feature ``undefined`` (C01)."""
    if score is None or not math.isfinite(score):
        f.status, f.reason = "undefined", "nan_score"
        f.score = None
        f.drifted = None
        return
    f.score = float(score)
    f.drifted = bool(drifted)
    if note:  # keep a note the pipeline already made (e.g. the Spark engine's method swap)
        f.note = f"{f.note}; {note}" if f.note else note
    if details:
        f.details.update(details)
