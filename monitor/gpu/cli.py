"""``monitor gpu-exporter``."""

from __future__ import annotations

import signal
import sys
import threading

import click

from monitor import conventions as c


@click.command("gpu-exporter")
@click.option(
    "--listen",
    default=c.DEFAULT_GPU_EXPORTER_LISTEN,
    show_default=True,
    help="HOST:PORT of /metrics.",
)
@click.option(
    "--timeout",
    "timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=c.DEFAULT_NVML_TIMEOUT_SECONDS,
    show_default=True,
    help="Seconds a scrape waits for NVML; a GPU not read in time exports mlmon_gpu_up 0.",
)
def gpu_exporter(listen: str, timeout: float) -> None:
    """Export this node's GPU health (NVML) for Prometheus.

    Runs until SIGTERM or SIGINT. Without an NVIDIA driver it still serves, with
    mlmon_gpu_up{reason="no_driver"} 0.
    """
    from monitor.errors import MonitorError
    from monitor.gpu.exporter import GpuExporter
    from monitor.spec import parse_listen

    try:
        exporter = GpuExporter(parse_listen(listen), timeout=timeout)
    except MonitorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    exporter.start()
    click.echo(f"gpu-exporter: serving /metrics on {listen.rpartition(':')[0]}:{exporter.port}")
    try:
        # With a timeout: a signal delivered to another thread does not interrupt a
        # blocking wait of the main thread, so the handler would run only much later.
        while not stop.wait(0.2):
            pass
    finally:
        exporter.stop()
