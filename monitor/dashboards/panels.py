"""Panel factories: every call returns a *new* grafana-foundation-sdk builder.

The SDK's builders mutate themselves (``.title()`` sets a field and returns ``self``), so
a module-level builder shared by two dashboards would carry the second one's changes
into the first. Each factory here builds from scratch; the per-dashboard modules
(:mod:`.overview`, :mod:`.quality`, :mod:`.gpu`, :mod:`.mitigations`) call them once per
panel, and the dashboard reads like the dashboard (the pattern of the SDK's
``examples/python/linux-node-overview``).

Data source, panel ids and ``refId``\\s are not set here: :func:`monitor.dashboards.build.stamp`
sets them over every panel in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardLink,
    DashboardLinkType,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from monitor import conventions as c
from monitor.dashboards.queries import ALL_VALUE
from monitor.spec import MonitorSpec

__all__ = [
    "Runbook",
    "above",
    "below",
    "datasource_ref",
    "datasource_variable",
    "legend",
    "query",
    "query_variable",
    "row",
    "runbooks",
    "stat_panel",
    "steps",
    "table_panel",
    "table_query",
    "timeseries_panel",
]

DATASOURCE_VARIABLE = "datasource"
"""Name of every dashboard's data source variable (``${datasource}`` in every ref)."""


def datasource_ref() -> DataSourceRef:
    """A new reference to the ``$datasource`` variable (Prometheus), for panels, targets,
    variables and annotations."""
    return DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VARIABLE}}}")


# --- runbooks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Runbook:
    """The runbook of an alert that backs a panel."""

    alert: str
    url: str
    """``<alerting.runbook_base_url>/<alert>.md`` (:func:`monitor.conventions.runbook_url`)."""


def runbooks(spec: MonitorSpec, *alerts: str) -> tuple[Runbook, ...]:
    """The runbooks of ``alerts`` (names from :mod:`monitor.conventions`) for ``spec``."""
    return tuple(Runbook(a, c.runbook_url(spec.alerting.runbook_base_url, a)) for a in alerts)


def _describe(description: str, books: Sequence[Runbook]) -> str:
    if not books:
        return description
    links = ", ".join(f"[{b.alert}]({b.url})" for b in books)
    return f"{description}\n\nAlert{'s' if len(books) > 1 else ''}: {links} (runbook)."


def _runbook_links(books: Sequence[Runbook]) -> list[Builder[DashboardLink]]:
    return [
        dashboard.DashboardLink(f"Runbook: {b.alert}")
        .type(DashboardLinkType.LINK)
        .url(b.url)
        .target_blank(True)
        for b in books
    ]


def legend(*labels: str) -> str:
    """A ``legendFormat`` naming each series by ``labels``: ``{{model}} {{slo}}``."""
    return " ".join(f"{{{{{label}}}}}" for label in labels)


# --- queries -----------------------------------------------------------------------------


def query(expr: str, legend: str = "") -> prometheus.Dataquery:
    """A range query drawn over time; ``legend`` is Grafana's ``legendFormat``
    (``{{model}}``)."""
    q = prometheus.Dataquery().expr(expr).range()
    return q.legend_format(legend) if legend else q


def table_query(expr: str) -> prometheus.Dataquery:
    """An instant query in table format: the current value of each series, one row each."""
    return prometheus.Dataquery().expr(expr).instant().format(PromQueryFormat.TABLE)


# --- thresholds --------------------------------------------------------------------------


def steps(base: str, *levels: tuple[float, str]) -> dashboard.ThresholdsConfig:
    """Absolute thresholds: color ``base`` below the first level, then each
    ``(value, color)`` from its value up."""
    return (
        dashboard.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(color=base), *(Threshold(value=v, color=col) for v, col in levels)])
    )


def above(value: float) -> dashboard.ThresholdsConfig:
    """Thresholds for "above ``value`` is bad": green, red from ``value``."""
    return steps("green", (value, "red"))


def below(value: float) -> dashboard.ThresholdsConfig:
    """Thresholds for "below ``value`` is bad": red, green from ``value``."""
    return steps("red", (value, "green"))


# --- panels ------------------------------------------------------------------------------


def timeseries_panel(
    title: str,
    description: str,
    unit: str,
    *targets: prometheus.Dataquery,
    books: Sequence[Runbook] = (),
    width: int = 12,
    height: int = 8,
) -> timeseries.Panel:
    """A time series panel: one line per series, legend as a table with the last value.

    Args:
        unit: a Grafana unit id (``reqps``, ``percentunit``, ``s``, ``bytes``).
        books: runbooks of the alerts that watch what the panel shows; linked from the
            description and the panel header.
        width: grid columns (of 24).
        height: grid rows (30 px each).
    """
    panel = (
        timeseries.Panel()
        .title(title)
        .description(_describe(description, books))
        .unit(unit)
        .span(width)
        .height(height)
        .line_width(1)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            common_builder.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        .targets(list(targets))
    )
    return panel.links(_runbook_links(books)) if books else panel


def stat_panel(
    title: str,
    description: str,
    unit: str,
    *targets: prometheus.Dataquery,
    books: Sequence[Runbook] = (),
    no_value: str = "no data",
    width: int = 6,
    height: int = 5,
) -> stat.Panel:
    """A stat panel: the last value of each series, big, with a sparkline.

    ``no_value`` is shown when the query returns nothing (e.g. ``no traffic`` for a
    ratio whose denominator is guarded with ``> 0``, case C22), never ``NaN``.
    """
    panel = (
        stat.Panel()
        .title(title)
        .description(_describe(description, books))
        .unit(unit)
        .no_value(no_value)
        .span(width)
        .height(height)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .targets(list(targets))
    )
    return panel.links(_runbook_links(books)) if books else panel


def table_panel(
    title: str,
    description: str,
    unit: str,
    *targets: prometheus.Dataquery,
    books: Sequence[Runbook] = (),
    no_value: str = "none",
    width: int = 12,
    height: int = 8,
) -> table.Panel:
    """A table of the current series (instant queries): labels as columns, the value
    last."""
    panel = (
        table.Panel()
        .title(title)
        .description(_describe(description, books))
        .unit(unit)
        .no_value(no_value)
        .span(width)
        .height(height)
        # Grafana's own defaults, written out so the JSON reads back unchanged.
        .align(common.FieldTextAlignment.AUTO)
        .inspect(False)
        .targets(list(targets))
    )
    return panel.links(_runbook_links(books)) if books else panel


def row(title: str) -> dashboard.Row:
    """A (not collapsed) row: the panels added after it sit under it."""
    return dashboard.Row(title)


# --- variables ---------------------------------------------------------------------------


def datasource_variable() -> dashboard.DatasourceVariable:
    """``$datasource``: any Prometheus data source; every panel and query uses it."""
    return (
        dashboard.DatasourceVariable(DATASOURCE_VARIABLE)
        .label("Data source")
        .type("prometheus")
        .multi(False)
    )


def query_variable(name: str, label: str, query_text: str) -> dashboard.QueryVariable:
    """A multi-value variable from ``label_values(...)`` with "All" = ``.*``, refreshed
    with the time range; queries use it as ``label=~"$name"``."""
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .query(query_text)
        .datasource(datasource_ref())
        .current(VariableOption(selected=True, text="All", value="$__all"))
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.NATURAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(ALL_VALUE)
    )
