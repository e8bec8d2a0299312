"""The PromQL side of the dashboards: selectors, Grafana's template expansion, and the
queries of a dashboard's JSON.

Nothing here imports grafana-foundation-sdk: the preview renderer (:mod:`.render`) and
the tests read the generated JSON with these helpers, exactly as Grafana would see it.

* :func:`sel` writes a series selector (``metric{model=~"$model"}``) from label names of
  :mod:`monitor.conventions`.
* :func:`expand` replaces template variables (``$model``, ``${version}``) and Grafana's
  built-ins (``$__rate_interval``, ``$__interval``, ``$__range``) the way Grafana does
  for a Prometheus data source, so a query can be sent to Prometheus without Grafana.
* :func:`panel_queries`, :func:`annotation_queries` and :func:`variables` list what a
  dashboard JSON asks Prometheus for.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from monitor.errors import MonitorError

__all__ = [
    "ALL_VALUE",
    "RATE_FUNCTIONS",
    "RATE_WINDOW",
    "Matcher",
    "PanelQuery",
    "Variable",
    "annotation_queries",
    "default_values",
    "duration",
    "expand",
    "iter_panels",
    "panel_queries",
    "rate_interval_seconds",
    "regex_values",
    "sel",
    "var",
    "variables",
]

ALL_VALUE = ".*"
"""What a variable's "All" expands to: every dashboard variable is used with ``=~``."""

RATE_WINDOW = "[$__rate_interval]"
"""The range of every rate in the dashboards: Grafana's ``$__rate_interval``."""

RATE_FUNCTIONS = ("rate", "irate", "increase", "delta", "idelta", "changes", "resets", "deriv")
"""Functions over a counter's (or gauge's) range whose window must follow Grafana's
``$__rate_interval``: a fixed ``[1m]`` is empty when the scrape interval is longer and
noisy when the dashboard spans days."""


# --- selectors -------------------------------------------------------------------------


@dataclass(frozen=True)
class Matcher:
    """A label matcher other than equality: ``op`` is ``=~``, ``!=`` or ``!~``."""

    op: str
    value: str


def var(name: str) -> Matcher:
    """``=~"$name"``: a dashboard variable (a regex: "All" is ``.*``, several values
    ``(a|b)``)."""
    return Matcher("=~", f"${name}")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sel(metric: str, matchers: Mapping[str, str | Matcher] | None = None) -> str:
    """A series selector ``metric{a="b", c=~"$c"}``, matchers in the given order.

    ``matchers`` maps a label name to a value (equality) or a :class:`Matcher`.
    """
    parts = []
    for name, m in (matchers or {}).items():
        op, value = ("=", m) if isinstance(m, str) else (m.op, m.value)
        parts.append(f"{name}{op}{_quote(value)}")
    return f"{metric}{{{', '.join(parts)}}}" if parts else metric


# --- template expansion ------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def duration(seconds: float) -> str:
    """A Prometheus duration of at least 1 ms: ``15s``, ``1500ms``, ``3600s``."""
    ms = max(1, math.ceil(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def rate_interval_seconds(step_s: float, scrape_interval_s: float) -> float:
    """Grafana's ``$__rate_interval``: ``max($__interval + scrape interval, 4 x scrape
    interval)`` (Grafana docs, "Prometheus template variables"), so a rate window always
    holds at least four scrapes and no sample falls between two steps."""
    return max(step_s + scrape_interval_s, 4 * scrape_interval_s)


def regex_values(values: Sequence[str]) -> str:
    """Several values of a multi-value variable as Grafana formats them for Prometheus:
    ``(a|b)``, regex metacharacters escaped; one value alone is just escaped."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else f"({'|'.join(escaped)})"


def expand(
    expr: str,
    values: Mapping[str, str],
    *,
    step_s: float,
    scrape_interval_s: float,
    range_s: float,
) -> str:
    """``expr`` with every ``$name``, ``${name}`` and ``[[name]]`` replaced.

    Args:
        values: dashboard variable -> the text Grafana substitutes (a regex for our
            variables: ``m1``, ``(m1|m2)`` or ``.*``).
        step_s: the query step in seconds (Grafana's ``$__interval``).
        scrape_interval_s: the data source's scrape interval (Grafana's default 15 s).
        range_s: the dashboard time range in seconds (``$__range``).

    Raises:
        MonitorError: ``expr`` names a variable that is neither in ``values`` nor a
            Grafana built-in (Grafana would send it to Prometheus literally).
    """
    builtins = {
        "__interval": duration(step_s),
        "__interval_ms": str(math.ceil(step_s * 1000)),
        "__rate_interval": duration(rate_interval_seconds(step_s, scrape_interval_s)),
        "__range": duration(range_s),
        "__range_s": str(math.ceil(range_s)),
    }

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in builtins:
            return builtins[name]
        if name in values:
            return values[name]
        raise MonitorError(
            f"query uses ${name}, which is neither a dashboard variable nor a Grafana "
            f"built-in: {expr}"
        )

    return _VARIABLE.sub(replace, expr)


# --- reading dashboard JSON ------------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel of a dashboard JSON."""

    dashboard: str
    """Dashboard title."""
    uid: str
    """Dashboard UID."""
    panel_id: int
    panel: str
    """Panel title."""
    panel_type: str
    """Grafana panel plugin id (``timeseries``, ``stat``, ``table``)."""
    unit: str
    """``fieldConfig.defaults.unit`` of the panel (Grafana unit id), ``""`` if unset."""
    ref_id: str
    expr: str
    """PromQL with template variables, as Grafana stores it."""
    legend: str
    """``legendFormat`` (``{{label}}`` placeholders), ``""`` if unset."""
    instant: bool
    """The target asks for the latest value only (a table of current state)."""

    @property
    def name(self) -> str:
        """``Dashboard / Panel / refId``: how tests and reports name the query."""
        return f"{self.dashboard} / {self.panel} / {self.ref_id}"


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every panel of a dashboard JSON, rows included, the panels of collapsed rows after
    their row."""
    for panel in dashboard.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every Prometheus target of every panel of ``dashboard`` (JSON), in panel order."""
    out = []
    for panel in iter_panels(dashboard):
        defaults = (panel.get("fieldConfig") or {}).get("defaults") or {}
        for target in panel.get("targets") or []:
            out.append(
                PanelQuery(
                    dashboard=str(dashboard.get("title", "")),
                    uid=str(dashboard.get("uid", "")),
                    panel_id=int(panel.get("id", 0)),
                    panel=str(panel.get("title", "")),
                    panel_type=str(panel.get("type", "")),
                    unit=str(defaults.get("unit", "")),
                    ref_id=str(target.get("refId", "")),
                    expr=str(target.get("expr", "")),
                    legend=str(target.get("legendFormat", "")),
                    instant=bool(target.get("instant", False)),
                )
            )
    return out


def annotation_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(name, expr)`` of every Prometheus annotation query of ``dashboard`` (JSON)."""
    return [
        (str(a.get("name", "")), str(a["expr"]))
        for a in (dashboard.get("annotations") or {}).get("list") or []
        if a.get("expr")
    ]


@dataclass(frozen=True)
class Variable:
    """One template variable of a dashboard JSON."""

    name: str
    type: str
    """``datasource`` or ``query``."""
    query: str
    """``label_values(...)`` for a query variable, the plugin id for a data source one."""
    include_all: bool
    all_value: str


def variables(dashboard: Mapping[str, Any]) -> list[Variable]:
    """The template variables of ``dashboard`` (JSON), in order."""
    return [
        Variable(
            name=str(v["name"]),
            type=str(v.get("type", "")),
            query=str(v.get("query", "")),
            include_all=bool(v.get("includeAll", False)),
            all_value=str(v.get("allValue") or ""),
        )
        for v in (dashboard.get("templating") or {}).get("list") or []
    ]


def default_values(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Each query variable's "All" value (``.*``), the state a dashboard opens in."""
    return {v.name: v.all_value or ALL_VALUE for v in variables(dashboard) if v.type == "query"}
