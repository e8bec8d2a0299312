"""Service overview: RED (rate, errors, duration) per model, the SLOs and firing alerts.

Sidecar series are filtered by ``$model``, ``$version`` and ``$instance`` (the sidecar
target); the SLO series are recording rules of :mod:`monitor.rules`, by ``model`` and
``slo``.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, stat, table, timeseries

from monitor import conventions as c
from monitor.dashboards.panels import (
    above,
    datasource_variable,
    legend,
    query,
    query_variable,
    row,
    runbooks,
    stat_panel,
    steps,
    table_panel,
    table_query,
    timeseries_panel,
)
from monitor.dashboards.queries import RATE_WINDOW, Matcher, sel, var
from monitor.rules import burn_rate_windows
from monitor.spec import MonitorSpec

__all__ = [
    "ALERTSTATE_LABEL",
    "ALERTS_METRIC",
    "TITLE",
    "instance_variable",
    "model_variable",
    "overview",
    "sidecar_scope",
    "version_variable",
]

TITLE = "Service overview"
"""Dashboard title after ``<service> / ``."""

ALERTS_METRIC = c.ALERTS
"""Prometheus' own series of pending and firing alerts (one per alert, value 1)."""
ALERTSTATE_LABEL = c.LABEL_ALERTSTATE
"""``pending`` or ``firing`` on :data:`ALERTS_METRIC`."""

_M, _V, _I = c.LABEL_MODEL, c.LABEL_VERSION, c.LABEL_INSTANCE
_RATE = RATE_WINDOW


def sidecar_scope(*, version: bool = True) -> dict[str, str | Matcher]:
    """Matchers of a sidecar series: ``$model`` and ``$instance``, and ``$version`` for
    the families that carry a ``version`` label."""
    scope: dict[str, str | Matcher] = {_M: var("model")}
    if version:
        scope[_V] = var("version")
    scope[_I] = var("instance")
    return scope


def model_variable() -> dashboard.QueryVariable:
    """``$model``: the models whose sidecars report ``mlmon_model_info``."""
    return query_variable("model", "Model", f"label_values({c.MODEL_INFO}, {_M})")


def version_variable() -> dashboard.QueryVariable:
    """``$version``: the versions the selected models serve now."""
    return query_variable(
        "version", "Version", f"label_values({sel(c.MODEL_INFO, {_M: var('model')})}, {_V})"
    )


def instance_variable() -> dashboard.QueryVariable:
    """``$instance``: the sidecar targets of the selected models."""
    return query_variable(
        "instance", "Sidecar", f"label_values({sel(c.MODEL_INFO, {_M: var('model')})}, {_I})"
    )


# --- traffic -------------------------------------------------------------------------------


def request_rate() -> timeseries.Panel:
    """Requests per second by model and HTTP status."""
    return timeseries_panel(
        "Request rate",
        "Requests per second through the sidecars, by model and the HTTP status sent to "
        "the client (`mlmon_requests_total`, counted when a request ends).",
        "reqps",
        query(
            f"sum by ({_M}, {c.LABEL_CODE}) "
            f"(rate({sel(c.REQUESTS_TOTAL, sidecar_scope())}{_RATE}))",
            legend(_M, c.LABEL_CODE),
        ),
        width=8,
    )


def error_ratio(spec: MonitorSpec) -> timeseries.Panel:
    """Share of requests per outcome other than ok."""
    errors = sel(c.REQUESTS_TOTAL, {**sidecar_scope(), c.LABEL_OUTCOME: Matcher("!=", "ok")})
    total = sel(c.REQUESTS_TOTAL, sidecar_scope())
    return timeseries_panel(
        "Error ratio by outcome",
        "Share of requests by outcome other than `ok`. `server_error`, `timeout` and "
        "`unreachable` count against the availability SLO; `client_error` (4xx) and "
        "`client_cancelled` (the client left) do not. Empty when there is no traffic "
        "(the denominator is guarded, so never NaN).",
        "percentunit",
        query(
            f"sum by ({_M}, {c.LABEL_OUTCOME}) (rate({errors}{_RATE}))\n"
            f"/ on ({_M}) group_left ()\n"
            f"(sum by ({_M}) (rate({total}{_RATE})) > 0)",
            legend(_M, c.LABEL_OUTCOME),
        ),
        books=runbooks(spec, c.ALERT_ERROR_BUDGET_BURN),
        width=8,
    )


def latency(spec: MonitorSpec) -> timeseries.Panel:
    """p50, p90 and p99 of the request duration."""
    buckets = sel(f"{c.REQUEST_DURATION_SECONDS}_bucket", sidecar_scope())
    slos = "; ".join(
        f"{s.model}/{s.name}: {s.objective:.4g} within {s.threshold_seconds:g}s"
        for s in spec.slos
        if s.threshold_seconds is not None
    )
    return timeseries_panel(
        "Latency p50 / p90 / p99",
        "Request duration percentiles from the sidecar histogram "
        f"(`{c.REQUEST_DURATION_SECONDS}`), over every selected model and replica: "
        "`histogram_quantile` over `sum by (le)`. A percentile that sits exactly on a "
        "bucket bound at the top of the layout is saturated, not measured (case C20): "
        "see *Requests above the top latency bucket*."
        + (f" Latency SLOs: {slos}." if slos else ""),
        "s",
        *(
            query(
                f"histogram_quantile({q}, sum by ({c.LABEL_LE}) (rate({buckets}{_RATE})))",
                f"p{round(q * 100)}",
            )
            for q in (0.5, 0.9, 0.99)
        ),
        books=runbooks(spec, c.ALERT_LATENCY_BUDGET_BURN),
        width=8,
    )


def latency_saturation(spec: MonitorSpec) -> timeseries.Panel:
    """Share of requests above the top finite latency bucket (case C20)."""
    t = spec.alerting.max_latency_saturation_ratio
    return timeseries_panel(
        "Requests above the top latency bucket",
        "Share of requests slower than the largest finite bucket of the latency "
        f"histogram, over 5 m (recording rule `{c.LATENCY_SATURATION_RATIO}`). Above "
        f"{t:.2%} the high percentiles read the bucket bound instead of the real latency "
        "(case C20): widen `latency_buckets`.",
        "percentunit",
        query(
            f"max by ({_M}) ({sel(c.LATENCY_SATURATION_RATIO, {_M: var('model')})})",
            legend(_M),
        ),
        books=runbooks(spec, c.ALERT_LATENCY_HISTOGRAM_SATURATED),
        width=8,
    ).thresholds(above(t))


def inflight() -> timeseries.Panel:
    """Requests in flight per sidecar."""
    return timeseries_panel(
        "In-flight requests",
        "Requests started and not yet finished, per model and sidecar "
        f"(`{c.INFLIGHT_REQUESTS}`). A climb with flat request rate means the model "
        "server slows down.",
        "short",
        query(
            f"sum by ({_M}, {_I}) ({sel(c.INFLIGHT_REQUESTS, sidecar_scope(version=False))})",
            legend(_M, _I),
        ),
        width=8,
    )


def upstream_up(spec: MonitorSpec) -> timeseries.Panel:
    """Readiness of the model server behind each sidecar, and the sidecar scrape."""
    scope = sidecar_scope(version=False)
    scraped = sel(c.UP, {c.LABEL_JOB: spec.alerting.sidecar_job, _I: var("instance")})
    return (
        timeseries_panel(
            "Upstream ready and sidecar scraped",
            f"`{c.UPSTREAM_UP}`: 1 when the model server passed the sidecar's last readiness "
            f"probe (the sidecar's `/-/ready`). `{c.UP}`: 1 when Prometheus scraped the sidecar "
            f"(job `{spec.alerting.sidecar_job}`).",
            "bool_yes_no",
            query(
                f"min by ({_M}, {_I}) ({sel(c.UPSTREAM_UP, scope)})",
                f"upstream {legend(_M, _I)}",
            ),
            query(
                f"min by ({_I}) ({scraped})",
                f"scrape {legend(_I)}",
            ),
            books=runbooks(spec, c.ALERT_UPSTREAM_NOT_READY, c.ALERT_SIDECAR_DOWN),
            width=8,
        )
        .min(0)
        .max(1)
    )


# --- SLOs ----------------------------------------------------------------------------------


def _slo_scope() -> dict[str, str | Matcher]:
    return {_M: var("model")}


def budget_remaining(spec: MonitorSpec) -> stat.Panel:
    """Share of each SLO's error budget left over its window."""
    return stat_panel(
        "Error budget remaining",
        "Share of each SLO's error budget left over its compliance window "
        f"(`{c.SLO_ERROR_BUDGET_REMAINING}`): 100% untouched, 0% spent, below 0 "
        "overspent. *no traffic* when the window has had no request (case C22: a "
        "quiet window gives no sample, never NaN).",
        "percentunit",
        query(
            f"min by ({_M}, {c.LABEL_SLO}) ({sel(c.SLO_ERROR_BUDGET_REMAINING, _slo_scope())})",
            legend(_M, c.LABEL_SLO),
        ),
        books=runbooks(spec, c.ALERT_ERROR_BUDGET_BURN, c.ALERT_LATENCY_BUDGET_BURN),
        no_value="no traffic",
        width=8,
        height=8,
    ).thresholds(steps("red", (0, "orange"), (0.25, "green")))  # spent, last quarter


def burn_rate(spec: MonitorSpec) -> timeseries.Panel:
    """Current (5 m) burn rate of each SLO."""
    factors = "; ".join(
        f"{s.model}/{s.name} ({s.window}): page above "
        + " or ".join(
            f"{w.factor:.4g}x"
            for w in burn_rate_windows(s.window_seconds)
            if w.severity == c.SEVERITY_PAGE
        )
        for s in spec.slos
    )
    return timeseries_panel(
        "Burn rate (5 m)",
        "Error ratio over the last 5 m divided by the error budget "
        f"(`{c.SLO_CURRENT_BURN_RATE}`): 1 spends the budget exactly over the window. The "
        "burn-rate alerts need a long and a short window over their factor, so a short "
        "spike here does not page." + (f" Page factors: {factors}." if factors else ""),
        "suffix:x",
        query(
            f"max by ({_M}, {c.LABEL_SLO}) ({sel(c.SLO_CURRENT_BURN_RATE, _slo_scope())})",
            legend(_M, c.LABEL_SLO),
        ),
        books=runbooks(spec, c.ALERT_ERROR_BUDGET_BURN, c.ALERT_LATENCY_BUDGET_BURN),
        width=8,
    )


def active_alerts() -> table.Panel:
    """Alerts firing now."""
    firing = sel(ALERTS_METRIC, {ALERTSTATE_LABEL: "firing", _M: var("model")})
    return table_panel(
        "Firing alerts",
        "Alerts firing now in this Prometheus (alerts without a `model` label, such as "
        "the GPU alerts, show while *Model* is All). Pending alerts are left out.",
        "short",
        table_query(
            f"sum by ({c.LABEL_ALERTNAME}, {c.LABEL_SEVERITY}, {_M}, {c.LABEL_SLO}) ({firing})"
        ),
        width=8,
        no_value="no alert firing",
    )


def overview(spec: MonitorSpec) -> dashboard.Dashboard:
    """The service overview dashboard of ``spec`` (title, variables and panels; the
    cross-cutting fields are stamped by :func:`monitor.dashboards.build.stamp`)."""
    return (
        dashboard.Dashboard(f"{spec.service} / {TITLE}")
        .description("Requests, errors, latency and SLOs of the models behind the sidecars.")
        .with_variable(datasource_variable())
        .with_variable(model_variable())
        .with_variable(version_variable())
        .with_variable(instance_variable())
        .with_row(row("Requests, errors, duration"))
        .with_panel(request_rate())
        .with_panel(error_ratio(spec))
        .with_panel(latency(spec))
        .with_panel(latency_saturation(spec))
        .with_panel(inflight())
        .with_panel(upstream_up(spec))
        .with_row(row("SLOs and alerts"))
        .with_panel(budget_remaining(spec))
        .with_panel(burn_rate(spec))
        .with_panel(active_alerts())
    )
