"""The demo's client: real V2 inference requests through the sidecar, in phases.

An aiohttp client in a background thread keeps ``workers`` requests going at about
``rate`` requests per second in all. The phase decides the rows: ``healthy``,
``fault`` and ``recovery`` send held-out rows unchanged, ``shift`` sends them with
the covariate shift (:class:`monitor.demo.data.RowSource`). One row in 40 has a
missing value and one in 40 a unit mix-up (``mean_radius`` x 100, out of range),
as real clients do; the sidecar counts both in feature coverage, and neither is an
error of the model server.

The true label of every answered row is kept and written to ``labels.csv`` (the
delayed ground truth the drift job joins by request id for model quality).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import math
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp

from monitor.demo.data import DemoData, RowSource, v2_body

PHASES = ("healthy", "shift", "fault", "recovery")


class Traffic:
    """Background traffic to ``url`` (the sidecar).

    Args:
        url: base URL of the sidecar.
        model: model name in the V2 path.
        data: the rows and labels (:class:`DemoData`).
        rate: requests per second in all (each request one row).
        workers: concurrent requests at most (a request to a frozen server holds
            its worker for the sidecar's read timeout).
    """

    def __init__(
        self, url: str, model: str, data: DemoData, *, rate: float = 30.0, workers: int = 6
    ) -> None:
        self.url = f"{url}/v2/models/{model}/infer"
        self.data = data
        self.rate = rate
        self.workers = workers
        self.phase = PHASES[0]
        self.counts: dict[str, Counter[str]] = {p: Counter() for p in PHASES}
        self.labels: list[tuple[str, int, float]] = []
        self.bad_rows: Counter[str] = Counter()
        """Rows sent with a value out of range (``out_of_range``) or missing (``null``)."""
        self._rows = RowSource(data)
        self._n = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="demo-traffic", daemon=True)

    def start(self) -> None:
        """Start sending."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sending and wait for the requests in flight (bounded)."""
        self._stop.set()
        self._thread.join(15)

    def write_labels(self, path: Path) -> None:
        """Write the labels so far to ``path`` (CSV: request_id, label, timestamp), atomically."""
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["request_id", "label", "timestamp"])
            w.writerows(list(self.labels))
        tmp.replace(path)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self._worker(session) for _ in range(self.workers)))

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        interval = self.workers / self.rate
        while not self._stop.is_set():
            t0 = time.monotonic()
            phase = self.phase
            idx = self._rows.next(shifted=phase == "shift")
            row = self.data.x[idx : idx + 1].copy()
            self._n += 1
            n = self._n
            if n % 40 == 7:
                row[0, 0] *= 100  # a unit mix-up: out of range
                self.bad_rows["out_of_range"] += 1
            elif n % 40 == 23:
                row[0, n % 30] = math.nan  # a missing value, sent as null
                self.bad_rows["null"] += 1
            rid = f"demo-{n}"
            body = v2_body(row, rid)
            tensor = body["inputs"][0]
            tensor["data"] = [None if math.isnan(v) else v for v in tensor["data"]]
            ok = False
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with session.post(self.url, json=body) as resp:
                    await resp.read()
                    ok = resp.status == 200
            self.counts[phase]["ok" if ok else "error"] += 1
            if ok:
                self.labels.append((rid, int(self.data.y[idx]), time.time()))
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))


__all__ = ["PHASES", "Traffic"]
