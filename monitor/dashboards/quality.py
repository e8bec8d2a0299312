"""Data quality and drift: what the models receive (feature coverage, unexpected inputs,
parse errors), how it compares with the training data (the drift job), how good the
answers are (model quality from delayed labels) and what they are (predictions).

Panel groups follow the spec: feature and drift panels when a model declares
``features``, model quality when one has ``labels``, class shares for categorical outputs
and quantiles for numerical ones.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, stat, timeseries

from monitor import conventions as c
from monitor.dashboards.overview import model_variable
from monitor.dashboards.panels import (
    above,
    below,
    datasource_variable,
    legend,
    query,
    row,
    runbooks,
    stat_panel,
    timeseries_panel,
)
from monitor.dashboards.queries import RATE_WINDOW, Matcher, sel, var
from monitor.spec import MonitorSpec

__all__ = ["TITLE", "quality"]

TITLE = "Data quality and drift"
"""Dashboard title after ``<service> / ``."""

_M, _F = c.LABEL_MODEL, c.LABEL_FEATURE
_RATE = RATE_WINDOW


def _scope(**extra: str | Matcher) -> dict[str, str | Matcher]:
    return {_M: var("model"), **extra}


# --- inputs --------------------------------------------------------------------------------


def feature_coverage(spec: MonitorSpec) -> timeseries.Panel:
    """Present share of each feature's values."""
    present = sel(c.FEATURE_VALUES_TOTAL, _scope(**{c.LABEL_STATE: c.STATE_PRESENT}))
    values = sel(c.FEATURE_VALUES_TOTAL, _scope())
    by = f"sum by ({_M}, {_F})"
    floor = spec.alerting.min_coverage
    return (
        timeseries_panel(
            "Feature coverage",
            "Share of each feature's values that were present and valid "
            f'(`{c.FEATURE_VALUES_TOTAL}{{state="{c.STATE_PRESENT}"}}` over all states), one '
            f"line per feature. The alert floor is `alerting.min_coverage` ({floor:.0%}) unless "
            "the feature sets its own `min_coverage`. Empty without traffic.",
            "percentunit",
            query(
                f"{by} (rate({present}{_RATE}))\n/\n({by} (rate({values}{_RATE})) > 0)",
                legend(_M, _F),
            ),
            books=runbooks(spec, c.ALERT_FEATURE_COVERAGE_LOW),
        )
        .min(0)
        .max(1)
        .thresholds(below(floor))
    )


def failing_states() -> timeseries.Panel:
    """Share of values per feature in each failing state, only where there are some."""
    bad = sel(c.FEATURE_VALUES_TOTAL, _scope(**{c.LABEL_STATE: Matcher("!=", c.STATE_PRESENT)}))
    values = sel(c.FEATURE_VALUES_TOTAL, _scope())
    return timeseries_panel(
        "Failing feature values by state",
        "Share of each feature's values that were "
        + ", ".join(f"`{s}`" for s in c.FEATURE_STATES if s != c.STATE_PRESENT)
        + " (see docs/metrics.md, feature states). Only feature/state pairs above 0 are "
        "drawn, so an empty panel means every value was usable.",
        "percentunit",
        query(
            f"sum by ({_M}, {_F}, {c.LABEL_STATE}) (rate({bad}{_RATE}))\n"
            f"/ on ({_M}, {_F}) group_left ()\n"
            f"(sum by ({_M}, {_F}) (rate({values}{_RATE})) > 0)\n> 0",
            f"{legend(_F)}: {legend(c.LABEL_STATE)}",
        ),
    )


def unexpected_features(spec: MonitorSpec) -> timeseries.Panel:
    """Input values whose name the spec does not declare."""
    return timeseries_panel(
        "Unexpected features",
        "Input values per second whose name is not a spec feature (extra keys, tensor "
        f"columns or inputs; `{c.UNEXPECTED_FEATURES_TOTAL}`): a client sends new fields, "
        "or the spec is behind the model's schema.",
        "cps",
        query(
            f"sum by ({_M}) (rate({sel(c.UNEXPECTED_FEATURES_TOTAL, _scope())}{_RATE}))",
            legend(_M),
        ),
        books=runbooks(spec, c.ALERT_UNEXPECTED_FEATURES),
        width=6,
    )


def parse_errors(spec: MonitorSpec) -> timeseries.Panel:
    """Request bodies the sidecar could not read, by reason."""
    return timeseries_panel(
        "Payload parse errors",
        "Inference request bodies per second the sidecar could not read, by reason "
        f"(`{c.PAYLOAD_ERRORS_TOTAL}`). They reached the model untouched, but their "
        "features are not counted in coverage or captured for drift.",
        "reqps",
        query(
            f"sum by ({_M}, {c.LABEL_REASON}) "
            f"(rate({sel(c.PAYLOAD_ERRORS_TOTAL, _scope())}{_RATE}))",
            legend(_M, c.LABEL_REASON),
        ),
        books=runbooks(spec, c.ALERT_PAYLOAD_PARSE_ERRORS),
        width=6,
    )


# --- drift ---------------------------------------------------------------------------------


def drift_scores(spec: MonitorSpec) -> timeseries.Panel:
    """Each feature's drift score and the threshold its method applies."""
    by = f"max by ({_M}, {_F}, {c.LABEL_METHOD})"
    return timeseries_panel(
        "Drift score by feature, against its threshold",
        "Score of each feature in the last drift run (`"
        f"{c.DRIFT_SCORE}`) and the threshold of its method (`{c.DRIFT_THRESHOLD}`). For "
        "p-value methods (`ks`, `chisquare`, `z`, `mannw`, `t_test`) a score *below* the "
        "threshold is drift; for distances (`wasserstein`, `psi`, `jensenshannon`, ...) a "
        "score *at or above* it. Features without a score are in *Feature drift status*.",
        "none",
        query(f"{by} ({sel(c.DRIFT_SCORE, _scope())})", f"{legend(_F)} {legend(c.LABEL_METHOD)}"),
        query(
            f"{by} ({sel(c.DRIFT_THRESHOLD, _scope())})",
            f"{legend(_F)} threshold",
        ),
        books=runbooks(spec, c.ALERT_FEATURE_DRIFT),
    )


def dataset_drift_share(spec: MonitorSpec) -> timeseries.Panel:
    """Share of scored features that drifted."""
    share = spec.drift.drift_share
    return (
        timeseries_panel(
            "Dataset drift share",
            f"Share of scored features that drifted in the last run (`{c.DATASET_DRIFT_SHARE}`). "
            f"At `drift.drift_share` ({share:.0%}) or more the dataset has drifted.",
            "percentunit",
            query(f"max by ({_M}) ({sel(c.DATASET_DRIFT_SHARE, _scope())})", legend(_M)),
            books=runbooks(spec, c.ALERT_DATASET_DRIFT_DETECTED),
            width=6,
        )
        .min(0)
        .max(1)
        .thresholds(above(share))
    )


def drift_status() -> timeseries.Panel:
    """Features per drift status (ok, insufficient_data, skipped, undefined)."""
    return timeseries_panel(
        "Feature drift status",
        f"Features per status in the last run (`{c.DRIFT_FEATURE_STATUS}`): `ok` have a "
        "score; `insufficient_data`, `skipped` and `undefined` have none (the reason is a "
        "label of the series; see docs/drift.md).",
        "short",
        query(
            f"sum by ({_M}, {c.LABEL_STATUS}) ({sel(c.DRIFT_FEATURE_STATUS, _scope())})",
            legend(_M, c.LABEL_STATUS),
        ),
        width=6,
    )


def drift_last_success(spec: MonitorSpec) -> stat.Panel:
    """Age of the last successful drift run."""
    stale = 3 * spec.drift.schedule_seconds
    return stat_panel(
        "Last successful drift run",
        "Seconds since the drift job last succeeded "
        f"(`time() - {c.DRIFT_LAST_SUCCESS_TIMESTAMP_SECONDS}`). Older than three "
        f"schedules ({stale:g} s) means the drift and quality panels show old values.",
        "s",
        query(
            f"time() - max by ({_M}) ({sel(c.DRIFT_LAST_SUCCESS_TIMESTAMP_SECONDS, _scope())})",
            legend(_M),
        ),
        books=runbooks(spec, c.ALERT_DRIFT_JOB_STALE),
        no_value="never",
    ).thresholds(above(stale))


def drift_runs(spec: MonitorSpec) -> timeseries.Panel:
    """Drift runs by result."""
    return timeseries_panel(
        "Drift runs by result",
        f"Drift runs by result (`{c.DRIFT_RUNS_TOTAL}`): `{c.DRIFT_RESULT_SUCCESS}` or "
        f"`{c.DRIFT_RESULT_FAILURE}`. A failed run keeps the last good values.",
        "short",
        query(
            f"sum by ({_M}, {c.LABEL_RESULT}) "
            f"(increase({sel(c.DRIFT_RUNS_TOTAL, _scope())}{_RATE}))",
            legend(_M, c.LABEL_RESULT),
        ),
        books=runbooks(spec, c.ALERT_DRIFT_JOB_FAILING),
        width=6,
    )


def drift_rows() -> timeseries.Panel:
    """Rows compared per window."""
    return timeseries_panel(
        "Rows compared",
        f"Rows in the reference and the current window of the last run (`{c.DRIFT_ROWS}`); "
        f"below `drift.min_rows` a feature gets no verdict.",
        "short",
        query(
            f"max by ({_M}, {c.LABEL_DATASET}) ({sel(c.DRIFT_ROWS, _scope())})",
            legend(_M, c.LABEL_DATASET),
        ),
        width=6,
    )


# --- model quality ---------------------------------------------------------------------------


def model_quality(spec: MonitorSpec) -> timeseries.Panel:
    """Quality metrics from delayed labels."""
    floors = "; ".join(
        f"{m.name}: " + ", ".join(f"{k} {v:g}" for k, v in sorted(m.quality_min.items()))
        for m in spec.models
        if m.quality_min
    )
    books = runbooks(spec, c.ALERT_MODEL_QUALITY_LOW) if floors else ()
    return timeseries_panel(
        "Model quality",
        "Quality of the predictions that have a delayed label, computed by the drift job "
        f"(`{c.MODEL_QUALITY}`): accuracy, precision, recall, f1 and roc_auc for "
        "classifiers (0-1), mae and rmse for regressors (the target's unit)."
        + (f" Floors: {floors}." if floors else ""),
        "none",
        query(
            f"max by ({_M}, {c.LABEL_METRIC}) ({sel(c.MODEL_QUALITY, _scope())})",
            legend(_M, c.LABEL_METRIC),
        ),
        books=books,
        width=18,
    )


def labelled_rows() -> stat.Panel:
    """Predictions joined with a label."""
    return stat_panel(
        "Labelled predictions",
        f"Predictions of the current window joined with a label (`{c.MODEL_QUALITY_ROWS}`): "
        "the sample behind *Model quality*.",
        "short",
        query(f"max by ({_M}) ({sel(c.MODEL_QUALITY_ROWS, _scope())})", legend(_M)),
        no_value="no labels",
        height=8,
    )


# --- predictions -----------------------------------------------------------------------------


def class_share() -> timeseries.Panel:
    """Share of each predicted class."""
    preds = sel(c.PREDICTIONS_TOTAL, _scope())
    by = f"sum by ({_M}, {c.LABEL_OUTPUT})"
    return (
        timeseries_panel(
            "Predicted class share",
            "Share of rows predicted as each class, per categorical output "
            f"(`{c.PREDICTIONS_TOTAL}`); `{c.CLASS_OTHER}` is a class the spec does not "
            "declare. A shift here without drift in the inputs points at the model.",
            "percentunit",
            query(
                f"sum by ({_M}, {c.LABEL_OUTPUT}, {c.LABEL_CLASS}) (rate({preds}{_RATE}))\n"
                f"/ on ({_M}, {c.LABEL_OUTPUT}) group_left ()\n({by} (rate({preds}{_RATE})) > 0)",
                legend(_M, c.LABEL_OUTPUT, c.LABEL_CLASS),
            ),
        )
        .min(0)
        .max(1)
    )


def prediction_quantiles() -> timeseries.Panel:
    """Median and p90 of numerical outputs."""
    buckets = sel(f"{c.PREDICTION_VALUE}_bucket", _scope())
    by = f"sum by ({_M}, {c.LABEL_OUTPUT}, {c.LABEL_LE})"
    return timeseries_panel(
        "Prediction value p50 / p90",
        "Median and 90th percentile of each numerical output, from the sidecar's "
        f"histogram (`{c.PREDICTION_VALUE}`; its buckets are the outputs' `buckets`).",
        "none",
        *(
            query(
                f"histogram_quantile({q}, {by} (rate({buckets}{_RATE})))",
                f"{legend(_M, c.LABEL_OUTPUT)} p{round(q * 100)}",
            )
            for q in (0.5, 0.9)
        ),
    )


def quality(spec: MonitorSpec) -> dashboard.Dashboard:
    """The data quality and drift dashboard of ``spec``; panel groups follow the spec."""
    has_features = any(m.features for m in spec.models)
    has_labels = any(m.labels is not None for m in spec.models)
    outputs = [o for m in spec.models for o in m.outputs]
    board = (
        dashboard.Dashboard(f"{spec.service} / {TITLE}")
        .description(
            "What the models receive, how it compares with the training data, and what they answer."
        )
        .with_variable(datasource_variable())
        .with_variable(model_variable())
        .with_row(row("Inputs"))
    )
    if has_features:
        board = board.with_panel(feature_coverage(spec)).with_panel(failing_states())
    board = board.with_panel(unexpected_features(spec)).with_panel(parse_errors(spec))
    if has_features:
        board = (
            board.with_row(row("Drift (last run of the drift job)"))
            .with_panel(drift_scores(spec))
            .with_panel(dataset_drift_share(spec))
            .with_panel(drift_status())
            .with_panel(drift_last_success(spec))
            .with_panel(drift_runs(spec))
            .with_panel(drift_rows())
        )
    if has_labels:
        board = (
            board.with_row(row("Model quality (delayed labels)"))
            .with_panel(model_quality(spec))
            .with_panel(labelled_rows())
        )
    board = board.with_row(row("Predictions"))
    if any(o.type == "categorical" for o in outputs):
        board = board.with_panel(class_share())
    if any(o.type == "numerical" for o in outputs):
        board = board.with_panel(prediction_quantiles())
    return board
