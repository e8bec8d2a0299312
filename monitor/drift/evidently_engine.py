"""The one module that imports evidently: its drift report as an engine and as HTML.

``score`` runs ``Report([DataDriftPreset(...)])`` (evidently 0.7 API) on the
features the pipeline kept, with the methods and thresholds the pipeline chose,
and copies evidently's per-column score and verdict back. ``report_html``
renders evidently's report of the same data. Telemetry is switched off
(``DO_NOT_TRACK``, ``EVIDENTLY_DISABLE_TELEMETRY``) before the import.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pandas as pd

from monitor.drift.methods import METHODS
from monitor.errors import DriftError

if TYPE_CHECKING:
    from monitor.drift.core import FeatureDrift
    from monitor.drift.methods import Sample

MIN_EVIDENTLY_FOR_PANDAS3 = (0, 7, 21)
"""evidently before 0.7.21 silently drops pandas 3 ``str`` columns (C10, evidently PR #1807)."""


def _version(dist: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in metadata.version(dist).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_versions() -> str:
    """Refuse an evidently/pandas pair known to lose columns; return evidently's version.

    Raises:
        DriftError: evidently is not installed, or pandas >= 3 runs with
            evidently < 0.7.21 (case C10).
    """
    try:
        ev = _version("evidently")
    except metadata.PackageNotFoundError:
        raise DriftError(
            "engine 'evidently' needs evidently: pip install 'model-monitor[drift]'"
        ) from None
    pd_version = _version("pandas")
    if pd_version >= (3,) and ev < MIN_EVIDENTLY_FOR_PANDAS3:
        raise DriftError(
            f"evidently {'.'.join(map(str, ev))} with pandas {pd.__version__} drops string columns "
            "without an error (evidently PR #1807); install evidently>=0.7.21 or pandas<3"
        )
    return ".".join(map(str, ev))


def _import() -> Any:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("EVIDENTLY_DISABLE_TELEMETRY", "1")
    check_versions()
    import evidently
    from evidently import presets

    return evidently, presets


_DISPLAY_TO_NAME = {m.display_name: m.name for m in METHODS.values()}


def _frames(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    to_score: Mapping[str, tuple[Sample, Sample, FeatureDrift]],
) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str]]:
    num = [n for n, (_, _, f) in to_score.items() if f.type == "numerical"]
    cat = [n for n, (_, _, f) in to_score.items() if f.type == "categorical"]
    ref = pd.DataFrame({n: _column(reference[n], n in num) for n in [*num, *cat]})
    cur = pd.DataFrame({n: _column(current[n], n in num) for n in [*num, *cat]})
    return ref, cur, num, cat


def _column(s: pd.Series, numerical: bool) -> pd.Series:
    """The column as evidently should see it.

    Numbers become float64 with +/-inf as NaN: evidently rejects nullable and
    object numbers, and it drops infinities only from columns that also hold a
    NaN (``is_contains_nans`` in ``evidently/legacy/calculations/data_drift.py``
    tests ``isna()``), so a column with inf and no NaN would reach the tests with
    its infinities (case C07). Categories are passed as objects, nulls as None.
    """
    if numerical:
        from monitor.drift.core import numeric_values

        return pd.Series(numeric_values(s)[0])
    return s.astype(object).where(s.notna(), None).reset_index(drop=True)


def _run(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    to_score: Mapping[str, tuple[Sample, Sample, FeatureDrift]],
) -> Any:
    evidently, presets = _import()
    ref, cur, num, cat = _frames(reference, current, to_score)
    definition = evidently.DataDefinition(numerical_columns=num, categorical_columns=cat)
    methods = {
        n: f.method
        for n, (_, _, f) in to_score.items()
        if f.method and f.method_source == "override"
    }
    thresholds = {
        n: f.threshold
        for n, (_, _, f) in to_score.items()
        if f.threshold is not None and f.threshold_source == "override"
    }
    preset = presets.DataDriftPreset(
        columns=[*num, *cat], per_column_method=methods, per_column_threshold=thresholds
    )
    report = evidently.Report([preset])
    with warnings.catch_warnings():  # evidently and scipy warn freely; results carry the facts
        warnings.simplefilter("ignore")
        return report.run(
            evidently.Dataset.from_pandas(cur, data_definition=definition),
            evidently.Dataset.from_pandas(ref, data_definition=definition),
        )


def score(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    to_score: Mapping[str, tuple[Sample, Sample, FeatureDrift]],
) -> None:
    """Score every feature of ``to_score`` with evidently and record the result on it.

    Methods and thresholds the caller overrode are passed to evidently per
    column; the others are left to evidently's own default choice, which the
    result then reports (it must agree with the fast engine's choice).

    Raises:
        DriftError: evidently is missing or too old for this pandas.
    """
    from monitor.drift.core import set_score

    if not to_score:
        return
    snapshot = _run(reference, current, to_score)
    table = None
    for value in snapshot.context._legacy_metrics.values():
        result = value[0] if isinstance(value, tuple) else value
        if hasattr(result, "drift_by_columns"):
            table = result.drift_by_columns
    if table is None:
        raise DriftError(
            "evidently's report has no per-column drift table (unsupported evidently version?)"
        )
    for name, (_, _, f) in to_score.items():
        col = table.get(name)
        if col is None:
            f.status, f.reason = "undefined", "evidently_missing_column"
            continue
        method = _DISPLAY_TO_NAME.get(col.stattest_name, f.method)
        f.method = method
        f.threshold = float(col.stattest_threshold)
        set_score(f, float(col.drift_score), bool(col.drift_detected))


def report_html(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    to_score: Mapping[str, tuple[Sample, Sample, FeatureDrift]],
) -> str:
    """evidently's HTML report of the scored features (a whole HTML document).

    Raises:
        DriftError: evidently is missing or too old for this pandas.
    """
    if not to_score:
        return "<html><body><p>No feature could be scored.</p></body></html>"
    snapshot = _run(reference, current, to_score)
    return str(snapshot.get_html_str(as_iframe=False))


# --- evidently's Spark engine (used by monitor.drift.spark_engine) ----------------

SPARK_HINT = "engine 'spark' needs pyspark and Java 17: pip install 'model-monitor[spark]'"
"""The message of the DriftError raised when the spark engine's libraries are missing."""


def _import_spark() -> tuple[Any, Any, Any]:
    """evidently's SparkEngine, its StatTest registry and ColumnType, stattests registered.

    Importing ``evidently.legacy.spark.calculations.stattests`` registers the
    Spark implementations (chisquare, jensenshannon, psi, wasserstein) on
    evidently's StatTest objects (``SparkStatTestImpl.__init_subclass__``).
    """
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("EVIDENTLY_DISABLE_TELEMETRY", "1")
    try:
        import evidently.legacy.spark.calculations.stattests  # noqa: F401 - registers the Spark impls
        from evidently.legacy.calculations.stattests import registry
        from evidently.legacy.core import ColumnType
        from evidently.legacy.spark import SparkEngine
    except ImportError as e:
        raise DriftError(f"{SPARK_HINT} (and evidently: {e})") from None
    return SparkEngine, registry, ColumnType


def _spark_stattest(name: str) -> Any:
    """evidently's StatTest called ``name`` if it has a SparkEngine implementation, else None."""
    engine, registry, _ = _import_spark()
    by_type = registry._registered_stat_tests.get(name)
    if not by_type:
        return None
    stat = next(iter(by_type.values()))
    return stat if engine in registry._impls.get(stat, {}) else None


def spark_methods() -> tuple[str, ...]:
    """Names of :data:`METHODS` that evidently's Spark engine implements, sorted.

    Read from evidently's StatTest registry
    (``evidently/legacy/calculations/stattests/registry.py``, ``_impls``) after
    importing ``evidently/legacy/spark/calculations/stattests/``; with evidently
    0.7.23 these are ``chisquare``, ``jensenshannon``, ``psi`` and ``wasserstein``.

    Raises:
        DriftError: evidently or pyspark is not installed.
    """
    return tuple(sorted(n for n in METHODS if _spark_stattest(n) is not None))


def score_spark(reference: Any, current: Any, features: Mapping[str, FeatureDrift]) -> None:
    """Score features of two Spark DataFrames with evidently's Spark stattests; record on them.

    For each ``name -> f`` of ``features`` (``f.method`` and ``f.threshold`` set,
    ``f.type`` numerical or categorical) the column ``name`` of each window is
    cleaned as evidently's Spark ``get_one_column_drift`` cleans it
    (``evidently/legacy/spark/calculations/data_drift.py``: +/-inf -> NaN, then
    rows with null/NaN dropped), and evidently's StatTest for ``f.method`` is
    called with ``engine=SparkEngine``, which runs the implementation in
    ``evidently/legacy/spark/calculations/stattests/<method>.py``. Score and
    verdict are copied back with :func:`monitor.drift.core.set_score` (NaN ->
    ``undefined``). The stattests are called directly rather than through a
    legacy ``Report(engine=SparkEngine)``, which gives the same scores but also
    computes every plot's histograms (about 3x the Spark jobs).

    Args:
        reference, current: ``pyspark.sql.DataFrame`` with a column per feature
            name (numbers as a numeric Spark type, categories any type).
        features: column name -> FeatureDrift; each is updated in place.

    Raises:
        DriftError: evidently/pyspark missing, or ``f.method`` has no Spark
            implementation (see :func:`spark_methods`).
    """
    import numpy as np

    from monitor.drift.core import set_score

    engine, _, column_type = _import_spark()
    for name, f in features.items():
        stat = _spark_stattest(f.method or "")
        if stat is None:
            raise DriftError(
                f"feature {name!r}: method {f.method!r} is not implemented by evidently's Spark "
                f"engine; supported: {', '.join(spark_methods())}"
            )
        ref = (
            reference.select(name).replace([-np.inf, np.inf], np.nan).dropna(subset=[name]).cache()
        )
        cur = current.select(name).replace([-np.inf, np.inf], np.nan).dropna(subset=[name]).cache()
        try:
            with np.errstate(all="ignore"):
                kind = column_type.Numerical if f.type == "numerical" else column_type.Categorical
                res = stat(ref, cur, kind, f.threshold, engine=engine, column_name=name)
        except (ValueError, ArithmeticError) as e:
            f.status, f.reason = "undefined", f"method_error: {e}"
            continue
        finally:
            if f.type == "numerical" and f.method in ("psi", "jensenshannon"):
                # hist_bin_doane (evidently/legacy/spark/calculations/histogram.py) caches
                # this union and never releases it; the same plan finds the cached entry.
                cur.dropna(subset=[name]).union(ref.dropna(subset=[name])).unpersist()
            ref.unpersist()
            cur.unpersist()
        set_score(f, float(res.drift_score), bool(res.drifted))


def run_preset(
    reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str], categorical: list[str]
) -> Any:
    """Run ``Report([DataDriftPreset()])`` with evidently's defaults, nothing else.

    For ``benchmarks/drift.py``: the reference timing of evidently on the same
    frames the fast engine gets.

    Returns:
        evidently's ``Snapshot``.
    """
    evidently, presets = _import()
    definition = evidently.DataDefinition(
        numerical_columns=numerical, categorical_columns=categorical
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evidently.Report([presets.DataDriftPreset()]).run(
            evidently.Dataset.from_pandas(current, data_definition=definition),
            evidently.Dataset.from_pandas(reference, data_definition=definition),
        )
