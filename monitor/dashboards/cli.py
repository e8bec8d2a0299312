"""``monitor dashboards ...`` commands."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from monitor.errors import MonitorError


@click.group("dashboards")
def dashboards() -> None:
    """Generated Grafana dashboards: render a static preview from a live Prometheus."""


def _prometheus_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Refuse what is not an http(s) URL with a host before any query is built."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        ok = False
    if not ok:
        raise click.BadParameter(
            f"{value!r}: expected an http:// or https:// URL with a host, "
            "e.g. http://127.0.0.1:9090"
        )
    return value


@dashboards.command("render")
@click.option(
    "--prometheus",
    "prometheus_url",
    required=True,
    callback=_prometheus_url,
    help="Prometheus base URL, e.g. http://127.0.0.1:9090.",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Output directory; the preview is DIR/dashboards.html.",
)
@click.option(
    "--dashboards",
    "dashboards_dir",
    default=Path("dashboards"),
    show_default=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory of the dashboard JSON files to draw.",
)
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Draw the dashboards of this monitor.yaml instead (built in memory).",
)
@click.option("--range", "range_", default="1h", show_default=True, help="Time range ending now.")
@click.option("--step", default=None, help="Query step (default: range / 240).")
@click.option(
    "--scrape-interval",
    default="15s",
    show_default=True,
    help="Prometheus' scrape interval, for $__rate_interval.",
)
@click.option(
    "--var",
    "variables",
    multiple=True,
    metavar="NAME=VALUE",
    help="A variable's value (repeat for several values); unset variables are All.",
)
@click.option(
    "--fail-on-empty", is_flag=True, help="Exit 1 when a panel has no data or a query fails."
)
def render_command(
    prometheus_url: str,
    out: Path,
    dashboards_dir: Path,
    config: Path | None,
    range_: str,
    step: str | None,
    scrape_interval: str,
    variables: tuple[str, ...],
    fail_on_empty: bool,
) -> None:
    """Draw every panel of the dashboards from a live Prometheus into one HTML file."""
    import json

    from monitor.dashboards.render import load_dashboards, parse_duration, render

    values: dict[str, list[str]] = {}
    for item in variables:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--var")
        values.setdefault(name, []).append(value)
    try:
        if config is not None:
            from monitor.dashboards.build import build_dashboards
            from monitor.spec import load_spec

            boards = [json.loads(t) for t in build_dashboards(load_spec(config)).values()]
        else:
            boards = load_dashboards(dashboards_dir)
        result = render(
            boards,
            prometheus_url,
            out,
            range_s=parse_duration(range_),
            step_s=parse_duration(step) if step else None,
            scrape_interval_s=parse_duration(scrape_interval),
            values=values,
        )
    except MonitorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    empty = result.empty
    click.echo(
        f"wrote {result.path}: {len(boards)} dashboard(s), {len(result.panels)} panel(s), "
        f"{len(result.panels) - len(empty)} with data"
    )
    for p in empty:
        why = "; ".join(p.errors) or "no series"
        click.echo(f"no data: {p.dashboard} / {p.panel}: {why}", err=True)
    if fail_on_empty and empty:
        sys.exit(1)
