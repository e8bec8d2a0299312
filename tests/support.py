"""Helpers shared by the sidecar tests: spec files, processes, scraping."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitor.procs import AlertmanagerProcess, ManagedProcess, PrometheusProcess, free_ports
from monitor.spec import MonitorSpec

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MONITOR = [sys.executable, "-m", "monitor"]


def write_spec(path: Path, upstream: str, **model: Any) -> Path:
    """Write a one-model spec (name ``m``, protocol v2, features f0 in [0, 10] and f1)."""
    m: dict[str, Any] = {
        "name": "m",
        "protocol": "v2",
        "upstream": upstream,
        "features": [
            {"name": "f0", "type": "numerical", "min": 0, "max": 10},
            {"name": "f1", "type": "numerical"},
        ],
        "outputs": [{"name": "predict", "type": "categorical", "classes": [0, 1]}],
        "probe_interval_seconds": 0.2,
        "timeouts": {"connect_seconds": 1, "read_seconds": 2},
    }
    m.update(model)
    path.write_text(yaml.safe_dump({"apiVersion": "monitor/v1", "service": "t", "models": [m]}))
    return path


class SidecarProc(ManagedProcess):
    """``monitor sidecar`` as a real process on free loopback ports."""

    def __init__(self, spec: Path, model: str, log_dir: Path) -> None:
        self.port, self.metrics_port = free_ports(2)
        super().__init__(
            [
                *MONITOR,
                "sidecar",
                "--config",
                str(spec),
                "--model",
                model,
                "--listen",
                f"127.0.0.1:{self.port}",
                "--metrics-listen",
                f"127.0.0.1:{self.metrics_port}",
            ],
            ready_url=f"http://127.0.0.1:{self.metrics_port}/-/healthy",
            log_path=log_dir / f"sidecar-{self.port}.log",
            name="sidecar",
            ready_timeout_s=30,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"

    def scrape(self) -> Metrics:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            return Metrics(resp.read().decode())


@contextmanager
def sidecar(spec: Path, model: str = "m", log_dir: Path | None = None) -> Iterator[SidecarProc]:
    with SidecarProc(spec, model, log_dir or spec.parent) as proc:
        yield proc


class FaultServer(ManagedProcess):
    """tests/fault_server.py as a real process."""

    def __init__(self, log_dir: Path) -> None:
        (self.port,) = free_ports(1)
        super().__init__(
            [sys.executable, str(HERE / "fault_server.py"), str(self.port)],
            ready_url=f"http://127.0.0.1:{self.port}/v2/health/ready",
            log_path=log_dir / "fault-server.log",
            name="fault server",
        )
        self.url = f"http://127.0.0.1:{self.port}"


def require_tool(name: str) -> str:
    """Path of a Debian-packaged tool; skip when missing, fail under ``$CI``."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI: {name} missing (make system-deps installs it)")
        pytest.skip(f"{name} not installed")
    return path


class Metrics:
    """A parsed Prometheus text exposition, queryable by name and label subset."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            (s.name, s.labels, s.value)
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        ]

    def get(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(
            v
            for n, lab, v in self.samples
            if n == name and all(lab.get(k) == val for k, val in labels.items())
        )

    def series(self, name: str) -> list[dict[str, str]]:
        """Label sets of every sample named ``name``."""
        return [lab for n, lab, _ in self.samples if n == name]


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every notification it gets."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str | None, dict[str, Any]]] = []
        self.changed = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.changed:
                    outer.received.append((self.path, self.headers.get("Authorization"), body))
                    outer.changed.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[Receiver]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join(5)

    def firing(self, path: str, alertname: str) -> tuple[str | None, dict[str, Any]] | None:
        """The first firing notification on ``path`` that carries ``alertname``."""
        for got_path, auth, body in self.received:
            if got_path == path and body.get("status") == "firing":
                for alert in body["alerts"]:
                    if alert["labels"].get("alertname") == alertname:
                        return auth, alert
        return None


_NULLABLE: Any = None


def v2_input(row: Any, name: str = "input-0") -> Any:
    """A ``tritonclient.http.InferInput`` (FP64, JSON) for a 2-D float array, NaN sent as null.

    tritonclient writes NaN as the bare token ``NaN``, which strict JSON parsers
    (MLServer's among them) reject with 422; JSON clients send ``null`` for a
    missing value, which MLServer reads as NaN.
    """
    global _NULLABLE
    if _NULLABLE is None:
        import tritonclient.http as triton

        class NullableInput(triton.InferInput):
            def _get_tensor(self) -> dict[str, Any]:
                tensor = super()._get_tensor()
                tensor["data"] = [
                    None if isinstance(v, float) and math.isnan(v) else v for v in tensor["data"]
                ]
                return tensor

        _NULLABLE = NullableInput
    inp = _NULLABLE(name, list(row.shape), "FP64")
    inp.set_data_from_numpy(row, binary_data=False)
    return inp


def alerting_stack(
    stack: ExitStack,
    spec: MonitorSpec,
    sidecar: SidecarProc,
    tmp: Path,
    *,
    time_scale: float,
    prom_port: int | None = None,
    am_port: int | None = None,
) -> tuple[PrometheusProcess, AlertmanagerProcess]:
    """The generated rules and Alertmanager config of ``spec`` (every window divided by
    ``time_scale``), a real Alertmanager, and a real Prometheus (1 s scrapes) scraping
    ``sidecar`` and alerting to it; both stopped by ``stack``."""
    from monitor.alertmanager import build_alertmanager_config
    from monitor.generate import to_yaml
    from monitor.rules import build_rules

    rules = tmp / "rules.yml"
    rules.write_text(to_yaml(build_rules(spec, time_scale=time_scale), "test"))
    am_cfg = tmp / "alertmanager.yml"
    am_cfg.write_text(to_yaml(build_alertmanager_config(spec, time_scale=time_scale), "test"))
    am = stack.enter_context(
        AlertmanagerProcess(require_tool("prometheus-alertmanager"), am_cfg, tmp, port=am_port)
    )
    prom = stack.enter_context(
        PrometheusProcess(
            require_tool("prometheus"), tmp,
            jobs={spec.alerting.sidecar_job: [f"127.0.0.1:{sidecar.metrics_port}"]},
            rule_files=[rules], alertmanagers=[am.address], port=prom_port,
        )
    )  # fmt: skip
    return prom, am


_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> int | None:
    """POST ``body`` (traffic for a test): the HTTP status, or None when no answer came.
    Never raises: an error status is data here, not a failure."""
    req = urllib.request.Request(
        url, data=body, headers=headers or {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with _LOOPBACK.open(req, timeout=5) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except OSError:
        return None
