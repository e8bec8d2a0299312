"""The docs under docs/ against the code, so they cannot drift apart.

* docs/spec.md documents every field of every spec model, in the section of its YAML
  path, and nothing that is not a field; its examples validate (and the invalid one
  fails with exactly the errors shown).
* docs/metrics.md's table lists exactly the metric families a sidecar registers, with
  their types and labels, and every bounded label value and route template.
* docs/sidecar.md names every CLI option of ``monitor sidecar``.
* docs/alerting.md's catalogue table names every alert of ``monitor.conventions``, each
  with a link to its runbook, and every runbook link resolves to a file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from monitor import cli
from monitor import conventions as c
from monitor.capture import CaptureWriter
from monitor.errors import SpecError
from monitor.payload import Predictions
from monitor.protocols import make_adapter
from monitor.sidecar.metrics import SidecarMetrics
from monitor.spec import (
    CaptureSpec,
    FeatureSpec,
    ModelSpec,
    MonitorSpec,
    OutputSpec,
    load_spec,
    parse_spec,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SPEC_MD = (DOCS / "spec.md").read_text(encoding="utf-8")
METRICS_MD = (DOCS / "metrics.md").read_text(encoding="utf-8")
SIDECAR_MD = (DOCS / "sidecar.md").read_text(encoding="utf-8")
ALERTING_MD = (DOCS / "alerting.md").read_text(encoding="utf-8")

_TICKED = re.compile(r"`([^`]+)`")


# --- markdown helpers ------------------------------------------------------------


def _sections(text: str) -> dict[str, list[str]]:
    """Heading line (without the leading #s) -> the lines under it, up to the next heading.
    Fenced code blocks are skipped, so a ``# comment`` in YAML is not a heading."""
    out: dict[str, list[str]] = {}
    current: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if line.startswith("#"):
            current = out.setdefault(line.lstrip("#").strip(), [])
        else:
            current.append(line)
    return out


def _table_rows(lines: list[str]) -> list[list[str]]:
    """Body rows of the markdown tables in ``lines``, as lists of stripped cells."""
    rows = []
    for line in lines:
        if not line.startswith("|") or re.fullmatch(r"\|[\s|:-]+\|", line):
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    # Body rows start with a `name` (a field, metric, label value or protocol); header
    # rows never do, so this keeps the body rows of every table.
    return [r for r in rows if r and r[0].startswith("`")]


def _section(text: str, heading: str, *, exact: bool = False) -> list[str]:
    """The lines under the one heading that contains ``heading`` (or equals it)."""
    matches = [
        lines
        for title, lines in _sections(text).items()
        if (title == heading if exact else heading in title)
    ]
    assert len(matches) == 1, f"expected one heading containing {heading!r}, got {len(matches)}"
    return matches[0]


def _first_tick(cell: str) -> str:
    m = _TICKED.match(cell)
    assert m is not None, f"cell does not start with a `name`: {cell!r}"
    return m.group(1)


def _example(text: str, marker: str, lang: str) -> str:
    """The fenced block of ``lang`` right after ``<!-- example: marker -->``."""
    m = re.search(
        rf"<!-- example: {re.escape(marker)} -->\s*```{lang}\n(.*?)\n```", text, re.DOTALL
    )
    assert m is not None, f"no ```{lang} block marked 'example: {marker}' in the doc"
    return m.group(1)


# --- docs/spec.md ----------------------------------------------------------------


def _nested_models(tp: Any, in_list: bool = False) -> list[tuple[type[BaseModel], bool]]:
    """Pydantic models inside a field annotation, and whether each sits in a list."""
    if get_origin(tp) is None and isinstance(tp, type) and issubclass(tp, BaseModel):
        return [(tp, in_list)]
    origin = get_origin(tp)
    found = []
    for arg in get_args(tp):
        found += _nested_models(arg, in_list or origin is list)
    return found


def _spec_models() -> list[tuple[str, type[BaseModel]]]:
    """Every model reachable from MonitorSpec with its YAML path ('' for the top level)."""
    out: list[tuple[str, type[BaseModel]]] = []

    def walk(path: str, model: type[BaseModel]) -> None:
        out.append((path, model))
        for name, field in model.model_fields.items():
            for sub, is_list in _nested_models(field.annotation):
                child = f"{path}.{name}" if path else name
                walk(f"{child}[]" if is_list else child, sub)

    walk("", MonitorSpec)
    return out


SPEC_MODELS = _spec_models()


def _spec_section(path: str) -> list[str]:
    return _section(SPEC_MD, f"`{path}`" if path else "Top level", exact=not path)


def test_the_walk_reaches_every_model_of_the_spec() -> None:
    names = {m.__name__ for _, m in SPEC_MODELS}
    assert names == {
        "MonitorSpec", "ModelSpec", "FeatureSpec", "OutputSpec",
        "CaptureSpec", "TimeoutSpec", "TracingSpec", "SLOSpec", "AlertingSpec",
        "ReceiverSpec", "DriftSpec", "MitigationSpec", "LabelSpec", "MitigatorSpec",
        "ControlSpec", "CanarySpec",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("path", "model"),
    [
        pytest.param(
            path, model, id=f"every field of {path or 'the top level'} is in its table of spec.md"
        )
        for path, model in SPEC_MODELS
    ],
)
def test_spec_md_documents_every_field_in_its_section(path: str, model: type[BaseModel]) -> None:
    rows = _table_rows(_spec_section(path))
    documented = [_first_tick(r[0]) for r in rows]
    assert sorted(documented) == sorted(model.model_fields), (
        f"{path or 'top level'}: documented {documented}, fields {list(model.model_fields)}"
    )


@pytest.mark.parametrize(
    ("path", "model"),
    [
        pytest.param(
            path,
            model,
            id=f"the default column of {path or 'the top level'} says required only when it is",
        )
        for path, model in SPEC_MODELS
    ],
)
def test_spec_md_marks_exactly_the_required_fields_as_required(
    path: str, model: type[BaseModel]
) -> None:
    rows = {_first_tick(r[0]): r for r in _table_rows(_spec_section(path))}
    for name, field in model.model_fields.items():
        default = rows[name][2]
        assert (default == "required") == field.is_required(), f"{path}.{name}: {default!r}"


def test_the_full_example_in_spec_md_validates() -> None:
    spec = parse_spec(yaml.safe_load(_example(SPEC_MD, "full", "yaml")))
    assert spec.service == "demo"


def test_the_full_example_in_spec_md_is_the_demo_spec_shortened() -> None:
    example = parse_spec(yaml.safe_load(_example(SPEC_MD, "full", "yaml"))).model("bc")
    demo = load_spec(ROOT / "deploy" / "monitor.yaml").model("bc")
    # The example writes out health_path and max_request_bytes, which the demo leaves unset.
    differs = {"features", "health_path", "max_request_bytes"}
    assert example.model_dump(exclude=differs) == demo.model_dump(exclude=differs)
    assert example.features == demo.features[: len(example.features)]


def test_the_minimal_example_in_spec_md_validates_with_only_required_keys() -> None:
    data = yaml.safe_load(_example(SPEC_MD, "minimal", "yaml"))
    parse_spec(data)
    required = {n for n, f in MonitorSpec.model_fields.items() if f.is_required()}
    assert set(data) == required
    for model in data["models"]:
        assert set(model) == {n for n, f in ModelSpec.model_fields.items() if f.is_required()}


def test_the_invalid_example_in_spec_md_fails_with_exactly_the_errors_shown() -> None:
    shown = _example(SPEC_MD, "invalid-output", "text").splitlines()
    with pytest.raises(SpecError) as info:
        parse_spec(yaml.safe_load(_example(SPEC_MD, "invalid", "yaml")), "bad.yaml")
    assert [f"{info.value.source}: {p}" for p in info.value.problems] == shown


def test_spec_md_shows_the_error_format_of_the_spec_module() -> None:
    assert "models[0].features[2].max: must be > min" in SPEC_MD


# --- docs/metrics.md -------------------------------------------------------------


def _sidecar_registries(tmp_path: Path) -> dict[str, CollectorRegistry]:
    """One registry per protocol that adds families (v2 as the plain case, openai),
    each with a SidecarMetrics and a CaptureWriter, every family given a sample."""
    regs = {}
    for protocol in ("v2", "openai"):
        model = ModelSpec.model_validate(
            {
                "name": "m",
                "protocol": protocol,
                "upstream": "http://127.0.0.1:9",
                "features": [FeatureSpec(name="f0")],
                "outputs": [
                    OutputSpec(name="score"),
                    OutputSpec(name="label", type="categorical", classes=[0, 1]),
                ],
                "capture": CaptureSpec(dir=tmp_path / protocol),
            }
        )
        registry = CollectorRegistry()
        metrics = SidecarMetrics(model, registry)
        CaptureWriter(model, registry=registry)  # registers; not started, no thread
        # Families whose children appear on first use: give each one sample.
        metrics.observe_request("m", "/v1/chat/completions", 200, c.OUTCOME_OK, 0.1, None)
        metrics.observe_ttfb("m", "/v1/chat/completions", 0.05)
        metrics.observe_predictions(Predictions({"score": [0.5], "label": [1]}))
        regs[protocol] = registry
    return regs


def _exported(registries: dict[str, CollectorRegistry]) -> dict[str, tuple[str, set[str]]]:
    """Exposed family name (counters with ``_total``) -> (type, label names)."""
    out: dict[str, tuple[str, set[str]]] = {}
    for registry in registries.values():
        for fam in registry.collect():
            if not fam.name.startswith(c.NAMESPACE + "_"):
                continue
            name = f"{fam.name}_total" if fam.type == "counter" else fam.name
            assert fam.samples, f"{name} has no sample: its labels cannot be checked"
            labels = set().union(*(s.labels for s in fam.samples)) - {"le"}
            out[name] = (fam.type, labels)
    return out


@pytest.fixture
def exported(tmp_path: Path) -> dict[str, tuple[str, set[str]]]:
    return _exported(_sidecar_registries(tmp_path))


def _metric_rows() -> dict[str, tuple[str, set[str]]]:
    rows = _table_rows(_section(METRICS_MD, "Metrics", exact=True))
    out = {}
    for r in rows:
        name = _first_tick(r[0])
        assert name not in out, f"{name} is listed twice"
        out[name] = (r[1], set(_TICKED.findall(r[2])))
    return out


def _metric_constants() -> set[str]:
    return {
        v
        for k, v in vars(c).items()
        if k.isupper() and isinstance(v, str) and v.startswith(c.NAMESPACE + "_")
    }


def test_every_registered_metric_constant_is_in_the_metrics_table(
    exported: dict[str, tuple[str, set[str]]],
) -> None:
    missing = (_metric_constants() & set(exported)) - set(_metric_rows())
    assert not missing, f"registered but not documented: {sorted(missing)}"


def test_every_metric_in_the_metrics_table_is_registered_by_the_sidecar(
    exported: dict[str, tuple[str, set[str]]],
) -> None:
    stale = set(_metric_rows()) - set(exported)
    assert not stale, f"documented but not registered: {sorted(stale)}"


def test_every_registered_metric_name_comes_from_conventions(
    exported: dict[str, tuple[str, set[str]]],
) -> None:
    retyped = set(exported) - _metric_constants()
    assert not retyped, f"registered under a name not in conventions.py: {sorted(retyped)}"


def test_each_metric_row_gives_the_registered_type_and_labels(
    exported: dict[str, tuple[str, set[str]]],
) -> None:
    for name, (mtype, labels) in _metric_rows().items():
        assert (mtype, labels) == exported[name], name


LABEL_VALUES = (
    *c.OUTCOMES, *c.FEATURE_STATES, *c.PAYLOAD_REASONS,
    c.SKIP_TOO_LARGE, c.SKIP_CONTENT_TYPE, c.REJECT_TOO_LARGE,
    c.DROP_QUEUE_FULL, c.DROP_RETENTION, c.DROP_WRITE_ERROR,
    c.MODEL_OTHER, c.CLASS_OTHER, c.ROUTE_UNMATCHED,
    c.TOKENS_PROMPT, c.TOKENS_COMPLETION,
)  # fmt: skip
"""Every bounded label value the sidecar emits besides spec names and route templates."""


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(v, id=f"the label value {v} is documented in metrics.md")
        for v in sorted(set(LABEL_VALUES))
    ],
)
def test_every_bounded_label_value_is_in_metrics_md(value: str) -> None:
    assert f"`{value}`" in METRICS_MD


def test_the_error_ratio_query_uses_exactly_the_error_outcomes() -> None:
    assert f'outcome=~"{"|".join(c.ERROR_OUTCOMES)}"' in METRICS_MD


def test_the_p99_query_of_the_brief_is_in_metrics_md() -> None:
    assert (
        f"histogram_quantile(0.99, sum by (le) (rate({c.REQUEST_DURATION_SECONDS}_bucket[5m])))"
        in METRICS_MD
    )


def _route_rows() -> dict[str, set[str]]:
    out = {}
    for r in _table_rows(_section(METRICS_MD, "`route`")):
        templates = {t for t in _TICKED.findall(r[1]) if t.startswith("/")}
        for protocol in _TICKED.findall(r[0]):
            out[protocol] = templates
    return out


@pytest.mark.parametrize(
    "protocol",
    [
        pytest.param(p, id=f"the {p} route templates in metrics.md are the adapter's")
        for p in ("v2", "v1", "tfserving", "mlflow", "openai", "json")
    ],
)
def test_the_route_templates_in_metrics_md_are_the_adapters(protocol: str) -> None:
    model = ModelSpec.model_validate(
        {"name": "m", "protocol": protocol, "upstream": "http://127.0.0.1:9"}
    )
    adapter = make_adapter(model)
    templates = set(adapter.templates) - {c.ROUTE_UNMATCHED}
    documented = _route_rows()[protocol]
    if protocol == "json":  # the spec's inference_paths: the row names the default
        assert templates <= documented
    else:
        assert documented == templates


# --- docs/sidecar.md -------------------------------------------------------------


@pytest.mark.parametrize(
    "option",
    [
        pytest.param(opt, id=f"the sidecar option {opt} is documented in sidecar.md")
        for command in (cli.main, cli.sidecar)
        for param in command.params
        for opt in param.opts
        if opt.startswith("--") and opt not in ("--help", "--version")
    ],
)
def test_sidecar_md_documents_every_cli_option(option: str) -> None:
    assert f"`{option}" in SIDECAR_MD


@pytest.mark.parametrize(
    "endpoint",
    [
        pytest.param(e, id=f"the endpoint {e} is documented in sidecar.md")
        for e in ("/metrics", "/-/healthy", "/-/ready")
    ],
)
def test_sidecar_md_documents_every_metrics_port_endpoint(endpoint: str) -> None:
    assert f"`GET {endpoint}`" in SIDECAR_MD


# --- docs/alerting.md ------------------------------------------------------------

_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
ALERT_NAMES = sorted(
    {v for k, v in vars(c).items() if k.startswith("ALERT_") and isinstance(v, str)}
)


def _catalogue_links() -> list[tuple[str, str]]:
    """(text, target) of the link in the first cell of each body row of the table under
    "Alert catalogue"; a first cell without a link fails."""
    out = []
    for line in _section(ALERTING_MD, "Alert catalogue", exact=True):
        if not line.startswith("|") or re.fullmatch(r"\|[\s|:-]+\|", line):
            continue
        first = line.strip().strip("|").split("|")[0].strip()
        if first == "Alert":  # the header row
            continue
        m = _LINK.fullmatch(first)
        assert m is not None, f"the first cell of a catalogue row is not a link: {first!r}"
        out.append((m.group(1), m.group(2)))
    return out


def test_the_alert_names_are_read_from_conventions() -> None:
    assert c.ALERT_ERROR_BUDGET_BURN in ALERT_NAMES
    assert c.ALERT_MITIGATION_FAILING in ALERT_NAMES


@pytest.mark.parametrize(
    "alert",
    [
        pytest.param(a, id=f"{a} is in the catalogue of alerting.md with a link to its runbook")
        for a in ALERT_NAMES
    ],
)
def test_alerting_md_catalogue_links_every_alert_to_its_runbook(alert: str) -> None:
    assert (alert, f"runbooks/{alert}.md") in _catalogue_links(), (
        f"no catalogue row starting [{alert}](runbooks/{alert}.md) in docs/alerting.md"
    )


def test_every_row_of_the_alerting_md_catalogue_is_an_alert_of_conventions() -> None:
    unknown = sorted({text for text, _ in _catalogue_links()} - set(ALERT_NAMES))
    assert not unknown, f"catalogue rows for alerts not in conventions.py: {unknown}"


def test_every_runbook_link_in_alerting_md_resolves_to_a_file() -> None:
    targets = {t.split("#")[0] for _, t in _LINK.findall(ALERTING_MD) if "runbooks/" in t}
    assert targets, "alerting.md links no runbook"
    missing = sorted(t for t in targets if not (DOCS / t).is_file())
    assert not missing, f"runbook links in alerting.md without a file under docs/: {missing}"
