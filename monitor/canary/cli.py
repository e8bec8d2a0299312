"""``monitor canary ...`` commands."""

from __future__ import annotations

import click


@click.group("canary")
def canary() -> None:
    """Golden-set canaries: record expected outputs, then check every replica against them."""
