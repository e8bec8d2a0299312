"""Model quality from delayed labels: join captured predictions with labels, score them.

Ground truth usually arrives after the prediction (a fraud chargeback, a
clinician's diagnosis). :func:`read_labels` reads a label file; :func:`compute_quality`
joins it with captured predictions on ``request_id`` and computes metrics with
scikit-learn:

=============== ========================================================
task            metrics (scikit-learn function)
=============== ========================================================
classification  ``accuracy`` (``accuracy_score``), ``precision``
                (``precision_score``), ``recall`` (``recall_score``), ``f1``
                (``f1_score``), ``roc_auc`` (``roc_auc_score``)
regression      ``mae`` (``mean_absolute_error``), ``rmse``
                (``root_mean_squared_error``)
=============== ========================================================

Rules:

* **Join.** Inner join on ``request_id`` (compared as strings on both sides, so a
  CSV that parsed ids as integers still matches the capture store's string ids).
  Labels are deduplicated first (latest ``timestamp`` wins). A request id that
  appears on several prediction rows (a batch request: the capture store writes
  one row per input row) gets the request's one label on each of those rows.
* **Label alignment.** Labels read from CSV are often integers while captured
  predictions of a categorical output are strings (``"0"``/``"1"``), or floats
  (``1.0``) for a numerical output. If every value on both sides reads as a number,
  both are compared as numbers (as ``int`` when all values are whole); otherwise
  both are compared as strings, whole floats written without ``.0`` (``1.0`` ->
  ``"1"``). ``positive_label`` is aligned the same way.
* **Binary vs multiclass.** With at most two classes (union of labels and
  predictions) the metrics are binary for ``positive_label`` -- default ``1`` when
  the classes are numbers within {0, 1}, else the larger class (sorted order: pass
  ``positive_label`` for string classes such as ``"malignant"``). With more classes
  precision, recall and F1 are **macro** averages over the classes present in
  labels or predictions; a class never predicted has no precision and is left out
  of the precision average (scikit-learn's ``zero_division=np.nan``), while its
  recall (0) still counts.
* **Probabilities.** Numeric predictions all within [0, 1] with at least one value
  other than 0 and 1 are probabilities of the positive class: the class is
  ``positive`` when ``p >= 0.5`` and ROC AUC is computed from ``p``. Such
  predictions need binary labels.
* **ROC AUC** is computed only from a score: ``score_column`` (a numeric column of
  ``predictions`` holding the positive class's score) or probability predictions.
  Hard class predictions (including 0/1) give no ROC AUC: it would equal balanced
  accuracy and read like the offline AUC of the model's scores, which it is not.
  It is binary only (one score column cannot rank several classes).
* **Undefined metrics** (no joined rows, one class only for ROC AUC, no predicted
  positives for precision, ...) are left out of ``metrics`` and listed in
  ``skipped`` with the reason -- never NaN, never an exception.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from monitor.errors import DriftError

Task = Literal["classification", "regression"]

LABEL_COLUMNS = ("request_id", "label", "timestamp")
"""Columns a label file must have."""

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
REGRESSION_METRICS = ("mae", "rmse")
PROBABILITY_THRESHOLD = 0.5
"""Probability predictions at or above this are the positive class."""


@dataclass
class QualityResult:
    """Quality of the predictions that have a label.

    Attributes:
        task: ``classification`` or ``regression``.
        rows: joined rows the metrics were computed on (after dropping
            ``invalid_rows``).
        unmatched_predictions: prediction rows whose request id has no label (yet).
        unmatched_labels: labels (after deduplication) whose request id has no prediction.
        metrics: ``{name: value}``, finite floats only.
        skipped: ``{name: reason}`` for every metric of the task not in ``metrics``.
        invalid_rows: joined rows dropped because the label or prediction is null
            (or, for regression, not a finite number).
        average: ``binary`` or ``macro`` (classification), else None.
        positive_label: the positive class of a binary classification, else None.
    """

    task: Task
    rows: int = 0
    unmatched_predictions: int = 0
    unmatched_labels: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    invalid_rows: int = 0
    average: str | None = None
    positive_label: Any = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``task``, ``rows``, ``unmatched_predictions``, ``unmatched_labels``,
        ``metrics``, ``skipped``, plus ``invalid_rows``, ``average`` and ``positive_label``."""
        return {
            "task": self.task,
            "rows": self.rows,
            "unmatched_predictions": self.unmatched_predictions,
            "unmatched_labels": self.unmatched_labels,
            "metrics": dict(self.metrics),
            "skipped": dict(self.skipped),
            "invalid_rows": self.invalid_rows,
            "average": self.average,
            "positive_label": _jsonable(self.positive_label),
        }


# --- labels -------------------------------------------------------------------------


def read_labels(path: str | Path) -> pd.DataFrame:
    """Read a label file: Parquet (``.parquet``, ``.pq``) or CSV (``.csv``, ``.csv.gz``).

    The file needs the columns ``request_id``, ``label`` and ``timestamp`` (when the
    label became known; ISO-8601 text, a datetime, or unix seconds); others are
    ignored. ``request_id`` is read as a string (a CSV of numeric ids would
    otherwise become integers and match no captured id). Rows without a
    request id are dropped. **Duplicate request ids keep the row with the latest
    timestamp** (a correction supersedes the first label; on equal timestamps
    the later row in the file wins).

    Returns:
        A DataFrame with columns ``request_id`` (str), ``label`` (as read) and
        ``timestamp`` (``datetime64[ns, UTC]``), one row per request id.

    Raises:
        DriftError: the file is missing, unreadable, of an unknown kind, lacks a
            column (the message names it and the file), or holds a timestamp that
            cannot be parsed.
    """
    p = Path(path)
    name = p.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            df = pd.read_parquet(p)
        elif name.endswith((".csv", ".csv.gz")):
            df = pd.read_csv(p, dtype={"request_id": str})
        else:
            raise DriftError(f"{p}: label file must be .parquet, .pq or .csv, not {p.suffix!r}")
    except DriftError:
        raise
    except FileNotFoundError:
        raise DriftError(f"label file {p} does not exist") from None
    except Exception as exc:  # pyarrow, pandas parser and OS errors all mean "unreadable"
        raise DriftError(f"{p}: not a readable label file ({exc})") from None
    for column in LABEL_COLUMNS:
        if column not in df.columns:
            raise DriftError(
                f"{p}: label file has no {column!r} column "
                f"(needs {', '.join(LABEL_COLUMNS)}; found {', '.join(map(str, df.columns))})"
            )
    df = df[list(LABEL_COLUMNS)]
    try:
        df = df.assign(timestamp=_timestamps(df["timestamp"]))
    except (ValueError, TypeError, OverflowError) as exc:
        raise DriftError(f"{p}: column 'timestamp' cannot be read as times ({exc})") from None
    return dedupe_labels(df)


def _timestamps(s: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return pd.to_datetime(s, unit="s", utc=True)
    return pd.to_datetime(s, utc=True, format="ISO8601")


def dedupe_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """One label per request id: the row with the latest ``timestamp`` (the last row
    among equal timestamps, or the last row when there is no ``timestamp`` column).

    Rows with a null ``request_id`` are dropped; ids become strings.
    """
    df = labels[labels["request_id"].notna()]
    df = df.assign(request_id=df["request_id"].astype(str))
    if "timestamp" in df.columns:
        df = df.sort_values("timestamp", kind="stable", na_position="first")
    return df.drop_duplicates("request_id", keep="last").reset_index(drop=True)


# --- quality ------------------------------------------------------------------------


def compute_quality(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    task: Task,
    positive_label: Any = None,
    score_column: str | None = None,
) -> QualityResult:
    """Join predictions with labels on ``request_id`` and compute quality metrics.

    Args:
        predictions: one row per prediction with ``request_id`` and ``prediction``
            (e.g. :func:`monitor.capture.read_capture` ``(...).to_pandas()``), and
            ``score_column`` when given.
        labels: ``request_id`` and ``label`` (``timestamp`` optional), e.g. from
            :func:`read_labels`; duplicates are resolved by :func:`dedupe_labels`.
        task: ``classification`` or ``regression``.
        positive_label: positive class of a binary classification (default: 1 for
            0/1 classes, else the larger class); aligned to the label type.
        score_column: numeric column of ``predictions`` with the positive class's
            score or probability, used for ROC AUC.

    Returns:
        A :class:`QualityResult`. Metrics that are undefined for these rows are in
        ``skipped`` with a reason; see the module docstring for the rules.

    Raises:
        DriftError: unknown task; a required column is missing; ``positive_label``
            is not one of the two classes present; scikit-learn is not installed.
    """
    if task not in ("classification", "regression"):
        raise DriftError(f"task must be 'classification' or 'regression', not {task!r}")
    for frame, what, cols in (
        (predictions, "predictions", ["request_id", "prediction"]),
        (labels, "labels", ["request_id", "label"]),
    ):
        for col in cols:
            if col not in frame.columns:
                raise DriftError(f"{what} have no {col!r} column")
    if score_column is not None and score_column not in predictions.columns:
        raise DriftError(f"predictions have no score column {score_column!r}")
    try:
        import sklearn.metrics  # noqa: F401
    except ImportError:
        raise DriftError(
            "model quality needs scikit-learn: pip install 'scikit-learn>=1.4'"
        ) from None

    keep = ["request_id", "prediction"] + ([score_column] if score_column else [])
    preds = predictions[keep].rename(columns={score_column: "_score"} if score_column else {})
    preds = preds[preds["request_id"].notna()]
    preds = preds.assign(request_id=preds["request_id"].astype(str))
    labs = dedupe_labels(labels)[["request_id", "label"]]
    joined = preds.merge(labs, on="request_id", how="inner", validate="many_to_one")

    result = QualityResult(task=task)
    result.unmatched_predictions = int((~preds["request_id"].isin(labs["request_id"])).sum())
    result.unmatched_labels = int((~labs["request_id"].isin(preds["request_id"])).sum())
    names = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS

    usable = joined["prediction"].notna() & joined["label"].notna()
    if task == "regression":
        y_true = _to_float(joined["label"])
        y_pred = _to_float(joined["prediction"])
        usable &= np.isfinite(y_true) & np.isfinite(y_pred)
    result.invalid_rows = int((~usable).sum())
    joined = joined[usable.to_numpy()].reset_index(drop=True)
    result.rows = len(joined)
    if result.rows == 0:
        reason = "no_joined_rows" if result.invalid_rows == 0 else "no_valid_joined_rows"
        result.skipped = dict.fromkeys(names, reason)
        return result

    if task == "regression":
        _regression(result, _to_float(joined["label"]), _to_float(joined["prediction"]))
    else:
        _classification(result, joined, positive_label, has_score=score_column is not None)
    for name in names:
        if name not in result.metrics and name not in result.skipped:
            result.skipped[name] = "undefined"
    return result


def _regression(result: QualityResult, y_true: pd.Series, y_pred: pd.Series) -> None:
    from sklearn.metrics import mean_absolute_error, root_mean_squared_error

    _put(result, "mae", lambda: mean_absolute_error(y_true, y_pred), "undefined")
    _put(result, "rmse", lambda: root_mean_squared_error(y_true, y_pred), "undefined")


def _classification(
    result: QualityResult, joined: pd.DataFrame, positive_label: Any, *, has_score: bool
) -> None:
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    labels, predictions = joined["label"], joined["prediction"]
    probs = _probabilities(predictions)
    score: pd.Series | None = None
    if probs is not None:
        y_true = _align(labels)[0]
        classes = sorted(set(y_true.tolist()))
        if len(classes) > 2:
            result.skipped = dict.fromkeys(
                CLASSIFICATION_METRICS,
                f"probability predictions need binary labels; labels hold {len(classes)} classes",
            )
            return
        pos = _positive(positive_label, classes, numeric=_is_number_series(y_true))
        t = (y_true == pos).astype(int)
        p = (probs >= PROBABILITY_THRESHOLD).astype(int)
        score = probs
    else:
        y_true, y_pred = _align(labels, predictions)
        classes = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
        if len(classes) <= 2:
            pos = _positive(positive_label, classes, numeric=_is_number_series(y_true))
            t, p = (y_true == pos).astype(int), (y_pred == pos).astype(int)
        else:
            pos = None
    if has_score:
        score = pd.to_numeric(joined["_score"], errors="coerce")

    if pos is None:  # multiclass: macro averages over the classes present
        result.average = "macro"
        _put(result, "accuracy", lambda: accuracy_score(y_true, y_pred), "undefined")
        for name, fn in (
            ("precision", precision_score),
            ("recall", recall_score),
            ("f1", f1_score),
        ):
            _put(
                result,
                name,
                lambda fn=fn: fn(y_true, y_pred, average="macro", zero_division=np.nan),
                "undefined",
            )
        result.skipped["roc_auc"] = (
            "multiclass: one score column cannot rank several classes"
            if score is not None
            else "no_score: predictions are class labels; pass score_column for ROC AUC"
        )
        return

    result.average = "binary"
    result.positive_label = pos
    kw: dict[str, Any] = {"pos_label": 1, "zero_division": np.nan}
    _put(result, "accuracy", lambda: accuracy_score(t, p), "undefined")
    _put(result, "precision", lambda: precision_score(t, p, **kw), "no_predicted_positives")
    _put(result, "recall", lambda: recall_score(t, p, **kw), "no_actual_positives")
    _put(result, "f1", lambda: f1_score(t, p, **kw), "no_positives")
    if score is None:
        result.skipped["roc_auc"] = (
            "no_score: predictions are class labels; pass score_column for ROC AUC"
        )
        return
    finite = np.isfinite(score.to_numpy(dtype=np.float64, na_value=np.nan))
    if not finite.any():
        result.skipped["roc_auc"] = "no_score: the score column holds no numbers"
        return
    t_scored = t[finite]
    if t_scored.nunique() < 2:
        only = "positive" if int(t_scored.iloc[0]) == 1 else "negative"
        result.skipped["roc_auc"] = f"one_class: every label is {only}; ROC AUC needs both"
        return
    s_scored = score[finite]
    _put(result, "roc_auc", lambda: roc_auc_score(t_scored, s_scored), "undefined")


def _put(result: QualityResult, name: str, fn: Any, reason_if_nan: str) -> None:
    """Store ``fn()`` as metric ``name``; NaN/inf -> skipped with ``reason_if_nan``,
    a ValueError from scikit-learn -> skipped with its message."""
    try:
        value = float(fn())
    except ValueError as exc:
        result.skipped[name] = f"error: {exc}"
        return
    if math.isfinite(value):
        result.metrics[name] = value
    else:
        result.skipped[name] = reason_if_nan


# --- alignment ----------------------------------------------------------------------


def _to_float(s: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(s):
        return s.astype(np.float64)
    if pd.api.types.is_numeric_dtype(s):
        return s.astype(np.float64)
    return pd.to_numeric(s.astype(str).str.strip(), errors="coerce").astype(np.float64)


def _as_number(s: pd.Series) -> pd.Series | None:
    """``s`` as float64 when every (non-null) value reads as a number, else None."""
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
        return s.astype(np.float64)
    parsed = pd.to_numeric(s.astype(str).str.strip(), errors="coerce")
    return parsed.astype(np.float64) if parsed.notna().all() else None


def _is_number_series(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _as_text(s: pd.Series) -> pd.Series:
    def one(v: Any) -> str:
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v).strip()

    return s.map(one).astype(object)


def _align(*columns: pd.Series) -> list[pd.Series]:
    """Bring label columns to one type: numbers (int when all whole) if every value of
    every column reads as a number, else strings."""
    numbers = [_as_number(s) for s in columns]
    if all(n is not None for n in numbers):
        nums = [n for n in numbers if n is not None]
        if all(bool(np.all(np.mod(n.to_numpy(), 1) == 0)) for n in nums):
            return [n.astype(np.int64) for n in nums]
        return nums
    return [_as_text(s) for s in columns]


def _probabilities(predictions: pd.Series) -> pd.Series | None:
    """The predictions as floats when they are probabilities (all in [0, 1], not all 0/1)."""
    if not (
        pd.api.types.is_numeric_dtype(predictions) and not pd.api.types.is_bool_dtype(predictions)
    ):
        return None
    values = predictions.astype(np.float64)
    if bool(((values >= 0) & (values <= 1)).all()) and not bool(values.isin([0.0, 1.0]).all()):
        return values
    return None


def _positive(given: Any, classes: list[Any], *, numeric: bool) -> Any:
    """The positive class: ``given`` aligned to the label type, or the default."""
    if given is None:
        if numeric and set(classes) <= {0, 1}:
            return 1
        return classes[-1]
    if numeric:
        n = _as_number(pd.Series([given]))
        pos: Any = given if n is None else n.iloc[0]
        if isinstance(pos, float) and pos.is_integer():
            pos = int(pos)
    else:
        pos = _as_text(pd.Series([given], dtype=object)).iloc[0]
    if len(classes) == 2 and pos not in classes:
        raise DriftError(
            f"positive_label {given!r} is not one of the classes {[_jsonable(c) for c in classes]}"
        )
    return pos


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v
