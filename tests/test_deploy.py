"""deploy/: the compose stack and the Kubernetes manifests, checked without Docker or a
cluster.

* Every core object of ``deploy/kubernetes`` (and ``drift-cronjob/``) against the
  Kubernetes API models of the ``kubernetes`` package: unknown fields, wrong types and
  missing required fields fail. The prometheus-operator objects against the structure of
  their CRDs (the keys used here).
* Cross-checks: pinned images; Service and ServiceMonitor ports exist; probes point at
  the right port; every volumeMount has a volume; every ConfigMap, Secret and claim exists
  or is created by a documented ``kubectl`` command; every ``monitor`` command line parses
  with the CLI, its listen ports are the container's ports; the paths the stack spec
  names are mounted, writable where written; the spec's service names resolve; the
  PrometheusRule and Alertmanager configs are what :mod:`monitor.deploy` generates and the
  rules those of ``alerts/``.
* The compose file the same way, with Prometheus' and Grafana's configuration.

Each check returns a list of problems; the tests assert the committed files have none,
and that each check finds the fault in a deliberately broken copy.
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import click
import kubernetes.client
import pytest
import yaml

from monitor import __version__
from monitor import deploy as dep
from monitor.cli import main as cli_main
from monitor.errors import SpecError
from monitor.rules import build_rules
from monitor.spec import MonitorSpec, load_spec, parse_spec
from tests.support import require_tool

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
README = (DEPLOY / "README.md").read_text(encoding="utf-8")
DOCKERFILE = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
STACK = load_spec(ROOT / dep.STACK_SPEC)
DEMO = load_spec(DEPLOY / "monitor.yaml")
MONITOR_IMAGE = f"model-monitor:{__version__}"
MLSERVER_PORT = 8080
"""seldonio/mlserver's HTTP port (MLSERVER_HTTP_PORT's default)."""
KNOWN_IMAGE_PORTS = {"seldonio/mlserver": {MLSERVER_PORT}, "grafana/grafana": {3000}}
"""Ports of images whose command line does not name them."""

CORE_API_VERSIONS = {"v1", "apps/v1", "batch/v1"}
POD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob"}

Obj = dict[str, Any]


# --- loading --------------------------------------------------------------------------------------


def yaml_docs(path: Path) -> list[Obj]:
    """The non-empty documents of a YAML file."""
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kustomize(directory: Path) -> list[Obj]:
    """What ``kubectl apply -k directory`` would apply (the subset of kustomize used here:
    ``resources`` files, ``namespace``, ``configMapGenerator`` without hash suffix)."""
    k = yaml_docs(directory / "kustomization.yaml")[0]
    out: list[Obj] = []
    for res in k["resources"]:
        out += yaml_docs(directory / res)
    for gen in k.get("configMapGenerator", []):
        data = {}
        for item in gen.get("files", []):
            key, _, rel = item.rpartition("=")
            data[key or PurePosixPath(rel).name] = (directory / rel).read_text(encoding="utf-8")
        meta: Obj = {"name": gen["name"]}
        labels = (gen.get("options") or {}).get("labels")
        if labels:
            meta["labels"] = dict(labels)
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
    if "namespace" in k:
        for obj in out:
            if obj["kind"] != "Namespace":
                obj.setdefault("metadata", {})["namespace"] = k["namespace"]
    return out


BASE = kustomize(K8S)
CRONJOB = kustomize(K8S / "drift-cronjob")


def cluster() -> list[Obj]:
    """A fresh copy of everything applied: the base and the CronJob alternative (which
    uses the base's ConfigMaps and claim)."""
    return copy.deepcopy(BASE + CRONJOB)


def compose() -> Obj:
    """A fresh copy of the compose file."""
    return yaml_docs(COMPOSE_FILE)[0]


def find(objs: Iterable[Obj], kind: str, name: str) -> Obj:
    """The object of that kind and name."""
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise KeyError(f"{kind}/{name}")


def ref(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


# --- pods and containers --------------------------------------------------------------------------


def pod_spec(obj: Obj) -> Obj | None:
    """The pod spec of a workload (None for other kinds)."""
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if obj["kind"] in POD_KINDS:
        return obj["spec"]["template"]["spec"]
    return None


def pod_labels(obj: Obj) -> dict[str, str]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return obj["spec"]["template"]["metadata"].get("labels", {})


def workloads(objs: Iterable[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """``(workload, pod spec)`` of every workload."""
    for o in objs:
        spec = pod_spec(o)
        if spec is not None:
            yield o, spec


def containers(objs: Iterable[Obj]) -> Iterator[tuple[Obj, Obj, Obj]]:
    """``(workload, pod spec, container)`` of every container, init containers too."""
    for o, spec in workloads(objs):
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            yield o, spec, c


def is_monitor(image: str) -> bool:
    return image.rpartition(":")[0] == "model-monitor" or image == "model-monitor"


# --- the Kubernetes API models --------------------------------------------------------------------

_LIST = re.compile(r"^List\[(.+)\]$")
_DICT = re.compile(r"^Dict\[str, (.+)\]$")


def unknown_fields(data: Any, type_name: str, path: str) -> list[str]:
    """Keys of ``data`` that the API type ``type_name`` (a ``kubernetes.client`` model or a
    ``List[...]``/``Dict[str, ...]`` of one) does not have, recursively. The models'
    ``from_dict`` checks types and required fields but drops unknown keys, and accepts
    Python attribute names (``container_port``) that the API does not."""
    if data is None:
        return []
    if m := _LIST.match(type_name):
        if not isinstance(data, list):
            return []  # from_dict reports the type
        return [p for i, x in enumerate(data) for p in unknown_fields(x, m[1], f"{path}[{i}]")]
    if m := _DICT.match(type_name):
        if not isinstance(data, dict):
            return []
        return [p for k, v in data.items() for p in unknown_fields(v, m[1], f"{path}.{k}")]
    model = getattr(kubernetes.client, type_name, None)
    if model is None or not isinstance(data, dict):
        return []  # a primitive, object (IntOrString), or a type error for from_dict
    by_json = {j: attr for attr, j in model.attribute_map.items()}
    problems = []
    for key, value in data.items():
        attr = by_json.get(key)
        if attr is None:
            problems.append(f"{path}.{key}: unknown field of {type_name}")
        else:
            problems += unknown_fields(value, model.openapi_types[attr], f"{path}.{key}")
    return problems


def api_problems(obj: Obj) -> list[str]:
    """A core object against its ``kubernetes.client`` model: unknown fields, wrong types
    and missing required fields."""
    kind, api = obj.get("kind"), obj.get("apiVersion")
    model = getattr(kubernetes.client, f"V1{kind}", None)
    if api not in CORE_API_VERSIONS or model is None:
        return [f"{kind} ({api}): not a core v1 kind this test knows"]
    where = f"{kind}/{obj.get('metadata', {}).get('name')}"
    problems = unknown_fields(obj, f"V1{kind}", where)
    try:
        model.from_dict(obj)
    except Exception as exc:  # pydantic's ValidationError, ValueError
        problems.append(f"{where}: {type(exc).__name__}: {exc}")
    return problems


# --- the prometheus-operator CRDs, structurally ---------------------------------------------------


@dataclass
class S:
    """A structural schema: a mapping with required and optional keys."""

    required: dict[str, Any] = field(default_factory=dict)
    optional: dict[str, Any] = field(default_factory=dict)


@dataclass
class ListOf:
    item: Any


@dataclass
class MapOf:
    value: Any


@dataclass
class OneOf:
    values: tuple[str, ...]


def schema_problems(value: Any, schema: Any, path: str) -> list[str]:
    """``value`` against a schema of :class:`S`, :class:`ListOf`, :class:`MapOf`,
    :class:`OneOf` and Python types (``str``, ``bool``, ``int``)."""
    if isinstance(schema, S):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {type(value).__name__}"]
        problems = [f"{path}.{k}: required" for k in schema.required if k not in value]
        for k, v in value.items():
            sub = schema.required.get(k, schema.optional.get(k))
            if sub is None:
                problems.append(f"{path}.{k}: unknown field")
            else:
                problems += schema_problems(v, sub, f"{path}.{k}")
        return problems
    if isinstance(schema, ListOf):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [
            p for i, x in enumerate(value) for p in schema_problems(x, schema.item, f"{path}[{i}]")
        ]
    if isinstance(schema, MapOf):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {type(value).__name__}"]
        return [
            p for k, v in value.items() for p in schema_problems(v, schema.value, f"{path}.{k}")
        ]
    if isinstance(schema, OneOf):
        return [] if value in schema.values else [f"{path}: {value!r} not one of {schema.values}"]
    if schema is int and isinstance(value, bool):
        return [f"{path}: expected int, got bool"]
    if not isinstance(value, schema):
        return [f"{path}: expected {schema.__name__}, got {type(value).__name__}"]
    return []


META = S({"name": str}, {"namespace": str, "labels": MapOf(str), "annotations": MapOf(str)})
SELECTOR = S(
    optional={
        "matchLabels": MapOf(str),
        "matchExpressions": ListOf(S({"key": str, "operator": str}, {"values": ListOf(str)})),
    }
)
RELABEL = S(
    optional={
        "sourceLabels": ListOf(str),
        "separator": str,
        "targetLabel": str,
        "regex": str,
        "modulus": int,
        "replacement": str,
        "action": str,
    }
)
SERVICE_MONITOR = S(
    {
        "apiVersion": OneOf(("monitoring.coreos.com/v1",)),
        "kind": str,
        "metadata": META,
        "spec": S(
            {
                "selector": SELECTOR,
                "endpoints": ListOf(
                    S(
                        {"port": str},
                        {
                            "path": str,
                            "interval": str,
                            "scrapeTimeout": str,
                            "scheme": str,
                            "honorLabels": bool,
                            "relabelings": ListOf(RELABEL),
                            "metricRelabelings": ListOf(RELABEL),
                        },
                    )
                ),
            },
            {"jobLabel": str, "targetLabels": ListOf(str), "namespaceSelector": S()},
        ),
    }
)
RULE = S(
    {"expr": str},
    {
        "record": str,
        "alert": str,
        "for": str,
        "keep_firing_for": str,
        "labels": MapOf(str),
        "annotations": MapOf(str),
    },
)
PROMETHEUS_RULE = S(
    {
        "apiVersion": OneOf(("monitoring.coreos.com/v1",)),
        "kind": str,
        "metadata": META,
        "spec": S({"groups": ListOf(S({"name": str, "rules": ListOf(RULE)}, {"interval": str}))}),
    }
)
MATCHER = S({"name": str}, {"value": str, "matchType": OneOf(("=", "!=", "=~", "!~"))})
SECRET_KEY = S({"name": str, "key": str}, {"optional": bool})
ROUTE = S(
    optional={
        "receiver": str,
        "groupBy": ListOf(str),
        "groupWait": str,
        "groupInterval": str,
        "repeatInterval": str,
        "matchers": ListOf(MATCHER),
        "continue": bool,
    }
)
ROUTE.optional["routes"] = ListOf(ROUTE)
RECEIVER = S(
    {"name": str},
    {
        "webhookConfigs": ListOf(
            S(
                optional={
                    "url": str,
                    "urlSecret": SECRET_KEY,
                    "sendResolved": bool,
                    "maxAlerts": int,
                    "httpConfig": S(
                        optional={
                            "authorization": S(optional={"type": str, "credentials": SECRET_KEY})
                        }
                    ),
                }
            )
        ),
        "pagerdutyConfigs": ListOf(S(optional={"routingKey": SECRET_KEY, "sendResolved": bool})),
        "slackConfigs": ListOf(
            S(optional={"apiURL": SECRET_KEY, "channel": str, "sendResolved": bool})
        ),
    },
)
ALERTMANAGER_CONFIG = S(
    {
        "apiVersion": OneOf(("monitoring.coreos.com/v1alpha1",)),
        "kind": str,
        "metadata": META,
        "spec": S(
            {"route": ROUTE, "receivers": ListOf(RECEIVER)},
            {
                "inhibitRules": ListOf(
                    S(
                        optional={
                            "sourceMatch": ListOf(MATCHER),
                            "targetMatch": ListOf(MATCHER),
                            "equal": ListOf(str),
                        }
                    )
                )
            },
        ),
    }
)
CRDS = {
    "ServiceMonitor": SERVICE_MONITOR,
    "PrometheusRule": PROMETHEUS_RULE,
    "AlertmanagerConfig": ALERTMANAGER_CONFIG,
}


def _routes(route: Obj) -> Iterator[Obj]:
    yield route
    for sub in route.get("routes", []):
        yield from _routes(sub)


def crd_problems(obj: Obj) -> list[str]:
    """A prometheus-operator object against its structure, plus what the schema cannot
    say: a rule records or alerts (not both), routes name defined receivers."""
    kind = str(obj.get("kind"))
    problems = schema_problems(obj, CRDS[kind], f"{kind}/{obj.get('metadata', {}).get('name')}")
    if problems:
        return problems
    if kind == "PrometheusRule":
        for g in obj["spec"]["groups"]:
            for r in g["rules"]:
                if ("record" in r) == ("alert" in r):
                    problems.append(f"group {g['name']}: a rule needs record or alert: {r}")
    if kind == "AlertmanagerConfig":
        names = {r["name"] for r in obj["spec"]["receivers"]}
        for route in _routes(obj["spec"]["route"]):
            if "receiver" in route and route["receiver"] not in names:
                problems.append(f"route receiver {route['receiver']!r} is not a receiver")
    return problems


def object_problems(obj: Obj) -> list[str]:
    """Core objects against the API models, CRDs structurally."""
    if obj.get("kind") in CRDS:
        return crd_problems(obj)
    return api_problems(obj)


# --- images ---------------------------------------------------------------------------------------


def image_problems(image: str, where: str) -> list[str]:
    """Pinned: a tag other than ``latest`` or a digest; ours at the package's version."""
    if "@sha256:" in image:
        return []
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return [f"{where}: image {image!r} has no tag"]
    if tag == "latest":
        return [f"{where}: image {image!r} is not pinned (latest)"]
    if name == "model-monitor" and image != MONITOR_IMAGE:
        return [f"{where}: image {image!r}, expected {MONITOR_IMAGE} (the package version)"]
    return []


def k8s_image_problems(objs: list[Obj]) -> list[str]:
    return [
        p
        for o, _, c in containers(objs)
        for p in image_problems(c["image"], f"{ref(o)} {c['name']}")
    ]


# --- ports ----------------------------------------------------------------------------------------


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_port(c: Obj, port: int | str) -> int | None:
    """The number of a container's port given by name or number (None: not declared)."""
    for p in c.get("ports", []):
        if port in (p.get("name"), p["containerPort"]):
            return int(p["containerPort"])
    return None


def port_problems(objs: list[Obj]) -> list[str]:
    """Every Service selects pods whose containers have its target ports; every
    ServiceMonitor selects Services that have its endpoint ports; every probe's port
    is a port of its container."""
    problems = []
    services = [o for o in objs if o["kind"] == "Service"]
    for svc in services:
        if svc["spec"].get("type") == "ExternalName":
            continue
        selector = svc["spec"].get("selector", {})
        pods = [(o, spec) for o, spec in workloads(objs) if selects(selector, pod_labels(o))]
        if not pods:
            problems.append(f"{ref(svc)}: selects no workload")
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for o, spec in pods:
                if not any(container_port(c, target) for c in spec["containers"]):
                    problems.append(f"{ref(svc)}: targetPort {target!r} is no port of {ref(o)}")
    for sm in (o for o in objs if o["kind"] == "ServiceMonitor"):
        labels = sm["spec"]["selector"].get("matchLabels", {})
        ns = sm["metadata"].get("namespace")
        matched = [
            s
            for s in services
            if s["metadata"].get("namespace") == ns and selects(labels, s["metadata"]["labels"])
        ]
        if not matched:
            problems.append(f"{ref(sm)}: selects no Service")
        for ep in sm["spec"]["endpoints"]:
            for s in matched:
                if ep["port"] not in {p.get("name") for p in s["spec"]["ports"]}:
                    problems.append(f"{ref(sm)}: port {ep['port']!r} is no port of {ref(s)}")
    for o, _, c in containers(objs):
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            action = (c.get(probe) or {}).get("httpGet") or (c.get(probe) or {}).get("tcpSocket")
            if action and container_port(c, action["port"]) is None:
                problems.append(
                    f"{ref(o)} {c['name']}: {probe} port {action['port']!r} is no container port"
                )
    return problems


# --- volumes, ConfigMaps, Secrets -----------------------------------------------------------------

_KUBECTL_CREATE = re.compile(
    r"kubectl -n (?P<ns>\S+) create (?P<kind>secret generic|configmap) (?P<name>[a-z0-9-]+)"
    r"(?P<args>(?:[^\n]*\\\n)*[^\n]*)"
)


def documented(readme: str) -> dict[tuple[str, str], str]:
    """``(kind, name) -> arguments`` of the ``kubectl create`` commands of the README."""
    out: dict[tuple[str, str], str] = {}
    for m in _KUBECTL_CREATE.finditer(readme):
        kind = "Secret" if m["kind"].startswith("secret") else "ConfigMap"
        out[(kind, m["name"])] = out.get((kind, m["name"]), "") + m["args"]
    return out


def volume_problems(objs: list[Obj], readme: str = README) -> list[str]:
    """Every volumeMount has a volume and every volume is mounted; every ConfigMap,
    Secret and claim exists, or a documented ``kubectl create`` makes it (with the keys
    the pod asks for, for Secrets)."""
    problems = []
    known = {(o["kind"], o["metadata"]["name"]) for o in objs}
    docs = documented(readme)
    for o, spec in workloads(objs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounted = set()
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            for m in c.get("volumeMounts", []):
                mounted.add(m["name"])
                if m["name"] not in volumes:
                    problems.append(
                        f"{ref(o)} {c['name']}: volumeMount {m['name']!r} has no volume"
                    )
        for name in volumes.keys() - mounted:
            problems.append(f"{ref(o)}: volume {name!r} is not mounted")
        for v in volumes.values():
            if "configMap" in v:
                kind, name = "ConfigMap", v["configMap"]["name"]
                items = v["configMap"].get("items", [])
            elif "secret" in v:
                kind, name = "Secret", v["secret"]["secretName"]
                items = v["secret"].get("items", [])
            elif "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                if ("PersistentVolumeClaim", claim) not in known:
                    problems.append(f"{ref(o)}: claim {claim!r} is not in the manifests")
                continue
            else:
                continue
            if (kind, name) in known:
                continue
            if (kind, name) not in docs:
                problems.append(
                    f"{ref(o)}: {kind} {name!r} is neither in the manifests nor created by "
                    "a kubectl command in deploy/README.md"
                )
                continue
            for item in items:
                if kind == "Secret" and f"{item['key']}=" not in docs[(kind, name)]:
                    problems.append(
                        f"{ref(o)}: key {item['key']!r} of {kind} {name!r} is not created by "
                        "the README's kubectl command"
                    )
    for cfg in (o for o in objs if o["kind"] == "AlertmanagerConfig"):
        for secret in _secret_refs(cfg["spec"]):
            name, key = secret["name"], secret["key"]
            if ("Secret", name) not in known and f"{key}=" not in docs.get(("Secret", name), ""):
                problems.append(f"{ref(cfg)}: Secret {name!r} key {key!r} is not created")
    return problems


def _secret_refs(node: Any) -> Iterator[Obj]:
    if isinstance(node, dict):
        if set(node) >= {"name", "key"} and len(node) <= 3:
            yield node
        for v in node.values():
            yield from _secret_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _secret_refs(v)


# --- the monitor command lines --------------------------------------------------------------------


@dataclass
class Invocation:
    """A parsed ``monitor`` command line."""

    path: tuple[str, ...]
    """The command, e.g. ``("drift", "serve")``."""
    params: dict[str, Any]


def parse_cli(args: list[str]) -> Invocation:
    """Parse ``monitor ARGS`` with the CLI's own click commands (no command runs).

    Raises:
        click.ClickException: unknown command or option, a missing required option, a
            bad value.
    """
    cmd: click.Command = cli_main
    ctx = click.Context(cli_main, info_name="monitor")
    tokens = list(args)
    path: list[str] = []
    while isinstance(cmd, click.Group):
        # The subcommand is the first command name whose preceding tokens parse as the
        # group's own options (e.g. ``--log-level debug``).
        starts = [i for i, t in enumerate(tokens) if cmd.get_command(ctx, t) is not None]
        if not starts:
            word = next((t for t in tokens if not t.startswith("-")), "")
            raise click.UsageError(f"no such command {word!r} in {' '.join(args)}")
        error: click.ClickException | None = None
        for i in starts:
            try:
                if i:
                    cmd.make_context(ctx.info_name, tokens[:i], parent=ctx.parent)
            except click.ClickException as exc:
                error = error or exc
                continue
            break
        else:
            assert error is not None
            raise error
        token = tokens[i]
        sub = cmd.get_command(ctx, token)
        assert sub is not None
        path.append(token)
        ctx = click.Context(sub, info_name=token, parent=ctx)
        cmd, tokens = sub, tokens[i + 1 :]
    parsed = cmd.make_context(ctx.info_name, tokens, parent=ctx.parent)
    return Invocation(tuple(path), dict(parsed.params))


def listen_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def listens(inv: Invocation, spec: MonitorSpec) -> dict[str, tuple[str, int]]:
    """The addresses a monitor process listens on, by role."""
    p = inv.params
    match inv.path:
        case ("sidecar",):
            return {"proxy": listen_port(p["listen"]), "metrics": listen_port(p["metrics_listen"])}
        case ("drift", "serve") | ("canary", "run"):
            return {"metrics": listen_port(p["metrics_listen"])}
        case ("mitigator",):
            return {"metrics": listen_port(p["listen"] or spec.mitigator.listen)}
        case ("gpu-exporter",):
            return {"metrics": listen_port(p["listen"])}
    return {}


@dataclass
class Need:
    """A path a process reads or writes."""

    path: str
    write: bool
    what: str


def needs(inv: Invocation, spec: MonitorSpec, env: dict[str, str]) -> list[Need]:
    """The files and directories a monitor process uses, from its command and the spec."""
    p = inv.params
    out = [Need(str(p["config"]), False, "--config")] if "config" in p else []
    cache = spec.drift.cache_dir or PurePosixPath(env["XDG_CACHE_HOME"]) / "monitor" / "drift"
    match inv.path:
        case ("sidecar",):
            m = spec.model(p["model"])
            if m.capture:
                out.append(Need(str(m.capture.dir), True, "capture.dir"))
            if m.control and m.control.token_file:
                out.append(Need(str(m.control.token_file), False, "control.token_file"))
            if m.control and m.control.state_file:
                parent = str(PurePosixPath(m.control.state_file).parent)
                out.append(Need(parent, True, "control.state_file's directory"))
        case ("drift", "serve") | ("drift", "run"):
            models = (
                [spec.model(p["model"])]
                if "model" in p
                else [m for m in spec.models if m.baseline is not None]
            )
            for m in models:
                out.append(Need(str(m.baseline), False, f"{m.name} baseline"))
                if m.capture:
                    out.append(Need(str(m.capture.dir), False, "capture.dir"))
            reports = p["out"] if inv.path[1] == "run" else spec.drift.out_dir
            out += [Need(str(reports), True, "drift reports"), Need(str(cache), True, "cache")]
        case ("canary", "run"):
            for m in spec.models:
                if m.canary:
                    out.append(Need(str(m.canary.golden), False, f"{m.name} golden set"))
        case ("mitigator",):
            mit = spec.mitigator
            if mit.token_file:
                out.append(Need(str(mit.token_file), False, "mitigator.token_file"))
            for m in spec.models:
                if m.control and m.control.token_file:
                    out.append(Need(str(m.control.token_file), False, "control.token_file"))
            if mit.store.startswith("sqlite:///"):
                db = PurePosixPath(mit.store[len("sqlite:///") :])
                out.append(Need(str(db.parent), True, "mitigator store"))
    return out


def dockerfile_env() -> dict[str, str]:
    """``ENV`` of the image (the final stage's ``KEY=VALUE`` pairs)."""
    text = DOCKERFILE.replace("\\\n", " ").rpartition("\nFROM ")[2]
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                k, _, v = pair.partition("=")
                env[k] = v
    return env


IMAGE_ENV = dockerfile_env()


@dataclass
class Mount:
    """A mount point as the checks see it: compose and Kubernetes alike."""

    target: str
    writable: bool
    keys: set[str] | None = None
    """Files a ConfigMap/Secret mount holds, when known (None: unknown, a directory)."""


def covered(path: str, mounts: list[Mount]) -> Mount | None:
    """The innermost mount that holds ``path``."""
    best = None
    for m in mounts:
        t = m.target.rstrip("/")
        if (path == t or path.startswith(t + "/")) and (best is None or len(t) > len(best.target)):
            best = m
    return best


def need_problems(
    where: str, ns: list[Need], mounts: list[Mount], read_only_root: bool
) -> list[str]:
    problems = []
    for n in ns:
        m = covered(n.path, mounts)
        if m is None:
            problems.append(f"{where}: {n.what} {n.path} is on no volume")
            continue
        if n.write and not m.writable:
            problems.append(f"{where}: {n.what} {n.path} is written but its volume is read-only")
        rel = PurePosixPath(n.path).relative_to(m.target).as_posix()
        if m.keys is not None and rel != "." and rel.split("/")[0] not in m.keys:
            problems.append(f"{where}: {n.what} {n.path}: no key {rel!r} in {m.target}")
    if read_only_root:
        m = covered("/tmp", mounts)
        if m is None or not m.writable:
            problems.append(f"{where}: read-only root file system without a writable /tmp")
    return problems


def k8s_mounts(spec: Obj, c: Obj, objs: list[Obj]) -> list[Mount]:
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    out = []
    for vm in c.get("volumeMounts", []):
        v = volumes.get(vm["name"], {})
        keys: set[str] | None = None
        writable = not vm.get("readOnly", False)
        if "configMap" in v or "secret" in v:
            writable = False
            src = v.get("configMap") or v["secret"]
            if src.get("items"):
                keys = {i["path"] for i in src["items"]}
            elif "configMap" in v:
                cm = [o for o in objs if o["kind"] == "ConfigMap"]
                match = [o for o in cm if o["metadata"]["name"] == src["name"]]
                keys = set(match[0].get("data", {})) if match else None
        if (v.get("persistentVolumeClaim") or {}).get("readOnly"):
            writable = False
        out.append(Mount(vm["mountPath"], writable, keys))
    return out


def monitor_container_problems(objs: list[Obj], spec: MonitorSpec = STACK) -> list[str]:
    """Each monitor container: its args parse; its listen addresses are reachable
    (0.0.0.0) and exactly its container ports; probes use the metrics port; the paths it
    uses are mounted (writable where written, the right keys of ConfigMaps and Secrets)."""
    problems = []
    for o, pspec, c in containers(objs):
        if not is_monitor(c["image"]):
            continue
        where = f"{ref(o)} {c['name']}"
        if c.get("command"):
            problems.append(f"{where}: command replaces the image's entrypoint (monitor)")
        try:
            inv = parse_cli([str(a) for a in c.get("args", [])])
        except click.ClickException as exc:
            problems.append(
                f"{where}: monitor {' '.join(c.get('args', []))}: {exc.format_message()}"
            )
            continue
        addrs = listens(inv, spec)
        for role, (host, port) in addrs.items():
            if host not in ("0.0.0.0", "", "[::]"):
                problems.append(
                    f"{where}: {role} listens on {host}:{port}, unreachable from outside"
                )
        declared = {int(p["containerPort"]) for p in c.get("ports", [])}
        if declared != {port for _, port in addrs.values()}:
            problems.append(
                f"{where}: containerPorts {sorted(declared)} but it listens on "
                f"{sorted(port for _, port in addrs.values())}"
            )
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = (c.get(probe) or {}).get("httpGet")
            if get and container_port(c, get["port"]) != addrs.get("metrics", ("", -1))[1]:
                problems.append(f"{where}: {probe} is not on the metrics port")
        env = {**IMAGE_ENV, **{e["name"]: e.get("value", "") for e in c.get("env", [])}}
        ro_root = bool((c.get("securityContext") or {}).get("readOnlyRootFilesystem"))
        problems += need_problems(where, needs(inv, spec, env), k8s_mounts(pspec, c, objs), ro_root)
    return problems


# --- names the spec uses --------------------------------------------------------------------------


def service_port(objs: list[Obj], host: str, port: int, namespace: str = dep.NAMESPACE) -> bool:
    """``host`` (``svc`` or ``svc.ns.svc``) is a Service with ``port``."""
    name, _, rest = host.partition(".")
    ns = rest.removesuffix(".svc").removesuffix(".svc.cluster.local") or namespace
    return any(
        o["kind"] == "Service"
        and o["metadata"]["name"] == name
        and o["metadata"].get("namespace") == ns
        and port in {p["port"] for p in o["spec"]["ports"]}
        for o in objs
    )


def url_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 80


def k8s_name_problems(objs: list[Obj], spec: MonitorSpec = STACK) -> list[str]:
    """The spec's and the manifests' URLs name Services with those ports; in a pod that
    runs a sidecar, the upstream's host is the pod itself (hostAliases) and a container
    of the pod serves the upstream's port."""
    problems = []
    for m in spec.models:
        for url in [*m.replica_urls, *([m.fallback_upstream] if m.fallback_upstream else [])]:
            host, port = url_host_port(url)
            if not service_port(objs, host, port):
                problems.append(f"model {m.name}: {url}: no Service {host} with port {port}")
    if spec.mitigator.prometheus_url:
        host, port = url_host_port(spec.mitigator.prometheus_url)
        if not service_port(objs, host, port):
            problems.append(f"mitigator.prometheus_url: no Service {host} with port {port}")
    for o, pspec, c in containers(objs):
        if not is_monitor(c["image"]):
            continue
        try:
            inv = parse_cli([str(a) for a in c.get("args", [])])
        except click.ClickException:
            continue  # monitor_container_problems reports it
        if inv.path == ("sidecar",):
            m = spec.model(inv.params["model"])
            host, port = m.upstream_host, m.upstream_port
            aliases = {
                h
                for a in pspec.get("hostAliases", [])
                if a["ip"] == "127.0.0.1"
                for h in a["hostnames"]
            }
            if host not in aliases | {"127.0.0.1", "localhost"}:
                problems.append(f"{ref(o)}: upstream {host} is not this pod (hostAliases)")
            if not any(container_port(x, port) for x in pspec["containers"] if x is not c):
                problems.append(f"{ref(o)}: no container of the pod serves port {port}")
        push = inv.params.get("pushgateway")
        if push and not service_port(objs, *url_host_port(push)):
            problems.append(f"{ref(o)}: --pushgateway {push}: no such Service and port")
    for cfg in (o for o in objs if o["kind"] == "AlertmanagerConfig"):
        for r in cfg["spec"]["receivers"]:
            for hook in r.get("webhookConfigs", []):
                host, port = url_host_port(hook["url"])
                if "." in host and host.endswith(".svc") and not service_port(objs, host, port):
                    problems.append(f"{ref(cfg)}: {hook['url']}: no such Service and port")
    return problems


def job_problems(objs: list[Obj], spec: MonitorSpec = STACK) -> list[str]:
    """ServiceMonitors give each process the job label the generated rules select."""
    expected = {
        ("sidecar",): spec.alerting.sidecar_job,
        ("drift", "serve"): spec.alerting.drift_job,
        ("gpu-exporter",): spec.alerting.gpu_job,
    }
    problems = []
    services = [o for o in objs if o["kind"] == "Service"]
    for sm in (o for o in objs if o["kind"] == "ServiceMonitor"):
        jobs = {
            r.get("replacement")
            for ep in sm["spec"]["endpoints"]
            for r in ep.get("relabelings", [])
            if r.get("targetLabel") == "job"
        }
        labels = sm["spec"]["selector"].get("matchLabels", {})
        for svc in (s for s in services if selects(labels, s["metadata"]["labels"])):
            for o, _, c in containers(objs):
                if not (is_monitor(c["image"]) and selects(svc["spec"]["selector"], pod_labels(o))):
                    continue
                try:
                    path = parse_cli([str(a) for a in c["args"]]).path
                except click.ClickException:
                    continue  # monitor_container_problems reports it
                if path in expected and jobs != {expected[path]}:
                    problems.append(
                        f"{ref(sm)}: job {jobs or '(Service name)'}, the rules "
                        f"expect {expected[path]!r} for monitor {' '.join(path)}"
                    )
    return problems


def cronjob_problems(objs: list[Obj], spec: MonitorSpec = STACK) -> list[str]:
    """A drift CronJob runs every drift.schedule_seconds (``*/N * * * *``)."""
    problems = []
    for cj in (o for o in objs if o["kind"] == "CronJob"):
        m = re.fullmatch(r"\*/(\d+) \* \* \* \*", cj["spec"]["schedule"])
        if m is None or int(m[1]) * 60 != spec.drift.schedule_seconds:
            problems.append(
                f"{ref(cj)}: schedule {cj['spec']['schedule']!r} is not every "
                f"drift.schedule_seconds ({spec.drift.schedule_seconds:g} s)"
            )
    return problems


def gpu_problems(objs: list[Obj], spec: MonitorSpec = STACK) -> list[str]:
    """A GPU exporter DaemonSet runs only on GPU nodes, sees the GPUs through the NVIDIA
    runtime, and is the only exporter of the GPUs (the sidecars' collector is off)."""
    problems = []
    for ds, pod in workloads(objs):
        args = [c.get("args", [])[:1] for c in pod["containers"] if is_monitor(c["image"])]
        if ds["kind"] != "DaemonSet" or ["gpu-exporter"] not in args:
            continue
        if not pod.get("nodeSelector") and not pod.get("affinity"):
            problems.append(f"{ref(ds)}: runs on every node, not only GPU nodes")
        env = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
        if env.get("NVIDIA_VISIBLE_DEVICES") != "all":
            problems.append(f"{ref(ds)}: NVIDIA_VISIBLE_DEVICES=all missing: NVML sees no GPU")
        for m in spec.models:
            if m.gpu_metrics:
                problems.append(f"model {m.name}: gpu_metrics is on: GPUs exported twice")
    return problems


def all_k8s_problems(objs: list[Obj]) -> list[str]:
    return [
        *[p for o in objs for p in object_problems(o)],
        *k8s_image_problems(objs),
        *port_problems(objs),
        *volume_problems(objs),
        *monitor_container_problems(objs),
        *k8s_name_problems(objs),
        *job_problems(objs),
        *cronjob_problems(objs),
        *gpu_problems(objs),
    ]


# --- Kubernetes: the committed manifests ----------------------------------------------------------


def test_the_kustomization_lists_every_manifest_of_its_directory() -> None:
    for directory in (K8S, K8S / "drift-cronjob"):
        k = yaml_docs(directory / "kustomization.yaml")[0]
        generated = {f for g in k.get("configMapGenerator", []) for f in g.get("files", [])}
        on_disk = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
        assert on_disk == set(k["resources"]) | generated, directory
        assert k["namespace"] == dep.NAMESPACE


def test_every_object_is_a_valid_api_object_or_crd() -> None:
    objs = cluster()
    assert {o["kind"] for o in objs} >= {
        "Namespace", "Deployment", "DaemonSet", "CronJob", "Service", "ConfigMap",
        "PersistentVolumeClaim", "ServiceMonitor", "PrometheusRule", "AlertmanagerConfig",
    }  # fmt: skip
    assert [p for o in objs for p in object_problems(o)] == []


def test_the_manifests_pass_every_cross_check() -> None:
    assert all_k8s_problems(cluster()) == []


def test_the_configmap_holds_the_stack_spec_and_it_is_valid() -> None:
    cm = find(BASE, "ConfigMap", "monitor-config")
    text = cm["data"]["monitor.yaml"]
    spec = parse_spec(yaml.safe_load(text), "monitor-config")
    assert spec == STACK
    assert [m.name for m in spec.models] == [m.name for m in DEMO.models]


def test_the_stack_spec_gives_the_rules_of_the_demo_spec_and_of_alerts() -> None:
    committed = yaml_docs(ROOT / "alerts" / f"{DEMO.service}.rules.yml")[0]
    assert build_rules(STACK) == build_rules(DEMO) == committed


def test_the_prometheusrule_holds_the_generated_rules() -> None:
    rule = find(BASE, "PrometheusRule", f"{STACK.service}-rules")
    committed = yaml_docs(ROOT / "alerts" / f"{DEMO.service}.rules.yml")[0]
    assert rule["spec"] == build_rules(STACK) == committed
    assert rule["spec"]["groups"][0]["name"] == "demo-slo-bc-availability"


def test_the_generated_deploy_files_are_up_to_date() -> None:
    stale = dep.check(ROOT)
    assert stale == {}, "run: .venv/bin/python -m monitor.deploy\n" + "".join(stale.values())


def test_the_alertmanagerconfig_routes_like_the_generated_alertmanager_config() -> None:
    cfg = find(BASE, "AlertmanagerConfig", STACK.service)["spec"]
    mitigator = cfg["route"]["routes"][0]
    assert mitigator["receiver"] == "mitigator" and mitigator["continue"] is True
    assert mitigator["matchers"] == [{"name": "mitigation", "matchType": "=~", "value": ".+"}]
    hook = find(BASE, "AlertmanagerConfig", STACK.service)["spec"]["receivers"][1]
    assert hook["webhookConfigs"] == [
        {
            "url": "http://mitigator.monitor.svc:9500/v1/alerts",
            "sendResolved": True,
            "httpConfig": {
                "authorization": {
                    "type": "Bearer",
                    "credentials": {"name": "monitor-tokens", "key": "mitigator.token"},
                }
            },
        }
    ]
    assert [r["equal"] for r in cfg["inhibitRules"]] == [
        ["model"], ["model"], ["alertname", "model", "slo"],
    ]  # fmt: skip


def test_the_sidecar_pod_is_wired_as_the_docs_say() -> None:
    objs = cluster()
    pod = pod_spec(find(objs, "Deployment", "bc"))
    assert pod is not None
    sidecar = next(c for c in pod["containers"] if c["name"] == "sidecar")
    inv = parse_cli(sidecar["args"])
    assert inv.path == ("sidecar",)
    assert inv.params == {
        "config": Path("/etc/monitor/config/monitor.yaml"),
        "model": "bc",
        "listen": "0.0.0.0:8000",
        "metrics_listen": "0.0.0.0:9400",
    }
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "metrics"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "metrics"}
    assert pod["hostAliases"] == [{"ip": "127.0.0.1", "hostnames": ["mlserver"]}]
    svc = find(objs, "Service", "bc")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"http": 8000, "metrics": 9400}


def test_the_kubectl_commands_of_the_readme_create_what_the_manifests_do_not() -> None:
    docs = documented(README)
    assert set(docs) == {
        ("Secret", "monitor-tokens"),
        ("ConfigMap", "bc-model"),
        ("ConfigMap", "bc-model-fallback"),
        ("ConfigMap", "monitor-data"),
    }
    assert "control.token=" in docs[("Secret", "monitor-tokens")]
    assert "mitigator.token=" in docs[("Secret", "monitor-tokens")]


# --- Kubernetes: each check finds its fault -------------------------------------------------------


def _container(objs: list[Obj], workload: str, name: str) -> Obj:
    for o, _, c in containers(objs):
        if o["metadata"]["name"] == workload and c["name"] == name:
            return c
    raise KeyError(f"{workload}/{name}")


def test_an_unknown_field_fails_the_api_check() -> None:
    objs = cluster()
    _container(objs, "bc", "sidecar")["ports"][0]["containerPortt"] = 8000
    assert api_problems(find(objs, "Deployment", "bc")) == [
        "Deployment/bc.spec.template.spec.containers[1].ports[0].containerPortt: "
        "unknown field of V1ContainerPort"
    ]


def test_a_python_attribute_name_is_an_unknown_field() -> None:
    objs = cluster()
    port = _container(objs, "bc", "sidecar")["ports"][0]
    port["container_port"] = port.pop("containerPort")
    problems = api_problems(find(objs, "Deployment", "bc"))
    assert any("container_port: unknown field" in p for p in problems), problems


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["ports"][0].update(containerPort="8000"), "Input should be a valid integer"),
        (lambda c: c.pop("name"), "name\n  Input should be a valid string"),
        (lambda c: c["resources"]["limits"].update(memory=1), "limits.memory"),
        (lambda c: c.update(args="sidecar"), "Input should be a valid list"),
    ],
    ids=["int-as-string", "missing-required-name", "quantity-as-int", "args-not-a-list"],
)
def test_a_wrong_type_or_missing_field_fails_the_api_check(mutate: Any, expected: str) -> None:
    objs = cluster()
    mutate(_container(objs, "bc", "sidecar"))
    problems = api_problems(find(objs, "Deployment", "bc"))
    assert len(problems) == 1 and expected in problems[0], problems


def test_a_kind_outside_the_core_api_fails() -> None:
    assert api_problems({"apiVersion": "extensions/v1beta1", "kind": "Ingress"}) == [
        "Ingress (extensions/v1beta1): not a core v1 kind this test knows"
    ]


def test_the_crd_checks_find_typos_and_broken_references() -> None:
    objs = cluster()
    sm = find(objs, "ServiceMonitor", "model-sidecar")
    sm["spec"]["endpoints"][0]["intervall"] = "15s"
    assert crd_problems(sm) == [
        "ServiceMonitor/model-sidecar.spec.endpoints[0].intervall: unknown field"
    ]
    rule = find(objs, "PrometheusRule", "demo-rules")
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    assert crd_problems(rule) == [
        "PrometheusRule/demo-rules.spec.groups[0].rules[0].expr: required"
    ]
    rule = find(cluster(), "PrometheusRule", "demo-rules")
    rule["spec"]["groups"][0]["rules"][0]["alert"] = "X"
    assert len(crd_problems(rule)) == 1 and "record or alert" in crd_problems(rule)[0]
    amc = find(objs, "AlertmanagerConfig", "demo")
    amc["spec"]["route"]["routes"][0]["receiver"] = "pagerr"
    assert crd_problems(amc) == ["route receiver 'pagerr' is not a receiver"]
    amc["spec"]["route"]["routes"][0]["matchers"][0]["matchType"] = "=="
    assert "not one of" in crd_problems(amc)[0]


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        ("seldonio/mlserver:latest", "is not pinned"),
        ("seldonio/mlserver", "has no tag"),
        ("localhost:5000/mlserver", "has no tag"),
        ("model-monitor:0.0.9", "expected model-monitor:0.1.0"),
    ],
)
def test_an_unpinned_image_fails(image: str, problem: str) -> None:
    objs = cluster()
    _container(objs, "bc", "mlserver")["image"] = image
    problems = k8s_image_problems(objs)
    assert len(problems) == 1 and problem in problems[0], problems


def test_pinned_images_pass() -> None:
    assert image_problems("prom/prometheus@sha256:" + "0" * 64, "x") == []
    assert image_problems("registry:5000/a/b:1.2", "x") == []


def test_a_missing_port_fails() -> None:
    objs = cluster()
    find(objs, "Service", "bc")["spec"]["ports"][1]["targetPort"] = "metric"
    assert port_problems(objs) == ["Service/bc: targetPort 'metric' is no port of Deployment/bc"]
    objs = cluster()
    find(objs, "ServiceMonitor", "drift")["spec"]["endpoints"][0]["port"] = "http"
    assert port_problems(objs) == ["ServiceMonitor/drift: port 'http' is no port of Service/drift"]
    objs = cluster()
    _container(objs, "mitigator", "mitigator")["livenessProbe"]["httpGet"]["port"] = 9501
    assert port_problems(objs) == [
        "Deployment/mitigator mitigator: livenessProbe port 9501 is no container port"
    ]
    objs = cluster()
    find(objs, "Service", "canary")["spec"]["selector"] = {"app.kubernetes.io/name": "kanary"}
    assert port_problems(objs)[0] == "Service/canary: selects no workload"


def test_volume_faults_fail() -> None:
    objs = cluster()
    _container(objs, "canary", "canary")["volumeMounts"].append(
        {"name": "golden", "mountPath": "/golden"}
    )
    assert volume_problems(objs) == ["Deployment/canary canary: volumeMount 'golden' has no volume"]
    objs = cluster()
    pod = pod_spec(find(objs, "Deployment", "drift"))
    assert pod is not None
    next(v for v in pod["volumes"] if v["name"] == "data")["configMap"]["name"] = "drift-data"
    assert volume_problems(objs) == [
        "Deployment/drift: ConfigMap 'drift-data' is neither in the manifests nor created by a "
        "kubectl command in deploy/README.md"
    ]
    objs = cluster()
    objs.remove(find(objs, "PersistentVolumeClaim", "mitigator-store"))
    assert volume_problems(objs) == [
        "Deployment/mitigator: claim 'mitigator-store' is not in the manifests"
    ]
    readme = README.replace("--from-file=mitigator.token=", "--from-file=mitigator-token=")
    assert volume_problems(cluster(), readme) == [
        "Deployment/mitigator: key 'mitigator.token' of Secret 'monitor-tokens' is not created "
        "by the README's kubectl command",
        "AlertmanagerConfig/demo: Secret 'monitor-tokens' key 'mitigator.token' is not created",
    ]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["sidecar", "--config", "/etc/monitor/config/monitor.yaml", "--model", "bc",
          "--metrics-port", "9400"], "No such option '--metrics-port'"),
        (["sidecar", "--config", "/etc/monitor/config/monitor.yaml"], "Missing option '--model'"),
        (["drift", "watch", "--config", "x"], "no such command 'watch'"),
        (["drift", "run", "--config", "x", "--model", "bc", "--engine", "turbo"], "'turbo'"),
    ],
    ids=["unknown-option", "missing-required", "unknown-command", "bad-choice"],
)  # fmt: skip
def test_an_invalid_command_line_fails(args: list[str], problem: str) -> None:
    objs = cluster()
    _container(objs, "bc", "sidecar")["args"] = args
    problems = monitor_container_problems(objs)
    assert len(problems) == 1 and problem in problems[0], problems


def test_group_options_before_the_command_parse() -> None:
    inv = parse_cli(["--log-level", "debug", "canary", "run", "--config", "c.yaml"])
    assert inv.path == ("canary", "run") and inv.params["metrics_listen"] == "127.0.0.1:9402"
    with pytest.raises(click.BadParameter):
        parse_cli(["--log-level", "loud", "canary", "run", "--config", "c.yaml"])


def test_listen_addresses_must_match_the_container_ports() -> None:
    objs = cluster()
    args = _container(objs, "drift", "drift")["args"]
    args[args.index("--metrics-listen") + 1] = "0.0.0.0:9411"
    assert monitor_container_problems(objs) == [
        "Deployment/drift drift: containerPorts [9401] but it listens on [9411]",
        "Deployment/drift drift: livenessProbe is not on the metrics port",
    ]
    objs = cluster()
    args = _container(objs, "canary", "canary")["args"]
    args[args.index("--metrics-listen") + 1] = "127.0.0.1:9402"
    assert monitor_container_problems(objs) == [
        "Deployment/canary canary: metrics listens on 127.0.0.1:9402, unreachable from outside"
    ]
    objs = cluster()
    _container(objs, "bc", "sidecar")["readinessProbe"]["httpGet"]["port"] = "http"
    assert monitor_container_problems(objs) == [
        "Deployment/bc sidecar: readinessProbe is not on the metrics port"
    ]


def test_the_spec_paths_must_be_mounted() -> None:
    objs = cluster()
    c = _container(objs, "bc", "sidecar")
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "capture"]
    pod = pod_spec(find(objs, "Deployment", "bc"))
    assert pod is not None
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "capture"]
    assert monitor_container_problems(objs) == [
        "Deployment/bc sidecar: capture.dir /var/lib/monitor/capture is on no volume"
    ]
    objs = cluster()
    m = next(
        m
        for m in _container(objs, "mitigator", "mitigator")["volumeMounts"]
        if m["name"] == "store"
    )
    m["readOnly"] = True
    assert monitor_container_problems(objs) == [
        "Deployment/mitigator mitigator: mitigator store /var/lib/monitor/mitigator is written "
        "but its volume is read-only"
    ]
    objs = cluster()
    pod = pod_spec(find(objs, "Deployment", "mitigator"))
    assert pod is not None
    tokens = next(v for v in pod["volumes"] if v["name"] == "tokens")
    tokens["secret"]["items"] = tokens["secret"]["items"][:1]
    assert monitor_container_problems(objs) == [
        "Deployment/mitigator mitigator: mitigator.token_file "
        "/run/secrets/monitor/mitigator.token: no key 'mitigator.token' in /run/secrets/monitor"
    ]
    objs = cluster()
    c = _container(objs, "canary", "canary")
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "tmp"]
    problems = monitor_container_problems(objs)
    assert problems == [
        "Deployment/canary canary: read-only root file system without a writable /tmp"
    ]


def test_names_the_spec_uses_must_resolve() -> None:
    objs = cluster()
    objs.remove(find(objs, "Service", "mlserver-fallback"))
    assert k8s_name_problems(objs) == [
        "model bc: http://mlserver-fallback:8080: no Service mlserver-fallback with port 8080"
    ]
    objs = cluster()
    pod = pod_spec(find(objs, "Deployment", "bc"))
    assert pod is not None
    del pod["hostAliases"]
    assert k8s_name_problems(objs) == [
        "Deployment/bc: upstream mlserver is not this pod (hostAliases)"
    ]
    objs = cluster()
    find(objs, "Service", "pushgateway")["spec"]["ports"][0]["port"] = 9092
    assert k8s_name_problems(objs) == [
        "CronJob/drift-bc: --pushgateway http://pushgateway:9091: no such Service and port"
    ]
    objs = cluster()
    find(objs, "Service", "mitigator")["metadata"]["name"] = "mitigator-webhook"
    assert k8s_name_problems(objs) == [
        "AlertmanagerConfig/demo: http://mitigator.monitor.svc:9500/v1/alerts: "
        "no such Service and port"
    ]


def test_a_wrong_job_label_or_schedule_fails() -> None:
    objs = cluster()
    find(objs, "ServiceMonitor", "model-sidecar")["spec"]["endpoints"][0]["relabelings"] = []
    assert job_problems(objs) == [
        "ServiceMonitor/model-sidecar: job (Service name), the rules expect 'model-sidecar' for "
        "monitor sidecar"
    ]
    objs = cluster()
    find(objs, "CronJob", "drift-bc")["spec"]["schedule"] = "*/10 * * * *"
    assert cronjob_problems(objs) == [
        "CronJob/drift-bc: schedule '*/10 * * * *' is not every drift.schedule_seconds (300 s)"
    ]


def test_gpu_exporter_faults_fail() -> None:
    objs = cluster()
    pod = pod_spec(find(objs, "DaemonSet", "gpu-exporter"))
    assert pod is not None
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["runtimeClassName"] == "nvidia"
    del pod["nodeSelector"]
    pod["containers"][0]["env"] = []
    assert gpu_problems(objs) == [
        "DaemonSet/gpu-exporter: runs on every node, not only GPU nodes",
        "DaemonSet/gpu-exporter: NVIDIA_VISIBLE_DEVICES=all missing: NVML sees no GPU",
    ]
    doc = yaml.safe_load((ROOT / dep.STACK_SPEC).read_text())
    doc["models"][0]["gpu_metrics"] = True
    assert gpu_problems(cluster(), parse_spec(doc)) == [
        "model bc: gpu_metrics is on: GPUs exported twice"
    ]


def test_a_changed_prometheusrule_is_caught(tmp_path: Path) -> None:
    for rel in (dep.STACK_SPEC, dep.PROMETHEUSRULE_FILE, dep.ALERTMANAGERCONFIG_FILE,
                dep.COMPOSE_ALERTMANAGER_FILE):  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    assert dep.check(tmp_path) == {}
    path = tmp_path / dep.PROMETHEUSRULE_FILE
    path.write_text(path.read_text().replace("expr: vector(0.999)", "expr: vector(0.99)"))
    stale = dep.check(tmp_path)
    assert list(stale) == [dep.PROMETHEUSRULE_FILE]
    diff = stale[dep.PROMETHEUSRULE_FILE]
    assert "\n-          expr: vector(0.99)\n+          expr: vector(0.999)\n" in diff
    assert dep.main(["--root", str(tmp_path), "--check"]) == 1
    assert dep.main(["--root", str(tmp_path)]) == 0
    assert dep.check(tmp_path) == {}


def test_an_invalid_spec_in_the_configmap_fails() -> None:
    cm = find(cluster(), "ConfigMap", "monitor-config")
    doc = yaml.safe_load(cm["data"]["monitor.yaml"])
    doc["models"][0]["capture"]["sample_rate"] = 2
    with pytest.raises(SpecError) as exc:
        parse_spec(doc)
    assert exc.value.problems == [
        "models[0].capture.sample_rate: Input should be less than or equal to 1"
    ]


# --- monitor.deploy -------------------------------------------------------------------------------


def test_parse_matcher() -> None:
    assert dep.parse_matcher('alertname!~"A|B"') == {
        "name": "alertname", "matchType": "!~", "value": "A|B",
    }  # fmt: skip
    assert dep.parse_matcher('x="a\\"b"') == {"name": "x", "matchType": "=", "value": 'a"b'}
    with pytest.raises(ValueError, match="expected a matcher"):
        dep.parse_matcher("severity=page")


def test_namespaced_url_and_secret_key() -> None:
    assert dep.namespaced_url("http://mitigator:9500/v1/alerts", "ns") == (
        "http://mitigator.ns.svc:9500/v1/alerts"
    )
    assert dep.namespaced_url("https://hooks.example.com/x", "ns") == "https://hooks.example.com/x"
    assert dep.secret_key("/run/secrets/monitor/pd.key") == {
        "name": "monitor-tokens",
        "key": "pd.key",
    }


def test_alertmanager_config_turns_every_credentials_file_into_a_secret_key() -> None:
    doc = yaml.safe_load((ROOT / dep.STACK_SPEC).read_text())
    doc["alerting"]["pager"] = {"pagerduty_routing_key_file": "/run/secrets/monitor/pd.key"}
    doc["alerting"]["ticket"] = {
        "slack_api_url_file": "/run/secrets/monitor/slack.url",
        "slack_channel": "#ml",
    }
    cfg = dep.alertmanager_config(parse_spec(doc), namespace="ml")
    assert crd_problems(cfg) == []
    receivers = {r["name"]: r for r in cfg["spec"]["receivers"]}
    assert receivers["pager"] == {
        "name": "pager",
        "pagerdutyConfigs": [
            {"routingKey": {"name": "monitor-tokens", "key": "pd.key"}, "sendResolved": True}
        ],
    }
    assert receivers["ticket"]["slackConfigs"] == [
        {"apiURL": {"name": "monitor-tokens", "key": "slack.url"}, "sendResolved": True,
         "channel": "#ml"}
    ]  # fmt: skip
    assert receivers["mitigator"]["webhookConfigs"][0]["url"] == (
        "http://mitigator.ml.svc:9500/v1/alerts"
    )
    assert [r["receiver"] for r in cfg["spec"]["route"]["routes"]] == [
        "mitigator",
        "pager",
        "ticket",
    ]


# --- compose --------------------------------------------------------------------------------------


def compose_mounts(svc: Obj) -> list[Mount]:
    """Mount points of a compose service: volumes (``src:target[:ro]``) and secrets."""
    out = []
    for v in svc.get("volumes", []):
        parts = v.split(":")
        out.append(Mount(parts[1], not (len(parts) > 2 and "ro" in parts[2].split(","))))
    for s in svc.get("secrets", []):
        target = s["target"] if isinstance(s, dict) else s
        if not target.startswith("/"):
            target = f"/run/secrets/{target}"
        out.append(Mount(target, False))
    for t in svc.get("tmpfs", []):
        out.append(Mount(t, True))
    return out


def compose_listens(name: str, svc: Obj, spec: MonitorSpec = STACK) -> set[int]:
    """The ports a compose service listens on (from its command, or the image's own)."""
    image = svc["image"]
    if is_monitor(image):
        return {port for _, port in listens(parse_cli(svc["command"]), spec).values()}
    ports = set(KNOWN_IMAGE_PORTS.get(image.rpartition(":")[0], set()))
    for arg in svc.get("command", []):
        if str(arg).startswith("--web.listen-address="):
            ports.add(listen_port(str(arg).split("=", 1)[1])[1])
    return ports


def compose_problems(doc: Obj, readme: str = README, spec: MonitorSpec = STACK) -> list[str]:
    """Images pinned; monitor command lines parse; published ports and healthchecks use
    ports the service listens on; bind-mounted paths exist (or are the documented
    secrets/data directories); named volumes and secrets are declared; the paths the spec
    names are mounted; the spec's hosts are services listening on those ports."""
    problems = []
    services: dict[str, Obj] = doc["services"]
    declared_volumes = set(doc.get("volumes") or {})
    declared_secrets = doc.get("secrets") or {}
    used_volumes: set[str] = set()
    listening: dict[str, set[int]] = {}
    for name, svc in services.items():
        problems += image_problems(svc.get("image", ""), f"compose {name}")
        if is_monitor(svc["image"]):
            build = svc.get("build") or {}
            if (
                COMPOSE_FILE.parent / build.get("context", "?") / build.get("dockerfile", "?")
            ).resolve() != (DEPLOY / "Dockerfile"):
                problems.append(f"compose {name}: does not build deploy/Dockerfile")
            try:
                inv = parse_cli([str(a) for a in svc["command"]])
            except click.ClickException as exc:
                problems.append(f"compose {name}: monitor {svc['command']}: {exc.format_message()}")
                inv = None
            if inv is not None:
                for role, (host, port) in listens(inv, spec).items():
                    if host not in ("0.0.0.0", ""):
                        problems.append(f"compose {name}: {role} listens on {host}:{port}")
                env = {**IMAGE_ENV, **(svc.get("environment") or {})}
                problems += need_problems(
                    f"compose {name}",
                    needs(inv, spec, env),
                    compose_mounts(svc),
                    bool(svc.get("read_only")),
                )
        try:
            listening[name] = compose_listens(name, svc, spec)
        except click.ClickException:
            listening[name] = set()
        for p in svc.get("ports", []):
            container = int(str(p).rsplit(":", 1)[1])
            if container not in listening[name]:
                problems.append(
                    f"compose {name}: publishes {p} but listens on {sorted(listening[name])}"
                )
        health = " ".join((svc.get("healthcheck") or {}).get("test", []))
        for port in re.findall(r"127\.0\.0\.1:(\d+)/", health):
            if int(port) not in listening[name]:
                problems.append(f"compose {name}: healthcheck port {port} is not its port")
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith((".", "/")):
                host = (COMPOSE_FILE.parent / src).resolve()
                rel = host.relative_to(ROOT).as_posix() if host.is_relative_to(ROOT) else str(host)
                if not host.exists() and not any(
                    rel.startswith(d) and d in readme for d in ("deploy/data", "deploy/secrets")
                ):
                    problems.append(f"compose {name}: {src} does not exist (and is not documented)")
            else:
                used_volumes.add(src)
                if src not in declared_volumes:
                    problems.append(f"compose {name}: volume {src!r} is not declared")
        for s in svc.get("secrets", []):
            source = s["source"] if isinstance(s, dict) else s
            if source not in declared_secrets:
                problems.append(f"compose {name}: secret {source!r} is not declared")
    for vol in declared_volumes - used_volumes:
        problems.append(f"compose: volume {vol!r} is not used")
    for sname, secret in declared_secrets.items():
        path = PurePosixPath(secret["file"])
        if path.parent.as_posix() != "secrets" or f"deploy/secrets/{path.name}" not in readme:
            problems.append(
                f"compose: secret {sname} ({path}) is not a documented deploy/secrets file"
            )
    # the spec's hosts: services that listen on those ports
    urls = [u for m in spec.models for u in (m.upstream, m.fallback_upstream, *m.replica_urls) if u]
    urls += [spec.mitigator.prometheus_url or "", spec.alerting.mitigator_url or ""]
    for url in filter(None, urls):
        host, port = url_host_port(url)
        if port not in listening.get(host, set()):
            problems.append(f"compose: {url}: no service {host} listening on {port}")
    return problems


def test_the_compose_file_passes_every_check() -> None:
    doc = compose()
    assert set(doc["services"]) == {
        "mlserver", "mlserver-fallback", "sidecar", "mitigator", "drift", "canary",
        "gpu-exporter", "prometheus", "alertmanager", "grafana",
    }  # fmt: skip
    assert compose_problems(doc) == []


def test_the_compose_monitor_services_run_the_right_commands() -> None:
    svcs = compose()["services"]
    paths = {n: parse_cli(s["command"]).path for n, s in svcs.items() if is_monitor(s["image"])}
    assert paths == {
        "sidecar": ("sidecar",),
        "mitigator": ("mitigator",),
        "drift": ("drift", "serve"),
        "canary": ("canary", "run"),
        "gpu-exporter": ("gpu-exporter",),
    }
    assert svcs["gpu-exporter"]["profiles"] == ["gpu"]


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: d["services"]["grafana"].update(image="grafana/grafana"), "has no tag"),
        (lambda d: d["services"]["sidecar"].update(image="model-monitor:latest"), "not pinned"),
        (lambda d: d["services"]["sidecar"]["ports"].__setitem__(0, "127.0.0.1:8000:8001"),
         "publishes 127.0.0.1:8000:8001 but listens on [8000, 9400]"),
        (lambda d: d["services"]["drift"]["command"].__setitem__(-1, "0.0.0.0:9411"),
         "healthcheck port 9401 is not its port"),
        (lambda d: d["services"]["prometheus"]["volumes"].__setitem__(
            1, "../alert:/etc/prometheus/rules:ro"), "../alert does not exist"),
        (lambda d: d["services"]["mitigator"]["volumes"].__setitem__(
            1, "mitigator-db:/var/lib/monitor/mitigator"), "volume 'mitigator-db' is not declared"),
        (lambda d: d["services"]["mitigator"]["volumes"].pop(1),
         "mitigator store /var/lib/monitor/mitigator is on no volume"),
        (lambda d: d["services"]["drift"]["volumes"].__setitem__(
            3, "drift-reports:/var/lib/monitor/drift-reports:ro"),
         "drift reports /var/lib/monitor/drift-reports is written but its volume is read-only"),
        (lambda d: d["services"]["sidecar"]["command"].append("--metrics-port"),
         "No such option '--metrics-port'"),
        (lambda d: d["services"].pop("mlserver-fallback"),
         "http://mlserver-fallback:8080: no service mlserver-fallback listening on 8080"),
        (lambda d: d["secrets"]["control-token"].update(file="./control.token"),
         "secret control-token (control.token) is not a documented deploy/secrets file"),
    ],
    ids=["no-tag", "latest", "published-port", "healthcheck-port", "missing-bind-source",
         "undeclared-volume", "spec-path-unmounted", "written-read-only", "bad-cli-option",
         "spec-host-missing", "secret-outside-secrets"],
)  # fmt: skip
def test_each_compose_check_finds_its_fault(mutate: Any, problem: str) -> None:
    doc = compose()
    mutate(doc)
    problems = compose_problems(doc)
    assert any(problem in p for p in problems), problems


def test_an_undocumented_data_dir_fails() -> None:
    problems = compose_problems(compose(), README.replace("deploy/data", "deploy/dat"))
    assert problems and all("./data" in p and "does not exist" in p for p in problems), problems


# --- compose: Prometheus, Alertmanager, Grafana ---------------------------------------------------


def host_path(svc: Obj, container_path: str) -> Path | None:
    """The host path behind a container path, through a service's bind mounts."""
    for v in svc.get("volumes", []):
        src, target = v.split(":")[:2]
        if src.startswith(".") and (
            container_path == target or container_path.startswith(target + "/")
        ):
            return (
                COMPOSE_FILE.parent / src / PurePosixPath(container_path).relative_to(target)
            ).resolve()
    return None


PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"


def prometheus_problems(prom: Obj, doc: Obj, spec: MonitorSpec = STACK) -> list[str]:
    """Scrape jobs named as the rules expect, each target a compose service listening on
    that port (the monitor process the job is for); the rule files are the generated
    ones; the Alertmanager target is compose's Alertmanager."""
    problems = []
    services = doc["services"]
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    expected = {
        spec.alerting.sidecar_job: ("sidecar",),
        spec.alerting.drift_job: ("drift", "serve"),
        spec.alerting.gpu_job: ("gpu-exporter",),
        "model-canary": ("canary", "run"),
        "model-mitigator": ("mitigator",),
    }
    for job, path in expected.items():
        if job not in jobs:
            problems.append(f"prometheus.yml: no job {job}")
            continue
        targets = [t for sc in jobs[job].get("static_configs", []) for t in sc["targets"]]
        targets += [
            f"{n}:{sd['port']}" for sd in jobs[job].get("dns_sd_configs", []) for n in sd["names"]
        ]
        for t in targets:
            host, port = listen_port(t)
            svc = services.get(host)
            if svc is None or not is_monitor(svc["image"]):
                problems.append(f"prometheus.yml job {job}: {t} is no monitor service")
                continue
            inv = parse_cli(svc["command"])
            if inv.path != path or port != listens(inv, spec)["metrics"][1]:
                problems.append(
                    f"prometheus.yml job {job}: {t} is not monitor {' '.join(path)}'s metrics"
                )
    am = [
        t
        for a in prom["alerting"]["alertmanagers"]
        for sc in a["static_configs"]
        for t in sc["targets"]
    ]
    for t in am:
        host, port = listen_port(t)
        if host not in services or port not in compose_listens(host, services[host], spec):
            problems.append(f"prometheus.yml: alertmanager {t} is no compose service port")
    rule_hosts: list[Path] = []
    for pattern in prom["rule_files"]:
        mounted = host_path(services["prometheus"], pattern)
        if mounted is None:
            problems.append(f"prometheus.yml: rule_files {pattern} is not mounted")
            continue
        rule_hosts += sorted(mounted.parent.glob(mounted.name))
    if [p.relative_to(ROOT).as_posix() for p in rule_hosts] != [f"alerts/{spec.service}.rules.yml"]:
        problems.append(f"prometheus.yml: rule_files load {rule_hosts}, not the generated rules")
    return problems


def test_prometheus_scrapes_the_stack_and_loads_the_generated_rules() -> None:
    assert prometheus_problems(yaml_docs(PROMETHEUS_YML)[0], compose()) == []


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda p: p["scrape_configs"][0].update(job_name="sidecar"), "no job model-sidecar"),
        (lambda p: p["scrape_configs"][1]["static_configs"][0].update(targets=["drift:9400"]),
         "drift:9400 is not monitor drift serve's metrics"),
        (lambda p: p["scrape_configs"][2]["static_configs"][0].update(targets=["kanary:9402"]),
         "kanary:9402 is no monitor service"),
        (lambda p: p.update(rule_files=["/etc/prometheus/rules/*.yml"]), "not the generated rules"),
        (lambda p: p.update(rule_files=["/etc/prometheus/alerts/*.rules.yml"]), "is not mounted"),
        (lambda p: p["alerting"]["alertmanagers"][0]["static_configs"][0].update(
            targets=["alertmanager:9094"]), "alertmanager alertmanager:9094"),
    ],
    ids=["job-name", "target-port", "target-host", "rule-glob", "rule-mount", "alertmanager"],
)  # fmt: skip
def test_each_prometheus_check_finds_its_fault(mutate: Any, problem: str) -> None:
    prom = yaml_docs(PROMETHEUS_YML)[0]
    mutate(prom)
    problems = prometheus_problems(prom, compose())
    assert any(problem in p for p in problems), problems


def test_promtool_accepts_the_config_with_the_mounted_rules(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    prom = yaml_docs(PROMETHEUS_YML)[0]
    svc = compose()["services"]["prometheus"]
    prom["rule_files"] = [str(host_path(svc, p)) for p in prom["rule_files"]]
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(prom))
    res = subprocess.run(
        [promtool, "check", "config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "SUCCESS: 1 rule files found" in out
    n = sum(len(g["rules"]) for g in build_rules(STACK)["groups"])
    assert f"SUCCESS: {n} rules found" in out


def test_amtool_accepts_the_compose_alertmanager_config() -> None:
    amtool = require_tool("amtool")
    res = subprocess.run(
        [amtool, "check-config", str(ROOT / dep.COMPOSE_ALERTMANAGER_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_compose_alertmanager_reaches_the_mitigator_with_the_mounted_token() -> None:
    doc = compose()
    am = yaml_docs(ROOT / dep.COMPOSE_ALERTMANAGER_FILE)[0]
    hook = next(r for r in am["receivers"] if r["name"] == "mitigator")["webhook_configs"][0]
    host, port = url_host_port(hook["url"])
    assert (host, port) == ("mitigator", 9500)
    assert port in compose_listens(host, doc["services"][host])
    token = hook["http_config"]["authorization"]["credentials_file"]
    alertmanager = doc["services"]["alertmanager"]
    assert covered(token, compose_mounts(alertmanager)) is not None
    mounted = {s["target"]: s["source"] for s in alertmanager["secrets"]}
    mitigator = {s["target"]: s["source"] for s in doc["services"]["mitigator"]["secrets"]}
    assert mounted[token] == mitigator[str(STACK.mitigator.token_file)] == "mitigator-token"
    config = next(
        v for v in alertmanager["volumes"] if v.endswith("/etc/alertmanager/alertmanager.yml:ro")
    )
    assert config.startswith("./prometheus/alertmanager.yml:")


def test_grafana_is_provisioned_with_the_generated_dashboards() -> None:
    doc = compose()
    grafana = doc["services"]["grafana"]
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert host_path(grafana, "/etc/grafana/provisioning") == provisioning
    provider = yaml_docs(provisioning / "dashboards" / "monitor.yaml")[0]["providers"][0]
    dashboards = host_path(grafana, provider["options"]["path"])
    assert dashboards == ROOT / "dashboards"
    assert sorted(p.name for p in dashboards.glob("*.json")) == [
        f"{STACK.service}-{n}.json" for n in ("data-quality", "gpu", "mitigations", "overview")
    ]
    host, port = url_host_port(grafana["environment"]["PROMETHEUS_URL"])
    assert port in compose_listens(host, doc["services"][host])
    source = yaml_docs(provisioning / "datasources" / "prometheus.yaml")[0]["datasources"][0]
    prom = yaml_docs(PROMETHEUS_YML)[0]
    assert source["jsonData"]["timeInterval"] == prom["global"]["scrape_interval"] == "15s"
    assert source["url"] == "${PROMETHEUS_URL}"


# --- the image ------------------------------------------------------------------------------------


def test_the_dockerfile_installs_the_extras_and_runs_as_a_non_root_user() -> None:
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}$", DOCKERFILE, re.M)
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE
    assert '".[drift,postgres,gpu]"' in DOCKERFILE
    assert re.search(r"^USER 10001:10001$", DOCKERFILE, re.M)
    assert re.search(r'^ENTRYPOINT \["monitor"\]$', DOCKERFILE, re.M)
    assert IMAGE_ENV["DO_NOT_TRACK"] == "1"
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.+)$", DOCKERFILE, re.M)[0].split()}
    objs = cluster()
    ports = {
        int(p["containerPort"])
        for _, _, c in containers(objs)
        if is_monitor(c["image"])
        for p in c.get("ports", [])
    }
    assert ports == exposed
    # the directories named volumes are mounted on exist in the image, owned by the user
    for d in ("capture", "state", "mitigator", "drift-reports", ".cache"):
        assert f"/var/lib/monitor/{d}" in DOCKERFILE.replace("\\\n", " ")


def test_the_build_context_keeps_only_what_the_image_needs() -> None:
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    ignore = [line for line in lines if line and not line.startswith("#")]
    copied = re.findall(r"^COPY (?!--)(.+) \S+$", DOCKERFILE, re.M)
    for paths in copied:
        for p in paths.split():
            assert f"!{p.rstrip('/')}" in ignore or f"!{p.rstrip('/')}/" in ignore, p
    assert ignore[0] == "*"  # everything else (.venv, tests, deploy/data, secrets) stays out
