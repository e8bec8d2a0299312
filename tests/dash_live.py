"""A live monitoring stack for the dashboard tests: every process real, on 127.0.0.1.

* a scripted upstream (``tests/fault_server.py``) behind a real ``monitor sidecar`` with a
  fallback upstream, the control API, capture, 2 features and a categorical and a
  numerical output;
* traffic: V2 inference requests with ``X-Request-Id``, half of them failing upstream
  (500), some with an out-of-range or null feature, an unexpected third column, or a
  body that is not JSON;
* ``monitor drift serve`` over the sidecar's capture store, a baseline and delayed
  labels (model quality);
* ``monitor mitigator``, posted an ``ErrorBudgetBurn`` page (twice: one duplicate), which
  shifts the sidecar to its fallback through the control API;
* ``tests/fake_gpu_exporter.py`` (the real ``monitor gpu-exporter`` collector over a fake
  NVML) when that file exists;
* a real Prometheus (Debian 2.42) scraping all of them every second and evaluating the
  generated rules at ``time_scale=60``, so the SLO recording rules and the
  ``ErrorBudgetBurn`` page exist within seconds.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from monitor import conventions as c
from monitor.generate import to_yaml
from monitor.procs import ManagedProcess, PrometheusProcess, free_ports
from monitor.rules import build_rules
from monitor.spec import MonitorSpec, load_spec
from tests.support import HERE, MONITOR, FaultServer, SidecarProc, post, require_tool

TIME_SCALE = 60.0
"""Rule windows divided by 60 (1 h -> 1 min), as in tests/test_alerting_e2e.py."""
SCRAPE_S = 1.0
"""Scrape and rule evaluation interval of the test Prometheus."""
MODEL = "m"
VERSION = "7"
"""The version tests/fault_server.py reports."""
TOKEN = "dash-s3cret"
POLICY = "shift-to-fallback"
FAKE_GPU_EXPORTER = HERE / "fake_gpu_exporter.py"
MITIGATOR_JOB = "model-mitigator"
"""Scrape job of the mitigator (the spec names none)."""
N_LABELS = 400
"""Request ids r0..r399 get a delayed label; traffic sends r0, r1, ..."""
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _label(i: int) -> int:
    """The true class of request ``r<i>``: what the fault server predicts (first value
    above 5), wrong for every fifth request, so accuracy is about 0.8, not 1."""
    predicted = 1 if _f0(i) > 5 else 0
    return 1 - predicted if i % 5 == 0 else predicted


def _f0(i: int) -> float:
    """f0 of request i: 5.0 .. 9.9, shifted from the baseline's 0 .. 10 (f0 drifts)."""
    return 5.0 + (i * 7 % 50) / 10


def spec_data(d: Path, upstream: str, mitigator_port: int) -> dict[str, Any]:
    """The spec every process of the stack reads (service ``live``), files under ``d``."""
    return {
        "apiVersion": "monitor/v1",
        "service": "live",
        "models": [
            {
                "name": MODEL,
                "protocol": "v2",
                "upstream": upstream,
                "fallback_upstream": upstream,
                "control": {"token_file": str(d / "token"), "state_file": str(d / "ctl.json")},
                "features": [
                    {"name": "f0", "type": "numerical", "min": 0, "max": 10},
                    {"name": "f1", "type": "numerical"},
                ],
                "outputs": [
                    {"name": "predict", "type": "categorical", "classes": [0, 1]},
                    {"name": "*", "type": "numerical"},
                ],
                "capture": {"dir": str(d / "capture"), "rotate_seconds": 0.2},
                "baseline": str(d / "baseline.parquet"),
                "labels": {"path": str(d / "labels.parquet")},
                "quality_min": {"accuracy": 0.5},
                "probe_interval_seconds": 0.2,
                "timeouts": {"connect_seconds": 1, "read_seconds": 2},
            }
        ],
        "slos": [
            {"name": "availability", "model": MODEL, "objective": 0.999},
            {"name": "latency", "model": MODEL, "objective": 0.99, "threshold_seconds": 0.25},
        ],
        "drift": {
            "schedule_seconds": 1,
            "min_rows": 20,
            "window_seconds": 3600,
            "cache_dir": str(d / "drift-cache"),
            "out_dir": str(d / "drift-reports"),
        },
        "mitigations": [
            {
                "name": POLICY,
                "match": {"alertname": c.ALERT_ERROR_BUDGET_BURN, "severity": c.SEVERITY_PAGE},
                "action": {"type": "sidecar", "op": "route", "fallback_weight": 1.0},
                "cooldown_seconds": 0,
                "revert_on_resolve": True,
            }
        ],
        "mitigator": {
            "listen": f"127.0.0.1:{mitigator_port}",
            "token_file": str(d / "token"),
            "store": f"sqlite:///{d / 'mitigator.db'}",
            "retries": 1,
        },
    }


def write_spec(d: Path, upstream: str, mitigator_port: int) -> Path:
    """Write :func:`spec_data` and the files it names (token, baseline, labels)."""
    (d / "token").write_text(TOKEN + "\n")
    baseline = pd.DataFrame(
        {
            "f0": [(i * 37 % 1000) / 100 for i in range(600)],
            "f1": [((i * 13 % 200) - 100) / 50 for i in range(600)],
        }
    )
    baseline.to_parquet(d / "baseline.parquet")
    t0 = pd.Timestamp(datetime.now(UTC))
    pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(N_LABELS)],
            "label": [_label(i) for i in range(N_LABELS)],
            "timestamp": [t0] * N_LABELS,
        }
    ).to_parquet(d / "labels.parquet")
    path = d / "monitor.yaml"
    path.write_text(yaml.safe_dump(spec_data(d, upstream, mitigator_port)))
    return path


# --- traffic -------------------------------------------------------------------------------


def traffic(sidecar_url: str, stop: threading.Event, counter: list[int]) -> None:
    """About 40 requests a second until ``stop``; ``counter[0]`` counts them."""
    i = 0
    while not stop.is_set():
        row: list[Any] = [_f0(i), ((i * 13 % 200) - 100) / 50]
        if i % 10 == 3:
            row[0] = 20.0  # out_of_range
        if i % 15 == 4:
            row[1] = None  # null
        if i % 12 == 5:
            row.append(1.0)  # a third column: an unexpected feature
        body = json.dumps(
            {"inputs": [{"name": "x", "shape": [1, len(row)], "datatype": "FP64", "data": row}]}
        ).encode()
        if i % 20 == 7:
            body = b"{not json"
        query = "?status=500" if i % 2 else ""
        post(
            f"{sidecar_url}/v2/models/{MODEL}/infer{query}",
            body,
            {"Content-Type": "application/json", "X-Request-Id": f"r{i}"},
        )
        i += 1
        counter[0] = i
        stop.wait(0.025)


def page(sidecar_metrics_port: int, *, fingerprint: str = "d45b0a1e00000001") -> dict[str, Any]:
    """An Alertmanager notification: ErrorBudgetBurn of ``m`` paging, with the
    ``mitigation`` label the generated rule carries and the sidecar as ``instance``."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = {
        c.LABEL_ALERTNAME: c.ALERT_ERROR_BUDGET_BURN,
        c.LABEL_SEVERITY: c.SEVERITY_PAGE,
        c.LABEL_MODEL: MODEL,
        c.LABEL_SLO: "availability",
        c.LABEL_MITIGATION: POLICY,
        c.LABEL_INSTANCE: f"127.0.0.1:{sidecar_metrics_port}",
    }
    return {
        "version": "4", "receiver": "mitigator", "status": "firing", "truncatedAlerts": 0,
        "groupKey": "{}:{alertname=\"ErrorBudgetBurn\"}", "groupLabels": {},
        "commonLabels": labels, "commonAnnotations": {}, "externalURL": "http://am:9093",
        "alerts": [{"status": "firing", "labels": labels, "annotations": {},
                    "startsAt": now, "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "", "fingerprint": fingerprint}],
    }  # fmt: skip


# --- the stack -----------------------------------------------------------------------------


@dataclass
class Live:
    """Handles on the running stack."""

    spec: MonitorSpec
    spec_path: Path
    prometheus_url: str
    sidecar: SidecarProc
    procs: dict[str, ManagedProcess]
    gpu: bool
    """Whether the fake GPU exporter runs (tests/fake_gpu_exporter.py exists)."""
    started: float
    """Unix time the traffic started."""
    requests: list[int] = field(default_factory=lambda: [0])

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` of the test Prometheus; the ``data`` of the answer.

        Raises:
            AssertionError: Prometheus answered an error (the message has its reason).
        """
        url = f"{self.prometheus_url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with _OPENER.open(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
            exc.close()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Any]:
        """The series of a range query (``matrix``)."""
        data = self.api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}"
        )
        return list(data["result"])

    def wait_for_targets(self, jobs: dict[str, str], timeout_s: float) -> None:
        """Block until every job has been scraped successfully at least once.

        Raises:
            AssertionError: not within ``timeout_s`` (the message has the targets and logs).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            up = {
                t["labels"].get("job")
                for t in self.api("targets")["activeTargets"]
                if t["health"] == "up"
            }
            if set(jobs) <= up:
                return
            time.sleep(0.2)
        raise AssertionError(f"targets not all up after {timeout_s}s\n{self.diagnosis()}")

    def diagnosis(self) -> str:
        """Targets and process logs, for failure messages."""
        targets = self.api("targets")
        health = [
            (t["labels"].get("job"), t["health"], t.get("lastError", ""))
            for t in targets["activeTargets"]
        ]
        logs = "\n".join(f"--- {n}:\n{p.log_tail(15)}" for n, p in self.procs.items())
        return f"targets: {health}\n{logs}"


@contextmanager
def live_stack(d: Path) -> Iterator[Live]:
    """Start the stack under ``d``, traffic and the mitigation included; stop it all on
    exit (each process by its ManagedProcess context manager)."""
    prometheus = require_tool("prometheus")
    prom_port, mitigator_port, drift_port, gpu_port = free_ports(4)
    with ExitStack() as stack:
        fault = stack.enter_context(FaultServer(d))
        spec_path = write_spec(d, fault.url, mitigator_port)
        spec = load_spec(spec_path)
        side = stack.enter_context(SidecarProc(spec_path, MODEL, d))
        procs: dict[str, ManagedProcess] = {"fault server": fault, "sidecar": side}
        procs["mitigator"] = stack.enter_context(
            ManagedProcess(
                [*MONITOR, "mitigator", "--config", str(spec_path)],
                ready_url=f"http://127.0.0.1:{mitigator_port}/-/ready",
                log_path=d / "mitigator.log",
                name="mitigator",
                ready_timeout_s=30,
            )
        )
        jobs = {
            spec.alerting.sidecar_job: f"127.0.0.1:{side.metrics_port}",
            spec.alerting.drift_job: f"127.0.0.1:{drift_port}",
            MITIGATOR_JOB: f"127.0.0.1:{mitigator_port}",
        }
        gpu = FAKE_GPU_EXPORTER.is_file()
        if gpu:
            procs["gpu exporter"] = stack.enter_context(
                ManagedProcess(
                    [sys.executable, str(FAKE_GPU_EXPORTER), "--listen", f"127.0.0.1:{gpu_port}"],
                    ready_url=f"http://127.0.0.1:{gpu_port}/-/healthy",
                    log_path=d / "gpu-exporter.log",
                    name="fake gpu exporter",
                    ready_timeout_s=30,
                )
            )
            jobs[spec.alerting.gpu_job] = f"127.0.0.1:{gpu_port}"
        rules = d / "rules.yml"
        rules.write_text(to_yaml(build_rules(spec, time_scale=TIME_SCALE), "dashboard test"))
        procs["prometheus"] = stack.enter_context(
            PrometheusProcess(
                prometheus, d, jobs={job: [target] for job, target in jobs.items()},
                rule_files=[rules], interval=f"{SCRAPE_S:g}s", port=prom_port,
            )
        )  # fmt: skip
        live = Live(
            spec=spec,
            spec_path=spec_path,
            prometheus_url=f"http://127.0.0.1:{prom_port}",
            sidecar=side,
            procs=procs,
            gpu=gpu,
            started=time.time(),
        )
        stop = threading.Event()
        thread = threading.Thread(target=traffic, args=(side.url, stop, live.requests), daemon=True)
        thread.start()
        stack.callback(thread.join, 10)
        stack.callback(stop.set)
        # The drift job starts once some rows are captured (its first runs would be
        # insufficient_data only), and is scraped from then on.
        procs["drift"] = stack.enter_context(
            ManagedProcess(
                [
                    *MONITOR,
                    "drift",
                    "serve",
                    "--config",
                    str(spec_path),
                    "--metrics-listen",
                    f"127.0.0.1:{drift_port}",
                    "--no-html",
                ],
                ready_url=f"http://127.0.0.1:{drift_port}/metrics",
                log_path=d / "drift.log",
                name="drift serve",
                ready_timeout_s=60,
            )
        )
        # Post the page once Prometheus scrapes every target: the job's first action then
        # creates its counter series while Prometheus watches (see action_events).
        live.wait_for_targets(jobs, timeout_s=30)
        for fingerprint in ("d45b0a1e00000001", "d45b0a1e00000001"):  # the second: a duplicate
            post(
                f"http://127.0.0.1:{mitigator_port}/v1/alerts",
                json.dumps(page(side.metrics_port, fingerprint=fingerprint)).encode(),
                {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
            )
        yield live
