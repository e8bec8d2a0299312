"""What every ``monitor`` command does with an error: one line per problem on standard
error and exit status 1 (only the CLI turns errors into exit codes); and the logging
every command sets up."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import click

from monitor.errors import MonitorError, SpecError

__all__ = ["fail", "setup_logging"]


def fail(exc: MonitorError) -> NoReturn:
    """Print ``exc`` (a :class:`SpecError` one problem per line, each after its file) and
    exit 1."""
    if isinstance(exc, SpecError):
        for problem in exc.problems:
            click.echo(f"{exc.source}: {problem}" if exc.source else problem, err=True)
    else:
        click.echo(f"error: {exc}", err=True)
    sys.exit(1)


class _BadHttpIsAWarning(logging.Filter):
    """aiohttp logs an unparseable request (bad Content-Length, bad chunk size, ...), or
    a body it cannot decode, at ERROR with a traceback, though it is the client's fault
    and the client got its 400. This rewrites such a record as one WARNING line with
    the reason.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        from aiohttp.http_exceptions import HttpProcessingError
        from aiohttp.web_protocol import RequestPayloadError

        if isinstance(exc, RequestPayloadError) and isinstance(exc.__cause__, HttpProcessingError):
            # a body that cannot be decoded (Content-Encoding that lies, bad chunk):
            # the handler answered 400; aiohttp logs it again when it drains the body
            exc, said = exc.__cause__, "a request body could not be read"
        elif isinstance(exc, HttpProcessingError):
            try:
                said = record.getMessage()
            except Exception:  # a record that does not format is passed on as it is
                return True
        else:
            return True
        why = " ".join(str(exc.message).split("\n")[0].split()).rstrip(":") or type(exc).__name__
        record.msg, record.args = "%s: answered %s, %s", (said, exc.code, why)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        return True


def setup_logging(level: str) -> None:
    """Log to standard error at ``level`` ("debug", "info", "warning" or "error"):
    ``TIME LEVEL LOGGER: MESSAGE``, one line per event.

    Malformed HTTP from a client, which aiohttp logs at ERROR with a traceback, is
    logged as one WARNING line ("... answered 400, Invalid character in
    Content-Length").
    """
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _BadHttpIsAWarning) for f in server_log.filters):
        server_log.addFilter(_BadHttpIsAWarning())
