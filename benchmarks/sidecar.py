#!/usr/bin/env python3
"""Sidecar benchmark: direct vs nginx vs ``monitor sidecar``, side by side in one run.

Four targets answer the same V2 inference request from the same fast upstream
(an nginx that returns a fixed V2 response; a tiny asyncio server when nginx is
missing):

* ``direct``:  the client talks to the upstream itself;
* ``nginx``:   nginx as a reverse proxy tuned for throughput (1 worker, upstream
  keep-alive, HTTP/1.1 upstream);
* ``nginx-stock``: nginx with a stock ``proxy_pass`` (1 worker; nginx's defaults:
  HTTP/1.0 upstream, a new upstream connection per request);
* ``sidecar``: ``monitor sidecar`` with metrics, feature coverage (30 features),
  capture (sample_rate 1.0, to a temp dir) and tracing on.

Measured per target:

* max throughput: ``wrk -t1 -c32`` for ``--duration`` seconds, run twice,
  interleaved (direct, nginx, sidecar, direct, nginx, sidecar); the best run counts;
* latency at a fixed rate (``--rate``, default 500 req/s) with an open-loop client
  (below) on 8 keep-alive connections, twice interleaved, samples pooled. Latency
  is measured from each request's *scheduled* send time, so a stall delays and
  counts every request behind it (no coordinated omission);
* the sidecar's RSS after the runs, and the requests it counted in ``/metrics``
  (``mlmon_requests_total``) against the requests the clients completed.

Performance is only ever judged by ratios within one run (the machine may be
noisy). With 2+ CPUs and ``taskset`` available, the throughput runs pin wrk to the
first allowed CPU and every server to the others; the latency runs are unpinned
(``--pin-latency`` keeps the pinning): a server confined to one shared core queues
behind its neighbours, which measures the machine rather than the proxy.

Usage: ``.venv/bin/python benchmarks/sidecar.py [--duration 10] [--rate 500]
[--quick] [--json PATH] [--no-pin]``. All traffic goes to 127.0.0.1; every process
started here is stopped by PID on exit, including on Ctrl-C and errors.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import grp
import http.client
import json
import math
import os
import platform
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPEC_TEMPLATE = ROOT / "deploy" / "monitor.yaml"
MODEL = "bc"
INFER_PATH = f"/v2/models/{MODEL}/infer"
TARGETS = ("direct", "nginx", "nginx-stock", "sidecar")

# Limits of the issue (on a 2-core machine).
MIN_THROUGHPUT_RATIO = 0.5  # sidecar req/s >= 0.5 x nginx's
MAX_ADDED_P50_MS = 0.5
MAX_ADDED_P99_MS = 2.0
MAX_RSS_MB = 150.0

WRK_THREADS = 1
WRK_CONNECTIONS = 32
LATENCY_CONNECTIONS = 8
SPIN_S = 0.0003  # the fixed-rate client polls without sleeping this long before a deadline

# Row 0 of scikit-learn's breast-cancer dataset (load_breast_cancer().data[0]):
# the 30 features of deploy/monitor.yaml, in order.
ROW = [
    17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871,
    1.095, 0.9053, 8.589, 153.4, 0.006399, 0.04904, 0.05373, 0.01587, 0.03003, 0.006193,
    25.38, 17.33, 184.6, 2019.0, 0.1622, 0.6656, 0.7119, 0.2654, 0.4601, 0.1189,
]  # fmt: skip
REQUEST_BODY = json.dumps(
    {
        "id": "bench",
        "inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "FP64", "data": ROW}],
    },
    separators=(",", ":"),
)
RESPONSE_BODY = (
    '{"model_name":"bc","id":"1","outputs":'
    '[{"name":"predict","shape":[1,1],"datatype":"INT64","data":[1]}]}'
)
METADATA_BODY = '{"name":"bc","versions":["1"],"platform":"sklearn","inputs":[],"outputs":[]}'


class BenchError(Exception):
    """A setup step failed (the message says which)."""


# --- processes -----------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM


class Processes:
    """Every process this benchmark starts; :meth:`stop_all` ends them by PID."""

    def __init__(self, tmp: Path, server_cpus: list[int] | None) -> None:
        self.tmp = tmp
        self.server_cpus = server_cpus
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], stop_signal: int = signal.SIGTERM) -> Proc:
        if self.server_cpus:
            argv = ["taskset", "-c", ",".join(map(str, self.server_cpus)), *argv]
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            # Own session: a Ctrl-C in the terminal reaches only this script, which
            # then stops the children itself (in order, by PID).
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        proc = Proc(name, popen, log, stop_signal)
        self.procs.append(proc)
        return proc

    def check_alive(self, proc: Proc) -> None:
        if proc.popen.poll() is not None:
            tail = proc.log.read_text(errors="replace")[-2000:]
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}:\n{tail}")

    def stop(self, proc: Proc, timeout: float = 15.0) -> None:
        """Stop one process (and any children it left, e.g. nginx workers) by PID."""
        if proc not in self.procs:
            return
        self.procs.remove(proc)
        children = _descendants(proc.popen.pid)
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(proc.stop_signal)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)
        for pid in children:
            _kill_if_alive(pid)

    def set_affinity(self, cpus: list[int]) -> None:
        """Move every thread of every started process (and its children) to ``cpus``."""
        for proc in self.procs:
            for pid in [proc.popen.pid, *_descendants(proc.popen.pid)]:
                with contextlib.suppress(OSError):
                    for tid in os.listdir(f"/proc/{pid}/task"):
                        with contextlib.suppress(OSError):
                            os.sched_setaffinity(int(tid), cpus)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                print(
                    f"warning: stopping {proc.name} (pid {proc.popen.pid}): {exc}", file=sys.stderr
                )


def _descendants(pid: int) -> list[int]:
    try:
        import psutil

        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except Exception:  # psutil missing, or the process is gone
        return []


def _kill_if_alive(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            time.sleep(0.1)
            os.kill(pid, 0)
        os.kill(pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_http(procs: Processes, proc: Proc, port: int, path: str, timeout: float = 30.0) -> None:
    """Wait until ``GET path`` on ``port`` answers 200 (the process must stay alive)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        procs.check_alive(proc)
        try:
            status, _ = http_get(port, path, timeout=1.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise BenchError(f"{proc.name}: GET {path} on port {port} not 200 after {timeout:g} s ({last})")


# --- servers -------------------------------------------------------------------


def find_nginx() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )


def _nginx_conf(prefix: Path, server_block: str, http_extra: str = "") -> Path:
    """Write a private nginx.conf under ``prefix`` (pid, logs and temp paths inside it)."""
    prefix.mkdir(parents=True, exist_ok=True)
    user = ""
    if os.geteuid() == 0:  # workers would otherwise switch to "nobody"
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""{user}
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{http_extra}
{server_block}
}}
"""
    )
    return conf


def start_nginx(procs: Processes, nginx: str, name: str, prefix: Path, conf: Path) -> Proc:
    argv = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    argv += ["-g", "daemon off;"]
    # SIGQUIT: graceful; Processes.stop falls back to SIGKILL and reaps the workers.
    return procs.start(name, argv, stop_signal=signal.SIGQUIT)


def start_upstream_nginx(procs: Processes, nginx: str, tmp: Path, port: int) -> Proc:
    server = f"""    server {{
        listen 127.0.0.1:{port};
        location = {INFER_PATH} {{
            default_type application/json;
            return 200 '{RESPONSE_BODY}';
        }}
        location = /v2/health/ready {{ return 200; }}
        location = /v2/models/{MODEL} {{
            default_type application/json;
            return 200 '{METADATA_BODY}';
        }}
        location / {{ return 404; }}
    }}"""
    prefix = tmp / "upstream"
    proc = start_nginx(procs, nginx, "upstream-nginx", prefix, _nginx_conf(prefix, server))
    wait_http(procs, proc, port, "/v2/health/ready")
    return proc


def start_proxy_nginx(
    procs: Processes, nginx: str, tmp: Path, port: int, upstream: int, keepalive: bool = True
) -> Proc:
    """nginx as a reverse proxy. ``keepalive``: tuned, with upstream keep-alive
    connections; otherwise stock ``proxy_pass`` (HTTP/1.0, a new upstream connection
    per request, nginx's default)."""
    upstream_block = f"""    upstream model {{
        server 127.0.0.1:{upstream};
        {"keepalive 64;" if keepalive else ""}
        {"keepalive_requests 1000000;" if keepalive else ""}
    }}"""
    tuning = (
        """            proxy_http_version 1.1;
            proxy_set_header Connection "";"""
        if keepalive
        else ""
    )
    server = f"""    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://model;
{tuning}
        }}
    }}"""
    prefix = tmp / ("proxy" if keepalive else "proxy-stock")
    conf = _nginx_conf(prefix, server, http_extra=upstream_block)
    proc = start_nginx(procs, nginx, "nginx-proxy" if keepalive else "nginx-stock", prefix, conf)
    wait_http(procs, proc, port, "/v2/health/ready")
    return proc


# Fallback upstream when nginx is missing: keep-alive HTTP/1.1, fixed answers.
_ASYNCIO_UPSTREAM = r"""
import asyncio, sys
INFER, READY, META = sys.argv[2].encode(), b"/v2/health/ready", sys.argv[3].encode()
def resp(status, body):
    return (b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (status, len(body), body))
OUT = {INFER: resp(200, sys.argv[4].encode()), READY: resp(200, b""),
       META: resp(200, sys.argv[5].encode())}
MISSING = resp(404, b"")
class Upstream(asyncio.Protocol):
    def connection_made(self, transport):
        self.t, self.buf = transport, b""
    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buf[:end].split(b"\r\n")
            size = 0
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    size = int(v)
            if len(self.buf) < end + 4 + size:
                return
            self.buf = self.buf[end + 4 + size:]
            path = lines[0].split(b" ")[1].split(b"?")[0]
            self.t.write(OUT.get(path, MISSING))
async def main():
    server = await asyncio.get_running_loop().create_server(
        Upstream, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await server.serve_forever()
try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


def start_upstream_asyncio(procs: Processes, port: int) -> Proc:
    argv = [sys.executable, "-c", _ASYNCIO_UPSTREAM, str(port), INFER_PATH]
    argv += [f"/v2/models/{MODEL}", RESPONSE_BODY, METADATA_BODY]
    proc = procs.start("upstream-asyncio", argv)
    wait_http(procs, proc, port, "/v2/health/ready")
    return proc


def write_spec(tmp: Path, upstream_port: int) -> Path:
    """deploy/monitor.yaml with the upstream and capture dir of this run."""
    spec = yaml.safe_load(SPEC_TEMPLATE.read_text())
    model = next(m for m in spec["models"] if m["name"] == MODEL)
    model["upstream"] = f"http://127.0.0.1:{upstream_port}"
    model.setdefault("capture", {})
    model["capture"]["dir"] = str(tmp / "capture")
    model["capture"]["sample_rate"] = 1.0
    path = tmp / "monitor.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def monitor_command() -> list[str]:
    script = Path(sys.executable).parent / "monitor"
    return [str(script)] if script.exists() else [sys.executable, "-m", "monitor"]


def start_sidecar(procs: Processes, spec: Path, port: int, metrics_port: int) -> Proc:
    argv = [*monitor_command(), "sidecar", "--config", str(spec), "--model", MODEL]
    argv += ["--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics_port}"]
    proc = procs.start("sidecar", argv)
    wait_http(procs, proc, metrics_port, "/-/healthy", timeout=60.0)
    wait_http(procs, proc, metrics_port, "/-/ready", timeout=30.0)
    return proc


# --- load: wrk -------------------------------------------------------------------

_WRK_LUA = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"connect\\":%d,\\"read\\":%d," ..
    "\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d,\\"p50_us\\":%d,\\"p99_us\\":%d}}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(wrk: str, script: Path, port: int, seconds: float, cpus: list[int] | None) -> dict:
    argv = [wrk, f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{max(1, round(seconds))}s"]
    argv += ["--timeout", "5s", "-s", str(script), f"http://127.0.0.1:{port}{INFER_PATH}"]
    if cpus:
        argv = ["taskset", "-c", ",".join(map(str, cpus)), *argv]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, check=False
    )  # on Ctrl-C or timeout, subprocess.run kills wrk before re-raising
    match = re.search(r"^WRKJSON (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or match is None:
        raise BenchError(f"wrk failed ({out.returncode}): {out.stdout[-1000:]}{out.stderr[-1000:]}")
    res = json.loads(match.group(1))
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    res["errors"] = sum(res[k] for k in ("connect", "read", "write", "status", "timeout"))
    return res


# --- load: fixed-rate (open-loop) client ----------------------------------------------


class _Conn:
    __slots__ = ("buf", "need", "port", "sched", "sock", "status")

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.need = -1  # bytes of the current response (head + body); -1: head not yet seen
        self.sched = 0.0  # scheduled send time of the request in flight; 0: idle
        self.status = 0


@dataclass
class RateResult:
    latencies_ms: list[float] = field(default_factory=list)
    wake_lag_ms: list[float] = field(default_factory=list)
    errors: int = 0
    non_200: int = 0
    planned: int = 0


def run_fixed_rate(port: int, rate: float, seconds: float, result: RateResult) -> int:
    """Send ``rate`` req/s for ``seconds`` on keep-alive connections, open loop.

    Request ``i`` is due at ``t0 + i / rate`` (absolute deadlines, no drift). It goes
    out on the next idle connection; when none is idle it waits, and its latency
    still counts from the due time. The loop sleeps in ``select()`` (microsecond
    timeouts, unlike epoll's milliseconds) until a response or shortly before the next
    deadline, then polls until it is due. ``wake_lag_ms`` records how
    late the client noticed each deadline: its own timing error, which a slow target
    does not add to. Returns the requests completed (the sidecar counts those).
    """
    request = (
        f"POST {INFER_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(REQUEST_BODY)}\r\n\r\n"
        f"{REQUEST_BODY}"
    ).encode()
    n = int(rate * seconds)
    interval = 1.0 / rate
    conns = [_Conn(port) for _ in range(LATENCY_CONNECTIONS)]
    by_fd = {c.sock.fileno(): c for c in conns}
    idle = deque(conns)
    backlog: deque[float] = deque()
    lat = result.latencies_ms
    lag = result.wake_lag_ms
    now = time.perf_counter
    completed = 0
    finished = 0
    nxt = 0
    t0 = now() + 0.005
    hard_end = t0 + seconds + 10.0  # a stuck target cannot hang the benchmark
    result.planned += n
    gc_was = gc.isenabled()
    gc.disable()
    try:
        while finished < n:
            t = now()
            if t > hard_end:
                result.errors += n - finished
                break
            while nxt < n and t0 + nxt * interval <= t:
                due = t0 + nxt * interval
                backlog.append(due)
                lag.append((t - due) * 1e3)  # the client's own timing error
                nxt += 1
            while backlog and idle:
                c = idle.popleft()
                c.sched = backlog.popleft()
                c.sock.sendall(request)
            wait = (t0 + nxt * interval - now()) if nxt < n else 0.05
            # Sleep until SPIN_S before the deadline (waking an idle CPU takes ~0.1 ms
            # here), then poll without sleeping: about 10% of a core at 500 req/s.
            timeout = wait - SPIN_S if wait > SPIN_S else 0.0
            readable, _, _ = select.select(list(by_fd), [], [], timeout)
            for fd in readable:
                c = by_fd[fd]
                data = c.sock.recv(65536)
                if not data:  # the server closed the connection
                    del by_fd[fd]
                    c.sock.close()
                    if c.sched:
                        result.errors += 1
                        finished += 1
                    fresh = _Conn(port)
                    by_fd[fresh.sock.fileno()] = fresh
                    idle.append(fresh)
                    continue
                c.buf += data
                while True:
                    if c.need < 0:
                        end = c.buf.find(b"\r\n\r\n")
                        if end < 0:
                            break
                        head = bytes(c.buf[:end]).lower()
                        m = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
                        if m is None:
                            raise BenchError(f"response without Content-Length: {head[:200]!r}")
                        c.status = int(head[9:12])
                        c.need = end + 4 + int(m.group(1))
                    if len(c.buf) < c.need:
                        break
                    done_at = now()
                    del c.buf[: c.need]
                    c.need = -1
                    if not c.sched:
                        raise BenchError("response without a request")
                    lat.append((done_at - c.sched) * 1e3)
                    c.sched = 0.0
                    finished += 1
                    completed += 1
                    if c.status != 200:
                        result.non_200 += 1
                    idle.append(c)
    finally:
        if gc_was:
            gc.enable()
        for c in by_fd.values():
            c.sock.close()
    return completed


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (NaN when empty)."""
    if not sorted_values:
        return math.nan
    k = max(0, math.ceil(p / 100.0 * len(sorted_values)) - 1)
    return sorted_values[min(k, len(sorted_values) - 1)]


# --- the sidecar's own view ------------------------------------------------------------

# Label values may hold braces (route="/v2/models/{model}/infer"): match up to the last "}".
_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$")


def scrape(metrics_port: int) -> dict[str, list[tuple[str, float]]]:
    status, body = http_get(metrics_port, "/metrics", timeout=5.0)
    if status != 200:
        raise BenchError(f"GET /metrics answered {status}")
    out: dict[str, list[tuple[str, float]]] = {}
    for line in body.decode().splitlines():
        m = _SAMPLE_RE.match(line)
        if m:
            out.setdefault(m.group(1), []).append((m.group(2) or "", float(m.group(3))))
    return out


def metric_sum(samples: dict, name: str, label_filter: str = "") -> float:
    return sum(v for labels, v in samples.get(name, []) if label_filter in labels)


def rss_mb(pid: int) -> float:
    try:
        import psutil

        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def capture_rows(capture_dir: Path) -> int | None:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return None
    return sum(pq.ParquetFile(p).metadata.num_rows for p in capture_dir.glob(f"{MODEL}-*.parquet"))


# --- environment -------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "not installed"
    m = re.search(r"(\d+\.\d+\.\d+)", out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


def environment(nginx: str | None, wrk: str | None, pinning: str) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpus_online": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "monitor": _version("model-monitor"),
        "uvloop": _version("uvloop"),
        "httptools": _version("httptools"),
        "nginx": _tool_version([nginx, "-v"]) if nginx else "not installed",
        "wrk": _tool_version([wrk, "-v"]) if wrk else "not installed",
        "pinning": pinning,
    }


# --- the run ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    nginx = find_nginx()
    wrk = shutil.which("wrk")
    allowed = sorted(os.sched_getaffinity(0))
    client_cpus: list[int] | None = None
    server_cpus: list[int] | None = None
    if args.no_pin:
        pinning = "none (--no-pin)"
    elif len(allowed) < 2:
        pinning = "none (only 1 CPU allowed)"
    elif shutil.which("taskset") is None:
        pinning = "none (taskset not installed)"
    else:
        client_cpus, server_cpus = allowed[:1], allowed[1:]
        pinning = (
            f"throughput runs: wrk on CPU {client_cpus[0]}, servers (upstream, nginx proxy, "
            f"sidecar) on CPU {','.join(map(str, server_cpus))} (taskset); latency runs: "
            + (
                "pinned the same way (--pin-latency)"
                if args.pin_latency
                else "unpinned (the scheduler places every process, as in production)"
            )
        )
    env = environment(nginx, wrk, pinning)
    results: dict[str, Any] = {
        "environment": env,
        "settings": {
            "duration_s": args.duration,
            "rate": args.rate,
            "wrk": f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{args.duration:g}s",
            "latency_connections": LATENCY_CONNECTIONS,
            "rounds": 2,
            "request_bytes": len(REQUEST_BODY),
        },
        "targets": {t: {"wrk": [], "latency": {}} for t in TARGETS},
    }

    tmp = Path(tempfile.mkdtemp(prefix="monitor-bench-"))
    procs = Processes(tmp, server_cpus)
    try:
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        up_port = free_port()
        if nginx:
            start_upstream_nginx(procs, nginx, tmp, up_port)
            results["upstream"] = "nginx (worker_processes 1, fixed V2 response)"
        else:
            start_upstream_asyncio(procs, up_port)
            results["upstream"] = "asyncio server (nginx not installed)"
        ports: dict[str, int | None] = {"direct": up_port, "nginx": None, "nginx-stock": None}
        if nginx:
            ports["nginx"] = proxy_port = free_port()
            start_proxy_nginx(procs, nginx, tmp, proxy_port, up_port)
            ports["nginx-stock"] = stock_port = free_port()
            start_proxy_nginx(procs, nginx, tmp, stock_port, up_port, keepalive=False)
        ports["sidecar"] = sidecar_port = free_port()
        metrics_port = free_port()
        sidecar = start_sidecar(procs, write_spec(tmp, up_port), sidecar_port, metrics_port)
        active = [t for t in TARGETS if ports[t] is not None]
        print(f"upstream: {results['upstream']}; pinning: {pinning}", flush=True)

        sent_to_sidecar = 0  # requests the clients saw complete through the sidecar
        wrk_runs_sidecar = 0
        rss_samples: list[float] = []

        # Max throughput: a short warm-up each, then 2 interleaved rounds.
        script = tmp / "v2.lua"
        script.write_text(_WRK_LUA.format(body=REQUEST_BODY))
        if wrk:
            rounds = [
                ("warm-up", args.warmup),
                ("round 1", args.duration),
                ("round 2", args.duration),
            ]
            for label, seconds in rounds:
                for t in active:
                    port = ports[t]
                    assert port is not None
                    res = run_wrk(wrk, script, port, seconds, client_cpus)
                    if t == "sidecar":
                        sent_to_sidecar += res["requests"]
                        wrk_runs_sidecar += 1
                        procs.check_alive(sidecar)
                        rss_samples.append(rss_mb(sidecar.popen.pid))
                    if label != "warm-up":
                        results["targets"][t]["wrk"].append(res)
                    print(
                        f"  wrk {label:8} {t:11} {res['rps']:9.0f} req/s  errors {res['errors']}",
                        flush=True,
                    )

        # Latency at a fixed rate: warm-up each, then 2 interleaved rounds, samples pooled.
        if client_cpus and not args.pin_latency:
            # The open-loop client needs little CPU; pinned to one core, the servers and
            # any other load on the machine would queue behind each other.
            procs.set_affinity(allowed)
            os.sched_setaffinity(0, allowed)
        rate_results = {t: RateResult() for t in active}
        for label in ("warm-up", "round 1", "round 2"):
            for t in active:
                port = ports[t]
                assert port is not None
                seconds = args.warmup if label == "warm-up" else args.duration
                into = RateResult() if label == "warm-up" else rate_results[t]
                before = len(into.latencies_ms)
                done = run_fixed_rate(port, args.rate, seconds, into)
                if t == "sidecar":
                    sent_to_sidecar += done
                    procs.check_alive(sidecar)
                    rss_samples.append(rss_mb(sidecar.popen.pid))
                if label != "warm-up":
                    new = sorted(into.latencies_ms[before:])
                    print(
                        f"  {args.rate:g}/s {label:8} {t:11} p50 {percentile(new, 50):6.3f} ms  "
                        f"p99 {percentile(new, 99):6.3f} ms",
                        flush=True,
                    )
        for t, rr in rate_results.items():
            lat = sorted(rr.latencies_ms)
            lag = sorted(rr.wake_lag_ms)
            results["targets"][t]["latency"] = {
                "samples": len(lat),
                "planned": rr.planned,
                "errors": rr.errors,
                "non_200": rr.non_200,
                **{f"p{p:g}_ms": percentile(lat, p) for p in (50, 90, 99, 99.9)},
                "max_ms": lat[-1] if lat else math.nan,
                "wake_lag_p50_ms": percentile(lag, 50),
                "wake_lag_p99_ms": percentile(lag, 99),
            }

        # The sidecar's own view, then a graceful stop (flushes capture).
        time.sleep(0.5)
        samples = scrape(metrics_port)
        rss_after = rss_mb(sidecar.popen.pid)
        procs.stop(sidecar)
        log = sidecar.log.read_text(errors="replace")
        odd = [ln for ln in log.splitlines() if re.search(r"ERROR|Traceback|Exception", ln)]
        counted = metric_sum(samples, "mlmon_requests_total")
        by_outcome: dict[str, float] = {}
        for labels, v in samples.get("mlmon_requests_total", []):
            m = re.search(r'outcome="([^"]*)"', labels)
            key = f"{m.group(1) if m else '?'}"
            code = re.search(r'code="([^"]*)"', labels)
            key += f" {code.group(1)}" if code else ""
            by_outcome[key] = by_outcome.get(key, 0) + v
        results["sidecar"] = {
            "rss_mb_after_runs": rss_after,
            "rss_mb_max_sampled": max([*rss_samples, rss_after]),
            "requests_completed_by_clients": sent_to_sidecar,
            "requests_counted": counted,
            "requests_by_outcome_code": by_outcome,
            # wrk drops the requests in flight when it stops (<= its connections per run):
            # the sidecar may count those as well.
            "count_tolerance": WRK_CONNECTIONS * wrk_runs_sidecar,
            "feature_values_total": metric_sum(samples, "mlmon_feature_values_total"),
            "feature_values_present": metric_sum(
                samples, "mlmon_feature_values_total", 'state="present"'
            ),
            "payload_errors": metric_sum(samples, "mlmon_payload_errors_total"),
            "predictions_total": metric_sum(samples, "mlmon_predictions_total"),
            "capture_dropped_rows": metric_sum(samples, "mlmon_capture_dropped_rows_total"),
            "capture_rows_on_disk": capture_rows(tmp / "capture"),
            "log_problems": odd[:20],
        }
    finally:
        procs.stop_all()
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, allowed)
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


# --- report -------------------------------------------------------------------


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    tg = results["targets"]

    def best(t: str) -> float | None:
        runs = tg[t]["wrk"]
        return max(r["rps"] for r in runs) if runs else None

    def lat(t: str, key: str) -> float | None:
        v = tg[t]["latency"].get(key)
        return None if v is None or math.isnan(v) else v

    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, unit: str, limit: str, ok: bool | None) -> None:
        result = "n/a" if value is None or ok is None else ("PASS" if ok else "FAIL")
        checks.append(
            {"check": name, "value": value, "unit": unit, "limit": limit, "result": result}
        )

    s, n, d = best("sidecar"), best("nginx"), best("direct")
    r_n = s / n if s and n else None
    r_d = s / d if s and d else None
    add(
        "throughput sidecar / nginx",
        r_n,
        "x",
        f">= {MIN_THROUGHPUT_RATIO}",
        None if r_n is None else r_n >= MIN_THROUGHPUT_RATIO,
    )
    st = best("nginx-stock")
    r_st = s / st if s and st else None
    add(
        "throughput sidecar / nginx-stock",
        r_st,
        "x",
        f">= {MIN_THROUGHPUT_RATIO}",
        None if r_st is None else r_st >= MIN_THROUGHPUT_RATIO,
    )
    add("throughput sidecar / direct", r_d, "x", "(info)", None)
    rate = results["settings"]["rate"]
    for p, limit in (("p50", MAX_ADDED_P50_MS), ("p99", MAX_ADDED_P99_MS)):
        side, base = lat("sidecar", f"{p}_ms"), lat("direct", f"{p}_ms")
        added = side - base if side is not None and base is not None else None
        add(
            f"added latency {p} @ {rate:g} req/s",
            added,
            "ms",
            f"<= {limit}",
            None if added is None else added <= limit,
        )
    sc = results["sidecar"]
    add(
        "sidecar RSS after runs",
        sc["rss_mb_after_runs"],
        "MB",
        f"<= {MAX_RSS_MB:g}",
        sc["rss_mb_after_runs"] <= MAX_RSS_MB,
    )
    extra = sc["requests_counted"] - sc["requests_completed_by_clients"]
    add(
        "requests counted - completed",
        extra,
        "",
        f"0..{sc['count_tolerance']}",
        0 <= extra <= sc["count_tolerance"],
    )
    return checks


def _f(v: float | None, fmt: str) -> str:
    """``format(v, fmt)``, or a right-aligned "-" of the same width for a missing value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        width = re.match(r"\d*", fmt)
        return "-".rjust(int(width.group() or 0) if width else 0)
    return format(v, fmt)


def report(results: dict[str, Any]) -> str:
    env, tg, st = results["environment"], results["targets"], results["settings"]
    out = [
        "",
        f"monitor sidecar benchmark, {env['date']}",
        f"machine: {env['cpu']}, {env['cpus_allowed']}/{env['cpus_online']} CPUs allowed/online, "
        f"Linux {env['kernel']}",
        f"versions: Python {env['python']}, monitor {env['monitor']}, uvloop {env['uvloop']}, "
        f"httptools {env['httptools']}, nginx {env['nginx']}, wrk {env['wrk']}",
        f"pinning: {env['pinning']}",
        f"upstream: {results['upstream']}; request: V2 [1,30] FP64, {st['request_bytes']} bytes",
        f"throughput: {st['wrk']}, 2 interleaved runs, best counts; latency: "
        f"{st['rate']:g} req/s open loop on {st['latency_connections']} connections, "
        f"2 x {st['duration_s']:g} s pooled, from the scheduled send time",
        "",
    ]
    direct = tg["direct"]["latency"]
    hdr = (
        f"{'target':8} {'req/s best':>10} {'(runs)':>15} {'p50 ms':>7} {'p90 ms':>7} "
        f"{'p99 ms':>7} {'p99.9':>7} {'+p50 ms':>8} {'+p99 ms':>8} {'errors':>6}"
    )
    out += [hdr, "-" * len(hdr)]
    for t in TARGETS:
        runs, lat = tg[t]["wrk"], tg[t]["latency"]
        if t.startswith("nginx") and results["environment"]["nginx"] == "not installed":
            out.append(f"{t:11} not installed")
            continue
        best = max((r["rps"] for r in runs), default=None)
        rr = "/".join(f"{r['rps']:.0f}" for r in runs) or "-"
        errors = sum(r["errors"] for r in runs) + lat.get("errors", 0) + lat.get("non_200", 0)
        added = {
            p: (lat[f"{p}_ms"] - direct[f"{p}_ms"]) if t != "direct" and lat and direct else None
            for p in ("p50", "p99")
        }
        out.append(
            f"{t:11} {_f(best, '10.0f')} {rr:>15} {_f(lat.get('p50_ms'), '7.3f')} "
            f"{_f(lat.get('p90_ms'), '7.3f')} {_f(lat.get('p99_ms'), '7.3f')} "
            f"{_f(lat.get('p99.9_ms'), '7.3f')} {_f(added['p50'], '8.3f')} "
            f"{_f(added['p99'], '8.3f')} {errors:6d}"
        )
    out.append("(+p50/+p99: added latency = target's percentile - direct's percentile)")
    out.append("")
    hdr = f"{'check':34} {'value':>10} {'limit':>10}  result"
    out += [hdr, "-" * len(hdr)]
    for c in results["checks"]:
        v = c["value"]
        fmt = ".0f" if c["unit"] in ("", "MB") else (".2f" if c["unit"] == "x" else ".3f")
        val = _f(v, fmt) + (f" {c['unit']}" if c["unit"] and v is not None else "")
        out.append(f"{c['check']:34} {val:>10} {c['limit']:>10}  {c['result']}")
    sc = results["sidecar"]
    out += [
        "",
        f"sidecar: RSS {sc['rss_mb_after_runs']:.0f} MB after the runs (max sampled "
        f"{sc['rss_mb_max_sampled']:.0f} MB); requests completed by the clients "
        f"{sc['requests_completed_by_clients']}, counted {sc['requests_counted']:.0f} "
        f"({', '.join(f'{k}: {v:.0f}' for k, v in sc['requests_by_outcome_code'].items())})",
        f"         feature values {sc['feature_values_total']:.0f} "
        f"({sc['feature_values_present']:.0f} present), payload errors {sc['payload_errors']:.0f}, "
        f"predictions {sc['predictions_total']:.0f}, capture rows on disk "
        f"{sc['capture_rows_on_disk']}, capture dropped {sc['capture_dropped_rows']:.0f}",
        "latency client accuracy (wake-up lag after each deadline) p50/p99: "
        + ", ".join(
            f"{t} {_f(tg[t]['latency'].get('wake_lag_p50_ms'), '.3f')}/"
            f"{_f(tg[t]['latency'].get('wake_lag_p99_ms'), '.3f')} ms"
            for t in TARGETS
            if tg[t]["latency"]
        ),
    ]
    if sc["log_problems"]:
        out.append("sidecar log problems:")
        out += [f"  {ln}" for ln in sc["log_problems"]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--duration", type=float, default=10.0, help="seconds of each run, wrk or fixed-rate"
    )
    ap.add_argument("--rate", type=float, default=500.0, help="req/s of the latency runs")
    ap.add_argument("--quick", action="store_true", help="short smoke run (2 s per run)")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument(
        "--pin-latency", action="store_true", help="keep the CPU pinning for the latency runs"
    )
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, capture)")
    args = ap.parse_args(argv)
    args.warmup = 1.0 if args.quick else 2.0
    if args.quick:
        args.duration = min(args.duration, 2.0)
    if args.duration <= 0 or args.rate <= 0:
        ap.error("--duration and --rate must be positive")

    # SIGTERM (e.g. from a CI runner) unwinds like Ctrl-C, so the finally blocks run.
    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    try:
        results = run(args)
    except KeyboardInterrupt:
        print("interrupted; all started processes were stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    results["checks"] = evaluate(results)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    return 0 if all(c["result"] != "FAIL" for c in results["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
