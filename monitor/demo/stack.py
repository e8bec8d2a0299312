"""The demo's processes on 127.0.0.1: two MLServer replicas, the sidecar, the
mitigator, the drift job, the canary, Prometheus, Alertmanager and a webhook
receiver standing in for the pager.

The run's spec is ``deploy/monitor.yaml`` with what only this run knows filled in
(free ports, the output directory, the models' URLs) and its clocks shortened:
Prometheus scrapes and evaluates every second, the rules' windows and Alertmanager's
intervals are divided by ``TIME_SCALE`` (one hour of a burn-rate window becomes one
minute), the drift job runs every few seconds over a window of that length.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from monitor.demo.data import DemoData
from monitor.errors import MonitorError
from monitor.modelserver import MLServerProcess
from monitor.procs import AlertmanagerProcess, ManagedProcess, PrometheusProcess, free_ports
from monitor.spec import MonitorSpec

TIME_SCALE = 60.0
"""Rule windows, ``for:`` and Alertmanager intervals divided by this: the fast page's
1 h / 5 m windows become 60 s / 5 s. ``monitor demo --fast`` uses ``FAST_TIME_SCALE``."""
FAST_TIME_SCALE = 120.0
"""1 h becomes 30 s and 5 m 2.5 s: still two 1 s scrapes per shortest window, which
``rate()`` needs; the slow page's 30 m window (15 s) is what holds the revert back."""
MITIGATOR_JOB = "model-mitigator"
CANARY_JOB = "model-canary"
MONITOR = [sys.executable, "-m", "monitor"]


@dataclass
class Receiver:
    """The pager and ticket webhooks: records every notification (unix time, path, body)."""

    received: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    url: str = ""

    def first(self, path: str, alertname: str, after: float) -> float | None:
        """When the first firing ``alertname`` reached ``path`` after ``after``, or None."""
        for t, got, body in self.received:
            if got != path or t < after:
                continue
            for alert in body.get("alerts", []):
                if (
                    alert.get("status") == "firing"
                    and alert.get("labels", {}).get("alertname") == alertname
                ):
                    return t
        return None

    @contextlib.contextmanager
    def running(self) -> Iterator[Receiver]:
        """Serve on a free loopback port until the block ends."""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                try:
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                except (ValueError, TypeError):
                    body = {}
                outer.received.append((time.time(), self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()


@dataclass
class Missing:
    """A tool the demo could not find, and how to get it."""

    tool: str
    how: str


def find_tools() -> tuple[dict[str, str], list[Missing]]:
    """Paths of ``prometheus`` and ``prometheus-alertmanager`` (or ``alertmanager``)."""
    found: dict[str, str] = {}
    missing: list[Missing] = []
    for tool, names, package in (
        ("prometheus", ("prometheus",), "prometheus"),
        ("alertmanager", ("prometheus-alertmanager", "alertmanager"), "prometheus-alertmanager"),
    ):
        path = next((p for p in map(shutil.which, names) if p), None)
        if path:
            found[tool] = path
        else:
            missing.append(
                Missing(tool, f"sudo apt-get install {package} (or run `make demo` as root)")
            )
    return found, missing


@dataclass
class Stack:
    """Every process of the run, started by :meth:`start`, stopped by :meth:`stop`.

    Attributes (after ``start``): ``spec_path`` (the run's spec), ``sidecar_url``,
    ``admin_url`` (the sidecar's metrics/control port), ``prometheus_url`` (``""``
    without Prometheus), ``mitigator_url``, ``primary`` and ``fallback`` (MLServer),
    ``processes`` (name -> process, for the PIDs), ``receiver``.
    """

    out: Path
    data: DemoData
    base_spec: Path
    tools: dict[str, str]
    with_canary: bool = True
    time_scale: float = TIME_SCALE
    receiver: Receiver = field(default_factory=Receiver)
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    spec_path: Path = Path()
    spec: MonitorSpec | None = None
    sidecar_url: str = ""
    admin_url: str = ""
    prometheus_url: str = ""
    mitigator_url: str = ""
    control_token: str = ""
    mitigator_token: str = ""
    _exit: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _stopped_primary: bool = False

    @property
    def primary(self) -> MLServerProcess:
        proc = self.processes["MLServer primary"]
        assert isinstance(proc, MLServerProcess)
        return proc

    @property
    def fallback(self) -> MLServerProcess:
        proc = self.processes["MLServer fallback"]
        assert isinstance(proc, MLServerProcess)
        return proc

    def start(self, say: Any) -> None:
        """Start everything; ``say(str)`` reports progress.

        Raises:
            MonitorError: a process did not start (its log tail is in the message).
        """
        try:
            self._start(say)
        except BaseException:
            self.stop()
            raise

    def _start(self, say: Any) -> None:
        ex = self._exit
        ex.enter_context(self.receiver.running())
        names = ("sidecar", "admin", "prometheus", "alertmanager", "mitigator", "drift", "canary")
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.sidecar_url = f"http://127.0.0.1:{ports['sidecar']}"
        self.admin_url = f"http://127.0.0.1:{ports['admin']}"
        self.mitigator_url = f"http://127.0.0.1:{ports['mitigator']}"
        logs = self.out / "logs"
        run = self.out / "run"
        # The two replicas start side by side (MLServer takes a few seconds each), and
        # Prometheus and Alertmanager with them: Prometheus hands new targets to its
        # scrapers about 5 s after start, a delay best spent waiting for MLServer.
        servers = {
            "MLServer primary": MLServerProcess(self.data.primary.model_dir, metrics=False),
            "MLServer fallback": MLServerProcess(self.data.previous.model_dir, metrics=False),
        }
        errors: list[BaseException] = []

        def start(proc: ManagedProcess) -> None:
            try:
                proc.start()
            except BaseException as exc:  # reported below, after both finished
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(p,)) for p in servers.values()]
        for t in threads:
            t.start()
        for name, proc in servers.items():
            ex.callback(proc.stop)
            self.processes[name] = proc
        # Until the servers are up, the spec's upstreams are placeholders: nothing that
        # starts before them (Prometheus, Alertmanager) reads them.
        self.spec_path = self._write_spec(ports, "http://127.0.0.1:1", "http://127.0.0.1:2")
        if "alertmanager" in self.tools:
            am = AlertmanagerProcess(
                self.tools["alertmanager"], run / "alertmanager.yml", run,
                port=ports["alertmanager"],
            )  # fmt: skip
            self._start_process("Alertmanager", am)
        if "prometheus" in self.tools:
            prom = PrometheusProcess(
                self.tools["prometheus"], run, jobs=self._scrape_jobs(ports),
                rule_files=[run / "rules.yml"], port=ports["prometheus"],
                alertmanagers=[f"127.0.0.1:{ports['alertmanager']}"]
                if "alertmanager" in self.tools else [],
            )  # fmt: skip
            self.prometheus_url = prom.url
            self._start_process("Prometheus", prom)
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        say(
            f"      MLServer primary (model version 2) at {self.primary.url}, "
            f"fallback (version 1) at {self.fallback.url}"
        )
        self.spec_path = self._write_spec(ports, self.primary.url, self.fallback.url)
        spec = str(self.spec_path)
        self._run(
            "sidecar",
            [*MONITOR, "sidecar", "--config", spec, "--model", self.data.primary.name,
             "--listen", f"127.0.0.1:{ports['sidecar']}",
             "--metrics-listen", f"127.0.0.1:{ports['admin']}"],
            f"{self.admin_url}/-/ready", logs,
        )  # fmt: skip
        self._run(
            "mitigator",
            [*MONITOR, "mitigator", "--config", spec],
            f"{self.mitigator_url}/-/ready",
            logs,
        )
        self._run(
            "drift job",
            [*MONITOR, "drift", "serve", "--config", spec,
             "--metrics-listen", f"127.0.0.1:{ports['drift']}"],
            f"http://127.0.0.1:{ports['drift']}/metrics", logs,
        )  # fmt: skip
        if self.with_canary:
            golden = self.out / "golden.json"
            argv = [*MONITOR, "canary", "record", "--config", spec, "--model",
                    self.data.primary.name, "--inputs", str(self.data.golden_inputs_path),
                    "--out", str(golden)]  # fmt: skip
            res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            if res.returncode != 0:
                raise MonitorError(f"monitor canary record failed: {res.stderr.strip()}")
            self._run(
                "canary",
                [*MONITOR, "canary", "run", "--config", spec,
                 "--metrics-listen", f"127.0.0.1:{ports['canary']}"],
                f"http://127.0.0.1:{ports['canary']}/metrics", logs,
            )  # fmt: skip
        if self.prometheus_url:
            self._wait_scraped(say)
            self._load_rules(say)

    def _load_rules(self, say: Any, timeout_s: float = 15.0) -> None:
        """Swap in the rules and make Prometheus reload (SIGHUP), once every target is
        scraped: evaluated from Prometheus's start, ModelTelemetryMissing (no sample
        for 5 m, here 5 s) would fire on its own start-up."""
        run = self.out / "run"
        (run / "rules.pending.yml").replace(run / "rules.yml")
        os.kill(self.processes["Prometheus"].pid, signal.SIGHUP)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self._rules_loaded():
                hour = 3600 / self.time_scale
                say(f"      rules loaded; their windows are divided by {self.time_scale:g} "
                    f"(1 h of a burn-rate window lasts {hour:g} s)")  # fmt: skip
                return
            time.sleep(0.2)
        raise MonitorError(f"Prometheus did not load {run / 'rules.yml'} within {timeout_s:.0f} s")

    def _rules_loaded(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.prometheus_url}/api/v1/rules", timeout=5) as r:
                return bool(json.loads(r.read())["data"]["groups"])
        except (OSError, ValueError, KeyError):
            return False

    def _wait_scraped(self, say: Any, timeout_s: float = 30.0) -> None:
        """Block until Prometheus has scraped every target once. Its discovery hands
        targets to the scrapers a few seconds after start (not scaled like the rules),
        and traffic sent before that is invisible: ModelTelemetryMissing would page."""
        from monitor.demo.timeline import Prometheus

        prom = Prometheus(self.prometheus_url)
        jobs = 4 if self.with_canary else 3
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if (prom.scalar("count(up == 1)") or 0) >= jobs:
                say(f"      Prometheus scrapes all {jobs} targets "
                    f"({time.monotonic() - t0:.1f} s after it was ready)")  # fmt: skip
                return
            time.sleep(0.25)
        raise MonitorError(
            f"Prometheus did not scrape the {jobs} targets within {timeout_s:.0f} s: "
            f"see {self.processes['Prometheus'].log_path}"
        )

    def _run(self, name: str, argv: list[str], ready: str, logs: Path) -> None:
        proc = ManagedProcess(
            argv,
            ready_url=ready,
            log_path=logs / f"{name.lower().replace(' ', '-')}.log",
            name=name,
            ready_timeout_s=60,
        )
        self._start_process(name, proc)

    def _start_process(self, name: str, proc: ManagedProcess) -> None:
        self.processes[name] = proc
        self._exit.callback(proc.stop)
        proc.start()

    def _write_spec(self, ports: dict[str, int], primary: str, fallback: str) -> Path:
        """The run's spec: ``base_spec`` with this run's ports, paths and clocks; with
        its Alertmanager config, and its rules in ``rules.pending.yml`` (see
        :meth:`_load_rules`)."""
        from monitor.alertmanager import build_alertmanager_config
        from monitor.generate import to_yaml
        from monitor.rules import build_rules
        from monitor.spec import load_spec

        run = self.out / "run"
        run.mkdir(parents=True, exist_ok=True)
        self.control_token = os.urandom(16).hex()
        self.mitigator_token = os.urandom(16).hex()
        (run / "control.token").write_text(self.control_token + "\n")
        (run / "mitigator.token").write_text(self.mitigator_token + "\n")
        for p in (run / "control.token", run / "mitigator.token"):
            p.chmod(0o600)
        doc = yaml.safe_load(self.base_spec.read_text())
        model = doc["models"][0]
        model.update(
            upstream=primary,
            fallback_upstream=fallback,
            baseline=str(self.data.baseline_path),
            labels={"path": str(self.out / "labels.csv"), "task": "classification"},
            probe_interval_seconds=1,
            weights_path=str(self.data.primary.model_path),  # the fingerprint label
        )
        model["control"] = {
            "token_file": str(run / "control.token"),
            "state_file": str(run / "control-state.json"),
        }
        model["capture"] = {**model.get("capture", {}), "dir": str(self.out / "capture"),
                            "rotate_seconds": 1}  # fmt: skip
        # A frozen model server fails a request after 1 s instead of 30.
        model["timeouts"] = {**model.get("timeouts", {}), "read_seconds": 1}
        if self.with_canary:
            canary = model.get("canary") or {}
            model["canary"] = {**canary, "golden": str(self.out / "golden.json"),
                               "interval_seconds": 2}  # fmt: skip
        else:
            model.pop("canary", None)
        doc["alerting"] = {
            **doc.get("alerting", {}),
            "pager": {"webhook_url": f"{self.receiver.url}/page"},
            "ticket": {"webhook_url": f"{self.receiver.url}/ticket"},
            "mitigator_url": f"http://127.0.0.1:{ports['mitigator']}/v1/alerts",
            "mitigator_credentials_file": str(run / "mitigator.token"),
        }
        for policy in doc.get("mitigations", []):
            # scaled like the rules: 120 s of hold becomes 2 s
            policy["revert_hold_seconds"] = policy.get("revert_hold_seconds", 0) / self.time_scale
        doc["mitigator"] = {
            **doc.get("mitigator", {}),
            "listen": f"127.0.0.1:{ports['mitigator']}",
            "token_file": str(run / "mitigator.token"),
            "store": f"sqlite:///{run / 'mitigator.db'}",
            "prometheus_url": f"http://127.0.0.1:{ports['prometheus']}",
            "revert_check_interval_seconds": 1,
        }
        doc.pop("escalation_url", None)
        doc["drift"] = {
            **doc.get("drift", {}),
            # The window holds at least all 143 held-out rows once (30 rows/s): a window
            # that is a subset of them drifts by chance on the few features where the
            # held-out split differs most from the training split (radius_error: KS
            # p = 0.15 on the whole split, often < 0.05 on 90-row subsets).
            "schedule_seconds": 2,
            "window_seconds": 6,
            "min_rows": 40,
            "out_dir": str(self.out / "drift"),
            "cache_dir": str(run / "drift-cache"),
        }
        path = run / "monitor.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        spec = self.spec = load_spec(path)
        note = (f"monitor demo: windows divided by {self.time_scale:g}",)
        (run / "rules.pending.yml").write_text(
            to_yaml(build_rules(spec, time_scale=self.time_scale), "monitor demo", note)
        )
        if not (run / "rules.yml").exists():
            (run / "rules.yml").write_text("groups: []\n")
        am = build_alertmanager_config(spec, time_scale=self.time_scale)
        (run / "alertmanager.yml").write_text(to_yaml(am, "monitor demo", note))
        return path

    def _scrape_jobs(self, ports: dict[str, int]) -> dict[str, list[str]]:
        spec = self.spec
        assert spec is not None  # written by _write_spec
        jobs = {
            spec.alerting.sidecar_job: [f"127.0.0.1:{ports['admin']}"],
            spec.alerting.drift_job: [f"127.0.0.1:{ports['drift']}"],
            MITIGATOR_JOB: [f"127.0.0.1:{ports['mitigator']}"],
        }
        if self.with_canary:
            jobs[CANARY_JOB] = [f"127.0.0.1:{ports['canary']}"]
        return jobs

    # --- faults -------------------------------------------------------------------------

    def freeze_primary(self) -> None:
        """SIGSTOP the primary MLServer's process group: it accepts connections and never
        answers (a hung server: a deadlock, a stuck GPU). Requests time out at the
        sidecar after ``read_seconds`` and count as ``timeout`` against the SLO."""
        os.killpg(self.primary.pid, signal.SIGSTOP)
        self._stopped_primary = True

    def thaw_primary(self) -> None:
        """SIGCONT the primary: it answers again (the on-call engineer fixed it)."""
        if self._stopped_primary:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.primary.pid, signal.SIGCONT)
            self._stopped_primary = False

    def stop(self) -> None:
        """Stop every process (by PID, newest first); idempotent."""
        with contextlib.suppress(MonitorError):
            self.thaw_primary()
        self._exit.close()

    def pids(self) -> dict[str, int]:
        """Name -> PID of every process started."""
        out = {}
        for name, proc in self.processes.items():
            with contextlib.suppress(MonitorError):
                out[name] = proc.pid
        return out


__all__ = [
    "CANARY_JOB", "FAST_TIME_SCALE", "MITIGATOR_JOB", "TIME_SCALE",
    "Missing", "Receiver", "Stack", "find_tools",
]  # fmt: skip
