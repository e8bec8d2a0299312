"""What a mitigation does: ``sidecar``, ``http`` and ``command`` actions.

Each action is a dict from the spec (``mitigations[].action`` / ``revert``):

- ``{type: sidecar, op: route, fallback_weight: 1.0}`` / ``op: shed, concurrency_limit: N``
  / ``op: quarantine`` / ``op: restore``: a ``PUT /v1/control`` on the sidecar(s) of
  the alert's model (docs/sidecar.md, control API). ``urls: [...]`` names the
  sidecars' admin addresses; default the alert's ``instance`` label, else every
  sidecar of the model that ``mitigator.prometheus_url`` scrapes. The token is
  the model's ``control`` token. Without ``revert``, a sidecar action's revert is
  its inverse (weight 0, no limit, not quarantined).
- ``{type: http, method: POST, url: ..., headers: {...}, body: '...'}``: one
  request; ``{{ labels.NAME }}``, ``{{ annotations.NAME }}``, ``{{ fingerprint }}``,
  ``{{ status }}`` and ``{{ startsAt }}`` are substituted in ``url`` and ``body``
  (values URL-quoted in the URL). Success = a 2xx answer.
- ``{type: command, argv: [prog, arg, ...]}``: runs the program (no shell) with
  the alert JSON on stdin. Success = exit status 0.

Every attempt has a timeout. :class:`Executor` retries failed attempts with
exponential backoff and full jitter and keeps a circuit breaker per target
(host:port or program): after 5 consecutive failures the target is skipped for
60 s, so a dead endpoint does not hold every job for its full retry budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp

from monitor.conventions import MODEL_INFO
from monitor.mitigator.policy import CONTROL, TEMPLATE, ActionError

log = logging.getLogger("monitor.mitigator")

BREAKER_FAILURES = 5
BREAKER_OPEN_SECONDS = 60.0


def render(template: str, alert: Mapping[str, Any], *, url: bool = False) -> str:
    """Substitute ``{{ labels.x }}`` etc. from the alert; unknown names become ""."""

    def sub(m: re.Match[str]) -> str:
        if m.group(3):
            value = str(alert.get(m.group(3), ""))
        else:
            value = str((alert.get(m.group(1)) or {}).get(m.group(2), ""))
        return quote(value, safe="") if url else value

    return TEMPLATE.sub(sub, template)


@dataclass
class _Breaker:
    failures: int = 0
    open_until: float = 0.0


@dataclass
class Executor:
    """Runs actions with timeouts, retries and per-target circuit breakers.

    Args:
        timeout: seconds per attempt.
        retries: extra attempts after a retryable failure.
        tokens: model name -> sidecar control token.
        backoff_base: first backoff in seconds (doubles per attempt, full jitter, max 30 s).
        prometheus_url: where to find a model's sidecars when a sidecar action has no
            ``urls`` and the alert no ``instance`` label (an SLO alert is summed over
            replicas): the ``instance`` of every ``mlmon_model_info{model, job}`` series,
            the sidecars' admin (metrics) addresses that Prometheus scrapes.
        sidecar_job: the sidecars' scrape job (``alerting.sidecar_job``).
    """

    timeout: float = 30.0
    retries: int = 3
    tokens: Mapping[str, str] = field(default_factory=dict)
    backoff_base: float = 0.5
    prometheus_url: str | None = None
    sidecar_job: str = "model-sidecar"
    clock: Callable[[], float] = time.monotonic
    _breakers: dict[str, _Breaker] = field(default_factory=dict)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (full jitter)."""
        return random.uniform(0, min(30.0, self.backoff_base * 2 ** max(0, attempt - 1)))

    async def run(self, action: Mapping[str, Any], alert: Mapping[str, Any]) -> str:
        """One attempt of ``action`` for ``alert``; returns a short success detail.

        Raises:
            ActionError: the attempt failed (``retryable`` says whether to retry).
        """
        t = action["type"]
        try:
            if t == "sidecar":
                return await self._sidecar(action, alert)
            if t == "http":
                return await self._http(action, alert)
            return await self._command(action, alert)
        except ActionError:
            raise
        except Exception as e:  # a library refusing what we built: a failure, not a crash
            log.exception("%s action: unexpected error", t)
            raise ActionError(f"{t} action: {type(e).__name__}: {e}", retryable=False) from None

    def _guard(self, target: str) -> None:
        b = self._breakers.get(target)
        if b is not None and b.open_until > self.clock():
            raise ActionError(f"circuit open for {target} after {b.failures} failures; not tried")

    def _record(self, target: str, ok: bool) -> None:
        b = self._breakers.setdefault(target, _Breaker())
        if ok:
            b.failures, b.open_until = 0, 0.0
            return
        b.failures += 1
        if b.failures >= BREAKER_FAILURES:
            b.open_until = self.clock() + BREAKER_OPEN_SECONDS

    async def _request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
    ) -> tuple[int, str]:
        target = urlsplit(url).netloc
        self._guard(target)
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
                s.request(method, url, headers=dict(headers), data=body) as resp,
            ):
                text = (await resp.content.read(2048)).decode("utf-8", "replace")
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            self._record(target, False)
            raise ActionError(f"{method} {url}: {type(e).__name__}: {e}") from None
        self._record(target, 200 <= status < 300 or 400 <= status < 500)
        if not 200 <= status < 300:
            # a 4xx will not fix itself (bad token, bad body); a 5xx may
            raise ActionError(
                f"{method} {url}: HTTP {status}: {text[:200]}",
                retryable=status >= 500 or status == 429,
            )
        return status, text

    async def _sidecar(self, action: Mapping[str, Any], alert: Mapping[str, Any]) -> str:
        labels = alert.get("labels") or {}
        model = action.get("model") or labels.get("model")
        urls = action.get("urls") or (
            [f"http://{labels['instance']}"] if labels.get("instance") else []
        )
        if not urls and self.prometheus_url and model:
            urls = await self._discover(str(model))
        if not urls:
            raise ActionError(
                "sidecar action: no urls in the action, no instance label on the alert"
                + ("" if self.prometheus_url else " and no mitigator.prometheus_url to ask"),
                retryable=False,
            )
        token = self.tokens.get(str(model)) if model else None
        if token is None and len(self.tokens) == 1:
            token = next(iter(self.tokens.values()))
        if token is None:
            raise ActionError(
                f"sidecar action: no control token for model {model!r} (models[].control)",
                retryable=False,
            )
        op = action["op"]
        body: dict[str, Any]
        if op == "route":
            body = {"fallback_weight": float(action.get("fallback_weight", 1.0))}
        elif op == "shed":
            body = {"concurrency_limit": int(action["concurrency_limit"])}
        elif op == "quarantine":
            body = {"quarantined": True}
        else:
            body = {"fallback_weight": 0.0, "concurrency_limit": None, "quarantined": False}
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        done = []
        for base in urls:
            url = base.rstrip("/") + "/v1/control"
            await self._request(
                "PUT", url, headers=headers, body=json.dumps(body).encode(), timeout=self.timeout
            )
            done.append(url)
        return f"PUT {json.dumps(body)} to {', '.join(done)}"

    async def _discover(self, model: str) -> list[str]:
        """Admin URLs of the sidecars Prometheus scrapes for ``model`` (sorted).

        Raises:
            ActionError: Prometheus did not answer (retryable), or knows no sidecar of
                ``model`` (retryable: a scrape may be late).
        """
        assert self.prometheus_url is not None
        query = (
            f'group by (instance) ({MODEL_INFO}{{model="{promql_escape(model)}",'
            f'job="{promql_escape(self.sidecar_job)}"}})'
        )
        url = f"{self.prometheus_url.rstrip('/')}/api/v1/query?{urlencode({'query': query})}"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as s,
                s.get(url) as resp,
            ):
                doc = await resp.json(content_type=None)
            result = doc["data"]["result"]
            instances = sorted({str(r["metric"]["instance"]) for r in result})
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError, TypeError) as e:
            raise ActionError(
                f"sidecar action: cannot ask Prometheus for model {model!r}'s sidecars: "
                f"{type(e).__name__}: {e}"
            ) from None
        if not instances:
            raise ActionError(
                f"sidecar action: Prometheus has no {MODEL_INFO} series of model {model!r} "
                f"in job {self.sidecar_job!r}"
            )
        return [f"http://{i}" for i in instances]

    async def _http(self, action: Mapping[str, Any], alert: Mapping[str, Any]) -> str:
        method = str(action.get("method", "POST")).upper()
        url = render(str(action["url"]), alert, url=True)
        body = render(str(action.get("body", "")), alert).encode() if action.get("body") else None
        headers = {str(k): render(str(v), alert) for k, v in (action.get("headers") or {}).items()}
        for name, value in headers.items():
            if CONTROL.search(value):
                # a newline from a template (an alert's annotation): sending it would
                # split the header (injection), and aiohttp refuses it anyway
                raise ActionError(
                    f"http action: header {name!r}: the rendered value has a control "
                    f"character: {value[:80]!r}; not sent",
                    retryable=False,
                )
        timeout = float(action.get("timeout_seconds", self.timeout))
        status, _ = await self._request(method, url, headers=headers, body=body, timeout=timeout)
        return f"{method} {url}: HTTP {status}"

    async def _command(self, action: Mapping[str, Any], alert: Mapping[str, Any]) -> str:
        argv = [str(a) for a in action["argv"]]
        target = argv[0]
        self._guard(target)
        timeout = float(action.get("timeout_seconds", self.timeout))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "MONITOR_ALERT_FINGERPRINT": str(alert.get("fingerprint", ""))},
                start_new_session=True,
            )
        except OSError as e:
            self._record(target, False)
            raise ActionError(
                f"command {argv[0]}: cannot start: {e.strerror}", retryable=False
            ) from None
        try:
            _out, err = await asyncio.wait_for(
                proc.communicate(json.dumps(alert).encode()), timeout
            )
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
            self._record(target, False)
            raise ActionError(
                f"command {argv[0]}: timed out after {timeout:g} s (killed)"
            ) from None
        ok = proc.returncode == 0
        self._record(target, ok)
        if not ok:
            tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise ActionError(f"command {argv[0]}: exit status {proc.returncode}: {tail[0][:200]}")
        return f"command {Path(argv[0]).name}: exit 0"


def promql_escape(value: str) -> str:
    """Escape a PromQL label value (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
