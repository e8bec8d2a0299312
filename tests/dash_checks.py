"""Checks of a Grafana dashboard JSON, each returning the problems it finds (``[]`` when
clean), so tests can show them failing on a bad dashboard as well as passing on ours.

* :func:`structure_problems`: what Grafana needs to load the JSON: ``schemaVersion``, a
  UID of 8-40 allowed characters, panels with a ``gridPos`` inside the 24-column grid, no
  two panels overlapping, unique panel ids, every target with a unique ``refId``.
* :func:`lint_problems`: our conventions: a title, a description and a unit on every
  panel; the ``$datasource`` variable on every panel, target, query variable and
  annotation; every counter function over ``[$__rate_interval]``, no literal range.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from itertools import combinations
from typing import Any

from monitor.dashboards.queries import RATE_FUNCTIONS, annotation_queries, iter_panels

DATASOURCE_UID = "${datasource}"
_UID = re.compile(r"^[A-Za-z0-9_-]{8,40}$")
_LITERAL_RANGE = re.compile(r"\[\s*\d+(?:\.\d+)?(?:ms|s|m|h|d|w|y)[^\]]*\]")


def _call_arguments(expr: str, function: str) -> list[str]:
    """The argument text of every call of ``function`` in ``expr`` (balanced parens)."""
    out = []
    for m in re.finditer(rf"(?<![\w:]){function}\s*\(", expr):
        depth, i = 1, m.end()
        while i < len(expr) and depth:
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            i += 1
        out.append(expr[m.end() : i - 1])
    return out


def rate_problems(expr: str) -> list[str]:
    """Counter functions whose range is not ``[$__rate_interval]``, and literal ranges."""
    problems = []
    for function in RATE_FUNCTIONS:
        for arg in _call_arguments(expr, function):
            if not arg.rstrip().endswith("[$__rate_interval]"):
                problems.append(f"{function}({arg}) does not use [$__rate_interval]")
    problems += [f"literal range {m.group(0)}" for m in _LITERAL_RANGE.finditer(expr)]
    return problems


def structure_problems(dashboard: Mapping[str, Any]) -> list[str]:
    """What keeps ``dashboard`` from loading as Grafana dashboard JSON."""
    problems = []
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 36:
        problems.append(f"schemaVersion {dashboard.get('schemaVersion')!r}")
    if not _UID.match(str(dashboard.get("uid", ""))):
        problems.append(f"uid {dashboard.get('uid')!r} is not 8-40 of [A-Za-z0-9_-]")
    if not dashboard.get("title"):
        problems.append("no title")
    panels = list(iter_panels(dashboard))
    if not panels:
        problems.append("no panels")
    ids = [p.get("id") for p in panels]
    if len(set(ids)) != len(ids) or None in ids:
        problems.append(f"panel ids not unique: {ids}")
    boxes = []
    for p in panels:
        name = f"panel {p.get('id')} {p.get('title')!r}"
        pos = p.get("gridPos")
        if not isinstance(pos, dict) or not all(isinstance(pos.get(k), int) for k in "hwxy"):
            problems.append(f"{name}: gridPos {pos!r}")
            continue
        if pos["w"] <= 0 or pos["h"] <= 0 or pos["x"] < 0 or pos["y"] < 0:
            problems.append(f"{name}: gridPos {pos}")
        if pos["x"] + pos["w"] > 24:
            problems.append(f"{name}: gridPos {pos} overflows the 24 columns")
        boxes.append((name, pos))
        if p.get("type") == "row":
            continue
        refs = [t.get("refId") for t in p.get("targets") or []]
        if not refs:
            problems.append(f"{name}: no targets")
        if not all(refs) or len(set(refs)) != len(refs):
            problems.append(f"{name}: refIds {refs}")
    for (a, pa), (b, pb) in combinations(boxes, 2):
        if (
            pa["x"] < pb["x"] + pb["w"]
            and pb["x"] < pa["x"] + pa["w"]
            and pa["y"] < pb["y"] + pb["h"]
            and pb["y"] < pa["y"] + pa["h"]
        ):
            problems.append(f"{a} overlaps {b}")
    return problems


def _uses_datasource(obj: Mapping[str, Any] | None) -> bool:
    return bool(obj) and obj.get("uid") == DATASOURCE_UID and obj.get("type") == "prometheus"  # type: ignore[union-attr]


def lint_problems(dashboard: Mapping[str, Any]) -> list[str]:
    """Where ``dashboard`` breaks the conventions of generated dashboards."""
    problems = []
    for p in iter_panels(dashboard):
        if p.get("type") == "row":
            continue
        name = f"panel {p.get('id')} {p.get('title')!r}"
        if not p.get("title"):
            problems.append(f"{name}: no title")
        if not p.get("description"):
            problems.append(f"{name}: no description")
        if not ((p.get("fieldConfig") or {}).get("defaults") or {}).get("unit"):
            problems.append(f"{name}: no unit")
        if not _uses_datasource(p.get("datasource")):
            problems.append(f"{name}: datasource {p.get('datasource')!r}")
        for t in p.get("targets") or []:
            if not _uses_datasource(t.get("datasource")):
                problems.append(f"{name} {t.get('refId')}: datasource {t.get('datasource')!r}")
            problems += [f"{name} {t.get('refId')}: {r}" for r in rate_problems(t["expr"])]
    for v in (dashboard.get("templating") or {}).get("list") or []:
        if v.get("type") == "query" and not _uses_datasource(v.get("datasource")):
            problems.append(f"variable {v.get('name')}: datasource {v.get('datasource')!r}")
    for a in (dashboard.get("annotations") or {}).get("list") or []:
        if not _uses_datasource(a.get("datasource")):
            problems.append(f"annotation {a.get('name')!r}: datasource {a.get('datasource')!r}")
    for name, expr in annotation_queries(dashboard):
        problems += [f"annotation {name!r}: {r}" for r in rate_problems(expr)]
    return problems
