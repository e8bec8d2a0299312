"""``monitor canary ...`` commands."""

from __future__ import annotations

from pathlib import Path

import click

from monitor import conventions as c
from monitor.cliutil import fail


@click.group("canary")
def canary() -> None:
    """Golden-set canaries: record expected outputs, then check every replica against them."""


@canary.command("record")
@click.option(
    "--config", "config", required=True, type=click.Path(path_type=Path), help="monitor.yaml"
)
@click.option("--model", "model", required=True, help="Model (in the spec) to record.")
@click.option(
    "--inputs",
    required=True,
    type=click.Path(path_type=Path),
    help="JSON list of request bodies in the model's protocol.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Golden file to write.")
@click.option(
    "--from",
    "source",
    default=None,
    help="Base URL of the approved server (default the model's upstream).",
)
@click.option("--timeout", default=30.0, show_default=True, type=float, help="Seconds per request.")
def record(
    config: Path, model: str, inputs: Path, out: Path, source: str | None, timeout: float
) -> None:
    """Send the inputs to the approved model version and store them with its outputs."""
    from monitor.canary.golden import record as record_golden
    from monitor.errors import MonitorError
    from monitor.spec import load_spec

    try:
        m = load_spec(config).model(model)
        golden = record_golden(m, inputs, out, source=source, timeout=timeout)
    except MonitorError as exc:
        fail(exc)
    click.echo(
        f"wrote {out}: {len(golden.cases)} case(s) of model {m.name} "
        f"(version {golden.version or 'unknown'}) from {golden.recorded_from}"
    )


@canary.command("run")
@click.option(
    "--config", "config", required=True, type=click.Path(path_type=Path), help="monitor.yaml"
)
@click.option(
    "--metrics-listen",
    default=c.DEFAULT_CANARY_LISTEN,
    show_default=True,
    help="HOST:PORT of /metrics.",
)
def run(config: Path, metrics_listen: str) -> None:
    """Check every replica of every model with a canary section, until SIGTERM/SIGINT."""
    import asyncio
    import logging
    import signal

    from prometheus_client import CollectorRegistry
    from prometheus_client.process_collector import ProcessCollector

    from monitor.canary.runner import CanaryMetrics, targets
    from monitor.canary.runner import run as run_canaries
    from monitor.errors import MonitorError
    from monitor.metrics_http import MetricsServer
    from monitor.spec import load_spec, parse_listen

    try:
        found = targets(load_spec(config))
        host, port = parse_listen(metrics_listen)
    except MonitorError as exc:
        fail(exc)
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    metrics = CanaryMetrics(registry)
    try:
        server = MetricsServer((host, port), registry, what="--metrics-listen")
    except MonitorError as exc:
        fail(exc)
    server.start()
    logging.getLogger("monitor.canary").info(
        "canary: %s; /metrics on %s:%d",
        ", ".join(f"{t.model.name} x {len(t.replicas)} replica(s)" for t in found),
        host,
        server.port,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_canaries(found, metrics, stop)

    try:
        asyncio.run(main())
    finally:
        server.stop()
