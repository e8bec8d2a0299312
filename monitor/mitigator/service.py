"""``monitor mitigator``: Alertmanager webhooks in, safe automated mitigations out.

Request path (``POST /v1/alerts``), answered within about a second:

1. bearer token (constant-time compare) -> 401; body over ``max_body_bytes`` -> 413;
   not a version-4 payload -> 400 with the reason (:mod:`monitor.mitigator.webhook`);
2. per alert, from its own status (case C26), the policies it matches (its
   ``mitigation`` label, else the policies' matchers) plan jobs:

   * firing -> an ``apply`` job, due at ``startsAt + min_firing_seconds``; a
     pending revert of the same alert and policy is cancelled (it fired again);
   * resolved -> a pending apply is cancelled; with ``revert_on_resolve`` and an
     apply that ran, a ``revert`` job due ``revert_hold_seconds`` later;

3. the notification and its jobs are committed to the store, then 200. A
   duplicate delivery (same fingerprint, startsAt, policy and kind) inserts
   nothing and counts ``mlmon_webhook_duplicates_total`` (case C28). A store
   failure answers 503, so Alertmanager retries.

The worker runs due jobs: cooldown and rate limits (per policy and global) and
``dry_run`` are applied when the job runs; a revert first asks Prometheus (when
``mitigator.prometheus_url`` is set) whether the alert is really over and its
targets are up, since a resolve caused by series going stale (case C23) is not
a recovery. Attempts are retried with backoff; an action that fails for good is
escalated to the pager. Everything is in the audit log (``GET /v1/actions``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from monitor import conventions as c
from monitor.errors import MonitorError, SpecError
from monitor.mitigator import webhook
from monitor.mitigator.actions import Executor, promql_escape
from monitor.mitigator.policy import ActionError, inverse
from monitor.mitigator.store import Job, PlannedJob, Store, StoreError, open_store
from monitor.spec import MitigationSpec, MonitorSpec

log = logging.getLogger("monitor.mitigator")

SKIPPED = c.MITIGATION_SKIPPED
LEASE_SECONDS = 300.0
POLL_SECONDS = 0.25


def read_token(token_file: Path | None, token_env: str | None, what: str) -> str:
    """The bearer token from a file (whitespace stripped) or an environment variable.

    Raises:
        SpecError: neither is configured, the file is missing or empty, or the
            variable is unset or empty (the message says which).
    """
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise SpecError(
                [f"{what}.token_file: cannot read {token_file}: {e.strerror}"]
            ) from None
        if not token:
            raise SpecError([f"{what}.token_file: {token_file} is empty"])
        return token
    if token_env is not None:
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise SpecError([f"{what}.token_env: ${token_env} is unset or empty"])
        return token
    raise SpecError([f"{what}: set token_file or token_env (the webhook must be authenticated)"])


def match(policy: MitigationSpec, labels: Mapping[str, str]) -> bool:
    """Do the alert's labels satisfy every matcher (``value`` equality, ``~regex`` full match)?"""
    for name, want in policy.match.items():
        have = labels.get(name, "")
        if want.startswith("~"):
            if re.fullmatch(want[1:], have) is None:
                return False
        elif have != want:
            return False
    return True


class Mitigator:
    """The service: webhook handler, job worker, metrics.

    Args:
        spec: the whole spec (``mitigator``, ``mitigations``, models' control tokens).
        store: the durable store (default: opened from ``mitigator.store``).
        registry: metrics registry (default a new one).
        owner: this replica's name in the store (default ``hostname:listen``).

    Raises:
        SpecError: no readable token.
        StoreError: the store cannot be opened.
    """

    def __init__(
        self,
        spec: MonitorSpec,
        *,
        store: Store | None = None,
        registry: CollectorRegistry | None = None,
        owner: str | None = None,
    ) -> None:
        self.spec = spec
        cfg = spec.mitigator
        self.token = read_token(cfg.token_file, cfg.token_env, "mitigator")
        # The spec loader has checked every action and revert (MitigationSpec validators).
        self.policies: dict[str, MitigationSpec] = {p.name: p for p in spec.mitigations}
        self.reverts: dict[str, dict[str, Any] | None] = {
            p.name: p.revert if p.revert is not None else inverse(p.action)
            for p in spec.mitigations
        }
        tokens = {}
        for m in spec.models:
            if m.control is not None:
                tokens[m.name] = read_token(
                    m.control.token_file, m.control.token_env, f"models[{m.name}].control"
                )
        self.executor = Executor(
            timeout=cfg.action_timeout_seconds,
            retries=cfg.retries,
            tokens=tokens,
            prometheus_url=cfg.prometheus_url,
            sidecar_job=spec.alerting.sidecar_job,
        )
        self.store = store or open_store(cfg.store)
        self.owner = owner or f"{socket.gethostname()}:{cfg.listen}"
        self.escalation_url = cfg.escalation_url or (
            spec.alerting.pager.webhook_url if spec.alerting.pager else None
        )
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.m_notifications = Counter(
            c.WEBHOOK_NOTIFICATIONS_TOTAL.removesuffix("_total"),
            "Webhook deliveries by result "
            "(accepted, unauthorized, too_large, invalid, unavailable).",
            [c.LABEL_RESULT],
            registry=r,
        )
        self.m_duplicates = Counter(
            c.WEBHOOK_DUPLICATES_TOTAL.removesuffix("_total"),
            "Alert deliveries that planned nothing new (same fingerprint, startsAt, policy, kind).",
            registry=r,
        )
        self.m_truncated = Counter(
            c.WEBHOOK_TRUNCATED_ALERTS_TOTAL.removesuffix("_total"),
            "Alerts Alertmanager left out of a notification (truncatedAlerts).",
            registry=r,
        )
        self.m_actions = Counter(
            c.MITIGATION_ACTIONS_TOTAL.removesuffix("_total"),
            "Mitigation jobs run, by policy, action and outcome.",
            [c.LABEL_POLICY, c.LABEL_ACTION, c.LABEL_OUTCOME],
            registry=r,
        )
        self.m_duration = Histogram(
            c.MITIGATION_ACTION_DURATION_SECONDS,
            "Seconds a mitigation job took, retries included.",
            [c.LABEL_POLICY, c.LABEL_ACTION],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.m_pending = Gauge(
            c.MITIGATION_JOBS_PENDING, "Jobs planned and not yet run.", registry=r
        )
        self.m_up = Gauge(
            c.MITIGATOR_STORE_UP, "1 when the store answered the last check.", registry=r
        )
        for result in ("accepted", "unauthorized", "too_large", "invalid", "unavailable"):
            self.m_notifications.labels(result)
        self._wake = asyncio.Event()
        self._stopping = False
        self._worker_error: str | None = None  # set when the worker died (see /-/ready)

    # --- webhook ----------------------------------------------------------------

    def policies_for(self, alert: webhook.Alert) -> list[MitigationSpec]:
        """Policies an alert triggers: the one its ``mitigation`` label names, else matchers."""
        if alert.labels.get(c.LABEL_MITIGATION) in self.policies:
            return [self.policies[alert.labels[c.LABEL_MITIGATION]]]
        return [p for p in self.policies.values() if match(p, alert.labels)]

    def plan(
        self, note: webhook.Notification, now: float
    ) -> tuple[list[PlannedJob], list[tuple[str, str, str]]]:
        """Jobs to insert, and (fingerprint, policy, kind) of pending jobs to cancel."""
        jobs: list[PlannedJob] = []
        cancels: list[tuple[str, str, str]] = []
        for a in note.alerts:
            for p in self.policies_for(a):
                base = f"{a.fingerprint}|{a.starts_at}|{p.name}"
                if a.status == "firing":
                    cancels.append((a.fingerprint, p.name, "revert"))
                    jobs.append(
                        PlannedJob(f"{base}|apply", p.name, "apply", p.action["type"],
                                   a.fingerprint,
                                   a.starts_at, a.to_dict(), dict(p.action),
                                   _due(a.starts_at_ts, p.min_firing_seconds, now))
                    )  # fmt: skip
                else:
                    cancels.append((a.fingerprint, p.name, "apply"))
                    revert = self.reverts.get(p.name)
                    if p.revert_on_resolve and revert is not None:
                        jobs.append(
                            PlannedJob(f"{base}|revert", p.name, "revert", revert["type"],
                                       a.fingerprint, a.starts_at, a.to_dict(), dict(revert),
                                       now + p.revert_hold_seconds)
                        )  # fmt: skip
        return jobs, cancels

    async def handle_alerts(self, request: web.Request) -> web.Response:
        """``POST /v1/alerts``."""
        auth = request.headers.get("Authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            self.m_notifications.labels("unauthorized").inc()
            return web.json_response(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        limit = self.spec.mitigator.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            self.m_notifications.labels("too_large").inc()
            return web.json_response({"error": f"body over {limit} bytes"}, status=413)
        chunks: list[bytes] = []
        size = 0
        try:
            while size <= limit:  # a chunked body declares no length: until EOF or over
                chunk = await request.content.read(limit + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except web.RequestPayloadError as e:  # e.g. Content-Encoding: gzip on plain JSON
            self.m_notifications.labels("invalid").inc()
            why = f"body cannot be read as sent: {e.__cause__ or e}"
            return web.json_response({"error": why}, status=400)
        body = b"".join(chunks)
        if len(body) > limit:
            self.m_notifications.labels("too_large").inc()
            return web.json_response({"error": f"body over {limit} bytes"}, status=413)
        try:
            note = webhook.parse(body)
        except webhook.WebhookError as e:
            self.m_notifications.labels("invalid").inc()
            return web.json_response({"error": str(e)}, status=400)
        now = time.time()
        jobs, cancels = self.plan(note, now)
        try:
            _, fresh = await asyncio.to_thread(self._record, note, body, jobs, cancels, now)
        except StoreError as e:
            self.m_notifications.labels("unavailable").inc()
            log.error("cannot store a notification (answered 503, Alertmanager retries): %s", e)
            return web.json_response({"error": "store unavailable; retry"}, status=503)
        self.m_notifications.labels("accepted").inc()
        dups = fresh.count(False)
        if dups:
            self.m_duplicates.inc(dups)
        if note.truncated:
            self.m_truncated.inc(note.truncated)
            log.warning(
                "notification %s left out %d alerts (truncatedAlerts); "
                "they are not read as resolved",
                note.group_key,
                note.truncated,
            )
        self._wake.set()
        planned = [j.key for j, new in zip(jobs, fresh, strict=True) if new]
        return web.json_response(
            {"alerts": len(note.alerts), "planned": planned, "duplicates": dups}
        )

    def _record(
        self, note: webhook.Notification, body: bytes, jobs: list[PlannedJob],
        cancels: list[tuple[str, str, str]], now: float,
    ) -> tuple[int, list[bool]]:  # fmt: skip
        for fp, policy, kind in cancels:
            n = self.store.cancel_pending(
                fingerprint=fp,
                policy=policy,
                kind=kind,
                detail="cancelled: the alert is "
                + ("firing again" if kind == "revert" else "resolved"),
            )
            if n:
                log.info(
                    "policy %s: cancelled %d pending %s job(s) of alert %s", policy, n, kind, fp
                )
        return self.store.record(
            group_key=note.group_key, receiver=note.receiver, status=note.status,
            alerts=len(note.alerts), truncated=note.truncated,
            body=body.decode("utf-8", "replace"), jobs=jobs, now=now,
        )  # fmt: skip

    # --- worker -------------------------------------------------------------------

    async def worker(self) -> None:
        """Run due jobs until stopped."""
        n = await asyncio.to_thread(self.store.recover, self.owner)
        if n:
            log.warning("resumed %d job(s) that were running when the mitigator stopped", n)
        next_sweep = time.monotonic() + LEASE_SECONDS / 10
        while not self._stopping:
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + LEASE_SECONDS / 10
                try:
                    n = await asyncio.to_thread(self.store.release_expired)
                    if n:
                        log.warning("took back %d job(s) whose lease expired", n)
                except StoreError as e:
                    log.error("store: %s", e)
            try:
                jobs = await asyncio.to_thread(self.store.claim, self.owner, LEASE_SECONDS)
                self.m_up.set(1)
            except StoreError as e:
                self.m_up.set(0)
                log.error("store: %s", e)
                jobs = []
            for job in jobs:
                try:
                    await self.run_job(job)
                except Exception as e:  # a bug must cost one job, never the worker
                    log.exception("policy %s %s: unexpected error", job.policy, job.kind)
                    with contextlib.suppress(Exception):
                        await self._finish(
                            job, c.MITIGATION_FAILURE, f"internal error: {type(e).__name__}: {e}",
                            time.monotonic(), job.attempts + 1,
                        )  # fmt: skip
            try:
                pending = await asyncio.to_thread(self.store.jobs, 1000, "pending")
                self.m_pending.set(len(pending))
            except StoreError:
                pass
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        """Done-callback of the worker: it ends only when stopping. Anything else is
        logged and turns /-/ready to 503, so the orchestrator restarts the replica
        instead of it taking webhooks it will never act on."""
        if self._stopping:
            return
        exc = None if task.cancelled() else task.exception()
        why = "ended without being stopped" if exc is None else f"{type(exc).__name__}: {exc}"
        self._worker_error = why
        log.critical("the job worker stopped: %s; /-/ready answers 503", why)

    def _label(self, job: Job) -> str:
        return job.action_type if job.kind == "apply" else f"{job.action_type}_revert"

    async def run_job(self, job: Job) -> None:
        """Apply limits, run one attempt, then finish, reschedule or escalate the job."""
        policy = self.policies.get(job.policy)
        t0 = time.monotonic()
        if policy is None:
            await self._finish(job, SKIPPED, f"policy {job.policy!r} is no longer in the spec", t0)
            return
        if job.kind == "apply" and job.attempts == 0:
            reason = await asyncio.to_thread(self._limited, policy)
            if reason:
                await self._finish(job, SKIPPED, reason, t0)
                return
        if job.kind == "revert":
            applied = await asyncio.to_thread(
                self.store.applied,
                fingerprint=job.fingerprint,
                starts_at=job.starts_at,
                policy=job.policy,
            )
            if applied is None or applied.outcome != c.MITIGATION_SUCCESS:
                state = (
                    "no apply"
                    if applied is None
                    else f"the apply ended {applied.outcome or applied.state}"
                )
                await self._finish(job, SKIPPED, f"nothing to revert ({state} for this alert)", t0)
                return
            blocked = await self._revert_blocked(job)
            if blocked:
                if job.attempts >= 20:
                    await self._finish(
                        job, c.MITIGATION_FAILURE, f"revert not safe after 20 checks: {blocked}", t0
                    )
                    await self._escalate(job, f"revert not safe: {blocked}")
                    return
                await asyncio.to_thread(
                    self.store.reschedule,
                    job.id,
                    not_before=time.time() + self.spec.mitigator.revert_check_interval_seconds,
                    attempts=job.attempts + 1,
                    detail=f"revert postponed: {blocked}",
                )
                return
        if policy.dry_run:
            await self._finish(
                job, c.MITIGATION_DRY_RUN, f"dry run: would run {json.dumps(job.params)}", t0
            )
            return
        attempts = job.attempts + 1
        try:
            detail = await self.executor.run(job.params, job.alert)
        except ActionError as e:
            if e.retryable and attempts <= self.executor.retries:
                delay = self.executor.backoff(attempts)
                log.warning(
                    "policy %s %s attempt %d failed, retry in %.1fs: %s",
                    job.policy,
                    job.kind,
                    attempts,
                    delay,
                    e,
                )
                await asyncio.to_thread(
                    self.store.reschedule,
                    job.id,
                    not_before=time.time() + delay,
                    attempts=attempts,
                    detail=str(e),
                )
                self._wake.set()
                return
            log.error(
                "policy %s %s failed for good after %d attempt(s): %s",
                job.policy,
                job.kind,
                attempts,
                e,
            )
            await self._finish(job, c.MITIGATION_FAILURE, str(e), t0, attempts)
            await self._escalate(job, str(e))
            return
        log.info(
            "policy %s %s done for alert %s: %s", job.policy, job.kind, job.fingerprint, detail
        )
        await self._finish(job, c.MITIGATION_SUCCESS, detail, t0, attempts)

    async def _finish(
        self, job: Job, outcome: str, detail: str, t0: float, attempts: int | None = None
    ) -> None:
        await asyncio.to_thread(
            self.store.finish,
            job.id,
            outcome=outcome,
            attempts=job.attempts if attempts is None else attempts,
            detail=detail,
        )
        self.m_actions.labels(job.policy, self._label(job), outcome).inc()
        self.m_duration.labels(job.policy, self._label(job)).observe(time.monotonic() - t0)

    def _limited(self, policy: MitigationSpec) -> str:
        now = time.time()
        last = self.store.last_success(policy.name)
        if last is not None and now - last < policy.cooldown_seconds:
            return (
                f"cooldown: policy acted {now - last:.0f} s ago "
                f"(cooldown {policy.cooldown_seconds:g} s)"
            )
        hour = now - 3600
        if (
            policy.max_per_hour is not None
            and self.store.count_actions(hour, policy.name) >= policy.max_per_hour
        ):
            return f"rate limit: {policy.max_per_hour} actions of this policy in the last hour"
        cap = self.spec.mitigator.max_actions_per_hour
        if self.store.count_actions(hour) >= cap:
            return f"global rate limit: {cap} actions in the last hour"
        return ""

    async def _revert_blocked(self, job: Job) -> str:
        """Why a revert must wait (case C23), or "" when it may run."""
        url = self.spec.mitigator.prometheus_url
        if not url:
            return ""
        labels = job.alert.get("labels") or {}
        name = labels.get("alertname", "")
        sel = ",".join(
            f'{k}="{promql_escape(v)}"'
            for k, v in sorted(labels.items())
            if k in ("alertname", "model", "slo", "severity")
        )
        queries = {"firing": f'ALERTS{{{sel},alertstate="firing"}}'}
        if "job" in labels:
            queries["targets"] = f'up{{job="{promql_escape(labels["job"])}"}}'
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
                results = {}
                for key, q in queries.items():
                    async with s.get(
                        f"{url.rstrip('/')}/api/v1/query?{urlencode({'query': q})}"
                    ) as resp:
                        doc = await resp.json()
                    results[key] = doc.get("data", {}).get("result", [])
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as e:
            return f"Prometheus {url} did not answer ({type(e).__name__})"
        if results["firing"]:
            return f"{name} is still firing in Prometheus"
        if "targets" in results:
            if not results["targets"]:
                return (
                    f"no up series for job {labels['job']!r}: "
                    "the resolve may come from stale series"
                )
            down = [
                r["metric"].get("instance", "?") for r in results["targets"] if r["value"][1] != "1"
            ]
            if down:
                return f"targets down: {', '.join(down)}; the resolve may come from stale series"
        return ""

    async def _escalate(self, job: Job, error: str) -> None:
        if not self.escalation_url:
            return
        payload = {
            "version": "4", "status": "firing", "receiver": "mitigator-escalation",
            "groupKey": f"mitigator:{job.policy}", "truncatedAlerts": 0,
            "groupLabels": {"alertname": c.ALERT_MITIGATION_FAILING},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": c.ALERT_MITIGATION_FAILING, "policy": job.policy, "action": self._label(job), "severity": "page"},  # noqa: E501
                "annotations": {"summary": f"Mitigation {job.policy} failed", "description": error, "alert": json.dumps(job.alert)[:2000]},  # noqa: E501
                "startsAt": webhook._iso(time.time()), "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "", "fingerprint": f"mitigator-{job.id}",
            }],
        }  # fmt: skip
        try:
            timeout = aiohttp.ClientTimeout(total=10)
            async with (
                aiohttp.ClientSession(timeout=timeout) as s,
                s.post(self.escalation_url, json=payload) as resp,
            ):
                log.warning(
                    "escalated the failure of %s to %s: HTTP %d",
                    job.policy,
                    self.escalation_url,
                    resp.status,
                )
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            log.error("could not escalate to %s: %s", self.escalation_url, e)

    # --- other endpoints ----------------------------------------------------------

    async def handle_actions(self, request: web.Request) -> web.Response:
        """``GET /v1/actions?limit=N&state=S``: the audit log, newest first (needs the token)."""
        auth = request.headers.get("Authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return web.json_response(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return web.json_response(
                {"error": "limit: expected an integer from 1 to 1000"}, status=400
            )
        state = request.query.get("state")
        if state not in (None, "pending", "running", "done", "cancelled"):
            return web.json_response(
                {"error": "state: expected pending, running, done or cancelled"}, status=400
            )
        try:
            jobs = await asyncio.to_thread(self.store.jobs, limit, state)
        except StoreError as e:
            return web.json_response({"error": str(e)}, status=503)
        return web.json_response({"actions": [j.to_dict() for j in jobs]})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics``."""
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def handle_healthy(self, request: web.Request) -> web.Response:
        """``GET /-/healthy``."""
        return web.json_response({"status": "healthy"})

    async def handle_ready(self, request: web.Request) -> web.Response:
        """``GET /-/ready``: 200 when the store answers and the worker runs; else 503."""
        if self._worker_error is not None:
            return web.json_response(
                {"status": "worker stopped", "error": self._worker_error}, status=503
            )
        try:
            await asyncio.to_thread(self.store.ping)
        except StoreError as e:
            return web.json_response({"status": "store unavailable", "error": str(e)}, status=503)
        return web.json_response({"status": "ready"})

    def app(self) -> web.Application:
        """The aiohttp application (routes above)."""
        app = web.Application(client_max_size=self.spec.mitigator.max_body_bytes + 1024)
        app.router.add_post("/v1/alerts", self.handle_alerts)
        app.router.add_get("/v1/actions", self.handle_actions)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/-/healthy", self.handle_healthy)
        app.router.add_get("/-/ready", self.handle_ready)

        async def start_worker(app: web.Application) -> Any:
            task = asyncio.create_task(self.worker())
            task.add_done_callback(self._worker_ended)
            yield
            self._stopping = True
            self._wake.set()
            await asyncio.wait([task], timeout=10)

        app.cleanup_ctx.append(start_worker)
        return app


def _due(starts_at: float, min_firing: float, now: float) -> float:
    """When an apply may run: ``startsAt + min_firing_seconds``, never before ``now`` and
    never later than ``now + min_firing_seconds`` (a ``startsAt`` in the future is clock
    skew between Prometheus and this host; trusting it would hold the job for as long)."""
    return min(max(now, starts_at + min_firing), now + min_firing)


def run_mitigator(spec: MonitorSpec, listen: tuple[str, int]) -> None:
    """Serve until SIGTERM/SIGINT.

    Raises:
        MonitorError: bad policies, no token, store unavailable; OSError: listen address taken.
    """
    service = Mitigator(spec)
    log.info(
        "mitigator on %s:%d, store %s, %d policies",
        listen[0],
        listen[1],
        service.store.url,
        len(service.policies),
    )
    try:
        web.run_app(
            service.app(),
            host=listen[0],
            port=listen[1],
            print=None,
            access_log=None,
            handle_signals=True,
        )
    finally:
        service.store.close()


__all__ = ["Mitigator", "MonitorError", "match", "read_token", "run_mitigator"]
