"""The sidecar's control API: routing to a fallback, load shedding, quarantine.

Served on the metrics port (``GET`` and ``PUT /v1/control``) when the model has a
``control`` section; ``monitor mitigator`` calls it. The state is three fields:

* ``fallback_weight`` (0-1): share of new requests sent to ``fallback_upstream``;
* ``concurrency_limit`` (int >= 1, or null): requests in flight beyond it are shed
  with ``503`` and ``Retry-After: 1``;
* ``quarantined`` (bool): ``/-/ready`` answers ``503`` (the replica leaves its
  Kubernetes Service) while requests that still arrive are served.

Every change is logged at WARNING with its old and new values, exported as metrics
(:meth:`SidecarMetrics.set_control`), applied to the proxy
(:meth:`ProxyServer.set_control`) and written atomically to the state file, which
is read back at start-up (a restart keeps a quarantine or a traffic shift).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from monitor.errors import MonitorError
from monitor.sidecar.metrics import SidecarMetrics
from monitor.sidecar.proxy import ProxyServer
from monitor.spec import ModelSpec

__all__ = [
    "FIELDS",
    "MAX_BODY_BYTES",
    "MAX_CONCURRENCY_LIMIT",
    "ControlPlane",
    "ControlState",
    "RequestError",
    "disabled",
    "method_not_allowed",
    "parse_changes",
]

log = logging.getLogger("monitor.sidecar")

FIELDS = ("fallback_weight", "concurrency_limit", "quarantined")
"""The fields a ``PUT /v1/control`` may set (any subset)."""
MAX_BODY_BYTES = 64 * 1024
"""Larger ``PUT`` bodies are answered 413."""
MAX_CONCURRENCY_LIMIT = 1_000_000
"""Largest ``concurrency_limit`` accepted."""
_STATE_FORMAT = 1


@dataclass(frozen=True)
class ControlState:
    """The control state of one sidecar (defaults: no shift, no limit, not quarantined)."""

    fallback_weight: float = 0.0
    concurrency_limit: int | None = None
    quarantined: bool = False
    updated_at: float | None = None
    """Unix seconds of the last change made through the API (None: never changed)."""


class RequestError(Exception):
    """A control request that cannot be applied: ``status`` (400, 409, 413) and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_changes(data: Any, has_fallback: bool) -> dict[str, Any]:
    """Validate the JSON object of a ``PUT``: the fields it sets, with their new values.

    Raises:
        RequestError: 400 for a non-object, an unknown field or a bad value (the
            reason names the field); 409 for ``fallback_weight`` > 0 when the spec
            names no ``fallback_upstream``.
    """
    if not isinstance(data, dict):
        raise RequestError(400, f"body: must be a JSON object with any of {', '.join(FIELDS)}")
    unknown = sorted(k for k in data if k not in FIELDS)
    if unknown:
        raise RequestError(400, f"{', '.join(unknown)}: unknown field (known: {', '.join(FIELDS)})")
    out: dict[str, Any] = {}
    if "fallback_weight" in data:
        w = data["fallback_weight"]
        if type(w) not in (int, float) or not math.isfinite(w) or not 0 <= w <= 1:
            raise RequestError(400, f"fallback_weight: must be a number from 0 to 1, got {w!r}")
        out["fallback_weight"] = float(w)
    if "concurrency_limit" in data:
        n = data["concurrency_limit"]
        if n is not None and (type(n) is not int or not 1 <= n <= MAX_CONCURRENCY_LIMIT):
            raise RequestError(
                400,
                f"concurrency_limit: must be an integer from 1 to {MAX_CONCURRENCY_LIMIT}, "
                f"or null for no limit, got {n!r}",
            )
        out["concurrency_limit"] = n
    if "quarantined" in data:
        q = data["quarantined"]
        if type(q) is not bool:
            raise RequestError(400, f"quarantined: must be true or false, got {q!r}")
        out["quarantined"] = q
    if out.get("fallback_weight", 0) > 0 and not has_fallback:  # valid, but not here
        raise RequestError(
            409,
            "fallback_weight: the spec names no fallback_upstream for this model, "
            "so no traffic can be shifted (only 0 is accepted)",
        )
    return out


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"error": reason, "source": "monitor-sidecar"}, status=status, headers=headers
    )


def disabled(model: str) -> web.Response:
    """404 of ``/v1/control`` on a sidecar whose model has no ``control`` section."""
    return _error(
        404,
        f"the control API is disabled: models[].control is not set for model {model!r}",
    )


def method_not_allowed(method: str) -> web.Response:
    """405 of ``/v1/control`` for a method other than GET and PUT."""
    return _error(405, f"method {method} not allowed: use GET or PUT", {"Allow": "GET, PUT"})


def read_token(model: ModelSpec, where: str) -> bytes:
    """The bearer token of ``model.control``, from its file or environment variable.

    Raises:
        MonitorError: neither is configured, the file is unreadable or empty, or the
            variable is unset or empty (one line, naming the spec field).
    """
    ctl = model.control
    assert ctl is not None
    if ctl.token_file is not None:
        try:
            token = ctl.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise MonitorError(
                f"{where}.token_file: cannot read the control API token from "
                f"{ctl.token_file}: {why}"
            ) from None
        if not token:
            raise MonitorError(f"{where}.token_file: {ctl.token_file} is empty")
    elif ctl.token_env is not None:
        token = os.environ.get(ctl.token_env, "").strip()
        if not token:
            raise MonitorError(
                f"{where}.token_env: environment variable {ctl.token_env} is unset or empty"
            )
    else:
        raise MonitorError(
            f"{where}: the control API needs a bearer token: set token_file or token_env"
        )
    return token.encode("utf-8")


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace`` (all or nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    with suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _describe(state: ControlState) -> str:
    limit = state.concurrency_limit
    return (
        f"fallback_weight={state.fallback_weight:g}, "
        f"concurrency_limit={'none' if limit is None else limit}, "
        f"quarantined={str(state.quarantined).lower()}"
    )


class ControlPlane:
    """Control state of one sidecar, its HTTP handlers and its state file.

    Args:
        model: the model's spec (``control`` must be set).
        metrics: where the state is exported.
        where: the spec path of ``model.control`` for error messages
            (``models[0].control``).

    Raises:
        MonitorError: no token can be read (see :func:`read_token`).
    """

    def __init__(self, model: ModelSpec, metrics: SidecarMetrics, where: str) -> None:
        ctl = model.control
        assert ctl is not None
        self.model = model
        self.metrics = metrics
        self._token = read_token(model, where)
        self.state_file = ctl.state_file or Path(f"./sidecar-{model.name}.control.json")
        self.has_fallback = model.fallback_upstream is not None
        self.proxy: ProxyServer | None = None
        self.persisted = True
        """Whether the state file holds the current state (False after a failed write)."""
        self._lock = asyncio.Lock()
        self.state = self._load()
        self.metrics.set_control(
            self.state.fallback_weight, self.state.concurrency_limit, self.state.quarantined
        )

    @property
    def quarantined(self) -> bool:
        return self.state.quarantined

    def attach(self, proxy: ProxyServer) -> None:
        """Apply the state to the proxy now and on every change."""
        self.proxy = proxy
        proxy.set_control(self.state.fallback_weight, self.state.concurrency_limit)

    # -- state file --------------------------------------------------------------
    def _load(self) -> ControlState:
        """The state saved in the state file; defaults when it is missing or corrupt."""
        path = self.state_file
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            log.info("control state file %s does not exist yet: default control state", path)
            return ControlState()
        except OSError as exc:
            log.warning(
                "control state file %s is unreadable (%s): starting with the default state",
                path,
                exc.strerror or exc,
            )
            return ControlState()
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict):
                raise RequestError(400, "not a JSON object")
            if data.get("model") != self.model.name:
                raise RequestError(400, f"written for model {data.get('model')!r}")
            updated_at = data.get("updated_at")
            if updated_at is not None and (
                type(updated_at) not in (int, float) or not math.isfinite(updated_at)
            ):
                raise RequestError(400, f"updated_at: not a number: {updated_at!r}")
            fields = {k: data[k] for k in FIELDS if k in data}
            try:
                changes = parse_changes(fields, self.has_fallback)
            except RequestError as exc:
                if exc.status != 409:
                    raise
                log.warning(
                    "control state file %s shifts traffic to a fallback, but the spec names "
                    "no fallback_upstream now: fallback_weight reset to 0",
                    path,
                )
                changes = parse_changes({**fields, "fallback_weight": 0}, self.has_fallback)
        except (orjson.JSONDecodeError, RequestError) as exc:
            log.warning(
                "control state file %s is corrupt (%s): starting with the default state",
                path,
                exc,
            )
            return ControlState()
        state = replace(ControlState(updated_at=updated_at), **changes)
        if state != ControlState(updated_at=state.updated_at):
            log.warning("control state restored from %s: %s", path, _describe(state))
        return state

    def _serialize(self, state: ControlState) -> bytes:
        return orjson.dumps(
            {"format": _STATE_FORMAT, **self.snapshot(state)}, option=orjson.OPT_INDENT_2
        )

    def snapshot(self, state: ControlState | None = None) -> dict[str, Any]:
        """The body of ``GET /v1/control``."""
        s = self.state if state is None else state
        return {
            "model": self.model.name,
            "fallback_weight": s.fallback_weight,
            "concurrency_limit": s.concurrency_limit,
            "quarantined": s.quarantined,
            "fallback_upstream": self.model.fallback_upstream,
            "updated_at": s.updated_at,
        }

    # -- HTTP ----------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> web.Response | None:
        """None when the request carries the token, else the 401 to answer."""
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return _error(
                401,
                "missing bearer token: send Authorization: Bearer <token>",
                {"WWW-Authenticate": 'Bearer realm="monitor-sidecar"'},
            )
        given = credentials.strip().encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, self._token):
            return _error(
                401,
                "invalid bearer token",
                {"WWW-Authenticate": 'Bearer realm="monitor-sidecar", error="invalid_token"'},
            )
        return None

    async def handle_get(self, request: web.Request) -> web.Response:
        """``GET /v1/control``: the current state."""
        denied = self._authorized(request)
        if denied is not None:
            return denied
        return web.json_response(self.snapshot())

    async def handle_put(self, request: web.Request) -> web.Response:
        """``PUT /v1/control``: change any of the fields; answers the new state."""
        denied = self._authorized(request)
        if denied is not None:
            return denied
        try:
            body = await self._read_body(request)
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise RequestError(400, f"body: malformed JSON: {exc}") from None
            changes = parse_changes(data, self.has_fallback)
        except RequestError as exc:
            return _error(exc.status, exc.reason)
        async with self._lock:  # one change at a time: the file always holds the last one
            old = self.state
            changed = {k: v for k, v in changes.items() if getattr(old, k) != v}
            if not changed:
                return web.json_response({**self.snapshot(), "persisted": self.persisted})
            new = replace(old, **changed, updated_at=round(time.time(), 3))
            persisted = True
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, _write_atomically, self.state_file, self._serialize(new)
                )
            except OSError as exc:
                # The change still applies (a mitigation matters more now than after a
                # restart); the answer says it was not saved.
                persisted = False
                log.error(
                    "control state not saved to %s: %s (the change applies until a restart)",
                    self.state_file,
                    exc.strerror or exc,
                )
            self._apply(new)
            self.persisted = persisted
            log.warning(
                "control of model %s changed by %s: %s",
                self.model.name,
                request.remote or "?",
                ", ".join(
                    f"{k} {_show(getattr(old, k))} -> {_show(getattr(new, k))}" for k in changed
                ),
            )
            return web.json_response({**self.snapshot(), "persisted": persisted})

    def _apply(self, state: ControlState) -> None:
        if self.proxy is not None:
            self.proxy.set_control(state.fallback_weight, state.concurrency_limit)
        self.metrics.set_control(state.fallback_weight, state.concurrency_limit, state.quarantined)
        self.state = state

    @staticmethod
    async def _read_body(request: web.Request) -> bytes:
        """The request body, at most ``MAX_BODY_BYTES``.

        Raises:
            RequestError: 413 when it is larger (declared or sent).
        """
        too_large = RequestError(413, f"body: larger than {MAX_BODY_BYTES} bytes")
        declared = request.content_length
        if declared is not None and declared > MAX_BODY_BYTES:
            raise too_large
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                chunk = await request.content.read(MAX_BODY_BYTES + 1 - size)
            except web.RequestPayloadError as e:  # e.g. Content-Encoding that lies
                why = f"body: cannot be read as sent: {e.__cause__ or e}"
                raise RequestError(400, why) from None
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise too_large
        return b"".join(parts)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
