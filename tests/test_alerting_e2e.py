"""The alerting chain for real: a real Prometheus scrapes a real sidecar in front of a
scripted upstream that fails half the requests, evaluates the generated burn-rate
rules (windows shortened by ``time_scale``), and a real Alertmanager, configured by
the generated config, delivers the ErrorBudgetBurn page to a local webhook receiver,
and to the mitigator webhook with its bearer token, because a mitigation policy
matches the alert."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from monitor import conventions as c
from monitor.procs import free_ports
from monitor.spec import load_spec
from tests.support import (
    FaultServer,
    Receiver,
    SidecarProc,
    alerting_stack,
    post,
    require_tool,
    write_spec,
)

TIME_SCALE = 60.0
"""1 h becomes 1 min: the fast page's windows (1 h and 5 m) become 60 s and 5 s, which
a 1 s scrape and evaluation interval resolve; its ``for:`` shrinks the same way."""
DEADLINE_S = 60.0
"""Bound on the whole chain, from the first request to the page at the receiver."""
TOKEN = "e2e-s3cret"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str) -> str:
    """The body at ``url``, or why there is none (for failure messages only)."""
    try:
        with _OPENER.open(url, timeout=5) as resp:
            return str(resp.read().decode(errors="replace"))
    except OSError as exc:
        return f"<GET {url} failed: {exc}>"


def _traffic(url: str, stop: threading.Event) -> None:
    """Half the inference requests fail upstream (500), about 40 requests a second."""
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}]}
    ).encode()
    i = 0
    while not stop.is_set():
        query = "?status=500" if i % 2 else ""
        post(f"{url}/v2/models/m/infer{query}", body)
        i += 1
        stop.wait(0.025)


@pytest.mark.timeout(150)
def test_a_burning_error_budget_pages_through_prometheus_and_alertmanager(tmp_path: Path) -> None:
    require_tool("prometheus")  # skip or fail before starting anything
    require_tool("prometheus-alertmanager")
    t0 = time.monotonic()
    receiver = Receiver()
    token_file = tmp_path / "mitigator.token"
    token_file.write_text(TOKEN + "\n")
    prom_port, am_port = free_ports(2)

    with ExitStack() as stack:
        stack.enter_context(receiver.running())
        fault = stack.enter_context(FaultServer(tmp_path))
        (tmp_path / "control.token").write_text("e2e-control\n")
        spec_path = write_spec(
            tmp_path / "monitor.yaml", fault.url,
            control={"token_file": str(tmp_path / "control.token")},
        )  # fmt: skip
        data = yaml.safe_load(spec_path.read_text())
        data["slos"] = [{"name": "availability", "model": "m", "objective": 0.999}]
        data["alerting"] = {
            "pager": {"webhook_url": f"{receiver.url}/page"},
            "ticket": {"webhook_url": f"{receiver.url}/ticket"},
            "mitigator_url": f"{receiver.url}/mitigator",
            "mitigator_credentials_file": str(token_file),
        }
        data["mitigations"] = [
            {
                "name": "shift-to-fallback",
                "match": {"alertname": c.ALERT_ERROR_BUDGET_BURN, "severity": c.SEVERITY_PAGE},
                "action": {"type": "sidecar", "op": "route", "fallback_weight": 1.0},
            }
        ]
        spec_path.write_text(yaml.safe_dump(data))
        spec = load_spec(spec_path)
        sidecar = stack.enter_context(SidecarProc(spec_path, "m", tmp_path))

        prom, am = alerting_stack(
            stack, spec, sidecar, tmp_path, time_scale=TIME_SCALE, prom_port=prom_port,
            am_port=am_port,
        )  # fmt: skip

        started = time.monotonic()
        stop = threading.Event()
        traffic = threading.Thread(target=_traffic, args=(sidecar.url, stop), daemon=True)
        traffic.start()
        stack.callback(traffic.join, 10)
        stack.callback(stop.set)

        alert = c.ALERT_ERROR_BUDGET_BURN
        with receiver.changed:
            receiver.changed.wait_for(
                lambda: receiver.firing("/page", alert) and receiver.firing("/mitigator", alert),
                timeout=DEADLINE_S - (started - t0),
            )
            page = receiver.firing("/page", alert)
            mitigation = receiver.firing("/mitigator", alert)
        paged_s = time.monotonic() - started
        diagnosis = (
            f"after {paged_s:.1f}s the receiver got {receiver.received!r}\n"
            f"--- Prometheus alerts: {_get(f'http://127.0.0.1:{prom_port}/api/v1/alerts')}\n"
            f"--- Prometheus targets: {_get(f'http://127.0.0.1:{prom_port}/api/v1/targets')}\n"
            f"--- Prometheus log:\n{prom.log_tail()}\n--- Alertmanager log:\n{am.log_tail()}"
        )

    assert page is not None, diagnosis
    _, page_alert = page
    assert page_alert["status"] == "firing"
    labels = page_alert["labels"]
    assert labels["model"] == "m"
    assert labels[c.LABEL_SLO] == "availability"
    assert labels[c.LABEL_SEVERITY] == c.SEVERITY_PAGE
    assert labels[c.LABEL_MITIGATION] == "shift-to-fallback"
    assert mitigation is not None, diagnosis
    auth, _ = mitigation
    assert auth == f"Bearer {TOKEN}"
    print(
        f"\nErrorBudgetBurn paged {paged_s:.1f}s after the first request, "
        f"{time.monotonic() - t0:.1f}s in all"
    )
