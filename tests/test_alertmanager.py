"""The generated Alertmanager config, checked by the real tools: ``amtool check-config``,
``amtool config routes test`` for every receiver path, and a real Alertmanager that
applies the inhibitions."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from monitor import conventions as c
from monitor.alertmanager import (
    RECEIVER_MITIGATOR,
    RECEIVER_NULL,
    RECEIVER_PAGER,
    RECEIVER_TICKET,
    build_alertmanager_config,
    format_duration,
)
from monitor.generate import to_yaml
from monitor.procs import AlertmanagerProcess
from monitor.spec import MonitorSpec, parse_spec
from tests.support import require_tool


def make_spec(tmp_path: Path, *, receivers: bool = True) -> MonitorSpec:
    """A one-model spec with every kind of receiver; the files it names exist."""
    alerting: dict[str, Any] = {}
    if receivers:
        for name, content in (
            ("pd.key", "0123456789abcdef0123456789abcdef"),
            ("slack.url", "https://hooks.slack.example/services/T/B/X"),
            ("mitigator.token", "s3cret"),
        ):
            (tmp_path / name).write_text(content + "\n")
        alerting = {
            "pager": {
                "webhook_url": "http://127.0.0.1:9095/page",
                "pagerduty_routing_key_file": str(tmp_path / "pd.key"),
            },
            "ticket": {
                "webhook_url": "http://127.0.0.1:9095/ticket",
                "slack_api_url_file": str(tmp_path / "slack.url"),
                "slack_channel": "#ml-alerts",
            },
            "mitigator_url": "http://127.0.0.1:9500/v1/alerts",
            "mitigator_credentials_file": str(tmp_path / "mitigator.token"),
        }
    return parse_spec(
        {
            "apiVersion": "monitor/v1",
            "service": "t",
            "models": [{"name": "m", "upstream": "http://127.0.0.1:8080"}],
            "slos": [{"name": "availability", "model": "m", "objective": 0.999}],
            "alerting": alerting,
        }
    )


def write_config(tmp_path: Path, spec: MonitorSpec, **kwargs: Any) -> Path:
    path = tmp_path / "alertmanager.yml"
    path.write_text(to_yaml(build_alertmanager_config(spec, **kwargs), "test"))
    return path


# --- the config itself ---------------------------------------------------------------------


def test_routes_group_by_alertname_and_model_and_send_mitigations_first() -> None:
    cfg = build_alertmanager_config(make_spec(Path("/nonexistent"), receivers=False))
    assert cfg["route"]["group_by"] == [c.LABEL_ALERTNAME, c.LABEL_MODEL]
    assert cfg["route"]["receiver"] == RECEIVER_NULL
    assert [r["receiver"] for r in cfg["route"]["routes"]] == [RECEIVER_NULL, RECEIVER_NULL]
    assert [r["name"] for r in cfg["receivers"]] == [RECEIVER_NULL]


def test_the_mitigator_route_is_first_continues_and_sends_bearer_credentials(
    tmp_path: Path,
) -> None:
    cfg = build_alertmanager_config(make_spec(tmp_path))
    first = cfg["route"]["routes"][0]
    assert first["receiver"] == RECEIVER_MITIGATOR
    assert first["continue"] is True
    assert first["matchers"] == [f'{c.LABEL_MITIGATION}=~".+"']
    (mitigator,) = (r for r in cfg["receivers"] if r["name"] == RECEIVER_MITIGATOR)
    (hook,) = mitigator["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:9500/v1/alerts"
    assert hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["credentials_file"] == str(
        tmp_path / "mitigator.token"
    )


def test_receivers_carry_every_integration_the_spec_names(tmp_path: Path) -> None:
    receivers = {r["name"]: r for r in build_alertmanager_config(make_spec(tmp_path))["receivers"]}
    assert set(receivers) == {RECEIVER_NULL, RECEIVER_MITIGATOR, RECEIVER_PAGER, RECEIVER_TICKET}
    pager, ticket = receivers[RECEIVER_PAGER], receivers[RECEIVER_TICKET]
    assert pager["webhook_configs"] == [
        {"url": "http://127.0.0.1:9095/page", "send_resolved": True}
    ]
    assert pager["pagerduty_configs"][0]["routing_key_file"] == str(tmp_path / "pd.key")
    assert "slack_configs" not in pager
    assert ticket["slack_configs"] == [
        {
            "api_url_file": str(tmp_path / "slack.url"),
            "send_resolved": True,
            "channel": "#ml-alerts",
        }
    ]


def test_time_scale_shortens_every_wait_and_interval(tmp_path: Path) -> None:
    normal = build_alertmanager_config(make_spec(tmp_path))["route"]
    fast = build_alertmanager_config(make_spec(tmp_path), time_scale=60)["route"]
    assert (normal["group_wait"], normal["group_interval"]) == ("30s", "5m")
    assert (fast["group_wait"], fast["group_interval"], fast["repeat_interval"]) == (
        "500ms",
        "5s",
        "4m",
    )
    assert fast["routes"][0]["group_wait"] == "83ms"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (30, "30s"),
        (300, "5m"),
        (14400, "4h"),
        (90, "1m30s"),
        (86400 * 3, "3d"),
        (0.5, "500ms"),
        (0, "1ms"),
    ],
    ids=[
        "Half a minute is 30s.",
        "Five minutes is 5m.",
        "Four hours is 4h.",
        "Ninety seconds is 1m30s.",
        "Three days is 3d.",
        "Half a second is 500ms.",
        "Zero becomes the shortest duration, 1ms.",
    ],
)
def test_durations_are_written_in_prometheus_syntax(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- amtool --------------------------------------------------------------------------------


def test_amtool_check_config_accepts_the_generated_file(tmp_path: Path) -> None:
    amtool = require_tool("amtool")
    for name, receivers in (("full", True), ("bare", False)):
        (tmp_path / name).mkdir()
        cfg = write_config(tmp_path / name, make_spec(tmp_path / name, receivers=receivers))
        res = subprocess.run(
            [amtool, "check-config", str(cfg)], capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert "SUCCESS" in res.stdout


_PAGE = [f"alertname={c.ALERT_ERROR_BUDGET_BURN}", "model=m", "slo=availability"]
ROUTE_CASES = [
    pytest.param(
        [*_PAGE, "severity=page"],
        [RECEIVER_PAGER],
        id="A page alert goes to the pager.",
    ),
    pytest.param(
        [*_PAGE, "severity=ticket"],
        [RECEIVER_TICKET],
        id="A ticket alert goes to the ticket receiver.",
    ),
    pytest.param(
        [*_PAGE, "severity=page", "mitigation=shift-to-fallback"],
        [RECEIVER_MITIGATOR, RECEIVER_PAGER],
        id="A page alert with a mitigation label goes to the mitigator and the pager.",
    ),
    pytest.param(
        [*_PAGE, "severity=ticket", "mitigation=shift-to-fallback"],
        [RECEIVER_MITIGATOR, RECEIVER_TICKET],
        id="A ticket alert with a mitigation label goes to the mitigator and the ticket receiver.",
    ),
    pytest.param(
        [f"alertname={c.ALERT_UNEXPECTED_FEATURES}", "model=m", "severity=info"],
        [RECEIVER_NULL],
        id="An info alert goes to the null receiver.",
    ),
    pytest.param(
        ["alertname=Watchdog"],
        [RECEIVER_NULL],
        id="An alert without a severity goes to the null receiver.",
    ),
]


@pytest.mark.parametrize(("labels", "receivers"), ROUTE_CASES)
def test_amtool_routes_each_alert_to_its_receivers(
    tmp_path: Path, labels: list[str], receivers: list[str]
) -> None:
    amtool = require_tool("amtool")
    cfg = write_config(tmp_path, make_spec(tmp_path))
    res = subprocess.run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={cfg}",
            f"--verify.receivers={','.join(receivers)}",
            *labels,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == ",".join(receivers)


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        pytest.param(
            ["severity=page", "mitigation=x", *_PAGE],
            [RECEIVER_NULL],
            id="Without receivers or a mitigator a mitigated page goes to the null receiver.",
        ),
        pytest.param(
            ["severity=ticket", *_PAGE],
            [RECEIVER_NULL],
            id="Without a ticket receiver a ticket goes to the null receiver.",
        ),
    ],
)
def test_amtool_routes_to_null_when_the_spec_names_no_receivers(
    tmp_path: Path, labels: list[str], receivers: list[str]
) -> None:
    amtool = require_tool("amtool")
    cfg = write_config(tmp_path, make_spec(tmp_path, receivers=False))
    res = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={cfg}", *labels],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == ",".join(receivers)


# --- a real Alertmanager applies the inhibitions -----------------------------------------


def _api(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def test_a_real_alertmanager_inhibits_as_configured(tmp_path: Path) -> None:
    binary = require_tool("prometheus-alertmanager")
    cfg = write_config(tmp_path, make_spec(tmp_path, receivers=False))
    am = AlertmanagerProcess(binary, cfg, tmp_path)

    burn = {"alertname": c.ALERT_ERROR_BUDGET_BURN, "slo": "availability"}
    page, ticket = c.SEVERITY_PAGE, c.SEVERITY_TICKET
    # name: (labels, state expected)
    cases = {
        "SidecarDown of m": (
            {"alertname": c.ALERT_SIDECAR_DOWN, "model": "m", "severity": ticket},
            "active",
        ),
        "a ticket of m, silenced by its sidecar down": (
            {"alertname": c.ALERT_FEATURE_COVERAGE_LOW, "model": "m", "severity": ticket},
            "suppressed",
        ),
        "a page of m, never silenced by a ticket": (
            {**burn, "model": "m", "severity": page},
            "active",
        ),
        "SidecarDown of j": (
            {"alertname": c.ALERT_SIDECAR_DOWN, "model": "j", "severity": ticket},
            "active",
        ),
        "ModelTelemetryMissing of j, never silenced by its SidecarDown": (
            {"alertname": c.ALERT_MODEL_TELEMETRY_MISSING, "model": "j", "severity": page},
            "active",
        ),
        "ModelTelemetryMissing of k": (
            {"alertname": c.ALERT_MODEL_TELEMETRY_MISSING, "model": "k", "severity": page},
            "active",
        ),
        "a page of k, silenced by its telemetry missing": (
            {"alertname": c.ALERT_CANARY_FAILING, "model": "k", "severity": page},
            "suppressed",
        ),
        "a page of n": ({**burn, "model": "n", "severity": page}, "active"),
        "the ticket of that alert, model and SLO": (
            {**burn, "model": "n", "severity": ticket},
            "suppressed",
        ),
        "the ticket of another SLO": (
            {**burn, "slo": "strict", "model": "n", "severity": ticket},
            "active",
        ),
        "SidecarDown without a model": (
            {"alertname": c.ALERT_SIDECAR_DOWN, "instance": "x:9400", "severity": ticket},
            "active",
        ),
        "a model-less ticket, never silenced by a model-less SidecarDown": (
            {"alertname": c.ALERT_GPU_THROTTLING, "gpu": "0", "severity": ticket},
            "active",
        ),
    }
    expected = {name: state for name, (_, state) in cases.items()}
    with am:
        base = f"{am.url}/api/v2/alerts"
        _api(base, [{"labels": labels} for labels, _ in cases.values()])
        names = {json.dumps(labels, sort_keys=True): n for n, (labels, _) in cases.items()}
        deadline = time.monotonic() + 15
        while True:
            got = {
                names[json.dumps(a["labels"], sort_keys=True)]: a["status"]["state"]
                for a in _api(base)
            }
            if got == expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert got == expected
