"""``monitor dashboards ...`` commands."""

from __future__ import annotations

import click


@click.group("dashboards")
def dashboards() -> None:
    """Generated Grafana dashboards: render a static preview from a live Prometheus."""
