"""The generated Grafana dashboards: the JSON (SDK round trip, Grafana's structure, our
lint), the committed copies, and every query against a real Prometheus that scraped a
real sidecar, drift job, mitigator and GPU exporter under traffic (tests/dash_live.py).

There is no Grafana here, so a dashboard is proven query by query: each query, with its
template variables substituted as Grafana would, is parsed by promtool and evaluated by
Prometheus, and must return at least one series; the failure names the panel.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from monitor import conventions as c
from monitor import generate as gen
from monitor.dashboards import overview as overview_module
from monitor.dashboards.build import (
    DASHBOARDS,
    build_dashboards,
    dashboard_uid,
    encode,
    filename,
)
from monitor.dashboards.panels import query, timeseries_panel
from monitor.dashboards.queries import (
    PanelQuery,
    annotation_queries,
    default_values,
    expand,
    iter_panels,
    panel_queries,
    regex_values,
    variables,
)
from monitor.errors import MonitorError
from monitor.spec import MonitorSpec, load_spec, parse_spec
from tests.dash_checks import lint_problems, rate_problems, structure_problems
from tests.dash_live import MODEL, SCRAPE_S, VERSION, Live, live_stack, spec_data
from tests.support import MONITOR, require_tool

ROOT = Path(__file__).resolve().parents[1]
DEMO_SPEC = ROOT / "deploy" / "monitor.yaml"
DEMO = load_spec(DEMO_SPEC)
LIVE_SPEC = parse_spec(spec_data(Path("/live"), "http://127.0.0.1:9", 9))
"""The live stack's spec, with placeholder paths and ports (the panels do not depend on
them), so the parametrized tests can be collected before the stack runs."""


def _boards(spec: MonitorSpec) -> dict[str, dict[str, Any]]:
    return {name: json.loads(text) for name, text in build_dashboards(spec).items()}


DEMO_BOARDS = _boards(DEMO)
LIVE_BOARDS = _boards(LIVE_SPEC)
ALL_BOARDS = [
    pytest.param(b, id=f"{spec} {name}")
    for spec, boards in (("demo", DEMO_BOARDS), ("live", LIVE_BOARDS))
    for name, b in boards.items()
]


def _panels(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["title"]: p for p in iter_panels(board) if p["type"] != "row"}


# --- files ---------------------------------------------------------------------------------


def test_the_committed_dashboards_directory_is_up_to_date() -> None:
    files = gen.dashboard_files(DEMO, "deploy/monitor.yaml")
    result = gen.check_files(ROOT, files)
    stale = [p for p in result.stale if p.startswith(f"{gen.DASHBOARDS_DIR}/")]
    assert not (result.missing or result.changed or stale), (
        "dashboards/ is stale; run: .venv/bin/monitor generate --config deploy/monitor.yaml "
        "--out .\n"
        + "".join(result.changed.values())
        + "".join(f"missing: {p}\n" for p in result.missing)
        + "".join(f"no longer generated: {p}\n" for p in stale)
    )


def test_there_is_one_file_per_dashboard_named_after_the_service() -> None:
    assert sorted(gen.dashboard_files(DEMO, "x")) == sorted(
        f"dashboards/{filename('demo', d.name)}" for d in DASHBOARDS
    )
    assert sorted(DEMO_BOARDS) == [
        "demo-data-quality.json",
        "demo-gpu.json",
        "demo-mitigations.json",
        "demo-overview.json",
    ]


def test_each_dashboard_description_carries_the_generated_marker_and_the_spec() -> None:
    for rel, text in gen.dashboard_files(DEMO, "deploy/monitor.yaml").items():
        description = json.loads(text)["description"]
        assert f"{gen.GENERATED_MARKER} from deploy/monitor.yaml" in description, rel


def test_two_builds_give_byte_identical_json_with_sorted_keys() -> None:
    first, second = build_dashboards(DEMO), build_dashboards(DEMO)
    assert first == second
    for text in first.values():
        assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"


# --- the SDK: case C25 and the factories ---------------------------------------------------


def _c25_dashboard() -> Dashboard:
    return (
        dashboard.Dashboard("m1 overview")
        .uid("m1-overview")
        .with_panel(
            timeseries_panel(
                "Requests",
                "Requests per second of m1.",
                "reqps",
                query(f'sum(rate({c.REQUESTS_TOTAL}{{model="m1"}}[5m]))'),
            )
        )
        .build()
    )


def test_case_c25_json_dumps_cannot_encode_an_sdk_dashboard() -> None:
    model = _c25_dashboard()
    with pytest.raises(TypeError, match="not JSON serializable"):
        json.dumps(model.to_json())  # to_json() converts one level only


def test_case_c25_the_sdk_encoder_writes_plain_json_with_the_exact_expression() -> None:
    text = encode(_c25_dashboard())
    doc = json.loads(text)
    assert (
        doc["panels"][0]["targets"][0]["expr"] == 'sum(rate(mlmon_requests_total{model="m1"}[5m]))'
    )
    assert " object at 0x" not in text and "<grafana_foundation_sdk" not in text
    assert encode(_c25_dashboard()) == text  # stable key order: diffs are meaningful


def test_panel_factories_return_a_new_builder_on_every_call() -> None:
    a, b = overview_module.request_rate(), overview_module.request_rate()
    assert a is not b
    a.title("changed")
    assert b.build().title == "Request rate"
    # The same for whole dashboards: building twice shares no panel object.
    one, two = overview_module.overview(DEMO).build(), overview_module.overview(DEMO).build()
    assert not {id(p) for p in one.panels or []} & {id(p) for p in two.panels or []}


@pytest.mark.parametrize("board", ALL_BOARDS)
def test_the_json_round_trips_through_the_sdk_models(board: dict[str, Any]) -> None:
    register_default_plugins()
    again = JSONEncoder(sort_keys=True, indent=2).encode(Dashboard.from_json(board))
    assert json.loads(again) == board


# --- Grafana's structure and our lint ------------------------------------------------------


@pytest.mark.parametrize("board", ALL_BOARDS)
def test_the_json_is_grafana_dashboard_json(board: dict[str, Any]) -> None:
    assert structure_problems(board) == []
    assert board["schemaVersion"] == 41  # Grafana 11.6 (grafana-foundation-sdk 11.6.0)


@pytest.mark.parametrize("board", ALL_BOARDS)
def test_lint_every_panel_titled_described_with_a_unit_and_queries_on_datasource(
    board: dict[str, Any],
) -> None:
    assert lint_problems(board) == []


def test_the_checks_find_what_they_look_for() -> None:
    """The structure and lint checks fail on a dashboard that breaks each rule."""
    bad = json.loads(build_dashboards(DEMO)["demo-overview.json"])
    panels = [p for p in bad["panels"] if p["type"] != "row"]
    panels[0]["gridPos"] = dict(panels[1]["gridPos"])  # overlap
    panels[1]["id"] = panels[2]["id"]  # duplicate id
    panels[2]["gridPos"]["x"] = 20  # overflow (w 8)
    panels[3]["targets"][0]["refId"] = ""
    panels[4]["description"] = ""
    panels[5]["fieldConfig"]["defaults"].pop("unit")
    panels[6]["targets"][0]["datasource"] = {"type": "prometheus", "uid": "prom-1"}
    panels[0]["targets"][0]["expr"] = "sum(rate(mlmon_requests_total[1m]))"
    structure = "\n".join(structure_problems(bad))
    assert "overlaps" in structure and "not unique" in structure and "overflows" in structure
    assert "refIds ['']" in structure
    lint = "\n".join(lint_problems(bad))
    assert "no description" in lint and "no unit" in lint and "prom-1" in lint
    assert "does not use [$__rate_interval]" in lint and "literal range [1m]" in lint


@pytest.mark.parametrize(
    ("expr", "problems"),
    [
        pytest.param("rate(x[$__rate_interval])", 0, id="rate over $__rate_interval is right"),
        pytest.param("rate(x[1m])", 2, id="rate over a literal 1m is flagged twice"),
        pytest.param(
            'sum(increase(x{a=~"b"}[5m])) / sum(irate(y[$__rate_interval]))',
            2,
            id="increase over 5m is flagged, irate over $__rate_interval is not",
        ),
        pytest.param("max_over_time(x[1h])", 1, id="any literal range is flagged"),
        pytest.param("x unless x offset $__rate_interval", 0, id="an offset is not a range"),
    ],
)
def test_the_rate_lint(expr: str, problems: int) -> None:
    assert len(rate_problems(expr)) == problems


_METRIC = re.compile(r"\b(mlmon_[a-z0-9_]+)")
_SUFFIXES = ("_bucket", "_sum", "_count")


@pytest.mark.parametrize("board", ALL_BOARDS)
def test_every_metric_name_in_a_query_is_a_conventions_constant(board: dict[str, Any]) -> None:
    known = {v for k, v in vars(c).items() if k.isupper() and isinstance(v, str)}
    recording = {c.SLO_ERROR_BUDGET_REMAINING, c.SLO_CURRENT_BURN_RATE, c.LATENCY_SATURATION_RATIO}
    exprs = [q.expr for q in panel_queries(board)] + [e for _, e in annotation_queries(board)]
    exprs += [v.query for v in variables(board)]
    for expr in exprs:
        for name in _METRIC.findall(expr):
            base = next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), name)
            assert name in known or base in known, f"{name} in {expr!r} is not in conventions"
        for rule in re.findall(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b", expr):
            assert rule in recording, rule


def test_variables_are_datasource_then_model_version_instance_all_as_regex() -> None:
    overview = DEMO_BOARDS["demo-overview.json"]
    vs = variables(overview)
    assert [(v.name, v.type) for v in vs] == [
        ("datasource", "datasource"),
        ("model", "query"),
        ("version", "query"),
        ("instance", "query"),
    ]
    assert vs[0].query == "prometheus"
    assert vs[1].query == f"label_values({c.MODEL_INFO}, model)"
    assert all(v.include_all and v.all_value == ".*" for v in vs[1:])
    gpu = DEMO_BOARDS["demo-gpu.json"]
    assert [v.name for v in variables(gpu)] == ["datasource", "instance", "gpu"]
    for board in DEMO_BOARDS.values():
        for q in panel_queries(board):
            for name in re.findall(r"\$(\w+)", q.expr):
                assert name.startswith("__") or name in {v.name for v in variables(board)}


def test_the_dashboards_link_to_each_other_by_uid() -> None:
    uids = {b["uid"] for b in DEMO_BOARDS.values()}
    assert uids == {dashboard_uid("demo", d.name) for d in DASHBOARDS}
    for board in DEMO_BOARDS.values():
        targets = {link["url"] for link in board["links"]}
        assert targets == {f"/d/{u}" for u in uids - {board["uid"]}}, board["title"]
        assert all(link["keepTime"] for link in board["links"])
        assert board["tags"] == ["mlmon", "demo"] and board["refresh"] == "30s"


def test_a_uid_stays_within_40_characters_and_distinct_for_long_service_names() -> None:
    a = dashboard_uid("a" * 60 + ".x", "data-quality")
    b = dashboard_uid("a" * 60 + ".y", "data-quality")
    assert len(a) == len(b) == 40 and a != b
    assert re.fullmatch(r"[A-Za-z0-9_-]+", a)
    assert dashboard_uid("demo", "gpu") == "mlmon-demo-gpu"


# Panels an alert watches, and the alert (its runbook linked from the description).
_OV, _DQ, _G, _MI = (f"demo-{n}.json" for n in ("overview", "data-quality", "gpu", "mitigations"))
BACKED = [
    (_OV, "Error ratio by outcome", c.ALERT_ERROR_BUDGET_BURN),
    (_OV, "Latency p50 / p90 / p99", c.ALERT_LATENCY_BUDGET_BURN),
    (_OV, "Requests above the top latency bucket", c.ALERT_LATENCY_HISTOGRAM_SATURATED),
    (_OV, "Upstream ready and sidecar scraped", c.ALERT_UPSTREAM_NOT_READY),
    (_OV, "Upstream ready and sidecar scraped", c.ALERT_SIDECAR_DOWN),
    (_OV, "Error budget remaining", c.ALERT_ERROR_BUDGET_BURN),
    (_DQ, "Feature coverage", c.ALERT_FEATURE_COVERAGE_LOW),
    (_DQ, "Unexpected features", c.ALERT_UNEXPECTED_FEATURES),
    (_DQ, "Payload parse errors", c.ALERT_PAYLOAD_PARSE_ERRORS),
    (_DQ, "Drift score by feature, against its threshold", c.ALERT_FEATURE_DRIFT),
    (_DQ, "Dataset drift share", c.ALERT_DATASET_DRIFT_DETECTED),
    (_DQ, "Last successful drift run", c.ALERT_DRIFT_JOB_STALE),
    (_DQ, "Drift runs by result", c.ALERT_DRIFT_JOB_FAILING),
    (_G, "GPU answering and exporter scraped", c.ALERT_GPU_DOWN),
    (_G, "Memory used", c.ALERT_GPU_MEMORY_NEAR_FULL),
    (_G, "Throttle reasons", c.ALERT_GPU_THROTTLING),
    (_G, "ECC errors", c.ALERT_GPU_UNCORRECTABLE_ECC),
    (_G, "XID errors", c.ALERT_GPU_XID_ERRORS),
    (_MI, "Mitigation actions by outcome", c.ALERT_MITIGATION_FAILING),
]  # fmt: skip


@pytest.mark.parametrize(
    ("board", "panel", "alert"),
    [pytest.param(*b, id=f"{b[1]} links the {b[2]} runbook") for b in BACKED],
)
def test_a_panel_an_alert_watches_links_its_runbook(board: str, panel: str, alert: str) -> None:
    p = _panels(DEMO_BOARDS[board])[panel]
    url = c.runbook_url(DEMO.alerting.runbook_base_url, alert)
    assert f"[{alert}]({url})" in p["description"]
    assert any(link["url"] == url and link["title"] == f"Runbook: {alert}" for link in p["links"])
    assert (ROOT / url).is_file(), f"runbook {url} does not exist"


def test_every_runbook_link_of_every_panel_resolves_to_a_file() -> None:
    links = [
        m.group(1)
        for board in DEMO_BOARDS.values()
        for p in iter_panels(board)
        for m in re.finditer(r"\]\(([^)]+\.md)\)", p.get("description", ""))
    ]
    assert len(set(links)) >= 15
    assert [u for u in links if not (ROOT / u).is_file()] == []


def test_panels_follow_the_spec() -> None:
    data = yaml.safe_load(DEMO_SPEC.read_text())
    for key in ("features", "labels", "baseline"):
        data["models"][0].pop(key)
    data["models"][0]["outputs"] = [{"name": "score"}]
    bare = _panels(_boards(parse_spec(data))["demo-data-quality.json"])
    assert "Feature coverage" not in bare and "Drift runs by result" not in bare
    assert "Model quality" not in bare and "Predicted class share" not in bare
    assert {"Unexpected features", "Payload parse errors", "Prediction value p50 / p90"} <= set(
        bare
    )
    live = _panels(LIVE_BOARDS["live-data-quality.json"])
    assert {"Model quality", "Predicted class share", "Prediction value p50 / p90"} <= set(live)
    demo = _panels(DEMO_BOARDS["demo-data-quality.json"])
    assert "Model quality" in demo  # the demo spec has delayed labels
    assert "Floors: m: accuracy 0.5." in live["Model quality"]["description"]


def test_zero_traffic_shows_no_traffic_not_nan() -> None:
    """Case C22: ratios divide by a denominator guarded with ``> 0``, and the budget
    stat says so when there is no sample."""
    panels = _panels(DEMO_BOARDS["demo-overview.json"])
    assert panels["Error budget remaining"]["fieldConfig"]["defaults"]["noValue"] == "no traffic"
    for board in DEMO_BOARDS.values():
        for q in panel_queries(board):
            if "/\n" in q.expr or "/ on" in q.expr:
                assert "> 0)" in q.expr, q.name


def test_docs_dashboards_md_lists_every_panel_and_the_alert_it_links() -> None:
    doc = (ROOT / "docs" / "dashboards.md").read_text()
    rows = {
        cells[0]: cells[2]
        for line in doc.splitlines()
        if line.startswith("| ")
        and len(cells := [x.strip() for x in line.strip("|").split("|")]) == 3
    }
    # A panel links its alert only when the spec arms it (Model quality: quality_min), so
    # the row names every alert the panel links in either spec.
    linked: dict[str, list[str]] = {}
    for boards in (DEMO_BOARDS, LIVE_BOARDS):
        for board in boards.values():
            for title, p in _panels(board).items():
                assert title in rows, f"docs/dashboards.md has no row for panel {title!r}"
                for alert in re.findall(r"\[(\w+)\]\(", p["description"]):
                    if alert not in linked.setdefault(title, []):
                        linked[title].append(alert)
    assert {t: rows[t] for t in linked} == {t: ", ".join(a) for t, a in linked.items()}


# --- template expansion ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        pytest.param('rate(x{m=~"$model"}[$__rate_interval])', 'rate(x{m=~"bc"}[60s])',
                     id="rate interval is 4 scrapes when the step is shorter"),
        pytest.param("rate(x[${__rate_interval}])", "rate(x[60s])", id="braces work too"),
        pytest.param('x{v=~"[[version]]"}', 'x{v=~".*"}', id="the old [[name]] syntax works"),
        pytest.param("increase(x[$__range])", "increase(x[3600s])", id="range is the time range"),
    ],
)  # fmt: skip
def test_expand_substitutes_variables_as_grafana_does(expr: str, expected: str) -> None:
    values = {"model": "bc", "version": ".*"}
    assert expand(expr, values, step_s=15, scrape_interval_s=15, range_s=3600) == expected


def test_expand_rate_interval_follows_a_long_step() -> None:
    assert expand("[$__rate_interval]", {}, step_s=120, scrape_interval_s=15, range_s=1) == "[135s]"


def test_expand_refuses_an_unknown_variable() -> None:
    with pytest.raises(MonitorError, match=r"\$cluster, which is neither"):
        expand('x{c=~"$cluster"}', {}, step_s=1, scrape_interval_s=1, range_s=1)


def test_multi_values_become_an_escaped_alternation() -> None:
    assert regex_values(["m1", "m.2"]) == r"(m1|m\.2)"
    assert regex_values(["only"]) == "only"


# --- promtool --------------------------------------------------------------------------------


def _expanded(board: dict[str, Any], q: str) -> str:
    values = default_values(board)
    return expand(q, values, step_s=15, scrape_interval_s=15, range_s=3600)


def test_promtool_parses_every_query_with_variables_substituted(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    exprs = [
        (f"{board['uid']} {q.panel} {q.ref_id}", _expanded(board, q.expr))
        for boards in (DEMO_BOARDS, LIVE_BOARDS)
        for board in boards.values()
        for q in panel_queries(board)
    ] + [
        (f"{board['uid']} annotation {name}", _expanded(board, e))
        for board in LIVE_BOARDS.values()
        for name, e in annotation_queries(board)
    ]
    rules = [{"record": f"dashboard:query{i}:check", "expr": e} for i, (_, e) in enumerate(exprs)]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    res = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules)} rules found" in res.stdout


def test_promtool_rejects_a_broken_query(tmp_path: Path) -> None:
    """The check above can fail: ``group_left`` followed by a parenthesised sum reads the
    sum as group_left's label list, a parse error (a trap these dashboards avoid with
    ``group_left ()``)."""
    promtool = require_tool("promtool")
    bad = "sum by (model) (rate(x[1m]))\n/ on (model) group_left\n(sum by (model) (rate(x[1m])))"
    path = tmp_path / "bad.yml"
    rules = [{"record": "dashboard:bad:check", "expr": bad}]
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": rules}]}))
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode != 0 and "parse error" in res.stdout + res.stderr


# --- the provisioning files ------------------------------------------------------------------


def test_the_grafana_provisioning_files_name_prometheus_and_the_dashboards_folder() -> None:
    prov = ROOT / "deploy" / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert (source["type"], source["isDefault"]) == ("prometheus", True)
    dash = yaml.safe_load((prov / "dashboards" / "monitor.yaml").read_text())
    (provider,) = dash["providers"]
    assert provider["type"] == "file" and provider["allowUiUpdates"] is False
    assert provider["options"]["path"].startswith("/")


# --- live: every query against a real Prometheus -------------------------------------------

LIVE_DEADLINE_S = 45.0
"""How long the stack may take until every query has data (about 10 s here)."""


def _live_queries() -> list[tuple[str, str, str, bool]]:
    """``(name, dashboard file, expr, needs the GPU exporter)`` of every panel and
    annotation query of the live spec's dashboards."""
    out = []
    for file, board in LIVE_BOARDS.items():
        gpu = file.endswith("-gpu.json")
        out += [(q.name, file, q.expr, gpu) for q in panel_queries(board)]
        out += [
            (f"{board['title']} / annotation {name}", file, e, gpu)
            for name, e in annotation_queries(board)
        ]
    return out


LIVE_QUERIES = _live_queries()


def _values(board: dict[str, Any]) -> dict[str, str]:
    """The variables as a person would pick them: the test's model, everything else All."""
    values = default_values(board)
    if "model" in values:
        values["model"] = MODEL
    return values


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The stack of tests/dash_live.py, shared by the module's live tests."""
    with live_stack(tmp_path_factory.mktemp("live")) as stack:
        yield stack


@pytest.fixture(scope="module")
def live_results(live: Live) -> dict[str, list[Any]]:
    """Every live query's series over the stack's life, polled until all have data (or
    the deadline): ``{name: [series]}``."""
    deadline = time.monotonic() + LIVE_DEADLINE_S
    results: dict[str, list[Any]] = {}
    while True:
        now = time.time()
        for name, file, expr, gpu in LIVE_QUERIES:
            if results.get(name) or (gpu and not live.gpu):
                continue
            e = expand(
                expr,
                _values(LIVE_BOARDS[file]),
                step_s=SCRAPE_S,
                scrape_interval_s=SCRAPE_S,
                range_s=now - live.started,
            )
            results[name] = live.query_range(e, live.started, now, SCRAPE_S)
        missing = [
            n for n, _, _, gpu in LIVE_QUERIES if not results.get(n) and not (gpu and not live.gpu)
        ]
        if not missing or time.monotonic() > deadline:
            print(f"\nlive: {len(LIVE_QUERIES)} queries, data after {now - live.started:.1f}s")
            return results
        time.sleep(1)


def test_the_live_stack_runs_every_query_of_the_committed_dashboards() -> None:
    """The demo spec's dashboards are a subset of the live spec's: verifying the live
    ones verifies every query committed under dashboards/."""
    live = {(q.dashboard.split(" / ", 1)[1], q.panel, q.expr) for q, _ in _all(LIVE_BOARDS)}
    demo = {(q.dashboard.split(" / ", 1)[1], q.panel, q.expr) for q, _ in _all(DEMO_BOARDS)}
    assert demo <= live, sorted(demo - live)
    annotations = {e for b in LIVE_BOARDS.values() for _, e in annotation_queries(b)}
    assert {e for b in DEMO_BOARDS.values() for _, e in annotation_queries(b)} <= annotations


def _all(boards: dict[str, dict[str, Any]]) -> list[tuple[PanelQuery, dict[str, Any]]]:
    return [(q, b) for b in boards.values() for q in panel_queries(b)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("name", "file", "expr", "gpu"),
    [pytest.param(*q, id=q[0]) for q in LIVE_QUERIES],
)
def test_every_dashboard_query_returns_series_from_the_live_stack(
    live: Live, live_results: dict[str, list[Any]], name: str, file: str, expr: str, gpu: bool
) -> None:
    if gpu and not live.gpu:
        pytest.skip("tests/fake_gpu_exporter.py is missing: no GPU series to query")
    assert live_results[name], (
        f"panel {name!r} returned no series from the live Prometheus\nquery: {expr}\n"
        f"{live.diagnosis()}"
    )


def _query(file: str, panel: str, ref: str = "A") -> PanelQuery:
    (q,) = [q for q in panel_queries(LIVE_BOARDS[file]) if q.panel == panel and q.ref_id == ref]
    return q


def _now(live: Live, file: str, panel: str, ref: str = "A") -> list[tuple[dict[str, str], float]]:
    """The panel query's value now: ``[(labels, value)]``."""
    e = expand(
        _query(file, panel, ref).expr,
        _values(LIVE_BOARDS[file]),
        step_s=SCRAPE_S,
        scrape_interval_s=SCRAPE_S,
        range_s=time.time() - live.started,
    )
    data = live.api("query", query=e)
    return [(s["metric"], float(s["value"][1])) for s in data["result"]]


OV, DQ, GPU, MIT = (f"live-{n}.json" for n in ("overview", "data-quality", "gpu", "mitigations"))


@pytest.mark.timeout(120)
def test_live_traffic_panels_show_the_injected_errors_and_the_mitigation(
    live: Live, live_results: dict[str, list[Any]]
) -> None:
    ratio = dict((m["outcome"], v) for m, v in _now(live, OV, "Error ratio by outcome"))
    assert set(ratio) == {c.OUTCOME_SERVER_ERROR}  # every other request failed upstream
    assert ratio[c.OUTCOME_SERVER_ERROR] == pytest.approx(0.5, abs=0.15)
    burn = {m["slo"]: v for m, v in _now(live, OV, "Burn rate (5 m)")}
    # Half the requests fail against a budget of 0.1 %: a burn rate of 500. Requests are
    # fast (a slow one on this busy machine may spend a little of the latency budget).
    assert burn["availability"] == pytest.approx(500, rel=0.4)
    assert burn["latency"] < burn["availability"] / 10
    budgets = {m["slo"]: v for m, v in _now(live, OV, "Error budget remaining")}
    assert budgets["availability"] < 0 < 0.5 < budgets["latency"] <= 1  # overspent; intact
    p50, p90, p99 = (_now(live, OV, "Latency p50 / p90 / p99", ref)[0][1] for ref in "ABC")
    assert 0 < p50 <= p90 <= p99 < 2  # below the 2 s read timeout
    assert [v for _, v in _now(live, OV, "Requests above the top latency bucket")] == [0.0]
    firing = _now(live, OV, "Firing alerts")
    assert any(
        m["alertname"] == c.ALERT_ERROR_BUDGET_BURN and m["severity"] == "page" for m, _ in firing
    )
    routes = {m["upstream"]: v for m, v in _now(live, MIT, "Sidecar routing")}
    assert routes == {c.UPSTREAM_PRIMARY: 0.0, c.UPSTREAM_FALLBACK: 1.0}  # the mitigation
    actions = _now(live, MIT, "Mitigation actions by outcome")
    assert [(m["policy"], m["action"], m["outcome"], v) for m, v in actions] == [
        ("shift-to-fallback", "sidecar", c.MITIGATION_SUCCESS, 1.0)
    ]


@pytest.mark.timeout(120)
def test_live_data_quality_panels_show_the_bad_values_drift_and_quality(
    live: Live, live_results: dict[str, list[Any]]
) -> None:
    failing = {
        (m["feature"], m["state"]): v for m, v in _now(live, DQ, "Failing feature values by state")
    }
    # Of 19 parsed requests in 20: 2 with f0 = 20 (above max 10); 4 in 57 with f1 null.
    assert set(failing) == {("f0", c.STATE_OUT_OF_RANGE), ("f1", c.STATE_NULL)}
    assert failing["f0", c.STATE_OUT_OF_RANGE] == pytest.approx(2 / 19, abs=0.05)
    assert failing["f1", c.STATE_NULL] == pytest.approx(4 / 57, abs=0.05)
    coverage = {m["feature"]: v for m, v in _now(live, DQ, "Feature coverage")}
    assert coverage["f0"] == pytest.approx(1 - 2 / 19, abs=0.05)
    parse = {m["reason"]: v for m, v in _now(live, DQ, "Payload parse errors")}
    assert parse["invalid_json"] > 0 and parse["invalid_shape"] == 0
    assert _now(live, DQ, "Unexpected features")[0][1] > 0
    share = _now(live, DQ, "Dataset drift share")
    assert [v for _, v in share] == [0.5]  # f0 was shifted, f1 was not
    scores = {
        m["feature"] for m, _ in _now(live, DQ, "Drift score by feature, against its threshold")
    }
    assert scores == {"f0", "f1"}
    quality = {m["metric"]: v for m, v in _now(live, DQ, "Model quality")}
    assert quality["accuracy"] == pytest.approx(0.8, abs=0.05)  # every fifth label differs
    classes = {m["class"] for m, _ in _now(live, DQ, "Predicted class share")}
    assert classes >= {"0", "1"}


@pytest.mark.timeout(120)
def test_live_gpu_panels_show_both_fake_gpus_the_xid_and_the_throttling(
    live: Live, live_results: dict[str, list[Any]]
) -> None:
    if not live.gpu:
        pytest.skip("tests/fake_gpu_exporter.py is missing")
    gpus = {m["gpu"] for m, _ in _now(live, GPU, "Utilization")}
    assert gpus == {"0", "1"}
    xids = {(m["gpu"], m["xid"]) for m, _ in _now(live, GPU, "XID errors")}
    assert ("0", "79") in xids
    throttled = {(m["gpu"], m["reason"]) for m, _ in _now(live, GPU, "Throttle reasons")}
    assert ("0", c.THROTTLE_SW_THERMAL) in throttled


@pytest.mark.timeout(120)
def test_live_variable_queries_list_the_test_model_version_and_sidecar(live: Live) -> None:
    """``label_values(selector, label)`` as Grafana runs it (the series API)."""
    board = LIVE_BOARDS[OV]
    found = {}
    for v in variables(board):
        if v.type != "query":
            continue
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", v.query)
        assert m is not None, v.query
        selector = expand(m.group(1), {"model": MODEL}, step_s=1, scrape_interval_s=1, range_s=1)
        series = live.api("series", **{"match[]": selector, "start": f"{live.started:.0f}"})
        found[v.name] = sorted({s[m.group(2)] for s in series})
    assert found == {
        "model": [MODEL],
        "version": [VERSION],
        "instance": [f"127.0.0.1:{live.sidecar.metrics_port}"],
    }


@pytest.mark.timeout(120)
def test_dashboards_render_draws_every_panel_with_data_from_the_live_prometheus(
    live: Live, live_results: dict[str, list[Any]], tmp_path: Path
) -> None:
    out = tmp_path / "preview"
    t0 = time.monotonic()
    res = subprocess.run(
        [
            *MONITOR, "dashboards", "render", "--prometheus", live.prometheus_url,
            "--out", str(out), "--config", str(live.spec_path), "--range", "60s",
            "--step", "1s", "--scrape-interval", f"{SCRAPE_S:g}s", "--var", f"model={MODEL}",
            "--fail-on-empty",
        ],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    page = (out / "dashboards.html").read_text()
    summary = json.loads(
        re.search(
            r"<script type='application/json' id='render-summary'>(.*?)</script>", page, re.S
        ).group(1)  # type: ignore[union-attr]
    )
    panels = [(b["title"], p["title"]) for b in LIVE_BOARDS.values() for p in _panels(b).values()]
    assert [(p["dashboard"], p["panel"]) for p in summary] == panels
    assert [p for p in summary if p["series"] == 0 or p["errors"]] == []
    for _, title in panels:
        assert f"<h4>{title}</h4>" in page.replace("&#x27;", "'")
    assert "Plotly.newPlot" in page
    assert f"{len(panels)} panel(s), {len(panels)} with data" in res.stdout
    print(f"\nrender: {len(panels)} panels in {time.monotonic() - t0:.1f}s")


def test_dashboards_render_says_what_to_do_when_prometheus_is_unreachable(tmp_path: Path) -> None:
    res = subprocess.run(
        [*MONITOR, "dashboards", "render", "--prometheus", "http://127.0.0.1:9",
         "--out", str(tmp_path), "--dashboards", str(ROOT / "dashboards")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.startswith("error: cannot query Prometheus at http://127.0.0.1:9")
    assert "check --prometheus" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("url", ["notaurl", "127.0.0.1:9090", "ftp://h", "http://", "http://[::1"])
def test_dashboards_render_refuses_a_prometheus_that_is_not_an_http_url(
    tmp_path: Path, url: str
) -> None:
    res = subprocess.run(
        [*MONITOR, "dashboards", "render", "--prometheus", url, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"Error: Invalid value for '--prometheus': {url!r}: expected an http:// or https:// "
        "URL with a host, e.g. http://127.0.0.1:9090"
    )
    assert not any(tmp_path.iterdir())


def test_dashboards_render_without_dashboards_points_at_monitor_generate(tmp_path: Path) -> None:
    res = subprocess.run(
        [*MONITOR, "dashboards", "render", "--prometheus", "http://127.0.0.1:9",
         "--out", str(tmp_path), "--dashboards", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 1 and "run monitor generate" in res.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("2d", 172800), ("500ms", 0.5)],
    ids=lambda v: str(v),
)
def test_render_durations(text: str, seconds: float) -> None:
    from monitor.dashboards.render import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "0s", "1y", "-5m", "5 minutes"])
def test_render_refuses_a_bad_duration(text: str) -> None:
    from monitor.dashboards.render import parse_duration

    with pytest.raises(MonitorError, match="expected a duration like 90s"):
        parse_duration(text)


def test_render_refuses_a_json_file_that_is_not_a_dashboard(tmp_path: Path) -> None:
    from monitor.dashboards.render import load_dashboards

    (tmp_path / "a.json").write_text('{"title": "no panels"}')
    with pytest.raises(MonitorError, match="not a Grafana dashboard JSON"):
        load_dashboards(tmp_path)
    (tmp_path / "a.json").write_text("{oops")
    with pytest.raises(MonitorError, match="cannot read dashboard"):
        load_dashboards(tmp_path)


def test_render_var_must_be_name_equals_value(tmp_path: Path) -> None:
    res = subprocess.run(
        [*MONITOR, "dashboards", "render", "--prometheus", "http://127.0.0.1:9",
         "--out", str(tmp_path), "--var", "model"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2 and "expected NAME=VALUE" in res.stderr
