"""A static preview of the dashboards for places without Grafana: every panel's queries
run against a live Prometheus (``/api/v1/query_range``) and are drawn with plotly into one
self-contained HTML file (plotly.js inline, so it opens offline).

Queries are expanded as Grafana would (:func:`monitor.dashboards.queries.expand`):
variables at "All" (``.*``) unless given, ``$__rate_interval`` from the step and the
scrape interval. Time series and stat panels become line charts, tables a table of the
last value of each series. The page ends with a JSON summary
(``<script id="render-summary">``): per panel, the number of series and any error.
"""

from __future__ import annotations

import html
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitor.dashboards.queries import (
    PanelQuery,
    default_values,
    expand,
    iter_panels,
    panel_queries,
    regex_values,
)
from monitor.errors import MonitorError

__all__ = [
    "HTML_NAME",
    "PanelResult",
    "QueryError",
    "RenderResult",
    "load_dashboards",
    "parse_duration",
    "query_range",
    "render",
]

HTML_NAME = "dashboards.html"
"""The file :func:`render` writes under its output directory."""
_MAX_POINTS = 240
"""Default number of steps over the range (Grafana uses about the panel's pixel width)."""
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str) -> float:
    """Seconds in ``90s``, ``15m``, ``1h``, ``2d``, ``1w`` or ``500ms``.

    Raises:
        MonitorError: not of that form, or not above 0.
    """
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", value.strip())
    if m is None or float(m[1]) <= 0:
        raise MonitorError(f"{value!r}: expected a duration like 90s, 15m, 1h or 1d")
    return float(m[1]) * _UNITS[m[2]]


def load_dashboards(directory: Path) -> list[dict[str, Any]]:
    """Every ``*.json`` dashboard under ``directory`` (not recursive), by file name.

    Raises:
        MonitorError: the directory has no JSON file, or a file is not a dashboard JSON.
    """
    files = sorted(directory.glob("*.json"))
    if not files:
        raise MonitorError(
            f"no dashboard JSON in {directory}; run monitor generate, or pass --config"
        )
    out = []
    for path in files:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MonitorError(f"cannot read dashboard {path}: {exc}") from exc
        if not isinstance(doc, dict) or "panels" not in doc:
            raise MonitorError(f"{path}: not a Grafana dashboard JSON (no 'panels')")
        out.append(doc)
    return out


class QueryError(MonitorError):
    """Prometheus rejected a query (bad PromQL, or it timed out)."""


def query_range(
    prometheus_url: str, expr: str, start: float, end: float, step: float, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """The ``matrix`` result of ``expr`` from ``start`` to ``end`` (Unix seconds).

    Raises:
        MonitorError: Prometheus cannot be reached, or answers something that is not its
            API. A query Prometheus rejects raises :class:`QueryError`.
    """
    params = urllib.parse.urlencode(
        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    )
    url = f"{prometheus_url.rstrip('/')}/api/v1/query_range?{params}"
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except json.JSONDecodeError:
            body = {}
        finally:
            exc.close()
        if body.get("status") != "error":
            raise MonitorError(f"Prometheus at {prometheus_url}: HTTP {exc.code}") from exc
    except (OSError, ValueError) as exc:
        raise MonitorError(
            f"cannot query Prometheus at {prometheus_url}: {exc} (check --prometheus)"
        ) from exc
    if body.get("status") != "success":
        raise QueryError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
    return list(body["data"]["result"])


@dataclass
class PanelResult:
    """What one panel got from Prometheus."""

    dashboard: str
    panel: str
    panel_type: str
    unit: str
    series: int = 0
    """Series returned by all the panel's queries together."""
    errors: list[str] = field(default_factory=list)
    """``refId: reason`` of each query Prometheus rejected."""

    @property
    def has_data(self) -> bool:
        """At least one series and no error."""
        return self.series > 0 and not self.errors


@dataclass
class RenderResult:
    """The written file and one :class:`PanelResult` per panel, in dashboard order."""

    path: Path
    panels: list[PanelResult]

    @property
    def empty(self) -> list[PanelResult]:
        """Panels without data (no series, or a query error)."""
        return [p for p in self.panels if not p.has_data]


# --- drawing -------------------------------------------------------------------------------

_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_MD_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_MD_CODE = re.compile(r"`([^`]+)`")


def _legend(q: PanelQuery, labels: Mapping[str, str]) -> str:
    if q.legend:
        return _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), q.legend).strip()
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{labels.get('__name__', '')}{{{inner}}}"


def _markdown(text: str) -> str:
    out = html.escape(text)
    out = _MD_LINK.sub(lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', out)
    out = _MD_CODE.sub(r"<code>\1</code>", out)
    return out.replace("\n\n", "<br>")


def _value(v: str) -> float | None:
    x = float(v)
    return x if math.isfinite(x) else None


def _figure(
    panel: Mapping[str, Any], results: list[tuple[PanelQuery, list[dict[str, Any]]]]
) -> Any:
    import plotly.graph_objects as go

    unit = str(((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit", ""))
    fig = go.Figure()
    if panel.get("type") == "table":
        rows = [
            (_legend(q, s["metric"]), s["values"][-1][1] if s["values"] else "")
            for q, series in results
            for s in series
        ]
        fig.add_trace(
            go.Table(
                header={"values": ["series", f"value ({unit})"]},
                cells={"values": [[r[0] for r in rows], [r[1] for r in rows]]},
            )
        )
    else:
        for q, series in results:
            for s in series:
                fig.add_trace(
                    go.Scatter(
                        x=[datetime.fromtimestamp(float(t), UTC) for t, _ in s["values"]],
                        y=[_value(v) for _, v in s["values"]],
                        mode="lines",
                        name=_legend(q, s["metric"]),
                    )
                )
        fig.update_yaxes(title_text=unit, tickformat=".1%" if unit == "percentunit" else None)
    fig.update_layout(
        template="plotly_white",
        height=320,
        margin={"l": 50, "r": 10, "t": 10, "b": 30},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


_CSS = """
body { font-family: sans-serif; margin: 1em; background: #f4f5f5; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
.panel { background: #fff; border: 1px solid #ddd; padding: 6px; box-sizing: border-box; }
.panel h4 { margin: 0 0 4px 0; } .desc { font-size: 12px; color: #555; }
.nodata { color: #b00; font-weight: bold; } h3.row { width: 100%; margin: 12px 0 0 0; }
"""


def render(
    dashboards: Sequence[Mapping[str, Any]],
    prometheus_url: str,
    out_dir: Path,
    *,
    range_s: float = 3600.0,
    end: float | None = None,
    step_s: float | None = None,
    scrape_interval_s: float = 15.0,
    values: Mapping[str, Sequence[str]] | None = None,
) -> RenderResult:
    """Query every panel of ``dashboards`` (JSON) and write ``out_dir/dashboards.html``.

    Args:
        range_s: seconds of data, ending at ``end`` (default now).
        step_s: query step (default ``range_s / 240``, at least ``scrape_interval_s``).
        scrape_interval_s: Prometheus' scrape interval, for ``$__rate_interval``.
        values: variable -> selected values; unset variables are "All" (``.*``).

    Raises:
        MonitorError: plotly is not installed, Prometheus cannot be reached, a query uses
            an unknown variable, or the file cannot be written. A query Prometheus
            rejects does not raise: its panel shows the error and counts as without data.
    """
    try:
        import plotly.offline
    except ImportError as exc:
        raise MonitorError(
            "monitor dashboards render needs plotly: pip install 'plotly>=5.20'"
        ) from exc

    end = time.time() if end is None else end
    start = end - range_s
    step = step_s or max(scrape_interval_s, math.ceil(range_s / _MAX_POINTS))
    results: list[PanelResult] = []
    sections = []
    for board in dashboards:
        chosen = default_values(board)
        chosen.update({k: regex_values(list(v)) for k, v in (values or {}).items() if v})
        by_panel: dict[int, list[PanelQuery]] = {}
        for q in panel_queries(board):
            by_panel.setdefault(q.panel_id, []).append(q)
        parts = [f"<h2>{html.escape(str(board.get('title', '')))}</h2><div class='grid'>"]
        for panel in iter_panels(board):
            if panel.get("type") == "row":
                parts.append(f"<h3 class='row'>{html.escape(str(panel.get('title', '')))}</h3>")
                continue
            queries = by_panel.get(int(panel.get("id", 0)), [])
            unit = str(((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit", ""))
            result = PanelResult(
                str(board.get("title", "")), str(panel.get("title", "")), str(panel["type"]), unit
            )
            got = []
            for q in queries:
                expr = expand(
                    q.expr,
                    chosen,
                    step_s=step,
                    scrape_interval_s=scrape_interval_s,
                    range_s=range_s,
                )
                try:
                    series = query_range(prometheus_url, expr, start, end, step)
                except QueryError as exc:
                    result.errors.append(f"{q.ref_id}: {exc}")
                    series = []
                result.series += len(series)
                got.append((q, series))
            results.append(result)
            width = int((panel.get("gridPos") or {}).get("w", 12))
            body = (
                _figure(panel, got).to_html(full_html=False, include_plotlyjs=False)
                if result.series
                else "<p class='nodata'>no data</p>"
            )
            errors = "".join(f"<p class='nodata'>{html.escape(e)}</p>" for e in result.errors)
            parts.append(
                f"<div class='panel' style='width: calc({width / 24:.4%} - 8px)'>"
                f"<h4>{html.escape(result.panel)}</h4>"
                f"<div class='desc'>{_markdown(str(panel.get('description', '')))}</div>"
                f"{errors}{body}</div>"
            )
        parts.append("</div>")
        sections.append("".join(parts))
    # JSON inside <script>: only "</" could end the element early; "<\/" is the same JSON.
    summary = json.dumps([asdict(r) for r in results], sort_keys=True).replace("</", "<\\/")
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Dashboards preview</title>"
        f"<style>{_CSS}</style><script type='text/javascript'>{plotly.offline.get_plotlyjs()}"
        "</script></head><body>"
        f"<p>Preview of {len(dashboards)} dashboard(s) from {html.escape(prometheus_url)}, "
        f"{datetime.fromtimestamp(start, UTC):%Y-%m-%d %H:%M:%S} to "
        f"{datetime.fromtimestamp(end, UTC):%H:%M:%S} UTC, step {step:g}s.</p>"
        + "".join(sections)
        + f"<script type='application/json' id='render-summary'>{summary}"
        "</script></body></html>"
    )
    path = out_dir / HTML_NAME
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise MonitorError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return RenderResult(path, results)
