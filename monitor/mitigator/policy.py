"""What an action may say: the pure checks of ``mitigations[].action`` and ``revert``.

No I/O and no aiohttp, so ``monitor validate`` and the spec loader check a policy's
actions without the mitigator's dependencies; :mod:`monitor.mitigator.actions` runs them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from monitor.errors import MonitorError

ACTION_TYPES = ("sidecar", "http", "command")
SIDECAR_OPS = ("route", "shed", "quarantine", "restore")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

#: The placeholders an http action's url, headers and body may hold.
TEMPLATE = re.compile(
    r"\{\{\s*(labels|annotations)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}"
    r"|\{\{\s*(fingerprint|status|startsAt)\s*\}\}"
)
#: ASCII control characters but tab: never valid in a header value (RFC 9110 5.5).
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # a header name (RFC 9110 5.6.2)


class ActionError(MonitorError):
    """One attempt failed; ``retryable`` False means retrying cannot help (bad config, 4xx)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def _got(value: Any) -> str:
    return "nothing (the key is missing)" if value is None else repr(value)


def check_action(action: Mapping[str, Any], where: str) -> None:
    """Validate an action dict from the spec.

    Raises:
        ActionError: unknown type or op, a missing or ill-typed parameter (the
            message starts with ``where``, e.g. ``mitigations[0].action``).
    """
    p = f"{where}." if where else ""
    t = action.get("type")
    if t not in ACTION_TYPES:
        raise ActionError(
            f"{p}type: expected one of {', '.join(ACTION_TYPES)}, got {_got(t)}", retryable=False
        )
    allowed: set[str]
    if t == "sidecar":
        op = action.get("op")
        if op not in SIDECAR_OPS:
            raise ActionError(
                f"{p}op: expected one of {', '.join(SIDECAR_OPS)}, got {_got(op)}", retryable=False
            )
        allowed = {"type", "op", "fallback_weight", "concurrency_limit", "urls", "model"}
        if op == "route":
            w = action.get("fallback_weight", 1.0)
            if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w <= 1:
                raise ActionError(
                    f"{p}fallback_weight: expected a number in [0, 1]", retryable=False
                )
        if op == "shed":
            n = action.get("concurrency_limit")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ActionError(
                    f"{p}concurrency_limit: expected an integer >= 1", retryable=False
                )
        urls = action.get("urls")
        if urls is not None and (
            not isinstance(urls, list) or not all(isinstance(u, str) and _url_ok(u) for u in urls)
        ):
            raise ActionError(f"{p}urls: expected a list of http:// URLs", retryable=False)
    elif t == "http":
        allowed = {"type", "method", "url", "headers", "body", "timeout_seconds"}
        url = action.get("url")
        # placeholders stand for text, maybe the host or port: "1" keeps both valid
        if not isinstance(url, str) or not _url_ok(TEMPLATE.sub("1", url)):
            raise ActionError(f"{p}url: expected an http(s) URL", retryable=False)
        bare = TEMPLATE.sub("", url)  # placeholders may have spaces: {{ labels.model }}
        if "{{" not in bare and (CONTROL.search(bare) or any(ch.isspace() for ch in bare)):
            raise ActionError(
                f"{p}url: {url[:80]!r} has whitespace or a control character", retryable=False
            )
        method = action.get("method", "POST")
        if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
            raise ActionError(
                f"{p}method: expected one of {', '.join(HTTP_METHODS)}, got {_got(method)}",
                retryable=False,
            )
        headers = action.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise ActionError(f"{p}headers: expected an object of strings", retryable=False)
        for name, value in headers.items():
            if not isinstance(name, str) or not _TOKEN.match(name):
                raise ActionError(f"{p}headers: {name!r} is not a header name", retryable=False)
            if CONTROL.search(value):
                raise ActionError(
                    f"{p}headers.{name}: the value has a control character (a newline from "
                    "a YAML block scalar?); headers are one line",
                    retryable=False,
                )
        body = action.get("body", "")
        if not isinstance(body, str):
            raise ActionError(f"{p}body: expected a string (a template)", retryable=False)
        for field, text in [("url", url), *((f"headers.{k}", v) for k, v in headers.items()),
                            ("body", body)]:  # fmt: skip
            _check_template(text, f"{p}{field}")
    else:
        allowed = {"type", "argv", "timeout_seconds"}
        argv = action.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ActionError(f"{p}argv: expected a non-empty list of strings", retryable=False)
    if t in ("http", "command") and "timeout_seconds" in action:
        ts = action["timeout_seconds"]
        if (
            isinstance(ts, bool)
            or not isinstance(ts, int | float)
            or not math.isfinite(ts)
            or not 0 < ts <= 86_400
        ):
            raise ActionError(
                f"{p}timeout_seconds: expected seconds in (0, 86400], got {_got(ts)}",
                retryable=False,
            )
    extra = sorted(set(action) - allowed)
    if extra:
        raise ActionError(
            f"{where + ': ' if where else ''}unknown key(s) {', '.join(extra)} for a {t} action",
            retryable=False,
        )


def _url_ok(url: str) -> bool:
    """An http(s) URL with a host and, if given, a port in 0-65535."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _check_template(text: str, where: str) -> None:
    """Every ``{{`` must open a known placeholder (else it would be sent literally)."""
    rest = TEMPLATE.sub("", text)
    if "{{" in rest:  # (a lone "}}" is common in JSON bodies: {"a": {"b": 1}})
        bad = rest[rest.find("{{") :][:40]
        raise ActionError(
            f"{where}: {bad!r} is not a placeholder; use {{{{ labels.NAME }}}}, "
            "{{ annotations.NAME }}, {{ fingerprint }}, {{ status }} or {{ startsAt }}",
            retryable=False,
        )


def inverse(action: Mapping[str, Any]) -> dict[str, Any] | None:
    """The default revert of a sidecar action (None for other types)."""
    if action.get("type") != "sidecar":
        return None
    base = {k: v for k, v in action.items() if k in ("type", "urls", "model")}
    op = action.get("op")
    if op == "route":
        return {**base, "op": "route", "fallback_weight": 0.0}
    if op == "shed":
        return {**base, "op": "restore"}
    if op == "quarantine":
        return {**base, "op": "restore"}
    return None


__all__ = [
    "ACTION_TYPES", "CONTROL", "HTTP_METHODS", "SIDECAR_OPS", "TEMPLATE", "ActionError",
    "check_action", "inverse",
]  # fmt: skip
