"""The whole mitigation loop, every part real: a model server starts failing half its
requests behind a real sidecar; a real Prometheus evaluates the generated burn-rate
rules (windows shortened by ``TIME_SCALE``) and fires ErrorBudgetBurn; a real
Alertmanager, configured by the generated config, delivers it with its bearer token to
a real ``monitor mitigator``, which finds the model's sidecar through Prometheus and
shifts its traffic to the fallback model server through the control API; the error
ratio falls, the alert resolves, Alertmanager delivers the resolve, the mitigator
checks with Prometheus that the alert is really over (case C23) and shifts the
traffic back."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from monitor import conventions as c
from monitor.procs import ManagedProcess, free_ports
from monitor.spec import load_spec
from tests.support import (
    MONITOR,
    FaultServer,
    Receiver,
    SidecarProc,
    alerting_stack,
    post,
    require_tool,
    write_spec,
)

TIME_SCALE = 60.0
"""1 h becomes 1 min: the fast page's windows (1 h, 5 m) become 60 s and 5 s, the slow
page's (6 h, 30 m) 6 min and 30 s; ``for:`` and Alertmanager's intervals shrink alike."""
TOKEN = "e2e-mitigator-token"
CONTROL_TOKEN = "e2e-control-token"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
T = TypeVar("T")


def _json(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with _OPENER.open(urllib.request.Request(url, headers=headers), timeout=5) as resp:
        return json.loads(resp.read())


def _traffic(url: str, stop: threading.Event, counts: dict[str, int]) -> None:
    """Valid V2 requests, about 40 a second; the upstream decides which fail."""
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}]}
    ).encode()
    while not stop.is_set():
        ok = post(f"{url}/v2/models/m/infer", body) == 200
        counts["ok" if ok else "error"] += 1
        stop.wait(0.025)


def _wait(what: str, probe: Callable[[], T | None], timeout: float, why: Callable[[], str]) -> T:
    """Poll ``probe`` every 0.25 s until it returns something; fail with ``why()`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{why()}")


@pytest.mark.timeout(240)
def test_an_error_burst_is_mitigated_by_shifting_to_the_fallback_and_reverted_on_resolve(
    tmp_path: Path,
) -> None:
    require_tool("prometheus")  # skip or fail before starting anything
    require_tool("prometheus-alertmanager")
    prom_port, am_port, mit_port = free_ports(3)
    prom_url = f"http://127.0.0.1:{prom_port}"
    mit_url = f"http://127.0.0.1:{mit_port}"
    (tmp_path / "mitigator.token").write_text(TOKEN + "\n")
    (tmp_path / "control.token").write_text(CONTROL_TOKEN + "\n")
    (tmp_path / "primary").mkdir()
    (tmp_path / "fallback").mkdir()
    receiver = Receiver()
    counts = {"ok": 0, "error": 0}
    timeline: dict[str, float] = {}

    with ExitStack() as stack:
        stack.enter_context(receiver.running())
        primary = stack.enter_context(FaultServer(tmp_path / "primary"))
        fallback = stack.enter_context(FaultServer(tmp_path / "fallback"))
        spec_path = write_spec(
            tmp_path / "monitor.yaml",
            primary.url,
            fallback_upstream=fallback.url,
            control={
                "token_file": str(tmp_path / "control.token"),
                "state_file": str(tmp_path / "control-state.json"),
            },
        )
        data = yaml.safe_load(spec_path.read_text())
        data["slos"] = [{"name": "availability", "model": "m", "objective": 0.999}]
        data["alerting"] = {
            "pager": {"webhook_url": f"{receiver.url}/page"},
            "mitigator_url": f"{mit_url}/v1/alerts",
            "mitigator_credentials_file": str(tmp_path / "mitigator.token"),
        }
        data["mitigations"] = [
            {
                "name": "shift-to-fallback",
                "match": {"alertname": c.ALERT_ERROR_BUDGET_BURN, "severity": c.SEVERITY_PAGE},
                "action": {"type": "sidecar", "op": "route", "fallback_weight": 1.0},
                "cooldown_seconds": 600,
                "max_per_hour": 3,
                "revert_on_resolve": True,
                "revert_hold_seconds": 1,
            }
        ]
        data["mitigator"] = {
            "listen": f"127.0.0.1:{mit_port}",
            "token_file": str(tmp_path / "mitigator.token"),
            "store": f"sqlite:///{tmp_path / 'mitigator.db'}",
            "prometheus_url": prom_url,
            "revert_check_interval_seconds": 1,
            "retries": 2,
        }
        spec_path.write_text(yaml.safe_dump(data))
        spec = load_spec(spec_path)
        side = stack.enter_context(SidecarProc(spec_path, "m", tmp_path))
        mitigator = stack.enter_context(
            ManagedProcess(
                [*MONITOR, "mitigator", "--config", str(spec_path)],
                ready_url=f"{mit_url}/-/ready",
                log_path=tmp_path / "mitigator.log",
                name="mitigator",
                ready_timeout_s=30,
            )
        )
        prom, am = alerting_stack(
            stack, spec, side, tmp_path, time_scale=TIME_SCALE, prom_port=prom_port,
            am_port=am_port,
        )  # fmt: skip

        def actions() -> list[dict[str, Any]]:
            return list(_json(f"{mit_url}/v1/actions", TOKEN)["actions"])

        def query(q: str) -> list[dict[str, Any]]:
            url = f"{prom_url}/api/v1/query?{urllib.parse.urlencode({'query': q})}"
            return list(_json(url)["data"]["result"])

        def firing() -> list[dict[str, Any]]:
            return query(f'ALERTS{{alertname="{c.ALERT_ERROR_BUDGET_BURN}",alertstate="firing"}}')

        def short_error_ratio() -> float | None:
            got = query(f'{c.SLO_ERROR_RATIO["5m"]}{{model="m"}}')
            return float(got[0]["value"][1]) if got else None

        def weight() -> float:
            state = _json(f"http://127.0.0.1:{side.metrics_port}/v1/control", CONTROL_TOKEN)
            return float(state["fallback_weight"])

        def diagnosis() -> str:
            return (
                f"traffic {counts}, weight {weight()}\n--- actions: {actions()}\n"
                f"--- alerts: {firing()}\n--- receiver: {receiver.received!r}\n"
                f"--- mitigator log:\n{mitigator.log_tail()}\n"
                f"--- alertmanager log:\n{am.log_tail()}\n--- prometheus log:\n{prom.log_tail()}"
            )

        # The primary breaks: every second request fails with 500.
        with _OPENER.open(urllib.request.Request(f"{primary.url}/admin/fail/2", method="POST")):
            pass
        stop = threading.Event()
        traffic = threading.Thread(target=_traffic, args=(side.url, stop, counts), daemon=True)
        t0 = time.monotonic()
        traffic.start()
        stack.callback(traffic.join, 10)
        stack.callback(stop.set)

        def applied() -> dict[str, Any] | None:
            done = [a for a in actions() if a["kind"] == "apply" and a["state"] == "done"]
            return done[0] if done else None

        apply = _wait("the mitigator's apply", applied, 90, diagnosis)
        timeline["mitigated"] = time.monotonic() - t0
        assert apply["outcome"] == c.MITIGATION_SUCCESS, diagnosis()
        assert weight() == 1.0
        before = short_error_ratio()
        assert before is not None and before > 0.3, (before, diagnosis())
        # While the fallback carries the traffic, on-call repairs the primary.
        with _OPENER.open(urllib.request.Request(f"{primary.url}/admin/fail/0", method="POST")):
            pass

        # All traffic now goes to the healthy fallback: the 5 m (5 s) error ratio falls.
        low = _wait(
            "the short-window error ratio to fall",
            lambda: (r := short_error_ratio()) is not None and r < 0.01 and [r],
            60,
            diagnosis,
        )
        timeline["recovered"] = time.monotonic() - t0

        def reverted() -> dict[str, Any] | None:
            done = [a for a in actions() if a["kind"] == "revert" and a["state"] == "done"]
            return done[0] if done else None

        revert = _wait("the revert after the resolve", reverted, 120, diagnosis)
        timeline["reverted"] = time.monotonic() - t0
        assert revert["outcome"] == c.MITIGATION_SUCCESS, diagnosis()
        assert weight() == 0.0

        def resolved_page() -> list[dict[str, Any]]:
            return [
                body
                for path, _, body in receiver.received
                if path == "/page" and body["status"] == "resolved"
            ]

        # The pager's route groups longer than the mitigator's: its resolve may come later.
        with receiver.changed:
            receiver.changed.wait_for(resolved_page, timeout=30)
        time.sleep(3)  # traffic is back on the repaired primary: nothing fires again
        # The ticket (slow burn over 1 d / 3 d, here minutes) may still be open: it
        # tracks spent budget, not an ongoing outage, and no policy matches it.
        still_firing = [a for a in firing() if a["metric"]["severity"] == c.SEVERITY_PAGE]
        all_actions = actions()
        metrics = side.scrape()

    assert still_firing == [], json.dumps([still_firing, all_actions], indent=1)
    assert resolved_page(), "the pager never got the resolve"
    # Another ErrorBudgetBurn row (the slow page) may have fired too: the cooldown skips it.
    assert {a["outcome"] for a in all_actions if a["state"] == "done"} <= {
        c.MITIGATION_SUCCESS,
        c.MITIGATION_SKIPPED,
    }, all_actions
    successes = [a for a in all_actions if a["outcome"] == c.MITIGATION_SUCCESS]
    assert sorted(a["kind"] for a in successes) == ["apply", "revert"]
    assert f"127.0.0.1:{side.metrics_port}" in apply["detail"]  # found through Prometheus
    assert low[0] < 0.01
    assert metrics.get(c.ROUTE_WEIGHT, upstream=c.UPSTREAM_PRIMARY) == 1.0
    assert metrics.get(c.ROUTE_WEIGHT, upstream=c.UPSTREAM_FALLBACK) == 0.0
    assert counts["ok"] > counts["error"] > 0
    print(
        f"\nmitigated {timeline['mitigated']:.1f}s after the first failing request, error "
        f"ratio below 1 % at {timeline['recovered']:.1f}s, reverted at "
        f"{timeline['reverted']:.1f}s; traffic {counts}"
    )
