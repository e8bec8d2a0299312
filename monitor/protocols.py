"""Protocol adapters: wire payloads to ``Rows`` and ``Predictions`` (:mod:`monitor.payload`).

One :class:`Adapter` subclass per ``ModelSpec.protocol``; :func:`make_adapter` picks it.
An adapter does four things for the proxy, all on the hot path (plain lists, slicing,
precompiled regexes; no pandas or numpy):

* :meth:`Adapter.match` maps ``(method, path)`` to a bounded :class:`RouteMatch`: the
  route label is a template from a fixed per-protocol set or ``unmatched``, the model
  label is the spec's model name or ``other`` (case C17: never a raw path).
* :meth:`Adapter.parse_request` turns an inference request body into columnar
  :class:`~monitor.payload.Rows` keyed by spec feature names (raw JSON values;
  :mod:`monitor.coverage` classifies them).
* :meth:`Adapter.parse_response` turns a response body into
  :class:`~monitor.payload.Predictions` (first output = primary).
* :attr:`Adapter.health_path` / :attr:`Adapter.metadata_path` / :meth:`Adapter.parse_version`
  tell the prober where to look; :meth:`Adapter.stream_inspector` reads OpenAI SSE streams.

Errors: parsers raise :class:`~monitor.errors.PayloadError` with ``reason`` one of
``conventions.PAYLOAD_REASONS`` (``invalid_json``, ``invalid_shape``, ``invalid_csv``);
nothing else escapes them on bad input. The proxy fails open on them (case C13).

Sources (sections of ``shared/reference/protocols-and-exposition.md``): 4.1 KServe V1,
4.2 Open Inference Protocol (V2), 4.3 MLflow scoring server, 4.4 TF Serving REST,
4.5 OpenAI-compatible servers.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, ClassVar

import orjson

from monitor import conventions as c
from monitor.errors import PayloadError
from monitor.payload import MISSING, Predictions, Rows
from monitor.spec import ModelSpec

__all__ = [
    "Adapter",
    "JSONAdapter",
    "MLflowAdapter",
    "OpenAIAdapter",
    "RouteMatch",
    "StreamInspector",
    "TFServingAdapter",
    "V1Adapter",
    "V2Adapter",
    "loads",
    "make_adapter",
]

ROUTE_CACHE_SIZE = 4096
"""Entries of the per-adapter ``match`` cache; it is cleared when full, so random
scanner paths (case C17) cost memory once, never unboundedly."""

SSE_MAX_LINE_BYTES = 1 << 20
"""Longest SSE line (or event's data) buffered by :class:`StreamInspector`; beyond it the
line is dropped. OpenAI chunks are a few hundred bytes; 1 MiB bounds memory per stream."""

VERSION_MAX_CHARS = 64
"""A version read from upstream metadata becomes a label value; longer strings are cut."""
REQUEST_ID_MAX_CHARS = 128
"""Longest request id kept from a payload (V2 ``id``) for the capture store."""

_SHAPE = c.PAYLOAD_INVALID_SHAPE
_LIST_ONLY = frozenset((list,))
_ERROR_KEYS = ("error", "error_code")  # OIP/TF Serving/OpenAI use "error"; MLflow "error_code"


# --------------------------------------------------------------------------- JSON


def loads(body: bytes) -> Any:
    """Decode a JSON body.

    ``orjson`` first (fast, strict); on failure the standard library's ``json``, which
    accepts ``NaN``, ``Infinity`` and ``-Infinity`` (legal in TF Serving payloads, 4.4)
    and integers beyond 64 bits (older orjson rejects them; orjson 3.10+ reads them as
    floats itself).

    Raises:
        PayloadError: ``invalid_json`` with a short detail (message and position).
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(bytes(body) if isinstance(body, memoryview) else body)
    except json.JSONDecodeError as exc:
        raise PayloadError(c.PAYLOAD_INVALID_JSON, f"{exc.msg} at char {exc.pos}") from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise PayloadError(c.PAYLOAD_INVALID_JSON, str(exc)[:120]) from None


def _loads_quiet(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data)
    except (ValueError, TypeError, RecursionError):
        return None


def _shape_error(detail: str) -> PayloadError:
    return PayloadError(_SHAPE, detail)


def _check_error_body(doc: dict[str, Any]) -> None:
    for key in _ERROR_KEYS:
        if key in doc:
            err = doc[key]
            msg = err.get("message", "") if type(err) is dict else doc.get("message", err)
            raise _shape_error(f"error body: {str(msg)[:100]}")
    if doc.get("object") == "error":  # vLLM's OpenAI-style error object
        raise _shape_error(f"error body: {str(doc.get('message', ''))[:100]}")


def _media_type(content_type: str | None) -> str:
    if not content_type:
        return ""
    return content_type.partition(";")[0].strip().lower()


# --------------------------------------------------------------------------- routes


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """What a request path means, as bounded label values (case C17).

    Attributes:
        template: route label: a template of the adapter's fixed set
            (e.g. ``/v2/models/{model}/infer``) or ``conventions.ROUTE_UNMATCHED``.
        model: ``model.name``, or ``conventions.MODEL_OTHER`` when the path names a
            model other than ``model.route_name``.
        inference: True when a POST to this route carries an inference payload for
            this adapter's model.
    """

    template: str
    model: str
    inference: bool


@dataclass(frozen=True, slots=True)
class _Route:
    template: str
    regex: re.Pattern[str] | None  # None: the template is a literal path
    inference: bool  # a POST here carries an inference payload
    has_model: bool


def _route(template: str, inference: bool = False, segment: str = r"[^/]+") -> _Route:
    if "{" not in template:
        return _Route(template, None, inference, False)
    pattern = ""
    for part in re.split(r"(\{\w+\})", template):
        if part == "{model}":
            pattern += f"(?P<model>{segment})"
        elif part.startswith("{"):
            pattern += segment
        else:
            pattern += re.escape(part)
    return _Route(template, re.compile(pattern), inference, "{model}" in template)


def _v2_routes() -> list[_Route]:
    m, mv = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
    return [
        _route(m + "/infer", inference=True),
        _route(mv + "/infer", inference=True),
        _route(m + "/generate"),
        _route(m + "/generate_stream"),
        _route(m + "/ready"),
        _route(mv + "/ready"),
        _route(m),
        _route(mv),
        _route("/v2/health/live"),
        _route("/v2/health/ready"),
        _route("/v2"),
        _route("/v2/repository/index"),
        _route("/v2/repository/models/{model}/load"),
        _route("/v2/repository/models/{model}/unload"),
    ]


def _v1_routes() -> list[_Route]:
    # TF Serving also addresses a version by label (4.4 api_rest.md:
    # ``/v1/models/${MODEL_NAME}[/versions/${VERSION}|/labels/${LABEL}]:predict``).
    # Model names never hold ':' (spec names are [a-zA-Z0-9_.-]), so the verb splits cleanly.
    seg = r"[^/:]+"
    routes = []
    for base in (
        "/v1/models/{model}",
        "/v1/models/{model}/versions/{version}",
        "/v1/models/{model}/labels/{label}",
    ):
        for verb in (":predict", ":classify", ":regress"):
            routes.append(_route(base + verb, inference=True, segment=seg))
        routes.append(_route(base + ":explain", segment=seg))
        routes.append(_route(base, segment=seg))
        routes.append(_route(base + "/metadata", segment=seg))
    return routes


def _mlflow_routes() -> list[_Route]:
    return [_route("/invocations", inference=True)] + [
        _route(p) for p in ("/ping", "/health", "/version")
    ]


def _openai_routes() -> list[_Route]:
    routes = []
    for prefix in ("", "/openai"):  # KServe serves the OpenAI API under /openai (4.5)
        for p in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings"):
            routes.append(_route(prefix + p, inference=True))
        routes.append(_route(prefix + "/v1/models"))
    return routes


# --------------------------------------------------------------------------- adapter base


class Adapter:
    """Base class of the protocol adapters; one instance per model, shared by requests.

    Attributes:
        protocol: ``v2`` | ``v1`` | ``tfserving`` | ``mlflow`` | ``openai`` | ``json``.
        model: the model's spec.
        templates: every route label :meth:`match` can return (templates plus
            ``unmatched``), for pre-creating label sets and for bounding tests.
        health_path: GET path probed for readiness; ``model.health_path`` overrides the
            protocol default; ``None`` means any HTTP answer on ``/`` counts.
        metadata_path: GET path whose body :meth:`parse_version` reads, or ``None``.
    """

    protocol: ClassVar[str] = ""
    _default_health: ClassVar[str | None] = None

    def __init__(self, model: ModelSpec) -> None:
        self.model = model
        self._name = model.name
        self._route_name = model.route_name
        self._features: tuple[str, ...] = tuple(f.name for f in model.features)
        self._feature_set: frozenset[str] = frozenset(self._features)
        self.health_path: str | None = (
            model.health_path
            if model.health_path is not None
            else self._default_health_path(model.route_name)
        )
        self.metadata_path: str | None = self._default_metadata_path(model.route_name)
        routes = self._routes()
        if self.health_path is not None and not any(
            r.template == self.health_path or (r.regex and r.regex.fullmatch(self.health_path))
            for r in routes
        ):
            # A configured health path becomes a template of its own (one bounded value).
            routes.append(_route(self.health_path))
        self._literal: dict[str, _Route] = {}
        for r in routes:
            if r.regex is None:
                self._literal.setdefault(r.template, r)
        self._patterns: list[_Route] = [r for r in routes if r.regex is not None]
        self._prefixes: tuple[str, ...] = tuple(
            {r.template.partition("{")[0] for r in self._patterns}
        )
        self.templates: tuple[str, ...] = (
            *dict.fromkeys(r.template for r in routes),
            c.ROUTE_UNMATCHED,
        )
        self._unmatched = RouteMatch(c.ROUTE_UNMATCHED, self._name, False)
        self._cache: dict[tuple[str, bool], RouteMatch] = {}

    # -- per-protocol hooks -------------------------------------------------------

    def _routes(self) -> list[_Route]:
        return []

    def _default_health_path(self, route_name: str) -> str | None:
        return self._default_health

    def _default_metadata_path(self, route_name: str) -> str | None:
        return None

    def _parse_request(self, body: bytes, content_type: str | None) -> Rows:
        raise NotImplementedError

    # -- public API -----------------------------------------------------------------

    def match(self, method: bytes | str, path: str) -> RouteMatch:
        """Map a request to bounded labels.

        Args:
            method: HTTP method (``b"POST"`` or ``"POST"``); it matters only for
                ``inference``.
            path: the request path without query string.

        Returns:
            A :class:`RouteMatch`; unknown paths give ``template="unmatched"`` and
            ``model=model.name``. Results are cached (at most ``ROUTE_CACHE_SIZE``
            entries, then the cache is cleared). Never raises.
        """
        post = method == b"POST" if type(method) is bytes else method == "POST"
        key = (path, post)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        result = self._match(path, post)
        if len(self._cache) >= ROUTE_CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = result
        return result

    def _match(self, path: str, post: bool) -> RouteMatch:
        route = self._literal.get(path)
        if route is not None:
            return RouteMatch(route.template, self._name, post and route.inference)
        if not path.startswith(self._prefixes):
            return self._unmatched
        for route in self._patterns:
            assert route.regex is not None
            m = route.regex.fullmatch(path)
            if m is None:
                continue
            if route.has_model and m["model"] != self._route_name:
                return RouteMatch(route.template, c.MODEL_OTHER, False)
            return RouteMatch(route.template, self._name, post and route.inference)
        return self._unmatched

    def parse_request(self, body: bytes, content_type: str | None) -> Rows:
        """Parse an inference request body into columns keyed by spec feature names.

        Values stay as decoded from JSON (``MISSING`` where a row lacks a feature);
        ``unexpected`` counts ``(row, name)`` pairs whose name is not a spec feature.
        A model spec without features gets ``unexpected == 0`` and no columns (nothing
        is expected, so nothing is unexpected); ``n`` is still counted.

        Raises:
            PayloadError: ``invalid_json``, ``invalid_shape`` or ``invalid_csv``.
        """
        rows = self._parse_request(body, content_type)
        if not self._features:
            rows.unexpected = 0
            rows.columns = {}
        return rows

    def parse_response(self, body: bytes, content_type: str | None) -> Predictions:
        """Parse an inference response body; ``outputs`` maps output name -> per-row values.

        Raises:
            PayloadError: ``invalid_json``, or ``invalid_shape`` for error bodies
                (``{"error": ...}``) and unknown shapes.
        """
        raise NotImplementedError

    def parse_version(self, body: bytes) -> str | None:
        """Served version from a :attr:`metadata_path` body, or ``None``. Never raises."""
        if self.metadata_path is None:
            return None
        try:
            doc = _loads_quiet(body)
            v = self._version(doc) if type(doc) is dict else None
        except Exception:
            return None
        if v is None or isinstance(v, bool) or not isinstance(v, (str, int, float)):
            return None
        s = str(v).strip()[:VERSION_MAX_CHARS]
        return s or None

    def _version(self, doc: dict[str, Any]) -> Any:
        return None

    def stream_inspector(self) -> StreamInspector | None:
        """A fresh :class:`StreamInspector` for an SSE response, or ``None`` when the
        protocol has no streaming inference to inspect (all but OpenAI)."""
        return None

    # -- shared row builders ---------------------------------------------------------

    def _positional(self, flat: list[Any], n: int, k: int) -> Rows:
        """``n`` rows of ``k`` values, row-major in ``flat``; column ``j`` is feature ``j``."""
        feats = self._features
        nf = len(feats)
        if not nf:
            return Rows(n, {}, 0)
        # Row-major records, one value per spec feature: coverage and capture read
        # them as they are, and the common [1, k] request costs no copy at all.
        records: list[list[Any]]
        if k == nf:
            records = [flat] if n == 1 else [flat[i * k : i * k + k] for i in range(n)]
        elif k > nf:
            records = [flat[i * k : i * k + nf] for i in range(n)]
        else:
            pad = [MISSING] * (nf - k)
            records = [flat[i * k : i * k + k] + pad for i in range(n)]
        return Rows(n, None, n * (k - nf) if k > nf else 0, records=records, names=feats)

    def _records(self, rows: list[Any], unwrap: bool) -> Rows:
        """Rows as a list of records: dict -> named, list -> positional, scalar -> a
        one-value positional row. ``unwrap`` turns 1-element list values of named rows
        into scalars (TF Serving row format)."""
        n = len(rows)
        feats = self._features
        if n and type(rows[0]) is list:
            w = len(rows[0])
            if all(type(r) is list and len(r) == w for r in rows):
                nf = len(feats)
                # Transpose; zip stops at the shorter of features and row width.
                transposed = zip(*rows, strict=True)
                cols = {f: list(col) for f, col in zip(feats, transposed, strict=False)}
                for j in range(w, nf):
                    cols[feats[j]] = [MISSING] * n
                return Rows(n, cols, n * (w - nf) if w > nf else 0)
        fset = self._feature_set
        nf = len(feats)
        lists: list[list[Any]] = [[] for _ in feats]
        unexpected = 0
        for r in rows:
            if type(r) is dict:
                for j, f in enumerate(feats):
                    v = r.get(f, MISSING)
                    if unwrap and type(v) is list and len(v) == 1:
                        v = v[0]
                    lists[j].append(v)
                if len(r) > nf or not fset.issuperset(r):
                    unexpected += len(r.keys() - fset)
            else:
                if type(r) is not list:
                    r = [r]
                w = len(r)
                for j in range(nf):
                    lists[j].append(r[j] if j < w else MISSING)
                if w > nf:
                    unexpected += w - nf
        return Rows(n, dict(zip(feats, lists, strict=True)), unexpected)

    def _columnar(self, columns: dict[str, Any], unwrap: bool) -> Rows:
        """Columnar input: name -> per-row values (a non-list is one row's value)."""
        fset = self._feature_set
        cols: dict[str, list[Any]] = {}
        unexpected = 0
        n = 0
        for name, values in columns.items():
            vals = values if type(values) is list else [values]
            n = max(n, len(vals))
            if name not in fset:
                unexpected += len(vals)
                continue
            if unwrap:
                vals = [v[0] if type(v) is list and len(v) == 1 else v for v in vals]
            cols[name] = vals
        for name, vals in cols.items():
            if len(vals) < n:
                cols[name] = vals + [MISSING] * (n - len(vals))
        return Rows(n, cols, unexpected)

    def _tf_input(self, doc: dict[str, Any], both_is_error: bool) -> Rows:
        """TF Serving / KServe V1 request (4.1, 4.4): ``instances`` rows, ``inputs``
        (columnar map or row list) or ``examples`` (classify/regress)."""
        has_inst, has_inputs = "instances" in doc, "inputs" in doc
        if has_inst and has_inputs and both_is_error:
            raise _shape_error("'instances' and 'inputs' must not both be present")
        if has_inputs:
            inputs = doc["inputs"]
            if type(inputs) is dict:
                return self._columnar(inputs, unwrap=True)
            return self._records(inputs if type(inputs) is list else [inputs], unwrap=True)
        if has_inst:
            inst = doc["instances"]
            if type(inst) is not list:
                raise _shape_error("'instances' must be a list")
            return self._records(inst, unwrap=True)
        if "examples" in doc:
            ex = doc["examples"]
            if type(ex) is not list or not all(type(e) is dict for e in ex):
                raise _shape_error("'examples' must be a list of objects")
            return self._records(ex, unwrap=True)
        raise _shape_error("expected 'instances', 'inputs' or 'examples'")


def _load_object(body: bytes) -> dict[str, Any]:
    doc = loads(body)
    if type(doc) is not dict:
        raise _shape_error("body must be a JSON object")
    return doc


# --------------------------------------------------------------------------- V2 (4.2)


def _tensor(t: Any, i: int, kind: str) -> tuple[str, list[int], list[Any]]:
    """Validate one OIP tensor; return ``(name, shape, row-major flat data)``."""
    if type(t) is not dict:
        raise _shape_error(f"{kind}s[{i}] must be an object")
    name = t.get("name")
    if type(name) is not str:
        raise _shape_error(f"{kind}s[{i}].name must be a string")
    shape = t.get("shape")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise _shape_error(f"{kind} {name!r}: shape must be a list of non-negative integers")
    if "data" not in t:
        # Triton binary / shared-memory tensors carry no JSON data.
        raise _shape_error(f"{kind} {name!r} has no 'data' (binary or shared-memory tensor)")
    flat = t["data"]
    if type(flat) is not list:
        raise _shape_error(f"{kind} {name!r}: data must be a list")
    while flat and type(flat[0]) is list:  # nested (row-major) data: flatten one level
        if {*map(type, flat)} != _LIST_ONLY:
            raise _shape_error(f"{kind} {name!r}: data mixes lists and scalars")
        flat = list(chain.from_iterable(flat))
    total = math.prod(shape)
    if len(flat) != total:
        raise _shape_error(f"{kind} {name!r}: {len(flat)} values for shape {shape}")
    return name, shape, flat


def _per_row(flat: list[Any], shape: list[int]) -> tuple[int, list[Any]]:
    """Rows of a tensor: scalars when each row holds one value, else per-row lists."""
    n = shape[0] if shape else 1
    e = math.prod(shape[1:])
    if e == 1:
        return n, flat
    return n, [flat[i * e : (i + 1) * e] for i in range(n)]


class V2Adapter(Adapter):
    """Open Inference Protocol / KServe V2 (reference 4.2): Triton, MLServer, KServe.

    Request ``{"inputs": [{"name", "shape", "datatype", "data"}], "parameters"?}``, data
    flat or nested row-major. Column mapping:

    * named: request ``parameters.content_type == "pd"``, several inputs, or an input
      named as a spec feature: each input is one column with ``shape[0]`` rows; inputs
      not named as features add their row count to ``unexpected``; features not sent
      are omitted (read as MISSING);
    * positional: one unnamed input ``[n, k]`` (or higher rank, flattened per row):
      column ``j`` is feature ``j``; ``k > features`` adds ``n * (k - features)`` to
      ``unexpected``, ``k < features`` leaves trailing features MISSING;
    * one unnamed 1-D input ``[k]`` with more than one spec feature is one row of ``k``
      values; with one spec feature it is ``k`` rows.

    Response ``outputs``: ``[n]`` / ``[n, 1]`` -> scalars, ``[n, c]`` -> per-row lists.
    Raises ``invalid_shape`` when data length does not match shape, a tensor has no
    ``data`` (Triton binary or shared memory), or the body is ``{"error": ...}``.
    """

    protocol = "v2"
    _default_health = "/v2/health/ready"

    def _routes(self) -> list[_Route]:
        return _v2_routes()

    def _default_metadata_path(self, route_name: str) -> str | None:
        return f"/v2/models/{route_name}"

    def _parse_request(self, body: bytes, content_type: str | None) -> Rows:
        doc = _load_object(body)
        inputs = doc.get("inputs")
        if type(inputs) is not list or not inputs:
            raise _shape_error("'inputs' must be a non-empty list")
        tensors = [_tensor(t, i, "input") for i, t in enumerate(inputs)]
        params = doc.get("parameters")
        pd = type(params) is dict and params.get("content_type") == "pd"
        if pd or len(tensors) > 1 or tensors[0][0] in self._feature_set:
            rows = self._named(tensors)
        else:
            _, shape, flat = tensors[0]
            if len(shape) <= 1 and len(self._features) > 1:
                rows = self._positional(flat, 1, len(flat))
            else:
                n = shape[0] if shape else 1
                rows = self._positional(flat, n, math.prod(shape[1:]))
        rid = doc.get("id")
        if type(rid) is str and rid:
            rows.request_id = rid[:REQUEST_ID_MAX_CHARS]
        return rows

    def _named(self, tensors: list[tuple[str, list[int], list[Any]]]) -> Rows:
        fset = self._feature_set
        cols: dict[str, list[Any]] = {}
        unexpected = 0
        n = 0
        for name, shape, flat in tensors:
            rows, values = _per_row(flat, shape)
            n = max(n, rows)
            if name in fset:
                cols[name] = values
            else:
                unexpected += rows
        for name, vals in cols.items():
            if len(vals) < n:  # inputs of different batch sizes: pad, never guess
                cols[name] = vals + [MISSING] * (n - len(vals))
        return Rows(n, cols, unexpected)

    def parse_response(self, body: bytes, content_type: str | None) -> Predictions:
        """Parse ``{"outputs": [tensor, ...]}`` into ``{output name: per-row values}``.

        Raises:
            PayloadError: ``invalid_json``; ``invalid_shape`` for error bodies, missing
                ``outputs`` or data not matching shape.
        """
        doc = _load_object(body)
        outs = doc.get("outputs")
        if type(outs) is not list:
            _check_error_body(doc)
            raise _shape_error("'outputs' must be a list")
        result: dict[str, list[Any]] = {}
        for i, t in enumerate(outs):
            name, shape, flat = _tensor(t, i, "output")
            result[name] = _per_row(flat, shape)[1]
        version = doc.get("model_version")
        if version is not None and type(version) in (str, int):
            version = str(version)[:VERSION_MAX_CHARS] or None
        else:
            version = None
        return Predictions(result, version=version)

    def _version(self, doc: dict[str, Any]) -> Any:
        # OIP metadata: "versions" (list, MLServer may send [] or omit it); an
        # inference-style body may carry "model_version".
        versions = doc.get("versions")
        if type(versions) is list and versions:
            return versions[-1]
        return doc.get("model_version")


# --------------------------------------------------------------------------- V1 / TF Serving


def _tf_predictions(doc: Any) -> Predictions:
    """Shared response reader of V1, TF Serving, MLflow (4.1, 4.3, 4.4).

    ``predictions``: list of scalars or lists -> ``{"predictions": [...]}``; list of
    records -> one column per key; a dict of columns -> those columns. TF Serving
    columnar ``outputs`` (dict or list) and classify/regress ``result`` likewise. A bare
    list (MLflow) counts as ``predictions``.
    """
    if type(doc) is list:
        return Predictions(_columns_of("predictions", doc))
    if type(doc) is not dict:
        raise _shape_error("response must be a JSON object or list")
    for key in ("predictions", "outputs", "result"):
        if key in doc:
            return Predictions(_columns_of(key, doc[key]))
    _check_error_body(doc)
    raise _shape_error("expected 'predictions', 'outputs' or 'result'")


def _columns_of(name: str, value: Any) -> dict[str, list[Any]]:
    if type(value) is dict:
        return {k: v if type(v) is list else [v] for k, v in value.items()}
    if type(value) is not list:
        return {name: [value]}
    if value and type(value[0]) is dict and all(type(r) is dict for r in value):
        keys: dict[str, None] = {}
        for r in value:
            keys.update(dict.fromkeys(r))
        return {k: [r.get(k) for r in value] for k in keys}
    return {name: value}


class V1Adapter(Adapter):
    """KServe V1 (reference 4.1): ``POST /v1/models/<name>:predict``.

    Request ``{"instances": [...]}`` or ``{"inputs": [...]}``: rows that are lists
    (positional, like a V2 ``[n, k]`` tensor), dicts (named; 1-element list values are
    unwrapped, ``{"b64": ...}`` kept) or scalars (a one-value row); ``inputs`` may also
    be a columnar ``{name: [per-row values]}`` map; ``examples`` are named rows. With
    both ``instances`` and ``inputs`` KServe uses ``inputs``
    (``kserve/utils/utils.py::get_predict_input``). Response: see :func:`_tf_predictions`.
    Raises ``invalid_shape`` when ``instances`` is not a list or no known key is present.
    """

    protocol = "v1"
    _both_is_error: ClassVar[bool] = False

    def _routes(self) -> list[_Route]:
        return _v1_routes()

    def _default_health_path(self, route_name: str) -> str | None:
        return f"/v1/models/{route_name}"

    def _default_metadata_path(self, route_name: str) -> str | None:
        return f"/v1/models/{route_name}"

    def _parse_request(self, body: bytes, content_type: str | None) -> Rows:
        return self._tf_input(_load_object(body), self._both_is_error)

    def parse_response(self, body: bytes, content_type: str | None) -> Predictions:
        """See :func:`_tf_predictions`. Raises PayloadError (``invalid_json``/``invalid_shape``)."""
        return _tf_predictions(loads(body))

    def _version(self, doc: dict[str, Any]) -> Any:
        # TF Serving model status: the highest AVAILABLE version (4.4). KServe V1's
        # {"name", "ready"} carries none.
        best: tuple[int, str] | None = None
        statuses = doc.get("model_version_status")
        if type(statuses) is not list:
            return None
        for s in statuses:
            if type(s) is not dict or s.get("state") != "AVAILABLE":
                continue
            v = str(s.get("version", ""))
            key = (int(v) if v.isdigit() else -1, v)
            if v and (best is None or key > best):
                best = key
        return best[1] if best else None


class TFServingAdapter(V1Adapter):
    """TF Serving REST (reference 4.4): as :class:`V1Adapter`, but a request with both
    ``instances`` and ``inputs`` is ``invalid_shape`` (TF Serving rejects it)."""

    protocol = "tfserving"
    _both_is_error = True


# --------------------------------------------------------------------------- MLflow (4.3)


_MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_LLM_KEYS = ("messages", "prompt", "input")


def _csv_value(s: str) -> Any:
    if s == "":
        return None
    try:
        return float(s)
    except ValueError:
        return s


class MLflowAdapter(Adapter):
    """MLflow scoring server (reference 4.3): ``POST /invocations``.

    JSON with exactly one of ``dataframe_split`` (``{columns?, data, index?}``),
    ``dataframe_records`` (list of records), ``instances`` or ``inputs`` (TF Serving
    shapes), plus an optional ``params`` (ignored). Unwrapped LLM payloads (top-level
    ``messages``, ``prompt`` or ``input``, which MLflow also accepts) are read like
    OpenAI requests. ``text/csv``: header line, then rows; a value is a float when it
    parses as one, ``None`` when empty, else the string.

    Raises ``invalid_shape`` for none or several of the keys, ``invalid_csv`` for CSV
    that is not UTF-8, has ragged rows or bad quoting.
    """

    protocol = "mlflow"
    _default_health = "/ping"

    def _routes(self) -> list[_Route]:
        return _mlflow_routes()

    def _parse_request(self, body: bytes, content_type: str | None) -> Rows:
        if _media_type(content_type) == "text/csv":
            return self._csv(body)
        doc = _load_object(body)
        keys = [k for k in _MLFLOW_KEYS if k in doc]
        if len(keys) != 1:
            if not keys and any(k in doc for k in _LLM_KEYS):
                return _openai_rows(self, doc)
            raise _shape_error(
                f"expected exactly one of {', '.join(_MLFLOW_KEYS)}; got {len(keys)}"
            )
        key = keys[0]
        if key == "dataframe_split":
            return self._split(doc[key])
        if key == "dataframe_records":
            recs = doc[key]
            if type(recs) is not list or not all(type(r) is dict for r in recs):
                raise _shape_error("'dataframe_records' must be a list of objects")
            return self._records(recs, unwrap=False)
        return self._tf_input({key: doc[key]}, both_is_error=True)

    def _split(self, split: Any) -> Rows:
        if type(split) is not dict or type(split.get("data")) is not list:
            raise _shape_error("'dataframe_split' must be an object with a 'data' list")
        data = split["data"]
        columns = split.get("columns")
        if columns is None:
            return self._records(data, unwrap=False)
        if type(columns) is not list:
            raise _shape_error("'dataframe_split.columns' must be a list")
        w = len(columns)
        if not all(type(r) is list and len(r) == w for r in data):
            raise _shape_error(f"'dataframe_split.data' rows must hold {w} values")
        return self._named_table([str(x) for x in columns], data)

    def _named_table(self, header: list[str], data: list[list[Any]]) -> Rows:
        fset = self._feature_set
        n = len(data)
        cols: dict[str, list[Any]] = {}
        unexpected = 0
        for j, name in enumerate(header):
            if name not in fset:
                unexpected += n
            elif name not in cols:
                cols[name] = [r[j] for r in data]
        return Rows(n, cols, unexpected)

    def _csv(self, body: bytes) -> Rows:
        try:
            text = bytes(body).decode("utf-8-sig")  # MLflow accepts UTF-8 only (4.3)
            reader = csv.reader(io.StringIO(text, newline=""), strict=True)
            header = next(reader, None)
            if header is None:
                raise PayloadError(c.PAYLOAD_INVALID_CSV, "empty body: a header line is needed")
            w = len(header)
            data: list[list[Any]] = []
            for line in reader:
                if not line:
                    continue  # blank line, skipped as pandas does
                if len(line) != w:
                    raise PayloadError(
                        c.PAYLOAD_INVALID_CSV,
                        f"line {reader.line_num}: {len(line)} fields, header has {w}",
                    )
                data.append([_csv_value(s) for s in line])
        except (UnicodeDecodeError, csv.Error) as exc:
            raise PayloadError(c.PAYLOAD_INVALID_CSV, str(exc)[:120]) from None
        return self._named_table(header, data)

    def parse_response(self, body: bytes, content_type: str | None) -> Predictions:
        """See :func:`_tf_predictions`. Raises PayloadError (``invalid_json``/``invalid_shape``)."""
        return _tf_predictions(loads(body))


# --------------------------------------------------------------------------- OpenAI (4.5)


_SYSTEM_ROLES = frozenset(("system", "developer"))  # "developer" replaces "system" for o-series


def _text_chars(value: Any) -> int:
    """Characters of a prompt/input: a string or a list of strings (token ids count 0)."""
    if type(value) is str:
        return len(value)
    if type(value) is list:
        return sum(len(v) for v in value if type(v) is str)
    return 0


def _content_chars(content: Any) -> int:
    if type(content) is str:
        return len(content)
    total = 0
    if type(content) is list:  # parts: [{"type": "text", "text": ...}, {"type": "image_url"}]
        for part in content:
            if type(part) is dict and part.get("type") == "text" and type(part.get("text")) is str:
                total += len(part["text"])
    return total


def _openai_rows(adapter: Adapter, doc: dict[str, Any]) -> Rows:
    """One row: top-level params named as spec features plus derived values.

    Derived features: ``prompt_characters`` (prompt, embedding input and all message
    text), ``messages`` (count; MISSING unless the request has a ``messages`` list),
    ``has_system_message`` (0/1, MISSING likewise), ``has_tools`` (0/1).
    """
    chars = _text_chars(doc.get("prompt")) + _text_chars(doc.get("input"))
    derived: dict[str, Any] = {}
    messages = doc.get("messages")
    if messages is not None:
        if type(messages) is not list:
            raise _shape_error("'messages' must be a list")
        system = 0
        for m in messages:
            if type(m) is dict:
                chars += _content_chars(m.get("content"))
                if m.get("role") in _SYSTEM_ROLES:
                    system = 1
        derived["messages"] = len(messages)
        derived["has_system_message"] = system
    derived["prompt_characters"] = chars
    derived["has_tools"] = 1 if doc.get("tools") or doc.get("functions") else 0
    cols: dict[str, list[Any]] = {}
    for f in adapter._features:
        if f in derived:
            cols[f] = [derived[f]]
        elif f in ("messages", "has_system_message"):
            cols[f] = [MISSING]
        else:
            cols[f] = [doc.get(f, MISSING)]
    return Rows(1, cols, 0, {"prompt_characters": float(chars)})


def _usage(u: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    if type(u) is dict:
        p, q = u.get("prompt_tokens"), u.get("completion_tokens")
        if type(p) is int and p >= 0:
            out[c.TOKENS_PROMPT] = p
        if type(q) is int and q >= 0:
            out[c.TOKENS_COMPLETION] = q
    return out


class OpenAIAdapter(Adapter):
    """OpenAI-compatible servers (reference 4.5): vLLM, KServe ``/openai/v1/...``.

    Request: one row, see :func:`_openai_rows`; ``rows.extra["prompt_characters"]``;
    other top-level keys are not unexpected. Response: no outputs; ``usage`` =
    ``{"prompt", "completion"}`` token counts, each when reported (embeddings report
    prompt tokens only). Streams (``text/event-stream``) go through
    :meth:`stream_inspector`. Raises ``invalid_shape`` for error bodies
    (``{"error": ...}``, vLLM's ``{"object": "error"}``) and non-list ``messages``.
    """

    protocol = "openai"
    _default_health = "/v1/models"

    def _routes(self) -> list[_Route]:
        return _openai_routes()

    def _parse_request(self, body: bytes, content_type: str | None) -> Rows:
        return _openai_rows(self, _load_object(body))

    def parse_response(self, body: bytes, content_type: str | None) -> Predictions:
        """Token usage of a non-streamed response. Raises PayloadError (see class)."""
        doc = _load_object(body)
        _check_error_body(doc)
        return Predictions({}, _usage(doc.get("usage")))

    def stream_inspector(self) -> StreamInspector:
        """A fresh :class:`StreamInspector` for one SSE response."""
        return StreamInspector()


@dataclass(slots=True)
class StreamInspector:
    """Reads an OpenAI server-sent-event stream as it passes (reference 4.5).

    Events are ``data: {json}`` lines ended by a blank line; the stream ends with
    ``data: [DONE]``. Line ends may be LF, CRLF or CR, and chunks may split anywhere
    (even inside a CRLF). :meth:`feed` never raises; a line over ``SSE_MAX_LINE_BYTES``
    is dropped so memory stays bounded.

    Attributes:
        first_token_at: ``now`` of the first event with a non-empty
            ``choices[].text`` or ``choices[].delta.content``; None until then.
        usage: ``{"prompt": n, "completion": m}`` from the last event carrying
            ``usage`` (sent only with ``stream_options.include_usage``, and lost when a
            stream is cut; never assume it); empty otherwise.
        events: data events seen, ``[DONE]`` excluded.
    """

    first_token_at: float | None = None
    usage: dict[str, int] = field(default_factory=dict)
    events: int = 0
    _buf: bytearray = field(default_factory=bytearray, init=False, repr=False)
    _data: list[bytes] = field(default_factory=list, init=False, repr=False)
    _data_size: int = field(default=0, init=False, repr=False)
    # The last chunk ended with CR: a leading LF of the next one belongs to it.
    _skip_lf: bool = field(default=False, init=False, repr=False)
    # Inside an over-long line: drop bytes up to its end.
    _discard: bool = field(default=False, init=False, repr=False)

    def feed(self, chunk: bytes, now: float) -> None:
        """Consume the next bytes of the stream, received at ``now``; never raises."""
        try:
            self._feed(chunk, now)
        except Exception:
            self._buf.clear()
            self._data.clear()
            self._data_size = 0

    def _feed(self, chunk: bytes, now: float) -> None:
        if not chunk:
            return
        buf = self._buf
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf += chunk
        start = 0
        size = len(buf)
        cr = buf.find(b"\r")
        while start < size:
            lf = buf.find(b"\n", start)
            if cr != -1 and cr < start:
                cr = buf.find(b"\r", start)
            if cr != -1 and (lf == -1 or cr < lf):
                end, nxt = cr, cr + 1
                if nxt < size:
                    if buf[nxt] == 0x0A:
                        nxt += 1
                else:
                    self._skip_lf = True
            elif lf != -1:
                end, nxt = lf, lf + 1
            else:
                break
            if self._discard:
                self._discard = False  # this terminator ends the dropped line
            else:
                self._line(bytes(buf[start:end]), now)
            start = nxt
        del buf[:start]
        if len(buf) > SSE_MAX_LINE_BYTES:
            buf.clear()
            self._discard = True

    def _line(self, line: bytes, now: float) -> None:
        if not line:
            if self._data:
                data = b"\n".join(self._data)
                self._data.clear()
                self._data_size = 0
                self._event(data, now)
            return
        if line.startswith(b"data:"):
            value = line[5:]
            if value[:1] == b" ":
                value = value[1:]
            self._data_size += len(value)
            if self._data_size > SSE_MAX_LINE_BYTES:
                self._data.clear()
                self._data_size = 0
                return
            self._data.append(value)
        # comments (":...") and other fields (event, id, retry) carry nothing we read

    def _event(self, data: bytes, now: float) -> None:
        if data.strip() == b"[DONE]":
            return
        doc = _loads_quiet(data)
        if doc is None and b"\n" in data:
            # A server that ends events with a single newline: read each line alone.
            for part in data.split(b"\n"):
                if part.strip():
                    self._event(part, now)
            return
        self.events += 1
        if type(doc) is not dict:
            return
        if self.first_token_at is None:
            choices = doc.get("choices")
            if type(choices) is list:
                for ch in choices:
                    if type(ch) is not dict:
                        continue
                    delta = ch.get("delta")
                    text = ch.get("text")
                    if not (type(text) is str and text) and type(delta) is dict:
                        text = delta.get("content")
                    if type(text) is str and text:
                        self.first_token_at = now
                        break
        u = _usage(doc.get("usage"))
        if u:
            self.usage = u


# --------------------------------------------------------------------------- plain JSON


_JSON_OUTPUT_KEYS = (
    "prediction",
    "predictions",
    "output",
    "outputs",
    "result",
    "results",
    "score",
    "scores",
)


class JSONAdapter(Adapter):
    """Plain JSON services (FastAPI/Flask model servers): POSTs to ``model.inference_paths``.

    Request: a record (one row); a record with a single non-feature key holding a list
    of records or of lists (``{"data": [...]}``, ``{"instances": [...]}``) gives those
    rows; a list of records or of lists (positional) gives rows. Response: the first of
    the keys prediction, predictions, output, outputs, result, results, score, scores
    (named by that key); a bare list or scalar -> ``{"prediction": [...]}``; any other
    record -> one column per key. Raises ``invalid_shape`` for error bodies
    (``{"error": ...}``) and bodies of no known shape.
    """

    protocol = "json"

    def _routes(self) -> list[_Route]:
        return [_route(p, inference=True) for p in self.model.inference_paths]

    def _parse_request(self, body: bytes, content_type: str | None) -> Rows:
        doc = loads(body)
        if type(doc) is dict:
            if len(doc) == 1:
                ((key, value),) = doc.items()
                if (
                    key not in self._feature_set
                    and type(value) is list
                    and value
                    and {*map(type, value)} in ({dict}, _LIST_ONLY)
                ):
                    return self._records(value, unwrap=False)
            return self._records([doc], unwrap=False)
        if type(doc) is list:
            return self._records(doc, unwrap=False)
        raise _shape_error("body must be a JSON object or list")

    def parse_response(self, body: bytes, content_type: str | None) -> Predictions:
        """See the class docstring. Raises PayloadError (``invalid_json``/``invalid_shape``)."""
        doc = loads(body)
        if type(doc) is dict:
            for key in _JSON_OUTPUT_KEYS:
                if key in doc:
                    return Predictions(_columns_of(key, doc[key]))
            _check_error_body(doc)
            if not doc:
                raise _shape_error("empty object")
            return Predictions(_columns_of("prediction", [doc]))
        if type(doc) is list:
            return Predictions(_columns_of("prediction", doc))
        if doc is None:
            raise _shape_error("null response")
        return Predictions({"prediction": [doc]})


# --------------------------------------------------------------------------- factory


_ADAPTERS: dict[str, type[Adapter]] = {
    cls.protocol: cls
    for cls in (V2Adapter, V1Adapter, TFServingAdapter, MLflowAdapter, OpenAIAdapter, JSONAdapter)
}


def make_adapter(model: ModelSpec) -> Adapter:
    """Return the adapter for ``model.protocol``.

    Raises:
        ValueError: an unknown protocol (the spec's validation makes this a bug).
    """
    try:
        cls = _ADAPTERS[model.protocol]
    except KeyError:
        raise ValueError(
            f"unknown protocol {model.protocol!r}; known: {', '.join(_ADAPTERS)}"
        ) from None
    return cls(model)
