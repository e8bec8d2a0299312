"""The demo's HTML report: the key series of the run from Prometheus, phases shaded,
alerts and mitigations marked; and every dashboard panel rendered from the same
Prometheus (:func:`monitor.dashboards.render.render`), for machines without Grafana.
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

from monitor.demo.timeline import Prometheus, queries
from monitor.errors import MonitorError

if TYPE_CHECKING:
    from monitor.demo.run import DemoResult
    from monitor.demo.stack import Stack

_PHASE_COLOURS = {
    "healthy": "rgba(0,150,0,0.07)",
    "shift": "rgba(255,165,0,0.12)",
    "fault": "rgba(220,0,0,0.12)",
    "recovery": "rgba(0,100,220,0.08)",
}
_TITLES = {
    "rps": ("Request rate", "req/s", 1.0),
    "p99": ("Latency p99", "ms", 1000.0),
    "error_ratio": ("Error ratio (SLO, shortest window)", "%", 100.0),
    "drift_share": ("Dataset drift share (drift job)", "share", 1.0),
    "fallback": ("Traffic on the fallback (sidecar route)", "share", 1.0),
}


def write_report(stack: Stack, result: DemoResult) -> dict[str, str]:
    """Write ``report.html`` (and ``dashboards.html`` beside it); return their paths by key.

    Without Prometheus the report holds the summary only.
    """
    import plotly.graph_objects as go
    import plotly.offline
    from plotly.subplots import make_subplots

    out = stack.out
    files: dict[str, str] = {}
    body = [f"<h1>monitor demo</h1><p>{html.escape(str(out))}</p>", _summary_table(result)]
    if stack.prometheus_url and result.phases:
        prom = Prometheus(stack.prometheus_url)
        start = min(b for b, _ in result.phases.values()) - 2
        end = max(e for _, e in result.phases.values()) + 2
        qs = queries(stack.data.primary.name, "availability")
        fig = make_subplots(
            rows=len(qs), cols=1, shared_xaxes=True, subplot_titles=[_TITLES[k][0] for k in qs]
        )
        for i, (key, q) in enumerate(qs.items(), start=1):
            _, unit, scale = _TITLES[key]
            for series in prom.query_range(q, start, end, 1):
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) * scale for _, v in series["values"]]
                fig.add_trace(go.Scatter(x=xs, y=ys, name=key, showlegend=False), row=i, col=1)
            fig.update_yaxes(title_text=unit, row=i, col=1)
        # Shapes and notes are added in one layout update: plotly's add_vline/add_vrect
        # re-validate the whole figure on every call (seconds for a few dozen).
        shapes: list[dict[str, object]] = []
        notes = list(fig.layout.annotations)
        full = {"xref": "x", "yref": "paper", "y0": 0, "y1": 1}
        for name, (b, e) in result.phases.items():
            shapes.append({**full, "type": "rect", "x0": b - start, "x1": e - start,
                           "fillcolor": _PHASE_COLOURS.get(name, "white"), "line": {"width": 0},
                           "layer": "below"})  # fmt: skip
            notes.append({"x": b - start, "y": 1.0, "xref": "x", "yref": "paper", "text": name,
                          "showarrow": False, "xanchor": "left", "yanchor": "bottom"})  # fmt: skip
        for key, ivs in sorted(result.alerts.items()):
            s0 = ivs[0][0]  # first firing of each alert
            shapes.append({**full, "type": "line", "x0": s0 - start, "x1": s0 - start,
                           "line": {"color": "red", "dash": "dot", "width": 1}})  # fmt: skip
            notes.append({"x": s0 - start, "y": 0.0, "xref": "x", "yref": "paper", "text": key,
                          "showarrow": False, "textangle": -90, "font": {"size": 9},
                          "xanchor": "left", "yanchor": "bottom"})  # fmt: skip
        for a in result.actions:
            if a.get("finished_at") and a["outcome"] == "success":
                x = float(a["finished_at"]) - start
                shapes.append({**full, "type": "line", "x0": x, "x1": x,
                               "line": {"color": "blue", "width": 2}})  # fmt: skip
        fig.update_layout(shapes=shapes, annotations=notes)
        fig.update_layout(height=230 * len(qs), margin={"t": 40, "b": 30})
        fig.update_xaxes(title_text="seconds since the traffic started", row=len(qs), col=1)
        body.append(plotly.offline.plot(fig, output_type="div", include_plotlyjs=True))
        files.update(_dashboards(stack, result, start, end))
        if "dashboards" in files:
            body.append("<p><a href='dashboards.html'>Every dashboard panel, rendered from "
                        "the run's Prometheus</a></p>")  # fmt: skip
    path = out / "report.html"
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>monitor demo</title>"
        "<style>body{font-family:sans-serif;margin:2em} td,th{padding:2px 8px;text-align:left}"
        "</style></head><body>" + "".join(body) + "</body></html>"
    )
    files["report"] = str(path)
    return files


def _dashboards(stack: Stack, result: DemoResult, start: float, end: float) -> dict[str, str]:
    from monitor.dashboards.render import load_dashboards, render

    try:
        boards = load_dashboards(stack.out / "generated" / "dashboards")
        got = render(
            boards, stack.prometheus_url, stack.out, range_s=end - start, end=end,
            step_s=1, scrape_interval_s=1,
        )  # fmt: skip
    except MonitorError as exc:
        print(f"      dashboards not rendered: {exc}", flush=True)
        return {}
    path = getattr(got, "path", stack.out / "dashboards.html")
    return {"dashboards": str(path)}


def _summary_table(result: DemoResult) -> str:
    rows = []
    for inc in result.incidents:
        d = inc.to_dict()
        rows.append(
            "<tr>" + "".join(
                f"<td>{html.escape('-' if v is None else str(v))}</td>" for v in (
                    inc.name, d["time_to_detect_seconds"], inc.detected_by,
                    d["time_to_mitigate_seconds"], inc.mitigated_by,
                    d["time_to_resolve_seconds"], d["time_to_revert_seconds"],
                )
            ) + "</tr>"
        )  # fmt: skip
    head = "".join(
        f"<th>{h}</th>" for h in ("incident", "detect (s)", "by", "mitigate (s)", "by",
                                  "resolved (s)", "reverted (s)")
    )  # fmt: skip
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"<p>{stamp}</p><table><tr>{head}</tr>{''.join(rows)}</table>"


__all__ = ["write_report"]
