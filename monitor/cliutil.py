"""What every ``monitor`` command does with an error: one line per problem on standard
error and exit status 1 (only the CLI turns errors into exit codes)."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from monitor.errors import MonitorError, SpecError

__all__ = ["fail"]


def fail(exc: MonitorError) -> NoReturn:
    """Print ``exc`` (a :class:`SpecError` one problem per line, each after its file) and
    exit 1."""
    if isinstance(exc, SpecError):
        for problem in exc.problems:
            click.echo(f"{exc.source}: {problem}" if exc.source else problem, err=True)
    else:
        click.echo(f"error: {exc}", err=True)
    sys.exit(1)
