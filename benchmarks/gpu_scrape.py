#!/usr/bin/env python3
"""What the GPU collector adds to a sidecar scrape, on a fake NVML.

This machine class has no GPU, so the NVML below is ``tests/fake_pynvml.py``: the
figures are the collector's own cost (worker threads, the reads' Python side, the
rendering), not the driver's. On real hardware add the NVML queries themselves: about
20 per GPU, plus 1 + 4 per NVLink link (an H100 SXM has 18).

Rows, each a real in-process sidecar (``monitor.sidecar.Sidecar``) on 127.0.0.1 whose
``/metrics`` is fetched over HTTP with a keep-alive client:

* ``gpu_metrics: false``: the sidecar without the collector (the baseline);
* ``no driver``: the real ``pynvml`` on a machine without ``libnvidia-ml``;
* ``1 GPU`` / ``8 GPUs + NVLink``: the fake with 1 PCIe GPU, and 8 H100s with 18 links;
* ``8 GPUs, 1 hung``: GPU 0's read hangs: every scrape answers at once (GPU 0 ``up 0``)
  because the hung read is not waited for again (the first scrape, which waits the
  timeout, is left out of the sample and shown as ``first``).

Usage: ``.venv/bin/python benchmarks/gpu_scrape.py [--scrapes N]``. Prints a table:
scrape latency p50 / p99 / max in milliseconds, series per scrape, and the exposition
size.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402

from monitor.sidecar.app import Sidecar  # noqa: E402
from monitor.spec import parse_spec  # noqa: E402
from tests.fake_pynvml import FakeGpu, FakeNvml  # noqa: E402

TIMEOUT_S = 0.5


def _spec(gpu_metrics: bool) -> Any:
    return parse_spec(
        {
            "apiVersion": "monitor/v1",
            "service": "bench",
            "models": [
                {
                    "name": "m",
                    "upstream": "http://127.0.0.1:9",
                    "features": [{"name": f"f{i}"} for i in range(30)],
                    "probe_interval_seconds": 60,
                    "gpu_metrics": gpu_metrics,
                }
            ],
            "tracing": {"enabled": False},
        }
    )


def _h100s(n: int) -> list[FakeGpu]:
    return [FakeGpu(uuid=f"GPU-{i:08d}-0000-4000-8000-000000000000", nvlinks=18) for i in range(n)]


class _Running:
    """A sidecar on its own event loop thread."""

    def __init__(self, gpu_metrics: bool, nvml: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.sidecar = Sidecar(_spec(gpu_metrics), "m", registry=CollectorRegistry(), nvml=nvml)
        if self.sidecar.gpu is not None:
            self.sidecar.gpu.timeout = TIMEOUT_S
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.sidecar.start(), self.loop).result(30)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sidecar.stop(0.1), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _measure(gpu_metrics: bool, nvml: Any, scrapes: int, hang: bool = False) -> dict[str, Any]:
    run = _Running(gpu_metrics, nvml)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", run.sidecar.metrics_port, timeout=10)

        def scrape() -> tuple[float, bytes]:
            t0 = time.perf_counter()
            conn.request("GET", "/metrics")
            body = conn.getresponse().read()
            return time.perf_counter() - t0, body

        for _ in range(5):  # warm-up (NVML init, first reads, NVLink discovery)
            scrape()
        first = None
        if hang:
            nvml.gpus[0].hang.add("nvmlDeviceGetUtilizationRates")
            first, _ = scrape()
        times = []
        body = b""
        for _ in range(scrapes):
            t, body = scrape()
            times.append(t)
        conn.close()
    finally:
        if hang:
            nvml.release()
        run.close()
    times.sort()
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    gpu_series = sum(1 for line in body.splitlines() if line.startswith(b"mlmon_gpu_"))
    return {
        "p50": statistics.median(times) * 1e3,
        "p99": times[int(0.99 * (len(times) - 1))] * 1e3,
        "max": times[-1] * 1e3,
        "first": None if first is None else first * 1e3,
        "series": series,
        "gpu_series": gpu_series,
        "kib": len(body) / 1024,
    }


def main() -> int:
    import logging

    logging.basicConfig(level=logging.CRITICAL)  # the hung GPU and the absent upstream log
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scrapes", type=int, default=300, help="scrapes per row (default 300)")
    args = ap.parse_args()
    rows = [
        ("gpu_metrics: false", lambda: _measure(False, None, args.scrapes)),
        ("no driver", lambda: _measure(True, None, args.scrapes)),
        ("1 GPU", lambda: _measure(True, FakeNvml([FakeGpu()]), args.scrapes)),
        ("8 GPUs + NVLink", lambda: _measure(True, FakeNvml(_h100s(8)), args.scrapes)),
        (
            "8 GPUs, 1 hung",
            lambda: _measure(True, FakeNvml(_h100s(8)), args.scrapes, hang=True),
        ),
    ]
    print(f"sidecar /metrics over HTTP, {args.scrapes} scrapes per row (fake NVML)\n")
    head = (
        f"{'case':<20} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'first ms':>9} "
        f"{'series':>7} {'gpu':>5} {'KiB':>6}"
    )
    print(head)
    print("-" * len(head))
    for name, fn in rows:
        r = fn()
        first = f"{r['first']:.1f}" if r["first"] is not None else "-"
        print(
            f"{name:<20} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['max']:>8.2f} {first:>9} "
            f"{r['series']:>7} {r['gpu_series']:>5} {r['kib']:>6.1f}"
        )
    print(f"\nNVML timeout {TIMEOUT_S} s. 'first': the scrape that waited for the hung read.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
