"""What the demo shows while it runs: one row every tick, read from Prometheus (and the
mitigator's audit log), never from the demo's own counters.

Columns: seconds since the traffic started, phase, request rate, p99 latency (from
the sidecar's histogram, ``histogram_quantile`` over ``sum by (le)``), error ratio
over the SLO's shortest window, the drift job's dataset drift share, the share of
traffic on the fallback, the alerts firing, and the mitigations done.
"""

from __future__ import annotations

import json
import math
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

from monitor import conventions as c

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Prometheus:
    """A tiny client of Prometheus's HTTP API (``/api/v1/query``, ``query_range``)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def query(self, q: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant vector (``[{metric, value}]``); ``[]`` when Prometheus does not answer."""
        params = {"query": q}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._get("query", params)

    def query_range(self, q: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """Range vector (``[{metric, values: [[t, "v"], ...]}]``); ``[]`` on failure."""
        params = {"query": q, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        return self._get("query_range", params)

    def scalar(self, q: str) -> float | None:
        """The first sample's value of an instant query, or None."""
        got = self.query(q)
        if not got:
            return None
        v = float(got[0]["value"][1])
        return None if math.isnan(v) else v

    def _get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with _OPENER.open(url, timeout=5) as resp:
                return list(json.loads(resp.read())["data"]["result"])
        except (OSError, ValueError, KeyError):
            return []


def queries(model: str, slo: str | None) -> dict[str, str]:
    """The timeline's PromQL, keyed by column (windows: 5 s, scraped every second)."""
    sel = f'{{{c.LABEL_MODEL}="{model}"}}'
    err = (
        f'{c.SLO_ERROR_RATIO["5m"]}{{{c.LABEL_MODEL}="{model}",{c.LABEL_SLO}="{slo}"}}'
        if slo
        else f'sum(rate({c.REQUESTS_TOTAL}{{{c.LABEL_MODEL}="{model}",'
        f'{c.LABEL_OUTCOME}!="{c.OUTCOME_OK}"}}[5s])) / sum(rate({c.REQUESTS_TOTAL}{sel}[5s]))'
    )
    return {
        "rps": f"sum(rate({c.REQUESTS_TOTAL}{sel}[5s]))",
        "p99": f"histogram_quantile(0.99, sum by (le) "
        f"(rate({c.REQUEST_DURATION_SECONDS}_bucket{sel}[5s])))",
        "error_ratio": err,
        "drift_share": f"max({c.DATASET_DRIFT_SHARE}{sel})",
        "fallback": f'max({c.ROUTE_WEIGHT}{{{c.LABEL_MODEL}="{model}",'
        f'{c.LABEL_UPSTREAM}="{c.UPSTREAM_FALLBACK}"}})',
    }


@dataclass
class Tick:
    """One row of the timeline (None: no data yet)."""

    t: float
    phase: str
    rps: float | None = None
    p99: float | None = None
    error_ratio: float | None = None
    drift_share: float | None = None
    fallback: float | None = None
    alerts: list[str] = field(default_factory=list)
    mitigations: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


HEADER = (
    f"{'t':>5}  {'phase':<9} {'req/s':>6} {'p99 ms':>7} {'err %':>6} {'drift':>6} "
    f"{'fallbk':>6}  alerts firing / mitigations"
)


def _fmt(v: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def render(tick: Tick) -> str:
    """One printed row."""
    alerts = ", ".join(tick.alerts) if tick.alerts else "none"
    return (
        f"{tick.t:5.0f}  {tick.phase:<9} {_fmt(tick.rps, '6.1f')} {_fmt(tick.p99, '7.1f', 1000)} "
        f"{_fmt(tick.error_ratio, '6.1f', 100)} {_fmt(tick.drift_share, '6.2f')} "
        f"{_fmt(tick.fallback, '6.2f')}  {alerts} / {tick.mitigations} done"
    )


def sample(prom: Prometheus | None, qs: dict[str, str], tick: Tick) -> Tick:
    """Fill ``tick`` from Prometheus (firing alerts sorted, severity in brackets)."""
    if prom is None:
        return tick
    for key, q in qs.items():
        setattr(tick, key, prom.scalar(q))
    firing = prom.query('ALERTS{alertstate="firing"}')
    tick.alerts = sorted(
        {
            f"{a['metric'].get('alertname')}[{a['metric'].get(c.LABEL_SEVERITY, '?')}]"
            for a in firing
        }
    )
    return tick


__all__ = ["HEADER", "Prometheus", "Tick", "queries", "render", "sample"]
