"""Alertmanager's webhook payload (version 4), parsed strictly where it matters.

Shape (``prometheus/alertmanager`` ``notify/webhook/webhook.go``; summary in
``../shared/reference/protocols-and-exposition.md`` section 4.6)::

    {"version": "4", "groupKey": str, "truncatedAlerts": int, "status": "firing"|"resolved",
     "receiver": str, "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
     "externalURL": str,
     "alerts": [{"status": "firing"|"resolved", "labels": {str: str}, "annotations": {},
                 "startsAt": RFC 3339, "endsAt": RFC 3339, "generatorURL": str,
                 "fingerprint": str}, ...]}

Unknown fields are tolerated (``notification_reason`` arrived in 0.34). Every
decision is made per alert from its own ``status``, ``fingerprint`` and
``startsAt`` (case C26); the root ``status`` is "firing if any alert fires" and
is recorded only. A firing alert's ``endsAt`` may be the zero time
``0001-01-01T00:00:00Z`` or a time in the future.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from monitor.errors import MonitorError

STATUSES = ("firing", "resolved")
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


class WebhookError(MonitorError):
    """A webhook body the mitigator cannot act on; ``str()`` is the 400 reason."""


@dataclass(frozen=True)
class Alert:
    """One alert of a notification.

    Attributes:
        status: ``firing`` or ``resolved``.
        labels: label name -> value (``alertname`` always present).
        annotations: annotation name -> value.
        starts_at: ``startsAt`` as sent (the idempotency key uses the text).
        starts_at_ts: ``startsAt`` as unix seconds.
        ends_at_ts: ``endsAt`` as unix seconds; None for the zero time.
        fingerprint: Alertmanager's fingerprint of the label set.
    """

    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    starts_at_ts: float
    ends_at_ts: float | None
    fingerprint: str
    generator_url: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The alert as the webhook sent it (for templates, commands and the audit log)."""
        return {
            "status": self.status,
            "labels": self.labels,
            "annotations": self.annotations,
            "startsAt": self.starts_at,
            "endsAt": None if self.ends_at_ts is None else _iso(self.ends_at_ts),
            "fingerprint": self.fingerprint,
            "generatorURL": self.generator_url,
        }


@dataclass(frozen=True)
class Notification:
    """A parsed webhook delivery.

    Attributes:
        alerts: the alerts, in payload order.
        status: the root status (recorded, never used for decisions).
        group_key: ``groupKey``.
        receiver: ``receiver``.
        truncated: ``truncatedAlerts`` (alerts Alertmanager left out; never read as resolved).
    """

    alerts: list[Alert]
    status: str
    group_key: str
    receiver: str
    truncated: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: Any, where: str) -> float | None:
    """RFC 3339 text -> unix seconds; the zero time (year 1) -> None.

    Raises:
        WebhookError: not a string or not RFC 3339 (the message names ``where``).
    """
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise WebhookError(f"{where}: expected an RFC 3339 time, got {value!r}")
    if value.startswith("0001-01-01"):
        return None
    text = value.replace("z", "Z").replace("Z", "+00:00")
    m = re.match(r"^(.*?)(\.\d+)?([+-]\d{2}:\d{2})$", text)
    assert m is not None
    frac = (m.group(2) or "")[:7]  # Go sends nanoseconds; Python takes microseconds
    try:
        return datetime.fromisoformat(m.group(1) + frac + m.group(3)).timestamp()
    except ValueError as e:
        raise WebhookError(f"{where}: {value!r} is not a valid time: {e}") from None


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise WebhookError(f"{where}: expected an object of strings")
    return {str(k): v for k, v in value.items()}


def _short(value: Any) -> str:
    """``repr(value)`` cut to 40 characters, for messages about huge values."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge integer"
    return text if len(text) <= 40 else text[:37] + "..."


def _lone_surrogate(value: Any, where: str) -> str | None:
    """Path of the first key or string in ``value`` with a lone surrogate, else None."""
    if isinstance(value, str):
        return where if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            if _SURROGATE.search(k):  # name the key, escaped so the message is text
                key = k.encode("utf-8", "backslashreplace").decode("utf-8")
                return f"{where}.{key}" if where else key
            here = f"{where}.{k}" if where else str(k)
            found = _lone_surrogate(v, here)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _lone_surrogate(v, f"{where}[{i}]")
            if found is not None:
                return found
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def parse(body: bytes) -> Notification:
    """Parse and check one webhook body.

    Raises:
        WebhookError: not UTF-8 JSON, not an object, version other than "4", no
            ``alerts`` list, or an alert without a valid status, labels with
            ``alertname``, ``fingerprint`` or ``startsAt``. The message names the
            field (``alerts[1].startsAt: ...``).
    """
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise WebhookError("body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise WebhookError(
            f"body is not JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except RecursionError:
        raise WebhookError("body is nested too deeply") from None
    except ValueError as e:  # e.g. an integer past Python's 4300-digit conversion limit
        raise WebhookError(f"body is not usable JSON: {str(e)[:120]}") from None
    if not isinstance(doc, dict):
        raise WebhookError("body must be a JSON object (Alertmanager webhook version 4)")
    where = _lone_surrogate(doc, "")
    if where is not None:
        # "\ud800" is valid JSON but not Unicode text: it cannot be stored or sent on
        raise WebhookError(f"{where or 'body'}: a string holds a lone UTF-16 surrogate")
    if doc.get("version") != "4":
        raise WebhookError(f'version: expected "4", got {doc.get("version")!r}')
    raw_alerts = doc.get("alerts")
    if not isinstance(raw_alerts, list):
        raise WebhookError("alerts: expected a list")
    truncated = doc.get("truncatedAlerts", 0)
    if isinstance(truncated, bool) or not isinstance(truncated, int) or not 0 <= truncated < 2**63:
        raise WebhookError(
            "truncatedAlerts: expected an integer in [0, 2^63), got " + _short(truncated)
        )
    alerts = []
    for i, a in enumerate(raw_alerts):
        where = f"alerts[{i}]"
        if not isinstance(a, dict):
            raise WebhookError(f"{where}: expected an object")
        status = a.get("status")
        if status not in STATUSES:
            raise WebhookError(f"{where}.status: expected firing or resolved, got {status!r}")
        labels = _str_map(a.get("labels"), f"{where}.labels")
        if "alertname" not in labels:
            raise WebhookError(f"{where}.labels: no alertname")
        fp = a.get("fingerprint")
        if not isinstance(fp, str) or not fp or len(fp) > 128:
            raise WebhookError(
                f"{where}.fingerprint: expected a non-empty string of at most 128 "
                f"characters, got {_short(fp)}"
            )
        starts = a.get("startsAt")
        starts_ts = parse_time(starts, f"{where}.startsAt")
        if starts_ts is None:
            raise WebhookError(f"{where}.startsAt: the zero time is not a start")
        ends_ts = (
            parse_time(a["endsAt"], f"{where}.endsAt") if a.get("endsAt") is not None else None
        )
        alerts.append(
            Alert(
                status=status,
                labels=labels,
                annotations=_str_map(a.get("annotations"), f"{where}.annotations"),
                starts_at=str(starts),
                starts_at_ts=starts_ts,
                ends_at_ts=ends_ts,
                fingerprint=fp,
                generator_url=str(a.get("generatorURL") or ""),
            )
        )
    root = doc.get("status")
    return Notification(
        alerts=alerts,
        status=root if isinstance(root, str) else "",
        group_key=str(doc.get("groupKey") or ""),
        receiver=str(doc.get("receiver") or ""),
        truncated=truncated,
    )
