"""``monitor gpu-exporter``."""

from __future__ import annotations

import click


@click.command("gpu-exporter")
def gpu_exporter() -> None:
    """Export this node's GPU health (NVML) for Prometheus."""
    raise click.ClickException("not built yet")
