"""The ``monitor`` command line. Only this module turns errors into exit codes.

Exit codes: 0 success, 1 invalid input (spec problems are printed one per line
as ``field.path: reason``), 2 usage error (click's own).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from monitor import __version__
from monitor.cliutil import fail, setup_logging
from monitor.conventions import DEFAULT_METRICS_LISTEN, DEFAULT_SIDECAR_LISTEN
from monitor.errors import MonitorError
from monitor.spec import load_spec

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="monitor")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def main(log_level: str) -> None:
    """Observability, drift monitoring and auto-mitigation for ML model serving."""
    setup_logging(log_level)


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
def validate(file: Path) -> None:
    """Validate a monitor.yaml: exit 0 when valid, 1 with one line per problem."""
    try:
        spec = load_spec(file)
    except MonitorError as exc:
        fail(exc)
    n = sum(len(m.features) for m in spec.models)
    click.echo(f"{file}: valid ({len(spec.models)} model(s), {n} feature(s))")


@main.command()
@click.option(
    "--config", "config", required=True, type=click.Path(path_type=Path), help="monitor.yaml"
)
@click.option("--model", "model", required=True, help="Name of the model (in the spec) to front.")
@click.option(
    "--listen", default=DEFAULT_SIDECAR_LISTEN, show_default=True, help="Proxy HOST:PORT."
)
@click.option(
    "--metrics-listen", default=DEFAULT_METRICS_LISTEN, show_default=True, help="Metrics HOST:PORT."
)
def sidecar(config: Path, model: str, listen: str, metrics_listen: str) -> None:
    """Run the sidecar exporter: a transparent proxy to the model server with metrics."""
    # One process, so no multiprocess mode: its per-worker files outlive dead
    # workers and their gauges keep being exported (case C11). prometheus_client
    # reads this variable when first imported, so drop it before that.
    if os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None):
        logging.getLogger("monitor.sidecar").warning(
            "PROMETHEUS_MULTIPROC_DIR ignored: the sidecar is a single process"
        )
    from monitor.sidecar.app import run_sidecar
    from monitor.spec import parse_listen

    try:
        spec = load_spec(config)
        spec.model(model)
        run_sidecar(spec, model, parse_listen(listen), parse_listen(metrics_listen))
    except MonitorError as exc:
        fail(exc)
    except OSError as exc:  # e.g. address in use
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@main.command()
@click.option(
    "--config", "config", required=True, type=click.Path(path_type=Path), help="monitor.yaml"
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Output directory; files go under DIR/alerts/ and DIR/dashboards/.",
)
@click.option(
    "--check",
    "check",
    is_flag=True,
    help="Write nothing; exit 1 with a diff when the files under DIR are not up to date.",
)
def generate(config: Path, out: Path, check: bool) -> None:
    """Generate the Prometheus rules, their promtool tests, the Alertmanager config and the
    Grafana dashboards."""
    from monitor import generate as gen

    try:
        if not check:
            written = gen.generate(config, out)
            for rel in written.written:
                click.echo(f"wrote {out / rel}")
            for rel in written.removed:
                click.echo(f"removed {out / rel} (no longer generated)")
            if not (written.written or written.removed):
                click.echo(f"{len(written.unchanged)} file(s) under {out} already up to date")
            return
        result = gen.check(config, out)
    except MonitorError as exc:
        fail(exc)
    if result.ok:
        click.echo(f"{len(result.checked)} file(s) under {out} up to date")
        return
    for rel in result.changed:
        click.echo(result.changed[rel], nl=False)
    for rel in result.changed:
        click.echo(f"{out / rel}: differs from the spec", err=True)
    for rel in result.missing:
        click.echo(f"{out / rel}: missing", err=True)
    for rel in result.stale:
        click.echo(f"{out / rel}: generated but no longer produced by the spec", err=True)
    click.echo(f"out of date; run: monitor generate --config {config} --out {out}", err=True)
    sys.exit(1)


@main.command()
@click.option(
    "--fast", is_flag=True, help="Shorter phases: about 65 s instead of about 2 min 15 s."
)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory for models, logs, reports and summary.json (default: a new temp dir).",
)
def demo(fast: bool, out: Path | None) -> None:
    """Run the whole loop on real model servers: traffic in phases (healthy, covariate
    shift, a hung primary, recovery), drift detection, an error-budget page, the
    mitigator shifting traffic to the fallback and back; then a summary and reports."""
    from monitor.demo import main as demo_main

    sys.exit(demo_main(out, fast))


if __name__ == "__main__":  # pragma: no cover
    main()


def _duration(value: str | None) -> float | None:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` -> seconds."""
    if value is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = value.strip().lower()
    mult = units.get(text[-1:])
    number = text[:-1] if mult else text
    try:
        seconds = float(number) * (mult or 1)
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: expected a duration like 90s, 15m, 2h or 1d"
        ) from None
    if not 0 < seconds <= 100 * 366 * 86400:
        raise click.BadParameter(f"{value!r}: must be positive and at most 100 years")
    return seconds


@main.group()
def drift() -> None:
    """Data drift of model inputs against a training baseline (evidently's methods)."""


@drift.command("run")
@click.option(
    "--config", "config", required=True, type=click.Path(path_type=Path), help="monitor.yaml"
)
@click.option("--model", "model", required=True, help="Model (in the spec) to check.")
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    help="Baseline Parquet/CSV (default models[].baseline).",
)
@click.option(
    "--current",
    type=click.Path(path_type=Path),
    help="Current window Parquet/CSV (default: the capture store).",
)
@click.option("--since", help="Window length, e.g. 1h (default drift.window_seconds).")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("drift-report"),
    show_default=True,
    help="Directory for drift.json and report.html.",
)
@click.option(
    "--engine",
    type=click.Choice(["fast", "evidently", "spark"]),
    help="Drift engine (default drift.engine, i.e. fast).",
)
@click.option("--pushgateway", help="Push the metrics to this Pushgateway URL (CronJob pattern).")
@click.option(
    "--html/--no-html",
    default=True,
    show_default=True,
    help="Write report.html (evidently's report; slow on big windows).",
)
def drift_run(
    config: Path,
    model: str,
    reference: Path | None,
    current: Path | None,
    since: str | None,
    out: Path,
    engine: str | None,
    pushgateway: str | None,
    html: bool,
) -> None:
    """Run the drift check once: write DIR/drift.json and DIR/report.html.

    Exit 0 when the run produced a result (drift or not), 1 when it could not.
    """
    from monitor.drift.job import DriftCollector, RunOptions, push, run_once

    collector = DriftCollector()
    try:
        spec = load_spec(config)
        opts = RunOptions(
            reference=reference,
            current=current,
            since=_duration(since),
            engine=engine,
            out=out,
            html=html,
        )
        try:
            result = run_once(spec, model, opts, collector=collector)
        finally:
            if pushgateway:
                push(pushgateway, model, collector)
    except MonitorError as exc:
        fail(exc)
    except OSError as exc:  # --out not writable, not a directory, ...
        click.echo(f"error: cannot write the report to {out}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    d = result.to_dict()["dataset"]
    verdict = {True: "DRIFT", False: "no drift", None: "no verdict (insufficient data)"}[
        d["dataset_drift"]
    ]
    click.echo(
        f"model {model}: {verdict}: {d['drifted_features']}/{d['features_scored']} features "
        f"drifted "
        f"(engine {result.engine}, {result.duration_seconds:.2f}s); wrote {out / 'drift.json'}"
    )


@drift.command("serve")
@click.option(
    "--config", "config", required=True, type=click.Path(path_type=Path), help="monitor.yaml"
)
@click.option(
    "--metrics-listen", default="127.0.0.1:9401", show_default=True, help="HOST:PORT of /metrics."
)
@click.option(
    "--html/--no-html", default=True, show_default=True, help="Write report.html on every run."
)
def drift_serve(config: Path, metrics_listen: str, html: bool) -> None:
    """Run the drift check of every model with a baseline every drift.schedule_seconds."""
    import signal
    import threading

    from monitor.drift.job import serve
    from monitor.spec import parse_listen

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        spec = load_spec(config)
        serve(spec, listen=parse_listen(metrics_listen), stop=stop, html=html)
    except MonitorError as exc:
        fail(exc)
    except OSError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@main.command()
@click.option(
    "--config", "config", required=True, type=click.Path(path_type=Path), help="monitor.yaml"
)
@click.option("--listen", default=None, help="HOST:PORT (default mitigator.listen).")
def mitigator(config: Path, listen: str | None) -> None:
    """Receive Alertmanager webhooks and run the spec's mitigations."""
    from monitor.mitigator.service import run_mitigator
    from monitor.spec import parse_listen

    try:
        spec = load_spec(config)
        run_mitigator(spec, parse_listen(listen or spec.mitigator.listen))
    except MonitorError as exc:
        fail(exc)
    except OSError as exc:
        click.echo(
            f"error: cannot listen on {listen or spec.mitigator.listen}: {exc.strerror or exc}",
            err=True,
        )
        sys.exit(1)


def _register() -> None:
    """Command groups that live beside their code (imported lazily inside each command)."""
    from monitor.canary.cli import canary
    from monitor.dashboards.cli import dashboards
    from monitor.docgen import docs_command
    from monitor.gpu.cli import gpu_exporter

    for command in (dashboards, gpu_exporter, canary, docs_command):
        main.add_command(command)


_register()
