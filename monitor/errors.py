"""The one exception tree of the project.

::

    MonitorError
    ├── SpecError            a monitor.yaml that cannot be loaded or is invalid
    ├── PayloadError         a request/response body the adapters cannot read
    ├── CaptureError         the capture store cannot be written or read
    ├── DriftError           a drift run cannot start (no baseline, bad data, engine missing)
    ├── CanaryError          a golden set cannot be recorded or loaded (monitor.canary.golden)
    ├── ActionError          one attempt of a mitigation action failed
    │                        (monitor.mitigator.policy; ``retryable`` says whether to retry)
    ├── StoreError           the mitigator's store is unavailable (monitor.mitigator.store)
    ├── QueryError           Prometheus rejected a dashboard query (monitor.dashboards.render)
    └── WebhookError         an Alertmanager payload is malformed (monitor.mitigator.webhook)

Only the CLI turns these into exit codes; services turn bad input into a 4xx
with the reason, and the sidecar never lets a ``PayloadError`` reach the client
(it fails open and counts the error).
"""

from __future__ import annotations


class MonitorError(Exception):
    """Base class of every error this project raises on purpose."""


class SpecError(MonitorError):
    """The spec file is unreadable or invalid.

    ``problems`` holds one ``"field.path: reason"`` line per problem, in the
    order found, so the CLI can print them one per line.
    """

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(self.problems))


class PayloadError(MonitorError):
    """A payload could not be interpreted by a protocol adapter.

    ``reason`` is one of ``conventions.PAYLOAD_REASONS`` (a bounded label value).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class CaptureError(MonitorError):
    """The capture store could not be written or read."""


class DriftError(MonitorError):
    """A drift run could not produce a result.

    Raised for a missing or unreadable baseline or current window, an unknown
    method or engine, or an engine whose library is missing or too old. A single
    bad feature never raises: it gets a ``skipped`` or ``undefined`` status.
    """
