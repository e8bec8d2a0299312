"""The four dashboards of a spec, stamped and encoded as Grafana dashboard JSON.

One function per dashboard builds it as the SDK's fluent chain (:mod:`.overview`,
:mod:`.quality`, :mod:`.gpu`, :mod:`.mitigations`); :func:`stamp` then applies the
cross-cutting policy in one pass over every dashboard (the pattern of kubernetes-mixin's
``add-runbook-links``): UID, tags, refresh, time range, links to the other dashboards, the
``$datasource`` reference on every panel and query, ``refId``\\s and unique panel ids.
:func:`encode` writes JSON with the SDK's own encoder (case C25: ``json.dumps`` cannot
walk the SDK's nested objects), keys sorted, so the same spec gives the same bytes.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    Dashboard,
    DashboardCursorSync,
    DashboardDashboardTime,
    DashboardLink,
    DashboardLinkType,
    Panel,
    RowPanel,
)

from monitor import conventions as c
from monitor.dashboards import gpu, mitigations, overview, quality
from monitor.dashboards.panels import datasource_ref
from monitor.spec import MonitorSpec

__all__ = [
    "DASHBOARDS",
    "DATA_QUALITY",
    "GPU",
    "MITIGATIONS",
    "OVERVIEW",
    "DashboardDef",
    "build_dashboards",
    "dashboard_uid",
    "encode",
    "filename",
    "stamp",
]

OVERVIEW: Final = c.DASHBOARD_OVERVIEW
DATA_QUALITY: Final = c.DASHBOARD_DATA_QUALITY
GPU: Final = c.DASHBOARD_GPU
MITIGATIONS: Final = c.DASHBOARD_MITIGATIONS

_REFRESH = "30s"
_TIME_FROM = "now-1h"
TAG = c.DASHBOARD_TAG
"""Tag of every generated dashboard (with the service name)."""


@dataclass(frozen=True)
class DashboardDef:
    """One generated dashboard: its short name and the function that builds it."""

    name: str
    """Short name: part of the UID and the file name."""
    title: str
    """Title after ``<service> / ``."""
    build: Callable[[MonitorSpec], dashboard.Dashboard]
    model_scoped: bool
    """Whether it has the ``$model`` variable (links between such dashboards carry it)."""


DASHBOARDS: Final = (
    DashboardDef(OVERVIEW, overview.TITLE, overview.overview, True),
    DashboardDef(DATA_QUALITY, quality.TITLE, quality.quality, True),
    DashboardDef(GPU, gpu.TITLE, gpu.gpu, False),
    DashboardDef(MITIGATIONS, mitigations.TITLE, mitigations.mitigations, True),
)
"""Every dashboard of a spec, in the order of their links."""


dashboard_uid = c.dashboard_uid


def filename(service: str, name: str) -> str:
    """The JSON file of a dashboard under ``dashboards/``: ``<service>-<name>.json``."""
    return f"{service}-{name}.json"


def _panels(model: Dashboard) -> list[Panel | RowPanel]:
    out: list[Panel | RowPanel] = []
    for p in model.panels or []:
        out.append(p)
        if isinstance(p, RowPanel):
            out.extend(p.panels)
    return out


def stamp(
    model: Dashboard,
    *,
    spec: MonitorSpec,
    this: DashboardDef,
    note: str = "",
) -> Dashboard:
    """Apply the policy every generated dashboard shares, in place; returns ``model``.

    UID and tags from :func:`dashboard_uid`, refresh 30 s over the last hour, shared
    crosshair, links to the other dashboards of the spec (keeping the time range, and
    the variables between dashboards that have ``$model``), ``$datasource`` on every
    panel and query, ``refId`` A, B, ... where unset, and panel ids 1..n in grid order.
    ``note`` is appended to the description (the generated-file marker).
    """
    model.uid = dashboard_uid(spec.service, this.name)
    model.tags = [TAG, spec.service]
    model.refresh = _REFRESH
    model.time = DashboardDashboardTime(from_val=_TIME_FROM, to="now")
    model.graph_tooltip = DashboardCursorSync.CROSSHAIR
    if note:
        model.description = f"{model.description or ''} {note}".strip()
    model.links = [
        DashboardLink(
            title=f"{spec.service} / {other.title}",
            type_val=DashboardLinkType.LINK,
            url=f"/d/{dashboard_uid(spec.service, other.name)}",
            include_vars=this.model_scoped and other.model_scoped,
            keep_time=True,
        )
        for other in DASHBOARDS
        if other.name != this.name
    ]
    for panel_id, panel in enumerate(_panels(model), start=1):
        panel.id_val = panel_id
        if isinstance(panel, RowPanel):
            continue
        panel.datasource = datasource_ref()
        for letter, target in zip(string.ascii_uppercase, panel.targets or [], strict=False):
            target.datasource = datasource_ref()  # type: ignore[attr-defined]
            if not target.ref_id:  # type: ignore[attr-defined]
                target.ref_id = letter  # type: ignore[attr-defined]
    return model


def encode(model: Dashboard) -> str:
    """Grafana dashboard JSON of ``model``: the SDK's encoder (it walks nested SDK objects;
    ``json.dumps`` raises on them, case C25), keys sorted, two-space indent, a final
    newline."""
    return JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n"


def build_dashboards(spec: MonitorSpec, *, note: str = "") -> dict[str, str]:
    """Every dashboard of ``spec`` as ``{file name: JSON text}``, in :data:`DASHBOARDS`
    order. Deterministic: no timestamps, stable UIDs and ids, sorted keys.

    ``note`` is appended to each dashboard's description (``monitor generate`` passes
    its ``DO NOT EDIT`` marker and the spec's name).
    """
    out = {}
    for d in DASHBOARDS:
        model = stamp(d.build(spec).build(), spec=spec, this=d, note=note)
        out[filename(spec.service, d.name)] = encode(model)
    return out
