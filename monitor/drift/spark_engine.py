"""The ``spark`` engine: evidently's Spark drift stattests, for windows too big for one machine.

Three entry points, all filling the same :class:`~monitor.drift.core.FeatureDrift`
objects the other engines fill:

- :func:`score` — the ``compute(..., engine="spark")`` hook: two pandas
  DataFrames (same contract as :func:`monitor.drift.evidently_engine.score`),
  converted to Spark.
- :func:`score_parquet` — two Parquet paths (files, directories or globs) read
  by Spark, never by pandas; row accounting, empty-window status and the default
  method are computed in Spark too. A scheduled job over a big window calls it
  with ``{name: FeatureDrift(name, kind, "ok")}`` and builds its result from them.
- :func:`score_frames` — the same on two ``pyspark.sql.DataFrame`` a job already has.

The statistics themselves run in evidently's Spark code
(:func:`monitor.drift.evidently_engine.score_spark`; the only module that
imports evidently). evidently 0.7.23 implements four methods for Spark
(``evidently/legacy/spark/calculations/stattests/``): ``chisquare``,
``jensenshannon``, ``psi`` and ``wasserstein``. How they depart from the pandas
implementations (and so from the ``fast`` engine):

- ``chisquare`` and categorical ``jensenshannon``/``psi``: exact counts, same
  score (a category absent from the reference gives evidently's p = 0, not the
  fast engine's contingency test, case C04; a single category gives NaN ->
  ``undefined``, case C01).
- ``wasserstein``: each window is cut into 1000 equal-width bins over its own
  range and the distance is taken between the bin centres
  (``APPROX_WASSERSTEIN_BINS``), so the score is within
  ``(range_ref + range_cur) / 2000 / std_ref`` of the exact one.
- numerical ``psi`` and ``jensenshannon``: Doane bins over both windows
  (``hist_bin_doane``) for every numerical column, where pandas evidently uses
  Sturges bins for columns with more than 20 distinct reference values and one
  bin per value otherwise: a different number, not an approximation of it.

Default method: evidently's Spark ``_get_default_stattest``
(``evidently/legacy/spark/calculations/stattests/base.py``) looks only at the
reference size: <= 1000 rows -> ``chisquare`` for numerical and categorical
columns alike (pandas evidently: ``ks``, or ``chisquare``/``z`` when few
values); > 1000 rows -> ``wasserstein`` for every numerical column (pandas:
``jensenshannon`` when <= 5 distinct values) and ``jensenshannon`` for
categorical ones. This engine does not use that choice: every feature gets the
fast engine's (= pandas evidently's) choice, passed to evidently explicitly, so
engines agree on the method. A default choice Spark lacks (``ks`` or ``z``:
references of 1000 rows or fewer) is replaced by ``wasserstein`` (for ``ks``) or
``chisquare`` (for ``z``), and the feature's ``note`` says so; an explicit
override Spark lacks raises :class:`~monitor.errors.DriftError`.

Session: one per process (``SparkSession.builder.getOrCreate``; an active
session, e.g. under ``spark-submit``, is reused as it is). Master ``local[2]``
unless ``MONITOR_SPARK_MASTER`` says otherwise; UI off; log4j at ERROR; a local
master binds the driver to 127.0.0.1 (a cluster master keeps Spark's own driver
address, which executors must be able to reach).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from monitor.drift.methods import METHODS
from monitor.errors import DriftError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from monitor.drift.core import FeatureDrift
    from monitor.drift.methods import Sample

MASTER_ENV = "MONITOR_SPARK_MASTER"
"""Environment variable naming the Spark master (default :data:`DEFAULT_MASTER`)."""

DEFAULT_MASTER = "local[2]"
"""Spark master used when ``MONITOR_SPARK_MASTER`` is unset."""

SPARK_METHODS = ("chisquare", "jensenshannon", "psi", "wasserstein")
"""Methods evidently 0.7.23's Spark engine implements (checked against its registry by
``tests/test_drift_spark.py``; :func:`monitor.drift.evidently_engine.spark_methods`)."""

SPARK_HINT = "engine 'spark' needs pyspark and Java 17: pip install 'model-monitor[spark]'"

_LOG4J2 = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n
"""

ToScore = Mapping[str, "tuple[Sample, Sample, FeatureDrift] | FeatureDrift"]


# --- session ----------------------------------------------------------------------


def _java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def require_spark() -> None:
    """Check that pyspark is importable and a ``java`` is on JAVA_HOME or PATH.

    Raises:
        DriftError: ``engine 'spark' needs pyspark and Java 17: ...`` (no traceback).
    """
    if importlib.util.find_spec("pyspark") is None or _java() is None:
        raise DriftError(SPARK_HINT)


def _log4j_file() -> str:
    fd, path = tempfile.mkstemp(prefix="monitor-spark-log4j2-", suffix=".properties")
    with os.fdopen(fd, "w") as fh:
        fh.write(_LOG4J2)
    atexit.register(lambda: Path(path).unlink(missing_ok=True))
    return path


def session() -> SparkSession:
    """The process's SparkSession: the active one, else a new one (getOrCreate).

    A new session gets master ``$MONITOR_SPARK_MASTER`` (default ``local[2]``),
    ``spark.ui.enabled=false``, no console progress bar, log4j at ERROR, Arrow
    for pandas conversion, and, for a ``local`` master, driver host and bind
    address 127.0.0.1 and 8 shuffle partitions (instead of 200).

    Raises:
        DriftError: pyspark or Java missing, or the JVM could not start.
    """
    if importlib.util.find_spec("pyspark") is None:
        raise DriftError(SPARK_HINT)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:  # e.g. under spark-submit: use it as configured
        return active
    require_spark()
    master = os.environ.get(MASTER_ENV) or DEFAULT_MASTER
    builder = (
        SparkSession.builder.master(master)
        .appName("monitor-drift")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{_log4j_file()}")
    )
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = (
            builder.config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.sql.shuffle.partitions", "8")
        )
    try:
        spark = builder.getOrCreate()
    except Exception as e:  # the JVM failed to start: Java missing/too old, port, ...
        raise DriftError(f"{SPARK_HINT} (Spark did not start: {e})") from None
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# --- method choice ----------------------------------------------------------------


def _features(to_score: ToScore) -> dict[str, FeatureDrift]:
    return {n: v[2] if isinstance(v, tuple) else v for n, v in to_score.items()}


def check_methods(features: Mapping[str, FeatureDrift]) -> dict[str, FeatureDrift]:
    """The features the Spark engine can score; the others are decided here.

    A default method the Spark engine lacks is replaced (``ks`` -> ``wasserstein``,
    ``z`` -> ``chisquare``) with a ``note``; features not ``ok`` or without a
    method are left out.

    Raises:
        DriftError: an overridden method (``method_source == "override"``) that
            evidently's Spark engine does not implement; the message names it
            and the supported ones.
    """
    out: dict[str, FeatureDrift] = {}
    for name, f in features.items():
        if f.status != "ok" or f.method is None:
            continue
        if f.method in SPARK_METHODS:
            out[name] = f
        elif f.method_source == "override":
            raise DriftError(
                f"feature {name!r}: method {f.method!r} is not implemented by evidently's Spark "
                f"engine; use engine 'fast' or 'evidently', or one of {', '.join(SPARK_METHODS)}"
            )
        else:
            # evidently's Spark engine has no ks or z: use what evidently picks for a
            # reference over 1000 rows (the Spark engine's own use case), and say so
            lacking = f.method
            f.method = "wasserstein" if f.type == "numerical" and lacking == "ks" else "chisquare"
            if f.threshold_source == "default":
                f.threshold = METHODS[f.method].default_threshold
            f.note = f"{lacking} has no Spark implementation in evidently; {f.method} used instead"
            out[name] = f
    return out


def default_method_name(ref_used: int, n_values: int, kind: str) -> str:
    """The fast engine's default choice (:func:`monitor.drift.methods.default_method`)
    from the reference's usable row count and the distinct values of both windows
    (only whether ``n_values`` is > 2 and > 5 matters)."""
    if ref_used <= 1000:
        if kind == "numerical" and n_values > 5:
            return "ks"
        return "chisquare" if n_values > 2 else "z"
    return "wasserstein" if kind == "numerical" and n_values > 5 else "jensenshannon"


# --- pandas -> Spark --------------------------------------------------------------


def _numeric(s: pd.Series) -> pd.Series:
    """A column as float64, read as :func:`monitor.drift.core.numeric_sample` reads it
    (+/-inf kept: Spark counts them itself)."""
    from monitor.drift.core import float_values

    return pd.Series(float_values(s)[0])


def _categorical(s: pd.Series) -> tuple[pd.Series, str]:
    """A column as a Spark-typable series and its Spark type name.

    Numpy floats/ints/bools keep their type (so +/-inf stays removable);
    nullable ints and bools keep theirs; everything else becomes ``str`` (None
    for missing), so two categories that print alike (``1`` and ``"1"``) merge.
    """
    dtype = s.dtype
    s = s.reset_index(drop=True)
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        return s.astype(np.float64), "double"
    if isinstance(dtype, np.dtype) and dtype.kind in "iu":
        return s.astype(np.int64), "bigint"
    if isinstance(dtype, np.dtype) and dtype.kind == "b":
        return s, "boolean"
    if isinstance(dtype, pd.BooleanDtype):
        return s, "boolean"
    if pd.api.types.is_integer_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype):
        return s.astype("Int64"), "bigint"
    obj = s.astype(object)
    out = obj.astype(str).astype(object)
    out[obj.isna().to_numpy()] = None
    return out, "string"


def from_pandas(
    spark: SparkSession, frame: pd.DataFrame, columns: Mapping[str, tuple[str, str]]
) -> DataFrame:
    """A Spark DataFrame of ``frame``'s features, typed for evidently's Spark stattests.

    Args:
        columns: Spark column name -> (``frame`` column, ``numerical`` | ``categorical``).
            Numerical columns become ``double`` (datetimes as epoch seconds,
            unparsable strings as null), categorical ones keep a numeric/bool
            type or become strings.

    Returns:
        A DataFrame of ``len(frame)`` rows and one column per key of ``columns``.
    """
    from pyspark.sql.types import BooleanType, DoubleType, LongType, StringType, StructType

    types = {"double": DoubleType, "bigint": LongType, "boolean": BooleanType, "string": StringType}
    data: dict[str, pd.Series] = {}
    schema = StructType()
    for alias, (name, kind) in columns.items():
        if kind == "numerical":
            data[alias], spark_type = _numeric(frame[name]), "double"
        else:
            data[alias], spark_type = _categorical(frame[name])
        schema.add(alias, types[spark_type](), nullable=True)
    return spark.createDataFrame(pd.DataFrame(data), schema=schema)


def score(reference: pd.DataFrame, current: pd.DataFrame, to_score: ToScore) -> None:
    """Score every feature of ``to_score`` with evidently's Spark engine; record on it.

    Same contract as :func:`monitor.drift.evidently_engine.score`: ``to_score``
    maps a column of both DataFrames to ``(ref_sample, cur_sample, FeatureDrift)``
    with method and threshold chosen by the pipeline (the samples are not used:
    Spark recomputes everything from the rows). Both frames are converted with
    :func:`from_pandas` (only the scored columns, renamed ``c0``, ``c1``, ... so
    any column name works) and scored by
    :func:`monitor.drift.evidently_engine.score_spark`.

    Raises:
        DriftError: pyspark/Java/evidently missing, or an overridden method
            evidently's Spark engine lacks (:func:`check_methods`).
    """
    features = check_methods(_features(to_score))
    if not features:
        return
    spark = session()
    aliases = {f"c{i}": name for i, name in enumerate(features)}
    columns = {a: (n, features[n].type) for a, n in aliases.items()}
    ref = from_pandas(spark, reference, columns)
    cur = from_pandas(spark, current, columns)
    _score_spark(ref, cur, {a: features[n] for a, n in aliases.items()})


@contextmanager
def _spark_errors(what: str = "spark engine") -> Iterator[None]:
    """Turn a Spark/py4j error into a DriftError carrying its first line (no Java trace)."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    try:
        yield
    except (PySparkException, Py4JError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if "PARQUET_TYPE_ILLEGAL" in first and "NANOS" in first:
            first += (
                " (Spark reads no nanosecond timestamps: write them as microseconds, e.g."
                " pandas to_parquet(..., coerce_timestamps='us', allow_truncated_timestamps=True))"
            )
        raise DriftError(f"{what}: {first}") from None


def _score_spark(ref: DataFrame, cur: DataFrame, features: Mapping[str, FeatureDrift]) -> None:
    from monitor.drift import evidently_engine

    with _spark_errors():
        evidently_engine.score_spark(ref, cur, features)


# --- Spark DataFrames and Parquet -------------------------------------------------


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _is_float(dtype: Any) -> bool:
    from pyspark.sql.types import DoubleType, FloatType

    return isinstance(dtype, (DoubleType, FloatType))


def _clean_columns(
    frame: DataFrame, names: Mapping[str, tuple[str, str]]
) -> tuple[DataFrame, list[Column]]:
    """``frame`` reduced to one column per alias (numbers as double) and the row
    accounting aggregates over ``frame`` (``_rows``, ``<alias>_null``,
    ``<alias>_nonfinite``, ``<alias>_invalid``), counted as
    :func:`monitor.drift.core.prepare` counts them."""
    from pyspark.sql import functions as sf
    from pyspark.sql.types import (
        BooleanType,
        DateType,
        NumericType,
        StringType,
        TimestampNTZType,
        TimestampType,
    )

    selected: list[Column] = []
    aggs: list[Column] = [sf.count(sf.lit(1)).alias("_rows")]
    types = {f.name: f.dataType for f in frame.schema.fields}
    no = sf.lit(False)
    for alias, (name, kind) in names.items():
        src, dtype = sf.col(_quoted(name)), types[name]
        null = (src.isNull() | sf.isnan(src)) if _is_float(dtype) else src.isNull()
        invalid = no
        if kind == "categorical":
            value = src
        elif isinstance(dtype, (NumericType, BooleanType)):
            value = src.cast("double")
        elif isinstance(dtype, TimestampType):
            value = sf.unix_micros(src) / 1e6
        elif isinstance(dtype, TimestampNTZType):
            epoch = sf.lit("1970-01-01 00:00:00").cast("timestamp_ntz")
            value = sf.timestamp_diff("MICROSECOND", epoch, src) / 1e6
        elif isinstance(dtype, DateType):
            value = sf.unix_date(src) * 86400.0
        else:  # strings (and anything else) parsed as numbers; "nan" counts as invalid
            parsed = src.try_cast("double")
            bad = (
                parsed.isNull() | sf.isnan(parsed)
                if isinstance(dtype, StringType)
                else parsed.isNull()
            )
            invalid = src.isNotNull() & bad
            value = sf.when(invalid, sf.lit(None).cast("double")).otherwise(parsed)
        if kind == "numerical" or _is_float(dtype):
            nonfinite = ~null & ~invalid & value.isin(float("inf"), float("-inf"))
        else:
            nonfinite = no
        selected.append(value.alias(alias))
        aggs += [
            sf.count_if(null).alias(f"{alias}_null"),
            sf.count_if(nonfinite).alias(f"{alias}_nonfinite"),
            sf.count_if(invalid).alias(f"{alias}_invalid"),
        ]
    return frame.select(*selected), aggs


def score_frames(reference: DataFrame, current: DataFrame, to_score: ToScore) -> None:
    """Score features of two Spark DataFrames, deciding in Spark what the pipeline decides.

    For every ``name -> FeatureDrift`` (or ``(ref_sample, cur_sample,
    FeatureDrift)``) with status ``ok`` and ``type`` numerical or categorical:

    1. a column missing from a window -> ``skipped`` (``missing_in_reference`` /
       ``missing_in_current``);
    2. row accounting (``f.reference``/``f.current``: rows, used, null,
       nonfinite, invalid) as :func:`monitor.drift.core.prepare` counts it
       (timestamps and dates as epoch seconds; strings parsed as numbers);
    3. no usable reference value -> ``skipped``/``empty_reference``; none in
       current -> ``insufficient_data``/``empty_current`` (``min_rows`` is 1);
    4. ``f.method`` None -> the fast engine's default choice
       (:func:`default_method_name`, on the usable reference rows and the
       distinct values of both windows), ``f.threshold`` None -> its default;
    5. scoring by :func:`monitor.drift.evidently_engine.score_spark`.

    Unseen-category lists are not computed here.

    Raises:
        DriftError: pyspark/Java/evidently missing, an overridden method the
            Spark engine lacks, or a Spark error reading the data.
    """
    features = _features(to_score)
    check_methods(features)  # an override Spark lacks fails before any Spark job
    ref_cols, cur_cols = set(reference.columns), set(current.columns)
    names: dict[str, tuple[str, str]] = {}
    for i, (name, f) in enumerate(features.items()):
        if f.status != "ok":
            continue
        if f.type not in ("numerical", "categorical"):
            raise DriftError(
                f"feature {name!r}: type must be numerical or categorical, not {f.type!r}"
            )
        if name not in ref_cols or name not in cur_cols:
            reason = "missing_in_reference" if name not in ref_cols else "missing_in_current"
            if name not in ref_cols and name not in cur_cols:
                reason = "missing_in_both"
            f.status, f.reason = "skipped", reason
            continue
        names[f"c{i}"] = (name, f.type)
    if not names:
        return
    with _spark_errors():
        _score_columns(reference, current, names, features)


def _score_columns(
    reference: DataFrame,
    current: DataFrame,
    names: Mapping[str, tuple[str, str]],
    features: Mapping[str, FeatureDrift],
) -> None:
    from pyspark.sql import functions as sf

    ref, ref_aggs = _clean_columns(reference, names)
    cur, cur_aggs = _clean_columns(current, names)
    ref_row = reference.agg(*ref_aggs).first()
    cur_row = current.agg(*cur_aggs).first()
    assert ref_row is not None and cur_row is not None
    scored: dict[str, FeatureDrift] = {}
    for alias, (name, kind) in names.items():
        f = features[name]
        for stats, row in ((f.reference, ref_row), (f.current, cur_row)):
            stats.rows = int(row["_rows"])
            stats.null = int(row[f"{alias}_null"])
            stats.nonfinite = int(row[f"{alias}_nonfinite"])
            stats.invalid = int(row[f"{alias}_invalid"])
            stats.used = stats.rows - stats.null - stats.nonfinite - stats.invalid
        if f.reference.used == 0:
            f.status, f.reason = "skipped", "empty_reference"
            continue
        if f.current.used == 0:
            f.status, f.reason = "insufficient_data", "empty_current"
            continue
        if f.method is None:
            usable = sf.col(alias).isNotNull()
            if _is_float(ref.schema[alias].dataType):
                nonfinite = sf.col(alias).isin(float("inf"), float("-inf"))
                usable = usable & ~sf.isnan(sf.col(alias)) & ~nonfinite
            both = ref.select(alias).where(usable).union(cur.select(alias).where(usable))
            n_values = both.distinct().limit(6).count()
            f.method = default_method_name(f.reference.used, n_values, kind)
            f.method_source = "default"
        if f.threshold is None:
            f.threshold = METHODS[f.method].default_threshold
            f.threshold_source = "default"
        scored[alias] = f
    _score_spark(ref, cur, check_methods(scored))


def _read(spark: SparkSession, path: str | Path) -> DataFrame:
    with _spark_errors(f"cannot read Parquet {str(path)!r}"):
        return spark.read.parquet(str(path))


def score_parquet(reference_path: str | Path, current_path: str | Path, to_score: ToScore) -> None:
    """Score features of two Parquet datasets read by Spark (no pandas); record on them.

    ``reference_path`` and ``current_path`` are anything ``spark.read.parquet``
    reads: a file, a directory of part files, a glob, an ``s3a://``/``hdfs://``
    URL the session can reach. ``to_score`` maps column names to
    ``FeatureDrift(name, "numerical" | "categorical", "ok")`` (method and
    threshold optional; set ``method_source="override"`` on an explicit
    choice), or to the pipeline's ``(ref_sample, cur_sample, FeatureDrift)``.
    What is decided and filled in is described in :func:`score_frames`.

    Raises:
        DriftError: a path Spark cannot read (``cannot read Parquet ...``),
            pyspark/Java/evidently missing, or an overridden method the Spark
            engine lacks.
    """
    features = _features(to_score)
    check_methods(features)  # fails before Spark starts
    spark = session()
    score_frames(_read(spark, reference_path), _read(spark, current_path), features)
