"""The Alertmanager configuration generated from the spec (a pure function of it).

Routing tree (Alertmanager 0.25 syntax, ``matchers`` lists)::

    route: receiver "null", group_by [alertname, model]
    ├── {mitigation=~".+"}  continue: true  -> mitigator   (when alerting.mitigator_url)
    ├── {severity="page"}                   -> pager       ("null" when alerting.pager is unset)
    └── {severity="ticket"}                 -> ticket      ("null" when alerting.ticket is unset)
    anything else (severity="info")          -> "null"      (visible in Alertmanager only)

The mitigator route comes first and continues, so a page that carries a
``mitigation`` label (set by the generated rules from the spec's mitigation
policies) reaches the mitigator *and* the pager.

Inhibitions: a sidecar that is down, or a model whose telemetry is missing,
silences the other alerts of that model (alerts of its own severity or lower:
a ticket never silences a page); a page silences the ticket of the same alert,
model and SLO.

Only :mod:`monitor.generate` writes the result to disk.
"""

from __future__ import annotations

from typing import Any, Final

from monitor import conventions as c
from monitor.spec import MonitorSpec, ReceiverSpec

__all__ = [
    "RECEIVER_MITIGATOR",
    "RECEIVER_NULL",
    "RECEIVER_PAGER",
    "RECEIVER_TICKET",
    "build_alertmanager_config",
    "format_duration",
]

RECEIVER_NULL: Final = "null"
"""Receiver without integrations: alerts are shown in Alertmanager, sent nowhere."""
RECEIVER_PAGER: Final = "pager"
RECEIVER_TICKET: Final = "ticket"
RECEIVER_MITIGATOR: Final = "mitigator"

# Names shared with the generated rules (monitor/conventions.py).
_LABEL_ALERTNAME: Final = c.LABEL_ALERTNAME
_LABEL_MODEL: Final = c.LABEL_MODEL
_LABEL_SEVERITY: Final = c.LABEL_SEVERITY
_LABEL_SLO: Final = c.LABEL_SLO
_LABEL_MITIGATION: Final = c.LABEL_MITIGATION
_TARGET_DOWN_ALERTS: Final = (
    c.ALERT_SIDECAR_DOWN,
    c.ALERT_SIDECAR_ABSENT,
    c.ALERT_MODEL_TELEMETRY_MISSING,
)
"""Alerts that say a model's telemetry is gone: the cause of its other alerts."""

# Timing, in seconds before ``time_scale`` (Alertmanager's own defaults are
# group_wait 30s, group_interval 5m, repeat_interval 4h: docs/configuration.md).
_GROUP_WAIT_S: Final = 30.0
"""Wait for the rest of a group before its first notification (Alertmanager's
default): alerts of one name and model that start together (several replicas' or
SLOs') arrive as one notification instead of several."""
_GROUP_INTERVAL_S: Final = 300.0
"""A group that gains or loses alerts notifies again after this (the default): new
bad news within 5 m, but no storm while a model's alerts flap one by one."""
_PAGE_REPEAT_S: Final = 4 * 3600.0
"""An unacknowledged page is re-sent every 4 h (the default): long enough not to
nag an engineer who is working it, short enough to survive a lost notification."""
_TICKET_REPEAT_S: Final = 24 * 3600.0
"""Tickets are worked in business hours: one reminder a day is enough."""
_MITIGATOR_GROUP_WAIT_S: Final = 5.0
"""The mitigator acts per alert and must act fast (a fast-burn page spends 2 % of
the budget in 1 h), so it waits only long enough to batch alerts of one evaluation."""
_MITIGATOR_GROUP_INTERVAL_S: Final = 60.0
"""New and *resolved* alerts reach the mitigator within a minute, so reverts
(``revert_on_resolve``) are not held back by the 5 m default."""
_MITIGATOR_REPEAT_S: Final = 3600.0
"""Re-sent hourly while firing: the mitigator deduplicates and enforces cooldowns, and
a re-send recovers from a mitigator restart that lost its state."""


def format_duration(seconds: float) -> str:
    """Render seconds as a Prometheus/Alertmanager duration: ``4h``, ``1m30s``, ``100ms``.

    Rounded to whole milliseconds, at least ``1ms`` (a zero duration is refused by
    neither tool, but never meant here).
    """
    ms = max(1, round(seconds * 1000))
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        n, ms = divmod(ms, size)
        if n:
            parts.append(f"{n}{unit}")
    if ms:
        parts.append(f"{ms}ms")
    return "".join(parts)


def _eq(label: str, value: str) -> str:
    return f'{label}="{value}"'


def _alternation(values: tuple[str, ...]) -> str:
    return "|".join(values)


def _receiver(name: str, spec: ReceiverSpec) -> dict[str, Any]:
    """One receiver with every integration the spec names; all send resolutions too,
    so a pager or ticket closes when the alert does."""
    out: dict[str, Any] = {"name": name}
    if spec.webhook_url:
        out["webhook_configs"] = [{"url": spec.webhook_url, "send_resolved": True}]
    if spec.pagerduty_routing_key_file:
        out["pagerduty_configs"] = [
            {"routing_key_file": spec.pagerduty_routing_key_file, "send_resolved": True}
        ]
    if spec.slack_api_url_file:
        slack: dict[str, Any] = {"api_url_file": spec.slack_api_url_file, "send_resolved": True}
        if spec.slack_channel:
            slack["channel"] = spec.slack_channel
        out["slack_configs"] = [slack]
    return out


def _mitigator_receiver(url: str, credentials_file: str | None) -> dict[str, Any]:
    hook: dict[str, Any] = {
        "url": url,
        # The mitigator undoes an action (revert_on_resolve) when the alert resolves.
        "send_resolved": True,
    }
    if credentials_file:
        hook["http_config"] = {
            "authorization": {"type": "Bearer", "credentials_file": credentials_file}
        }
    return {"name": RECEIVER_MITIGATOR, "webhook_configs": [hook]}


def build_alertmanager_config(spec: MonitorSpec, *, time_scale: float = 1.0) -> dict[str, Any]:
    """Return the Alertmanager configuration for ``spec`` as a dict (keys in file order).

    Args:
        spec: the validated spec; ``alerting`` gives the receivers.
        time_scale: divide every wait and repeat interval by this (tests run the
            whole chain in seconds with the rules' ``time_scale``); 1 in production.

    File paths are written as the spec gives them. Alertmanager resolves a relative
    ``http_config`` path (the mitigator's ``credentials_file``) against the directory
    of the configuration file, but reads ``routing_key_file`` (PagerDuty) and
    ``api_url_file`` (Slack) as given, relative to its working directory: give those
    two as absolute paths.
    """
    if time_scale <= 0:
        raise ValueError("time_scale must be > 0")

    def dur(seconds: float) -> str:
        return format_duration(seconds / time_scale)

    alerting = spec.alerting
    receivers: list[dict[str, Any]] = [{"name": RECEIVER_NULL}]
    routes: list[dict[str, Any]] = []

    if alerting.mitigator_url:
        receivers.append(
            _mitigator_receiver(alerting.mitigator_url, alerting.mitigator_credentials_file)
        )
        routes.append(
            {
                "receiver": RECEIVER_MITIGATOR,
                "matchers": [f'{_LABEL_MITIGATION}=~".+"'],
                "group_wait": dur(_MITIGATOR_GROUP_WAIT_S),
                "group_interval": dur(_MITIGATOR_GROUP_INTERVAL_S),
                "repeat_interval": dur(_MITIGATOR_REPEAT_S),
                # ...and on to the pager or ticket route below.
                "continue": True,
            }
        )

    for name, severity, receiver, repeat_s in (
        (RECEIVER_PAGER, c.SEVERITY_PAGE, alerting.pager, _PAGE_REPEAT_S),
        (RECEIVER_TICKET, c.SEVERITY_TICKET, alerting.ticket, _TICKET_REPEAT_S),
    ):
        if receiver is not None:
            receivers.append(_receiver(name, receiver))
        routes.append(
            {
                # An unset receiver still gets its route, to "null": `amtool config
                # routes` then shows where these alerts go (nowhere), not a gap.
                "receiver": name if receiver is not None else RECEIVER_NULL,
                "matchers": [_eq(_LABEL_SEVERITY, severity)],
                "repeat_interval": dur(repeat_s),
            }
        )

    down = f'{_LABEL_ALERTNAME}=~"{_alternation(_TARGET_DOWN_ALERTS)}"'
    not_down = f'{_LABEL_ALERTNAME}!~"{_alternation(_TARGET_DOWN_ALERTS)}"'
    has_model = f'{_LABEL_MODEL}=~".+"'
    inhibit_rules: list[dict[str, Any]] = [
        {
            # A model whose sidecar is down or whose telemetry is missing has that as the
            # one cause of its other alerts (stale coverage, canary failures, ...). The
            # source must carry a model: a model-less one (SidecarAbsent) would match every
            # model-less target (GPU alerts) through the "equal" of two empty labels. The
            # target-down alerts never silence one another, so the cause stays visible.
            "source_matchers": [down, has_model, _eq(_LABEL_SEVERITY, c.SEVERITY_PAGE)],
            "target_matchers": [not_down],
            "equal": [_LABEL_MODEL],
        },
        {
            # ...but a ticket never silences a page: one replica's sidecar down (a ticket)
            # must not hide the availability page the other replicas raise.
            "source_matchers": [down, has_model, _eq(_LABEL_SEVERITY, c.SEVERITY_TICKET)],
            "target_matchers": [
                not_down,
                f'{_LABEL_SEVERITY}=~"{_alternation((c.SEVERITY_TICKET, c.SEVERITY_INFO))}"',
            ],
            "equal": [_LABEL_MODEL],
        },
        {
            # A page and a ticket of the same alert, model and SLO are one problem; the
            # page is the one worked. (slo keeps one SLO's page from silencing another
            # SLO's ticket; labels absent on both sides count as equal.)
            "source_matchers": [_eq(_LABEL_SEVERITY, c.SEVERITY_PAGE)],
            "target_matchers": [_eq(_LABEL_SEVERITY, c.SEVERITY_TICKET)],
            "equal": [_LABEL_ALERTNAME, _LABEL_MODEL, _LABEL_SLO],
        },
    ]

    return {
        "route": {
            "receiver": RECEIVER_NULL,
            "group_by": [_LABEL_ALERTNAME, _LABEL_MODEL],
            "group_wait": dur(_GROUP_WAIT_S),
            "group_interval": dur(_GROUP_INTERVAL_S),
            "repeat_interval": dur(_PAGE_REPEAT_S),
            "routes": routes,
        },
        "inhibit_rules": inhibit_rules,
        "receivers": receivers,
    }
