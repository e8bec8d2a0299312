"""Mitigations: what ``monitor mitigator`` did (actions by outcome, webhook deliveries,
duplicates) and the state it left the sidecars in (routing, shedding, quarantine), with
the alerts that carry a ``mitigation`` label and the actions as annotations."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, timeseries

from monitor import conventions as c
from monitor.dashboards.overview import ALERTS_METRIC, ALERTSTATE_LABEL, model_variable
from monitor.dashboards.panels import (
    datasource_ref,
    datasource_variable,
    legend,
    query,
    row,
    runbooks,
    timeseries_panel,
)
from monitor.dashboards.queries import RATE_WINDOW, Matcher, sel, var
from monitor.spec import MonitorSpec

__all__ = ["TITLE", "mitigations"]

TITLE = "Mitigations"
"""Dashboard title after ``<service> / ``."""

_M, _I = c.LABEL_MODEL, c.LABEL_INSTANCE
_RATE = RATE_WINDOW
_POLICY = legend(c.LABEL_POLICY, c.LABEL_ACTION)


def actions(spec: MonitorSpec) -> timeseries.Panel:
    """Mitigation jobs by outcome, counted since the mitigator started."""
    return timeseries_panel(
        "Mitigation actions by outcome",
        f"Jobs the mitigator ran since it started (`{c.MITIGATION_ACTIONS_TOTAL}`), by "
        f"policy, action (`_revert` for reverts) and outcome: `{c.MITIGATION_SUCCESS}`, "
        f"`{c.MITIGATION_FAILURE}` (escalated to the pager), `{c.MITIGATION_DRY_RUN}`, "
        f"`{c.MITIGATION_SKIPPED}` (cooldown or rate limit). Each step up is one job; the "
        "annotations mark when. Totals, not rates: a policy's first job creates its series "
        "at 1, which `increase()` cannot see.",
        "short",
        query(
            f"sum by ({c.LABEL_POLICY}, {c.LABEL_ACTION}, {c.LABEL_OUTCOME}) "
            f"({c.MITIGATION_ACTIONS_TOTAL})",
            f"{_POLICY} {legend(c.LABEL_OUTCOME)}",
        ),
        books=runbooks(spec, c.ALERT_MITIGATION_FAILING),
    )


def action_duration() -> timeseries.Panel:
    """Mean time a job took, since the mitigator started."""
    d = c.MITIGATION_ACTION_DURATION_SECONDS
    by = f"sum by ({c.LABEL_POLICY}, {c.LABEL_ACTION})"
    return timeseries_panel(
        "Mean action duration",
        f"Mean time a mitigation job took since the mitigator started, retries included "
        f"(`{d}` sum over count; jobs are too rare for a percentile over a short window).",
        "s",
        query(f"{by} ({d}_sum)\n/\n({by} ({d}_count) > 0)", _POLICY),
    )


def notifications() -> timeseries.Panel:
    """Webhook deliveries by result, duplicates and truncated alerts."""
    return timeseries_panel(
        "Webhook notifications",
        f"Alertmanager deliveries to the mitigator by result (`{c.WEBHOOK_NOTIFICATIONS_TOTAL}`"
        "; `unauthorized`, `too_large`, `invalid` are rejected, `unavailable` means the "
        f"store failed and Alertmanager retries), alert deliveries that planned nothing new "
        f"(`{c.WEBHOOK_DUPLICATES_TOTAL}`: an HA pair or a retry) and alerts Alertmanager "
        f"left out (`{c.WEBHOOK_TRUNCATED_ALERTS_TOTAL}`).",
        "short",
        query(
            f"sum by ({c.LABEL_RESULT}) (increase({c.WEBHOOK_NOTIFICATIONS_TOTAL}{_RATE}))",
            legend(c.LABEL_RESULT),
        ),
        query(f"sum(increase({c.WEBHOOK_DUPLICATES_TOTAL}{_RATE}))", "duplicates"),
        query(f"sum(increase({c.WEBHOOK_TRUNCATED_ALERTS_TOTAL}{_RATE}))", "truncated alerts"),
    )


def mitigator_health() -> timeseries.Panel:
    """Pending jobs and the store."""
    return timeseries_panel(
        "Pending jobs and store",
        f"Jobs planned and not yet run (`{c.MITIGATION_JOBS_PENDING}`: a revert held by "
        f"`revert_hold_seconds`, or a backlog) and whether the store answered "
        f"(`{c.MITIGATOR_STORE_UP}`; at 0 webhooks get 503 and Alertmanager retries).",
        "short",
        query(f"max({c.MITIGATION_JOBS_PENDING})", "pending jobs"),
        query(f"min({c.MITIGATOR_STORE_UP})", "store up"),
    )


def routing() -> timeseries.Panel:
    """Share of traffic per upstream, per sidecar."""
    return (
        timeseries_panel(
            "Sidecar routing",
            f"Share of new requests each sidecar routes to its `{c.UPSTREAM_PRIMARY}` and "
            f"`{c.UPSTREAM_FALLBACK}` upstream (`{c.ROUTE_WEIGHT}`, set by the control API; "
            "`shift-to-fallback` style mitigations set the fallback to 100%).",
            "percentunit",
            query(
                f"max by ({_M}, {_I}, {c.LABEL_UPSTREAM}) "
                f"({sel(c.ROUTE_WEIGHT, {_M: var('model')})})",
                legend(_M, _I, c.LABEL_UPSTREAM),
            ),
            width=8,
        )
        .min(0)
        .max(1)
    )


def shedding() -> timeseries.Panel:
    """Concurrency limit and requests shed."""
    scope: dict[str, str | Matcher] = {_M: var("model")}
    return timeseries_panel(
        "Load shedding",
        f"The control API's concurrency limit per sidecar (`{c.CONCURRENCY_LIMIT}`, 0 = "
        f"none) and requests per second answered 503 because of it "
        f"(`{c.REQUESTS_SHED_TOTAL}`).",
        "short",
        query(
            f"max by ({_M}, {_I}) ({sel(c.CONCURRENCY_LIMIT, scope)})",
            f"limit {legend(_M, _I)}",
        ),
        query(
            f"sum by ({_M}, {_I}) (rate({sel(c.REQUESTS_SHED_TOTAL, scope)}{_RATE}))",
            f"shed/s {legend(_M, _I)}",
        ),
        width=8,
    )


def quarantine() -> timeseries.Panel:
    """Quarantined replicas."""
    return (
        timeseries_panel(
            "Quarantined",
            f"1 while the control API quarantines the replica (`{c.QUARANTINED}`): its "
            "`/-/ready` answers 503 so load balancers route around it; requests that still "
            "arrive are served.",
            "bool_yes_no",
            query(
                f"max by ({_M}, {_I}) ({sel(c.QUARANTINED, {_M: var('model')})})",
                legend(_M, _I),
            ),
            width=8,
        )
        .min(0)
        .max(1)
    )


def mitigated_alerts() -> dashboard.AnnotationQuery:
    """Annotation: alerts that carry a ``mitigation`` label, while they fire."""
    firing = sel(ALERTS_METRIC, {ALERTSTATE_LABEL: "firing", c.LABEL_MITIGATION: Matcher("!=", "")})
    return (
        dashboard.AnnotationQuery()
        .name("Alerts with a mitigation")
        .datasource(datasource_ref())
        .enable(True)
        .icon_color("red")
        .expr(firing)
    )


def action_events() -> dashboard.AnnotationQuery:
    """Annotation: the moments mitigation jobs ran."""
    total = c.MITIGATION_ACTIONS_TOTAL
    by = f"sum by ({c.LABEL_POLICY}, {c.LABEL_ACTION}, {c.LABEL_OUTCOME})"
    return (
        dashboard.AnnotationQuery()
        .name("Mitigation actions")
        .datasource(datasource_ref())
        .enable(True)
        .icon_color("orange")
        # A job of a policy that never ran before creates its series at 1: the second
        # branch marks that first job, which increase() misses.
        .expr(
            f"{by} (increase({total}{_RATE})) > 0\n"
            f"or\n{by} ({total} unless {total} offset $__rate_interval)"
        )
    )


def mitigations(spec: MonitorSpec) -> dashboard.Dashboard:
    """The mitigations dashboard of ``spec``."""
    return (
        dashboard.Dashboard(f"{spec.service} / {TITLE}")
        .description(
            "What the mitigator did and the routing, shedding and quarantine state it left "
            "the sidecars in."
        )
        .with_variable(datasource_variable())
        .with_variable(model_variable())
        .annotation(mitigated_alerts())
        .annotation(action_events())
        .with_row(row("Mitigator"))
        .with_panel(actions(spec))
        .with_panel(action_duration())
        .with_panel(notifications())
        .with_panel(mitigator_health())
        .with_row(row("Sidecar control state"))
        .with_panel(routing())
        .with_panel(shedding())
        .with_panel(quarantine())
    )
