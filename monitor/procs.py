"""Child processes that the demo and the tests start and must stop: spawn in a
new process group, wait until a readiness URL answers 200, stop by PID
(SIGTERM to the group, then SIGKILL), never leave one behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from monitor.errors import MonitorError

__all__ = [
    "AlertmanagerProcess",
    "ManagedProcess",
    "PrometheusProcess",
    "free_ports",
    "http_status",
    "pid_alive",
]

_LOG_TAIL_LINES = 40
_POLL_INTERVAL_S = 0.1
# Loopback probes never go through a proxy, whatever the environment says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_ports(n: int = 1, host: str = "127.0.0.1") -> list[int]:
    """Return ``n`` distinct TCP ports on ``host`` that were free a moment ago.

    All ``n`` sockets are bound at once (so the ports differ), then closed;
    start the servers right away, since another process may take a port.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """GET ``url``; return its status code, or None when nothing answered."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process (not a zombie) with this PID exists."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - exists but is not ours
        return True
    return True


class ManagedProcess:
    """A server process started in its own process group and stopped by PID.

    Args:
        argv: command line.
        ready_url: URL that answers 200 once the process serves.
        log_path: stdout and stderr go here.
        env: environment (default: inherited).
        cwd: working directory (default: inherited).
        name: what to call it in error messages.
        ready_timeout_s: seconds to wait for ``ready_url``.
        stop_timeout_s: seconds between SIGTERM and SIGKILL.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        ready_url: str,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        name: str = "process",
        ready_timeout_s: float = 60.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.argv = argv
        self.ready_url = ready_url
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.name = name
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.startup_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """PID of the process (also its process-group id).

        Raises:
            MonitorError: it was never started.
        """
        if self._proc is None:
            raise MonitorError(f"{self.name} is not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the process is started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status once it has exited (negative: killed by that signal), else None."""
        return None if self._proc is None else self._proc.poll()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last ``lines`` lines of the log file."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<log {self.log_path} unreadable: {exc}>"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> Self:
        """Start and block until ``ready_url`` answers 200; sets ``startup_s``.

        Raises:
            MonitorError: already started; cannot be spawned; exited during
                start-up; or not ready within ``ready_timeout_s``. The message
                carries the log tail, and the process is stopped first.
        """
        if self._proc is not None:
            raise MonitorError(f"{self.name} already started (pid {self._proc.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        t0 = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise MonitorError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """SIGTERM the process group, wait ``stop_timeout_s``, SIGKILL the rest; idempotent."""
        proc = self._proc
        if proc is None:
            self._close_log()
            return
        pgid = proc.pid  # start_new_session: it leads its own group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self.stop_timeout_s)
        while _group_alive(pgid) and time.monotonic() < deadline:  # children may outlive it
            time.sleep(0.05)
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        proc.wait()
        end = time.monotonic() + 5.0
        while _group_alive(pgid) and time.monotonic() < end:
            time.sleep(0.02)
        self._close_log()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _wait_ready(self, t0: float) -> None:
        assert self._proc is not None
        deadline = t0 + self.ready_timeout_s
        last: int | None = None
        while True:
            rc = self._proc.poll()
            if rc is not None:
                raise MonitorError(
                    f"{self.name} exited with status {rc} during start-up "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            last = http_status(self.ready_url)
            if last == 200:
                return
            if time.monotonic() >= deadline:
                raise MonitorError(
                    f"{self.name} not ready after {self.ready_timeout_s:.0f}s "
                    f"(GET {self.ready_url} -> {last if last is not None else 'no answer'}; "
                    f"log {self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL_S)


class PrometheusProcess(ManagedProcess):
    """Prometheus on 127.0.0.1, configured from arguments (``workdir/prometheus.yml``).

    Args:
        binary: the ``prometheus`` executable.
        workdir: holds the config, the TSDB (``tsdb/``) and the log.
        jobs: scrape job name -> ``host:port`` targets.
        rule_files: rule files to load.
        alertmanagers: ``host:port`` of Alertmanagers to send alerts to.
        interval: scrape and evaluation interval (a Prometheus duration).
        port: listen port (default a free one).

    Attributes: ``url`` (``http://127.0.0.1:PORT``), ``port``, ``config_path``.
    """

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        jobs: dict[str, list[str]],
        rule_files: list[Path] | tuple[Path, ...] = (),
        alertmanagers: list[str] | tuple[str, ...] = (),
        interval: str = "1s",
        port: int | None = None,
    ) -> None:
        import yaml

        self.port = port or free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        cfg: dict[str, object] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(targets)}]}
                for job, targets in jobs.items()
            ],
        }
        if alertmanagers:
            cfg["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]
            }
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        super().__init__(
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            ready_url=f"{self.url}/-/ready",
            log_path=workdir / "prometheus.log",
            name="prometheus",
            ready_timeout_s=30,
        )


class AlertmanagerProcess(ManagedProcess):
    """Alertmanager on 127.0.0.1 with ``config``, no cluster (a single instance).

    Attributes: ``url``, ``port``, ``address`` (``127.0.0.1:PORT``, for Prometheus).
    """

    def __init__(
        self, binary: str, config: Path, workdir: Path, *, port: int | None = None
    ) -> None:
        self.port = port or free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        super().__init__(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={workdir / 'alertmanager-data'}",
                f"--web.listen-address={self.address}",
                "--cluster.listen-address=",
            ],
            ready_url=f"{self.url}/-/ready",
            log_path=workdir / "alertmanager.log",
            name="alertmanager",
            ready_timeout_s=30,
        )
