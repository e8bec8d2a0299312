"""``monitor canary run``: replay each model's golden set to each replica, on a schedule.

Every ``canary.interval_seconds`` each replica of each model with a ``canary`` section
gets every golden request, one after the other, POSTed straight to the model server
(``models[].replicas``, default the ``upstream``; not through the sidecar, so canary
traffic stays out of the request metrics). One check of a replica ends as:

* ``fail``: an answer came back (HTTP 2xx) with an output outside tolerance, or not the
  golden set's outputs (:mod:`monitor.canary.compare`) -- the silent failure this exists
  for: corrupted weights, a bad GPU, the wrong version;
* ``error``: no usable answer (connection refused, timeout, non-2xx, unreadable body),
  and no case failed;
* ``pass``: every case within tolerance.

Exported (``/metrics``): ``mlmon_canary_checks_total{model, replica, result}``,
``mlmon_canary_max_abs_error{model, replica}`` (largest absolute difference of the last
check that got answers; removed after an ``error`` check, so no stale value) and
``mlmon_canary_last_success_timestamp_seconds{model, replica}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from monitor import conventions as c
from monitor.canary.compare import Comparison, compare_outputs
from monitor.canary.golden import CanaryError, GoldenSet, load_golden, read_outputs
from monitor.errors import PayloadError
from monitor.protocols import Adapter, make_adapter
from monitor.spec import ModelSpec, MonitorSpec

__all__ = ["CanaryMetrics", "CheckResult", "Target", "check_replica", "run", "targets"]

log = logging.getLogger("monitor.canary")

_MAX_BODY_IN_LOG = 200


@dataclass(frozen=True)
class Target:
    """One model with its golden set and the replicas to check."""

    model: ModelSpec
    golden: GoldenSet
    replicas: list[str]
    adapter: Adapter
    """The model's protocol adapter, which reads outputs from answers."""


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check of one replica."""

    result: str
    """``pass``, ``fail`` or ``error`` (``conventions.CANARY_*``)."""
    max_abs_error: float | None
    """Largest absolute output difference; None when nothing was compared."""
    detail: str
    """Why it failed or errored (the first mismatches or the error), for the log."""
    seconds: float


class CanaryMetrics:
    """The canary's metrics in ``registry`` (a seam for tests)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = [c.LABEL_MODEL, c.LABEL_REPLICA]
        self.checks = Counter(
            c.CANARY_CHECKS_TOTAL,
            "Golden-set checks of a replica, by result (pass, fail: wrong outputs, "
            "error: no usable answer).",
            [*labels, c.LABEL_RESULT],
            registry=registry,
        )
        self.max_abs_error = Gauge(
            c.CANARY_MAX_ABS_ERROR,
            "Largest absolute difference between a replica's outputs and the golden ones "
            "in its last answered check.",
            labels,
            registry=registry,
        )
        self.last_success = Gauge(
            c.CANARY_LAST_SUCCESS_TIMESTAMP_SECONDS,
            "Unix time of the replica's last passed check.",
            labels,
            registry=registry,
        )

    def prepare(self, model: str, replica: str) -> None:
        """Create the three result series at 0, so rates exist from the first scrape."""
        for result in (c.CANARY_PASS, c.CANARY_FAIL, c.CANARY_ERROR):
            self.checks.labels(model, replica, result)

    def observe(self, model: str, replica: str, res: CheckResult) -> None:
        """Count one check and update the gauges."""
        self.checks.labels(model, replica, res.result).inc()
        if res.max_abs_error is None:
            try:  # noqa: SIM105 - no stale error value after an unanswered check
                self.max_abs_error.remove(model, replica)
            except KeyError:
                pass
        else:
            self.max_abs_error.labels(model, replica).set(res.max_abs_error)
        if res.result == c.CANARY_PASS:
            self.last_success.labels(model, replica).set(time.time())


def targets(spec: MonitorSpec) -> list[Target]:
    """Every model with a ``canary`` section, its golden set loaded and checked.

    Raises:
        CanaryError: no model has one, or a golden file is missing or does not match
            its model (the message names ``models[i].canary.golden``).
    """
    out = []
    for i, m in enumerate(spec.models):
        if m.canary is None:
            continue
        golden = load_golden(m.canary.golden, m, f"models[{i}].canary.golden")
        out.append(Target(m, golden, m.replica_urls, make_adapter(m)))
    if not out:
        raise CanaryError(
            "no model has a canary section (models[].canary: {golden: FILE}); see docs/canary.md"
        )
    return out


async def check_replica(
    session: aiohttp.ClientSession, target: Target, replica: str
) -> CheckResult:
    """Send every golden request of ``target`` to ``replica`` and compare. Never raises."""
    model = target.model
    assert model.canary is not None
    spec = model.canary
    adapter = target.adapter
    verdict = Comparison()
    errors: list[str] = []
    t0 = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=spec.timeout_seconds)
    for i, case in enumerate(target.golden.cases):
        url = replica.rstrip("/") + case.path
        try:
            async with session.post(
                url,
                data=json.dumps(case.request),
                headers={"Content-Type": "application/json"},
                timeout=timeout,
            ) as resp:
                body = await resp.read()
                if not 200 <= resp.status < 300:
                    errors.append(f"case {i}: HTTP {resp.status}: {body[:_MAX_BODY_IN_LOG]!r}")
                    continue
            outputs, _ = read_outputs(model, adapter, body)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            errors.append(f"case {i}: {type(exc).__name__}: {exc}")
            continue
        except PayloadError as exc:
            errors.append(f"case {i}: unreadable answer ({exc})")
            continue
        compare_outputs(
            case.outputs,
            outputs,
            abs_tolerance=spec.abs_tolerance,
            rel_tolerance=spec.rel_tolerance,
            into=verdict,
            prefix=f"case {i}: ",
        )
    seconds = time.monotonic() - t0
    if not verdict.ok:
        detail = "; ".join(verdict.mismatches)
        if verdict.mismatch_count > len(verdict.mismatches):
            detail += f" (+{verdict.mismatch_count - len(verdict.mismatches)} more)"
        return CheckResult(c.CANARY_FAIL, verdict.max_abs_error, detail, seconds)
    if errors:
        return CheckResult(c.CANARY_ERROR, None, "; ".join(errors[:3]), seconds)
    return CheckResult(c.CANARY_PASS, verdict.max_abs_error or 0.0, "", seconds)


async def _replica_loop(
    session: aiohttp.ClientSession,
    target: Target,
    replica: str,
    metrics: CanaryMetrics,
    stop: asyncio.Event,
) -> None:
    model = target.model
    assert model.canary is not None
    interval = model.canary.interval_seconds
    last: str | None = None
    while not stop.is_set():
        t0 = time.monotonic()
        res = await check_replica(session, target, replica)
        metrics.observe(model.name, replica, res)
        if res.result != c.CANARY_PASS:
            log.warning(
                "model %s replica %s: canary %s: %s", model.name, replica, res.result, res.detail
            )
        elif last != c.CANARY_PASS:
            log.info(
                "model %s replica %s: canary pass (%d cases, max |error| %.3g)",
                model.name,
                replica,
                len(target.golden.cases),
                res.max_abs_error or 0.0,
            )
        last = res.result
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, interval - (time.monotonic() - t0)))


async def run(
    found: list[Target], metrics: CanaryMetrics, stop: asyncio.Event, **session_kw: Any
) -> None:
    """Check every replica of every target (from :func:`targets`) until ``stop`` is set.
    ``session_kw`` goes to ``aiohttp.ClientSession``."""
    for t in found:
        for r in t.replicas:
            metrics.prepare(t.model.name, r)
    async with aiohttp.ClientSession(**session_kw) as session:
        await asyncio.gather(
            *(_replica_loop(session, t, r, metrics, stop) for t in found for r in t.replicas)
        )
