"""Generated Prometheus rules (monitor/rules.py): promtool accepts them, their promtool
unit tests pass, burn-rate factors match the SRE workbook table, and every alert is
complete, documented and routed to mitigations exactly as the spec says.

promtool (Debian package ``prometheus``) is required: without it these tests skip
locally and fail when ``$CI`` is set, so CI can never go green by skipping them.
"""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor import conventions as c
from monitor import rules
from monitor.rules import (
    ALERTS,
    alert_def,
    build_rule_tests,
    build_rules,
    burn_rate_windows,
    mitigation_for,
)
from monitor.spec import MonitorSpec, load_spec, parse_spec
from tests.support import require_tool

ROOT = Path(__file__).resolve().parents[1]
RUNBOOKS = ROOT / "docs" / "runbooks"
DEMO = load_spec(ROOT / "deploy" / "monitor.yaml")

# Everything the generator can emit: several models and protocols, coverage floors
# (two features share one, with regex metacharacters in their names), capture, quality
# floors, SLOs over 28d, 4w, 7d and 1d windows, an objective of 99 % (case C22's), and
# mitigation policies by equality, regex and model.
FULL = parse_spec(
    {
        "apiVersion": "monitor/v1",
        "service": "shop",
        "models": [
            {
                "name": "ranker",
                "protocol": "json",
                "upstream": "http://127.0.0.1:8081",
                "features": [
                    {"name": "price.eur", "min_coverage": 0.99},
                    {"name": "country", "type": "categorical"},
                    {"name": "price.usd", "min_coverage": 0.99},
                    {"name": "age", "min_coverage": 0.8},
                ],
                "capture": {"dir": "./capture"},
                "latency_buckets": [0.05, 0.1, 0.5, 1, 2.5],
                "quality_min": {"roc_auc": 0.75, "accuracy": 0.9},
            },
            {"name": "llm", "protocol": "openai", "upstream": "http://127.0.0.1:8082"},
        ],
        "slos": [
            {
                "name": "availability",
                "model": "ranker",
                "objective": 0.99,
                "window": "28d",
                "description": "Checkout ranking.",
            },
            {
                "name": "fast",
                "model": "ranker",
                "objective": 0.95,
                "threshold_seconds": 0.5,
                "window": "4w",
            },
            {"name": "availability", "model": "llm", "objective": 0.9995, "window": "7d"},
            {"name": "daily", "model": "llm", "objective": 0.9, "window": "1d"},
        ],
        "alerting": {
            "runbook_base_url": "https://runbooks.example.com/ml/",
            "sidecar_job": "sidecars",
            "gpu_job": "dcgm",
            "min_coverage": 0.9,
            "max_payload_error_ratio": 0.05,
            "max_capture_drop_ratio": 0.002,
            "gpu_memory_max_ratio": 0.9,
            "version_skew_minutes": 20,
        },
        "drift": {"schedule_seconds": 600, "drift_share": 0.3},
        "mitigations": [
            {
                "name": "drain-gpu",
                "match": {"alertname": "~GPU.*", "severity": "page"},
                "action": {"type": "command", "argv": ["drain"]},
            },
            {
                "name": "rollback-ranker",
                "match": {"alertname": "CanaryFailing", "model": "ranker"},
                "action": {"type": "http", "url": "http://127.0.0.1:8081/rollback"},
            },
            {
                "name": "loop",
                "match": {"alertname": "~Mitigation.*"},
                "action": {"type": "http", "url": "http://127.0.0.1:9/never"},
            },
        ],
    }
)

SPECS = [
    pytest.param(DEMO, id="The demo spec deploy/monitor.yaml."),
    pytest.param(FULL, id="A spec with every alert, 28d/4w/7d/1d windows and mitigations."),
]


def require_promtool() -> str:
    """The promtool executable; skip when missing, or fail when ``$CI`` is set."""
    return require_tool("promtool")


def dump(data: dict[str, Any]) -> str:
    """As monitor/generate.py writes them."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def write(tmp_path: Path, spec: MonitorSpec) -> tuple[Path, Path]:
    rule_file = tmp_path / f"{spec.service}.rules.yml"
    test_file = tmp_path / f"{spec.service}.rules.test.yml"
    rule_file.write_text(dump(build_rules(spec)), encoding="utf-8")
    test_file.write_text(dump(build_rule_tests(spec, rule_file.name)), encoding="utf-8")
    return rule_file, test_file


def alert_rules(spec: MonitorSpec) -> list[dict[str, Any]]:
    return [r for g in build_rules(spec)["groups"] for r in g["rules"] if "alert" in r]


# --- promtool --------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_promtool_accepts_the_rules(spec: MonitorSpec, tmp_path: Path) -> None:
    promtool = require_promtool()
    rule_file, _ = write(tmp_path, spec)
    out = subprocess.run(
        [promtool, "check", "rules", "--lint-fatal", str(rule_file)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("spec", SPECS)
def test_promtool_unit_tests_pass(spec: MonitorSpec, tmp_path: Path) -> None:
    promtool = require_promtool()
    _, test_file = write(tmp_path, spec)
    out = subprocess.run(
        [promtool, "test", "rules", test_file.name],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-6000:]


@pytest.mark.parametrize(
    "present",
    [
        pytest.param(False, id="Without promtool and without $CI the tests skip."),
        pytest.param(True, id="Without promtool under $CI the tests fail."),
    ],
)
def test_missing_promtool_skips_locally_and_fails_in_ci(
    present: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    if present:
        monkeypatch.setenv("CI", "1")
        with pytest.raises(pytest.fail.Exception, match="CI: promtool missing"):
            require_promtool()
    else:
        monkeypatch.delenv("CI", raising=False)
        with pytest.raises(pytest.skip.Exception):
            require_promtool()


# --- every alert is tested firing and silent ----------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_every_alert_rule_is_shown_firing_and_silent(spec: MonitorSpec) -> None:
    fired: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    silent: set[str] = set()
    for t in build_rule_tests(spec, "x.yml")["tests"]:
        for check in t.get("alert_rule_test", []):
            if not check["exp_alerts"]:
                silent.add(check["alertname"])
            for exp in check["exp_alerts"]:
                fired.add((check["alertname"], tuple(sorted(exp["exp_labels"].items()))))
    for rule in alert_rules(spec):
        static = set(rule["labels"].items())
        assert any(name == rule["alert"] and static <= set(labels) for name, labels in fired), (
            f"{rule['alert']} {rule['labels']} never fires in a test"
        )
        assert rule["alert"] in silent, f"{rule['alert']} is never shown silent"


def test_the_full_spec_emits_every_alert_of_the_catalogue() -> None:
    emitted = {(r["alert"], r["labels"][c.LABEL_SEVERITY]) for r in alert_rules(FULL)}
    assert emitted == {(a.name, a.severity) for a in ALERTS}


def _c22_test(spec: MonitorSpec, model: str) -> dict[str, Any]:
    tests = build_rule_tests(spec, "x.yml")["tests"]
    return next(t for t in tests if t["name"].startswith(f"Case C22 {model}/availability"))


def _samples(test: dict[str, Any], record: str, at: str) -> list[dict[str, Any]]:
    return next(
        e["exp_samples"]
        for e in test["promql_expr_test"]
        if e["expr"].startswith(record + "{") and e["eval_time"] == at
    )


def test_case_c22_expects_the_cases_budget_and_never_nan() -> None:
    # FULL's ranker availability SLO has the case's 99 % objective, so its exact numbers.
    test = _c22_test(FULL, "ranker")
    (window,) = _samples(test, c.SLO_ERROR_RATIO_WINDOW, "35m")
    (remaining,) = _samples(test, c.SLO_ERROR_BUDGET_REMAINING, "35m")
    assert window["value"] == pytest.approx(2 / 1400, rel=1e-12)
    assert remaining["value"] == pytest.approx(0.857142857142857, rel=1e-12)
    # The 5m window without traffic: no sample at all (0/0 would be NaN).
    assert _samples(test, c.SLO_ERROR_RATIO["5m"], "8m") == []
    (check,) = test["alert_rule_test"]
    assert check["alertname"] == c.ALERT_ERROR_BUDGET_BURN and check["exp_alerts"] == []


def test_case_c22_keeps_the_cases_remaining_budget_for_any_objective() -> None:
    # The demo's 99.9 %: the counts are scaled to the budget, the result is the case's.
    test = _c22_test(DEMO, "bc")
    (remaining,) = _samples(test, c.SLO_ERROR_BUDGET_REMAINING, "35m")
    assert remaining["value"] == pytest.approx(6 / 7, rel=1e-12)


def test_case_c20_expects_a_saturation_share_of_098() -> None:
    test = next(t for t in build_rule_tests(DEMO, "x.yml")["tests"] if "Case C20" in t["name"])
    (sample,) = _samples(test, c.LATENCY_SATURATION_RATIO, "30m")
    assert sample["value"] == 0.98
    (check,) = test["alert_rule_test"]
    assert check["exp_alerts"][0]["exp_annotations"]["description"].startswith("98% of the")


# --- burn-rate windows -------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "factors"),
    [
        pytest.param(30 * 86400, [14.4, 6, 3, 1], id="A 30d window burns at 14.4, 6, 3 and 1."),
        pytest.param(
            28 * 86400, [13.44, 5.6, 2.8, 0.93], id="A 28d window burns at 13.44, 5.6, 2.8, 0.93."
        ),
    ],
)
def test_burn_rate_factors_match_the_workbook_table(window: int, factors: list[float]) -> None:
    rows = burn_rate_windows(window)
    assert [round(w.factor, 2) for w in rows] == factors
    assert [(w.severity, w.long, w.short, w.budget_share) for w in rows] == [
        ("page", 3600, 300, 0.02),
        ("page", 21600, 1800, 0.05),
        ("ticket", 86400, 7200, 0.10),
        ("ticket", 259200, 21600, 0.10),
    ]


def test_burn_rate_windows_cite_their_source() -> None:
    source = inspect.getsource(rules)
    assert "https://sre.google/workbook/alerting-on-slos/" in source
    assert "google-30d.yaml" in source


def test_a_window_shorter_than_a_long_window_drops_that_row() -> None:
    rows = burn_rate_windows(86400)
    assert [(w.severity, w.long) for w in rows] == [
        ("page", 3600),
        ("page", 21600),
        ("ticket", 86400),
    ]


def test_burn_alerts_use_the_factors_of_the_slo_window() -> None:
    groups = {g["name"]: g["rules"] for g in build_rules(FULL)["groups"]}
    page = next(
        r
        for r in groups["shop-slo-ranker-availability"]
        if r.get("alert") == c.ALERT_ERROR_BUDGET_BURN and r["labels"]["severity"] == "page"
    )
    assert "> (13.44 * 0.01)" in page["expr"] and "> (5.6 * 0.01)" in page["expr"]
    ticket = next(
        r
        for r in groups["shop-slo-ranker-availability"]
        if r.get("alert") == c.ALERT_ERROR_BUDGET_BURN and r["labels"]["severity"] == "ticket"
    )
    assert "> (2.8 * 0.01)" in ticket["expr"] and "> (0.9333 * 0.01)" in ticket["expr"]


# --- completeness of every alert ------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_every_alert_is_complete(spec: MonitorSpec) -> None:
    for rule in alert_rules(spec):
        name = rule["alert"]
        assert list(rule) == ["alert", "expr", "for", "labels", "annotations"], name
        assert re.fullmatch(r"\d+(ms|s|m|h|d)", rule["for"]), name
        assert rule["labels"][c.LABEL_SEVERITY] in c.SEVERITIES, name
        assert list(rule["annotations"]) == ["summary", "description", "runbook_url"], name
        assert all(rule["annotations"].values()), name
        assert "@{" not in rule["annotations"]["description"], name
        base = spec.alerting.runbook_base_url.rstrip("/")
        assert rule["annotations"]["runbook_url"] == f"{base}/{name}.md"


@pytest.mark.parametrize("alert", sorted({a.name for a in ALERTS}))
def test_every_alert_has_a_runbook(alert: str) -> None:
    page = RUNBOOKS / f"{alert}.md"
    assert page.is_file(), f"write {page.relative_to(ROOT)}"
    text = page.read_text(encoding="utf-8")
    assert text.startswith(f"# {alert}\n")
    for heading in ("## Meaning", "## Impact", "## Check first", "## Do", "## Silence"):
        assert heading in text, f"{page.name} lacks {heading!r}"


def test_the_runbook_index_lists_the_catalogue() -> None:
    index = (RUNBOOKS / "README.md").read_text(encoding="utf-8")
    for a in ALERTS:
        assert f"| [{a.name}]({a.name}.md) | {a.severity} | {a.for_} | {a.why_for} |" in index


def test_every_catalogue_entry_justifies_its_for() -> None:
    for a in ALERTS:
        assert a.why_for and a.for_ and "@{" not in a.why_for, a.name
        assert a.severity in c.SEVERITIES, a.name
        assert alert_def(a.name, a.severity) is a


def test_the_demo_rules_point_at_this_repos_runbooks() -> None:
    for rule in alert_rules(DEMO):
        assert (ROOT / rule["annotations"]["runbook_url"]).is_file()


# --- mitigation labels ---------------------------------------------------------------


def _mitigated(spec: MonitorSpec) -> set[tuple[str, str, str, str]]:
    return {
        (
            r["alert"],
            r["labels"][c.LABEL_SEVERITY],
            r["labels"].get(c.LABEL_MODEL, ""),
            r["labels"][c.LABEL_MITIGATION],
        )
        for r in alert_rules(spec)
        if c.LABEL_MITIGATION in r["labels"]
    }


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            DEMO,
            {("ErrorBudgetBurn", "page", "bc", "shift-to-fallback")},
            id="The demo's policy labels only the ErrorBudgetBurn page.",
        ),
        pytest.param(
            FULL,
            {
                ("GPUDown", "page", "", "drain-gpu"),
                ("GPUUncorrectableECC", "page", "", "drain-gpu"),
                ("CanaryFailing", "page", "ranker", "rollback-ranker"),
            },
            id="Regex and model matchers label exactly the alerts they match, never "
            "MitigationFailing.",
        ),
    ],
)
def test_a_mitigation_policy_labels_exactly_the_alerts_it_matches(
    spec: MonitorSpec, expected: set[tuple[str, str, str, str]]
) -> None:
    assert _mitigated(spec) == expected


@pytest.mark.parametrize(
    ("labels", "policy"),
    [
        pytest.param(
            {"alertname": "ErrorBudgetBurn", "severity": "page", "model": "bc"},
            "shift-to-fallback",
            id="Equality on every matcher matches.",
        ),
        pytest.param(
            {"alertname": "ErrorBudgetBurn", "severity": "ticket", "model": "bc"},
            None,
            id="One differing label does not match.",
        ),
        pytest.param(
            {"alertname": "ErrorBudgetBurnX", "severity": "page"},
            None,
            id="Equality is whole-value.",
        ),
    ],
)
def test_mitigation_matching(labels: dict[str, str], policy: str | None) -> None:
    assert mitigation_for(DEMO, labels) == policy


@pytest.mark.parametrize(
    ("labels", "policy"),
    [
        pytest.param(
            {"alertname": "GPUDown", "severity": "page"}, "drain-gpu", id="A regex matches."
        ),
        pytest.param(
            {"alertname": "MyGPUDown", "severity": "page"}, None, id="A regex must match fully."
        ),
        pytest.param(
            {"alertname": "CanaryFailing"}, None, id="A label the alert lacks reads as empty."
        ),
    ],
)
def test_mitigation_regex_matching(labels: dict[str, str], policy: str | None) -> None:
    assert mitigation_for(FULL, labels) == policy


# --- rendering -----------------------------------------------------------------------

_DURATION = re.compile(r"^\d+(ms|s|m|h|d)$")


def _durations(doc: dict[str, Any]) -> list[str]:
    out = []
    for g in doc["groups"]:
        for r in g["rules"]:
            out += re.findall(r"\[([^\]]+)\]", r["expr"])
            out += re.findall(r"offset (\S+?)\)?(?:\s|$)", r["expr"])
            if "for" in r:
                out.append(r["for"])
    return out


@pytest.mark.parametrize(
    ("scale", "rate5m", "window", "page_for"),
    [
        pytest.param(1, "[5m]", "[30d]", "2m", id="Scale 1 keeps the nominal windows."),
        pytest.param(60, "[5s]", "[12h]", "2s", id="Scale 60 turns minutes into seconds."),
        pytest.param(
            7, "[42857ms]", "[370285714ms]", "17143ms", id="Odd scales round to whole ms."
        ),
    ],
)
def test_time_scale_divides_every_duration(
    scale: float, rate5m: str, window: str, page_for: str
) -> None:
    doc = build_rules(DEMO, time_scale=scale)
    assert all(_DURATION.match(d) for d in _durations(doc)), _durations(doc)
    slo = {
        r.get("record") or r["alert"] + r["labels"]["severity"]: r
        for r in doc["groups"][0]["rules"]
    }
    assert rate5m in slo[c.SLO_BAD_EVENTS_RATE5M]["expr"]
    assert window in slo[c.SLO_ERROR_RATIO_WINDOW]["expr"]
    assert slo["ErrorBudgetBurnpage"]["for"] == page_for
    assert "ratio_rate5m" in slo[c.SLO_CURRENT_BURN_RATE]["expr"]  # names keep nominal windows


def test_time_scale_must_be_positive() -> None:
    with pytest.raises(ValueError, match="time_scale"):
        build_rules(DEMO, time_scale=0)


@pytest.mark.parametrize("spec", SPECS)
def test_output_is_deterministic_and_plain_yaml(spec: MonitorSpec) -> None:
    first, second = dump(build_rules(spec)), dump(build_rules(spec))
    assert first == second
    tests = dump(build_rule_tests(spec, "x.yml"))
    assert tests == dump(build_rule_tests(spec, "x.yml"))
    for text in (first, tests):
        assert "&id" not in text and "*id" not in text  # no YAML anchors


@pytest.mark.parametrize("spec", SPECS)
def test_every_ratio_guards_its_denominator(spec: MonitorSpec) -> None:
    for g in build_rules(spec)["groups"]:
        for r in g["rules"]:
            if "\n/\n" in r["expr"]:
                denominator = r["expr"].split("\n/\n", 1)[1]
                assert denominator.startswith("(") and "> 0)" in denominator, r


def test_recording_rule_names_come_from_conventions() -> None:
    known = {
        c.SLO_BAD_EVENTS_RATE5M,
        c.SLO_EVENTS_RATE5M,
        c.SLO_ERROR_RATIO_WINDOW,
        c.SLO_OBJECTIVE,
        c.SLO_ERROR_BUDGET,
        c.SLO_ERROR_BUDGET_REMAINING,
        c.SLO_CURRENT_BURN_RATE,
        c.LATENCY_SATURATION_RATIO,
        *c.SLO_ERROR_RATIO.values(),
    }
    records = {
        r["record"] for g in build_rules(FULL)["groups"] for r in g["rules"] if "record" in r
    }
    assert records == known
    assert all(re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", name) for name in records)


def test_availability_counts_errors_over_requests_that_were_not_cancelled() -> None:
    slo = {r.get("record"): r for r in build_rules(DEMO)["groups"][0]["rules"]}
    bad = slo[c.SLO_BAD_EVENTS_RATE5M]["expr"]
    assert 'outcome=~"server_error|timeout|unreachable"' in bad
    assert 'outcome!="client_cancelled"' in slo[c.SLO_EVENTS_RATE5M]["expr"]
    assert 'model="bc"' in bad  # so model="other" never counts


def test_latency_reads_the_threshold_bucket_as_the_sidecar_writes_it() -> None:
    slo = {r.get("record"): r for r in build_rules(DEMO)["groups"][1]["rules"]}
    assert 'le="0.25"' in slo[c.SLO_BAD_EVENTS_RATE5M]["expr"]
    ranker = {r.get("record"): r for r in build_rules(FULL)["groups"][1]["rules"]}
    assert 'le="0.5"' in ranker[c.SLO_BAD_EVENTS_RATE5M]["expr"]


def test_feature_names_are_escaped_in_coverage_selectors() -> None:
    exprs = [r["expr"] for r in alert_rules(FULL) if r["alert"] == c.ALERT_FEATURE_COVERAGE_LOW]
    assert any(r"feature=~`price\.eur|price\.usd`" in e for e in exprs), exprs


def test_slis_count_inference_routes_only_so_health_checks_do_not_dilute_them() -> None:
    rules = build_rules(load_spec(ROOT / "deploy" / "monitor.yaml"))
    slo_exprs = [
        r["expr"]
        for g in rules["groups"]
        if g["name"].startswith("demo-slo-")
        for r in g["rules"]
        if "record" in r and "mlmon_request" in r["expr"]
    ]
    assert slo_exprs
    route = (
        "route=~`/v2/models/\\{model\\}/infer|/v2/models/\\{model\\}/versions/\\{version\\}/infer`"
    )
    assert all(route in e for e in slo_exprs), [e for e in slo_exprs if route not in e][:1]
