"""Tests of monitor.protocols: routes, request/response parsing, versions, SSE streams."""

from __future__ import annotations

import json
import math
import random
import string
from typing import Any

import pytest

from monitor import conventions as c
from monitor.errors import PayloadError
from monitor.payload import MISSING, Predictions, Rows
from monitor.protocols import (
    ROUTE_CACHE_SIZE,
    SSE_MAX_LINE_BYTES,
    Adapter,
    JSONAdapter,
    MLflowAdapter,
    OpenAIAdapter,
    RouteMatch,
    StreamInspector,
    TFServingAdapter,
    V1Adapter,
    V2Adapter,
    loads,
    make_adapter,
)
from monitor.spec import FeatureSpec, ModelSpec

ABC = ("a", "b", "c")
LLM = ("temperature", "max_tokens", "prompt_characters", "messages", "has_system_message")
PROTOCOLS = ("v2", "v1", "tfserving", "mlflow", "openai", "json")
M = MISSING


def adapter(protocol: str, features: tuple[str, ...] = ABC, name: str = "m1", **kw: Any) -> Adapter:
    spec = ModelSpec(
        name=name,
        protocol=protocol,  # type: ignore[arg-type]
        upstream="http://127.0.0.1:8080",
        features=[FeatureSpec(name=f) for f in features],
        **kw,
    )
    return make_adapter(spec)


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def v2_input(name: str, shape: list[int], data: list[Any], dt: str = "FP64") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": dt, "data": data}


# --------------------------------------------------------------------------- factory


@pytest.mark.parametrize(
    ("protocol", "cls"),
    [
        pytest.param(
            "v2", V2Adapter, id="The v2 protocol gets the Open Inference Protocol adapter."
        ),
        pytest.param("v1", V1Adapter, id="The v1 protocol gets the KServe V1 adapter."),
        pytest.param(
            "tfserving", TFServingAdapter, id="The tfserving protocol gets the TF Serving adapter."
        ),
        pytest.param("mlflow", MLflowAdapter, id="The mlflow protocol gets the MLflow adapter."),
        pytest.param("openai", OpenAIAdapter, id="The openai protocol gets the OpenAI adapter."),
        pytest.param("json", JSONAdapter, id="The json protocol gets the plain JSON adapter."),
    ],
)
def test_make_adapter_picks_the_protocol_class(protocol: str, cls: type[Adapter]) -> None:
    a = adapter(protocol)
    assert type(a) is cls
    assert a.protocol == protocol


# --------------------------------------------------------------------------- routes

ROUTE_CASES = [
    # v2
    ("v2", "POST", "/v2/models/m1/infer", "/v2/models/{model}/infer", "m1", True,
     "A POST to our model's V2 infer route is inference."),
    ("v2", b"POST", "/v2/models/m1/infer", "/v2/models/{model}/infer", "m1", True,
     "A bytes method from httptools is understood like a string one."),
    ("v2", "GET", "/v2/models/m1/infer", "/v2/models/{model}/infer", "m1", False,
     "A GET to the infer route keeps the template but is not inference."),
    ("v2", "POST", "/v2/models/m1/versions/7/infer",
     "/v2/models/{model}/versions/{version}/infer", "m1", True,
     "A versioned V2 infer route is inference and the version is not in the label."),
    ("v2", "POST", "/v2/models/m2/infer", "/v2/models/{model}/infer", c.MODEL_OTHER, False,
     "Another model's infer route is labelled other and is not inference."),
    ("v2", "POST", "/v2/models/m1/generate", "/v2/models/{model}/generate", "m1", False,
     "The V2 generate extension is matched but not read as a tensor payload."),
    ("v2", "POST", "/v2/models/m1/generate_stream", "/v2/models/{model}/generate_stream", "m1",
     False, "The V2 generate_stream extension is matched."),
    ("v2", "GET", "/v2/models/m1/ready", "/v2/models/{model}/ready", "m1", False,
     "The V2 model readiness route is matched."),
    ("v2", "GET", "/v2/models/m1/versions/2/ready",
     "/v2/models/{model}/versions/{version}/ready", "m1", False,
     "The versioned V2 model readiness route is matched."),
    ("v2", "GET", "/v2/models/m1", "/v2/models/{model}", "m1", False,
     "The V2 model metadata route is matched."),
    ("v2", "GET", "/v2/models/m1/versions/2", "/v2/models/{model}/versions/{version}", "m1",
     False, "The versioned V2 model metadata route is matched."),
    ("v2", "GET", "/v2/health/live", "/v2/health/live", "m1", False,
     "The V2 liveness route has no model in its path and takes the spec's model name."),
    ("v2", "GET", "/v2/health/ready", "/v2/health/ready", "m1", False,
     "The V2 readiness route is matched."),
    ("v2", "GET", "/v2", "/v2", "m1", False, "The V2 server metadata route is matched."),
    ("v2", "POST", "/v2/repository/index", "/v2/repository/index", "m1", False,
     "The V2 repository index is matched and is not inference."),
    ("v2", "POST", "/v2/repository/models/m1/load", "/v2/repository/models/{model}/load", "m1",
     False, "The V2 repository load route is matched."),
    ("v2", "POST", "/v2/repository/models/zz/unload", "/v2/repository/models/{model}/unload",
     c.MODEL_OTHER, False, "The V2 repository unload of another model is labelled other."),
    ("v2", "POST", "/v2/models/m1/infer/", c.ROUTE_UNMATCHED, "m1", False,
     "A trailing slash does not match a template."),
    ("v2", "POST", "/v2/models/m1/infer/extra", c.ROUTE_UNMATCHED, "m1", False,
     "A longer path under a template is unmatched."),
    ("v2", "GET", "/", c.ROUTE_UNMATCHED, "m1", False, "The root path is unmatched for V2."),
    ("v2", "POST", "/v1/models/m1:predict", c.ROUTE_UNMATCHED, "m1", False,
     "A V1 route is unmatched for a V2 model."),
    # v1 / tfserving
    ("v1", "POST", "/v1/models/m1:predict", "/v1/models/{model}:predict", "m1", True,
     "A POST to our model's V1 predict route is inference."),
    ("v1", "POST", "/v1/models/m1/versions/3:predict",
     "/v1/models/{model}/versions/{version}:predict", "m1", True,
     "A versioned V1 predict route is inference."),
    ("tfserving", "POST", "/v1/models/m1:classify", "/v1/models/{model}:classify", "m1", True,
     "A TF Serving classify call is inference."),
    ("tfserving", "POST", "/v1/models/m1/versions/3:regress",
     "/v1/models/{model}/versions/{version}:regress", "m1", True,
     "A versioned TF Serving regress call is inference."),
    ("tfserving", "POST", "/v1/models/m1/labels/canary:predict",
     "/v1/models/{model}/labels/{label}:predict", "m1", True,
     "A TF Serving predict addressed by version label is inference."),
    ("v1", "POST", "/v1/models/m1:explain", "/v1/models/{model}:explain", "m1", False,
     "A V1 explain call is matched but is not inference."),
    ("v1", "GET", "/v1/models/m1", "/v1/models/{model}", "m1", False,
     "The V1 model status route is matched."),
    ("tfserving", "GET", "/v1/models/m1/metadata", "/v1/models/{model}/metadata", "m1", False,
     "The TF Serving metadata route is matched."),
    ("tfserving", "GET", "/v1/models/m1/versions/4/metadata",
     "/v1/models/{model}/versions/{version}/metadata", "m1", False,
     "The versioned TF Serving metadata route is matched."),
    ("tfserving", "GET", "/v1/models/m1/versions/4", "/v1/models/{model}/versions/{version}",
     "m1", False, "The versioned TF Serving status route is matched."),
    ("v1", "POST", "/v1/models/other-model:predict", "/v1/models/{model}:predict",
     c.MODEL_OTHER, False, "Another model's V1 predict route is labelled other."),
    ("v1", "POST", "/v1/models/m1:frobnicate", c.ROUTE_UNMATCHED, "m1", False,
     "An unknown V1 verb is unmatched."),
    # mlflow
    ("mlflow", "POST", "/invocations", "/invocations", "m1", True,
     "A POST to MLflow /invocations is inference."),
    ("mlflow", "GET", "/invocations", "/invocations", "m1", False,
     "A GET to MLflow /invocations is not inference."),
    ("mlflow", "GET", "/ping", "/ping", "m1", False, "The MLflow ping route is matched."),
    ("mlflow", "GET", "/health", "/health", "m1", False, "The MLflow health route is matched."),
    ("mlflow", "GET", "/version", "/version", "m1", False, "The MLflow version route is matched."),
    ("mlflow", "POST", "/predict", c.ROUTE_UNMATCHED, "m1", False,
     "Other MLflow paths are unmatched."),
    # openai
    ("openai", "POST", "/v1/completions", "/v1/completions", "m1", True,
     "An OpenAI completions call is inference."),
    ("openai", "POST", "/v1/chat/completions", "/v1/chat/completions", "m1", True,
     "An OpenAI chat completions call is inference."),
    ("openai", "POST", "/v1/embeddings", "/v1/embeddings", "m1", True,
     "An OpenAI embeddings call is inference."),
    ("openai", "GET", "/v1/models", "/v1/models", "m1", False,
     "The OpenAI model list is matched and is not inference."),
    ("openai", "POST", "/openai/v1/chat/completions", "/openai/v1/chat/completions", "m1", True,
     "KServe's /openai prefix keeps its own template and is inference."),
    ("openai", "GET", "/openai/v1/models", "/openai/v1/models", "m1", False,
     "KServe's /openai model list is matched."),
    ("openai", "POST", "/v1/responses", c.ROUTE_UNMATCHED, "m1", False,
     "OpenAI routes outside the listed set are unmatched."),
    # json
    ("json", "POST", "/predict", "/predict", "m1", True,
     "A POST to the default json inference path is inference."),
    ("json", "GET", "/predict", "/predict", "m1", False,
     "A GET to the json inference path is not inference."),
    ("json", "POST", "/score", c.ROUTE_UNMATCHED, "m1", False,
     "A json path outside inference_paths is unmatched."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("protocol", "method", "path", "template", "model", "inference"),
    [pytest.param(*case[:6], id=case[6]) for case in ROUTE_CASES],
)
def test_match_gives_bounded_labels(
    protocol: str, method: str | bytes, path: str, template: str, model: str, inference: bool
) -> None:
    a = adapter(protocol)
    got = a.match(method, path)
    assert got == RouteMatch(template, model, inference)
    assert got.template in a.templates
    assert a.match(method, path) == got  # the cached answer is the same


def test_match_uses_upstream_name_in_paths_and_spec_name_in_labels() -> None:
    a = adapter("v2", name="fraud", upstream_name="fraud-xgb")
    assert a.match("POST", "/v2/models/fraud-xgb/infer") == RouteMatch(
        "/v2/models/{model}/infer", "fraud", True
    )
    assert a.match("POST", "/v2/models/fraud/infer").model == c.MODEL_OTHER


def test_json_protocol_uses_configured_inference_paths_as_templates() -> None:
    a = adapter("json", inference_paths=["/score", "/api/v1/predict"])
    assert a.match("POST", "/score") == RouteMatch("/score", "m1", True)
    assert a.match("POST", "/api/v1/predict") == RouteMatch("/api/v1/predict", "m1", True)
    assert a.match("POST", "/predict").template == c.ROUTE_UNMATCHED


def test_a_configured_health_path_becomes_one_more_template() -> None:
    a = adapter("json", health_path="/healthz")
    assert a.health_path == "/healthz"
    assert a.match("GET", "/healthz") == RouteMatch("/healthz", "m1", False)
    assert "/healthz" in a.templates


def test_route_cache_is_bounded() -> None:
    a = adapter("v2")
    for i in range(ROUTE_CACHE_SIZE * 2 + 10):
        a.match("POST", f"/files/{i}.php")
    assert len(a._cache) <= ROUTE_CACHE_SIZE


def _random_segment(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + "-_.:%~"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))


def _random_path(rng: random.Random) -> str:
    seg = _random_segment(rng)
    shapes = [
        f"/files/{seg}.php",
        f"/v2/models/{seg}/infer",
        f"/v2/models/{seg}/versions/{_random_segment(rng)}/infer",
        f"/v2/models/{seg}",
        f"/v1/models/{seg}:predict",
        f"/v1/models/{seg}/versions/{_random_segment(rng)}/metadata",
        f"/openai/v1/{seg}",
        f"/{seg}/{_random_segment(rng)}",
        f"/wp-admin/{seg}",
        f"/v2/repository/models/{seg}/load",
    ]
    return rng.choice(shapes)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ten_thousand_random_paths_yield_a_bounded_label_set(protocol: str) -> None:
    """Case C17: scanner traffic must not mint label values."""
    rng = random.Random(17)
    a = adapter(protocol)
    valid = {
        "v2": "/v2/models/m1/infer",
        "v1": "/v1/models/m1:predict",
        "tfserving": "/v1/models/m1:predict",
        "mlflow": "/invocations",
        "openai": "/v1/chat/completions",
        "json": "/predict",
    }[protocol]
    templates, models = set(), set()
    for _ in range(10_000):
        got = a.match(rng.choice(("GET", "POST", b"POST", "PUT")), _random_path(rng))
        templates.add(got.template)
        models.add(got.model)
    for _ in range(100):
        got = a.match("POST", valid)
        assert got.inference
        templates.add(got.template)
        models.add(got.model)
    assert templates <= set(a.templates)
    assert models <= {"m1", c.MODEL_OTHER}
    assert len(templates) <= len(a.templates) <= 20
    assert c.ROUTE_UNMATCHED in templates


# --------------------------------------------------------------------------- requests

REQUEST_CASES = [
    # ---- v2
    ("v2", ABC, {"inputs": [v2_input("input-0", [2, 3], [1, 2, 3, 4, 5, 6])]}, None,
     Rows(2, {"a": [1, 4], "b": [2, 5], "c": [3, 6]}),
     "A flat V2 [2,3] tensor maps columns to features by position."),
    ("v2", ABC, {"inputs": [v2_input("input-0", [2, 3], [[1, 2, 3], [4, 5, 6]])]}, None,
     Rows(2, {"a": [1, 4], "b": [2, 5], "c": [3, 6]}),
     "Nested V2 data gives the same columns as flat data."),
    ("v2", ABC, {"inputs": [v2_input("input-0", [2, 5], list(range(10)))]}, None,
     Rows(2, {"a": [0, 5], "b": [1, 6], "c": [2, 7]}, unexpected=4),
     "A V2 tensor wider than the spec counts n times the extra columns as unexpected."),
    ("v2", ABC, {"inputs": [v2_input("input-0", [3, 2], [[1, 2], [3, 4], [5, 6]])]}, None,
     Rows(3, {"a": [1, 3, 5], "b": [2, 4, 6], "c": [M, M, M]}),
     "A V2 tensor narrower than the spec leaves trailing features missing."),
    ("v2", ABC, {"inputs": [v2_input("input-0", [3], [1, 2, 3])]}, None,
     Rows(1, {"a": [1], "b": [2], "c": [3]}),
     "A single unnamed 1-D V2 input is one positional row when the spec has several features."),
    ("v2", ("a",), {"inputs": [v2_input("input-0", [3], [1, 2, 3])]}, None,
     Rows(3, {"a": [1, 2, 3]}),
     "A single unnamed 1-D V2 input is one value per row when the spec has one feature."),
    ("v2", ABC, {"inputs": [v2_input("input-0", [0, 3], [])]}, None,
     Rows(0, {"a": [], "b": [], "c": []}),
     "An empty V2 batch gives zero rows."),
    ("v2", ABC,
     {"inputs": [v2_input("a", [2], [1.5, 2.5]), v2_input("b", [2, 1], [[7], [8]]),
                 v2_input("zz", [2], ["x", "y"], "BYTES")]},
     None, Rows(2, {"a": [1.5, 2.5], "b": [7, 8]}, unexpected=2),
     "Named V2 inputs are columns, [[x],[y]] is flattened and unknown inputs count per row."),
    ("v2", ABC,
     {"parameters": {"content_type": "pd"},
      "inputs": [v2_input("c", [2], ["red", "blue"], "BYTES"),
                 v2_input("extra", [2], [1, 2], "INT64")]},
     None, Rows(2, {"c": ["red", "blue"]}, unexpected=2),
     "With MLServer's pd content type each input is a column and BYTES stay strings."),
    ("v2", ABC,
     {"parameters": {"content_type": "pd"}, "inputs": [v2_input("input-0", [2], [1, 2])]},
     None, Rows(2, {}, unexpected=2),
     "With pd content type a single non-feature input is unexpected, not positional."),
    ("v2", ABC, {"inputs": [v2_input("a", [1], [True], "BOOL")]}, None,
     Rows(1, {"a": [True]}),
     "A single V2 input named as a feature is that feature's column."),
    ("v2", ABC, {"inputs": [v2_input("a", [2, 2], [1, 2, 3, 4])]}, None,
     Rows(2, {"a": [[1, 2], [3, 4]]}),
     "A named V2 input with several values per row keeps per-row lists for coverage to judge."),
    ("v2", ABC, {"inputs": [v2_input("a", [3], [1, 2, 3]), v2_input("b", [1], [9])]}, None,
     Rows(3, {"a": [1, 2, 3], "b": [9, M, M]}),
     "Named V2 inputs of different batch sizes are padded with MISSING."),
    ("v2", (), {"inputs": [v2_input("input-0", [2, 4], list(range(8)))]}, None,
     Rows(2, {}),
     "A spec without features counts rows but nothing unexpected."),
    # ---- v1 / tfserving
    ("v1", ABC, {"instances": [[1, 2, 3], [4, 5, 6]]}, None,
     Rows(2, {"a": [1, 4], "b": [2, 5], "c": [3, 6]}),
     "V1 list instances are positional rows."),
    ("v1", ABC, {"instances": [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]}, None,
     Rows(2, {"a": [1, 6], "b": [2, 7], "c": [3, 8]}, unexpected=4),
     "V1 rows wider than the spec count the extra values as unexpected."),
    ("v1", ABC, {"instances": [[1], [2, 3]]}, None,
     Rows(2, {"a": [1, 2], "b": [M, 3], "c": [M, M]}),
     "Ragged V1 rows leave the short row's trailing features missing."),
    ("v1", ABC,
     {"instances": [{"a": [1], "b": {"b64": "aGk="}, "x": 0}, {"a": 2, "c": [1, 2]}]}, None,
     Rows(2, {"a": [1, 2], "b": [{"b64": "aGk="}, M], "c": [M, [1, 2]]}, unexpected=1),
     "V1 dict instances are named: 1-element lists unwrap, b64 objects stay, extras count."),
    ("v1", ("a",), {"instances": [0.1, 0.2]}, None, Rows(2, {"a": [0.1, 0.2]}),
     "Scalar V1 instances are rows of the single spec feature."),
    ("v1", ABC, {"inputs": {"a": [1, 2], "b": [[3], [4]], "q": [0, 0]}}, None,
     Rows(2, {"a": [1, 2], "b": [3, 4]}, unexpected=2),
     "Columnar V1 inputs map names to per-row values."),
    ("v1", ABC, {"inputs": [[1, 2, 3]]}, None, Rows(1, {"a": [1], "b": [2], "c": [3]}),
     "A V1 inputs list is read like instances."),
    ("v1", ABC, {"inputs": [[1, 2, 3]], "instances": [[9, 9, 9]]}, None,
     Rows(1, {"a": [1], "b": [2], "c": [3]}),
     "KServe V1 uses inputs when both inputs and instances are sent."),
    ("tfserving", ABC, {"signature_name": "serving_default", "instances": [{"a": 1.0}]}, None,
     Rows(1, {"a": [1.0], "b": [M], "c": [M]}),
     "A TF Serving signature name is not a feature."),
    ("tfserving", ABC, {"examples": [{"a": [1.0], "b": ["x"]}, {"c": 3}]}, None,
     Rows(2, {"a": [1.0, M], "b": ["x", M], "c": [M, 3]}),
     "TF Serving classify examples are named rows."),
    # ---- mlflow
    ("mlflow", ABC,
     {"dataframe_split": {"columns": ["a", "b", "z"], "data": [[1, 2, 3], [4, 5, 6]]}}, None,
     Rows(2, {"a": [1, 4], "b": [2, 5]}, unexpected=2),
     "MLflow dataframe_split maps columns by name and counts unknown columns per row."),
    ("mlflow", ABC, {"dataframe_split": {"data": [[1, 2, 3, 4]], "index": [0]}}, None,
     Rows(1, {"a": [1], "b": [2], "c": [3]}, unexpected=1),
     "MLflow dataframe_split without columns is positional."),
    ("mlflow", ABC, {"dataframe_records": [{"a": 1, "b": None}, {"c": "x", "y": 1}],
                     "params": {"k": 1}}, None,
     Rows(2, {"a": [1, M], "b": [None, M], "c": [M, "x"]}, unexpected=1),
     "MLflow dataframe_records are named rows; null stays None and absent is MISSING."),
    ("mlflow", ABC, {"instances": [[1, 2, 3]]}, None, Rows(1, {"a": [1], "b": [2], "c": [3]}),
     "MLflow instances use the TF Serving row format."),
    ("mlflow", ABC, {"inputs": {"a": [1, 2]}}, None, Rows(2, {"a": [1, 2]}),
     "MLflow inputs use the TF Serving columnar format."),
    ("mlflow", ABC, b"a,b,zz\n1.5,,red\n2,x,blue\n", "text/csv; charset=utf-8",
     Rows(2, {"a": [1.5, 2.0], "b": [None, "x"]}, unexpected=2),
     "MLflow CSV: numbers become floats, empty cells None, others strings."),
    ("mlflow", ABC, b"a,b\n\n1,2\n", "text/csv", Rows(1, {"a": [1.0], "b": [2.0]}),
     "Blank CSV lines are skipped as pandas does."),
    ("mlflow", ("temperature", "prompt_characters"),
     {"messages": [{"role": "user", "content": "hello"}], "temperature": 0.2}, None,
     Rows(1, {"temperature": [0.2], "prompt_characters": [5]}, 0, {"prompt_characters": 5.0}),
     "MLflow's unwrapped chat payload is read like an OpenAI request."),
    # ---- openai
    ("openai", (*LLM, "has_tools"),
     {"model": "m", "temperature": 0.7, "stream": True,
      "messages": [{"role": "system", "content": "be brief"},
                   {"role": "user", "content": [{"type": "text", "text": "hi there"},
                                                {"type": "image_url", "image_url": {"url": "x"}}]}],
      "tools": [{"type": "function", "function": {"name": "f"}}]},
     None,
     Rows(1, {"temperature": [0.7], "max_tokens": [M], "prompt_characters": [16],
              "messages": [2], "has_system_message": [1], "has_tools": [1]},
          0, {"prompt_characters": 16.0}),
     "An OpenAI chat request gives params, prompt characters over content parts and flags."),
    ("openai", (*LLM, "has_tools"),
     {"model": "m", "prompt": ["abc", "de"], "max_tokens": 16, "logit_bias": {"1": 2}}, None,
     Rows(1, {"temperature": [M], "max_tokens": [16], "prompt_characters": [5],
              "messages": [M], "has_system_message": [M], "has_tools": [0]},
          0, {"prompt_characters": 5.0}),
     "An OpenAI completions request counts prompt characters; chat-only features are missing."),
    ("openai", ("prompt_characters",), {"model": "e", "input": "embed me"}, None,
     Rows(1, {"prompt_characters": [8]}, 0, {"prompt_characters": 8.0}),
     "An OpenAI embeddings input counts as prompt characters."),
    ("openai", (), {"prompt": [1, 2, 3]}, None, Rows(1, {}, 0, {"prompt_characters": 0.0}),
     "A token-id prompt has no characters and non-spec keys are never unexpected."),
    # ---- json
    ("json", ABC, {"a": 1, "b": "x", "q": 3}, None,
     Rows(1, {"a": [1], "b": ["x"], "c": [M]}, unexpected=1),
     "A JSON object is one named row."),
    ("json", ABC, {"data": [{"a": 1}, {"b": 2}]}, None,
     Rows(2, {"a": [1, M], "b": [M, 2], "c": [M, M]}),
     "A single key holding records gives those records as rows."),
    ("json", ABC, {"instances": [[1, 2, 3, 4]]}, None,
     Rows(1, {"a": [1], "b": [2], "c": [3]}, unexpected=1),
     "A single key holding lists gives positional rows."),
    ("json", ("a", "b"), {"a": [{"x": 1}]}, None, Rows(1, {"a": [[{"x": 1}]], "b": [M]}),
     "A single key that is a spec feature is a value, not a list of rows."),
    ("json", ABC, [{"a": 1}, {"a": 2, "c": 3}], None,
     Rows(2, {"a": [1, 2], "b": [M, M], "c": [M, 3]}),
     "A JSON list of records gives rows."),
    ("json", ABC, [[1, 2], [3, 4]], None, Rows(2, {"a": [1, 3], "b": [2, 4], "c": [M, M]}),
     "A JSON list of lists gives positional rows."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("protocol", "features", "payload", "content_type", "expected"),
    [pytest.param(*case[:5], id=case[5]) for case in REQUEST_CASES],
)
def test_parse_request(
    protocol: str,
    features: tuple[str, ...],
    payload: Any,
    content_type: str | None,
    expected: Rows,
) -> None:
    raw = payload if isinstance(payload, bytes) else body(payload)
    got = adapter(protocol, features).parse_request(raw, content_type)
    assert got == expected


def test_tf_serving_nan_and_infinity_are_parsed() -> None:
    raw = b'{"instances": [{"a": NaN, "b": Infinity, "c": -Infinity}]}'
    rows = adapter("tfserving").parse_request(raw, "application/json")
    assert math.isnan(rows.columns["a"][0])
    assert rows.columns["b"] == [math.inf]
    assert rows.columns["c"] == [-math.inf]


def test_loads_falls_back_for_non_standard_json() -> None:
    assert math.isnan(loads(b"NaN"))
    assert loads(b"[Infinity, -Infinity]") == [math.inf, -math.inf]
    assert loads(b"123456789012345678901234567890") == pytest.approx(1.2345678901234568e29)
    assert loads(b'{"a": 1}') == {"a": 1}


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="An empty body is invalid JSON."),
        pytest.param(b"{'a': 1}", id="Single-quoted keys are invalid JSON."),
        pytest.param(b"\xff\xfe\x00", id="Bytes that are not text are invalid JSON."),
        pytest.param(b"[" * 100_000, id="Absurdly deep nesting is invalid JSON, not a crash."),
    ],
)
def test_loads_raises_invalid_json(raw: bytes) -> None:
    with pytest.raises(PayloadError) as err:
        loads(raw)
    assert err.value.reason == c.PAYLOAD_INVALID_JSON
    assert err.value.detail


C13_BODY = b'{"dataframe_split": {"columns": ["f1", "f2"], "data": [[0.4, 1.7]]'

REQUEST_ERRORS = [
    ("mlflow", C13_BODY, "application/json", c.PAYLOAD_INVALID_JSON,
     "Case C13: a body missing its closing braces is invalid JSON."),
    ("v2", b'{"inputs": [', None, c.PAYLOAD_INVALID_JSON,
     "Truncated V2 JSON is invalid JSON."),
    ("mlflow", body({"dataframe_records": [], "instances": []}), None, c.PAYLOAD_INVALID_SHAPE,
     "An MLflow body with two input keys is invalid shape."),
    ("mlflow", body({"columns": ["a"], "data": [[1]]}), None, c.PAYLOAD_INVALID_SHAPE,
     "The MLflow 1.x columns/data body without a wrapper key is invalid shape."),
    ("mlflow", body([[1, 2]]), None, c.PAYLOAD_INVALID_SHAPE,
     "A bare list sent to MLflow is invalid shape."),
    ("mlflow", body({"dataframe_split": {"columns": ["a", "b"], "data": [[1]]}}), None,
     c.PAYLOAD_INVALID_SHAPE, "An MLflow split row shorter than its columns is invalid shape."),
    ("mlflow", body({"dataframe_records": [1, 2]}), None, c.PAYLOAD_INVALID_SHAPE,
     "MLflow records that are not objects are invalid shape."),
    ("mlflow", b"a,b\n1,2,3\n", "text/csv", c.PAYLOAD_INVALID_CSV,
     "A CSV row longer than its header is invalid CSV."),
    ("mlflow", b'a,b\n"1,2\n', "text/csv", c.PAYLOAD_INVALID_CSV,
     "An unterminated CSV quote is invalid CSV."),
    ("mlflow", b"", "text/csv", c.PAYLOAD_INVALID_CSV, "An empty CSV body is invalid CSV."),
    ("mlflow", b"a,b\n\xff,1\n", "text/csv", c.PAYLOAD_INVALID_CSV,
     "CSV that is not UTF-8 is invalid CSV."),
    ("v2", body([1, 2]), None, c.PAYLOAD_INVALID_SHAPE,
     "A V2 body that is not an object is invalid shape."),
    ("v2", body({"inputs": []}), None, c.PAYLOAD_INVALID_SHAPE,
     "A V2 request without inputs is invalid shape."),
    ("v2", body({"inputs": [v2_input("x", [2, 3], [1, 2, 3, 4, 5])]}), None,
     c.PAYLOAD_INVALID_SHAPE, "V2 data shorter than its shape is invalid shape."),
    ("v2", body({"inputs": [v2_input("x", [2, 2], [[1, 2], 3, 4])]}), None,
     c.PAYLOAD_INVALID_SHAPE, "V2 data mixing lists and scalars is invalid shape."),
    ("v2", body({"inputs": [v2_input("x", [-1, 2], [1, 2])]}), None, c.PAYLOAD_INVALID_SHAPE,
     "A negative V2 dimension is invalid shape."),
    ("v2", body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                             "parameters": {"shared_memory_region": "r"}}]}), None,
     c.PAYLOAD_INVALID_SHAPE, "A shared-memory V2 input without data is invalid shape."),
    ("tfserving", body({"instances": [[1]], "inputs": [[1]]}), None, c.PAYLOAD_INVALID_SHAPE,
     "TF Serving rejects instances and inputs together."),
    ("v1", body({"instances": {"a": 1}}), None, c.PAYLOAD_INVALID_SHAPE,
     "V1 instances that are not a list are invalid shape."),
    ("v1", body({"data": [1]}), None, c.PAYLOAD_INVALID_SHAPE,
     "A V1 body with no known key is invalid shape."),
    ("openai", body({"messages": "hi"}), None, c.PAYLOAD_INVALID_SHAPE,
     "OpenAI messages that are not a list are invalid shape."),
    ("json", body("text"), None, c.PAYLOAD_INVALID_SHAPE,
     "A JSON request that is a bare string is invalid shape."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("protocol", "raw", "content_type", "reason"),
    [pytest.param(*case[:4], id=case[4]) for case in REQUEST_ERRORS],
)
def test_parse_request_errors(
    protocol: str, raw: bytes, content_type: str | None, reason: str
) -> None:
    with pytest.raises(PayloadError) as err:
        adapter(protocol).parse_request(raw, content_type)
    assert err.value.reason == reason


# --------------------------------------------------------------------------- responses

RESPONSE_CASES = [
    ("v2", {"model_name": "m1", "outputs": [
        {"name": "proba", "shape": [2, 1], "datatype": "FP32", "data": [[0.1], [0.9]]},
        {"name": "label", "shape": [2], "datatype": "BYTES", "data": ["no", "yes"]}]},
     Predictions({"proba": [0.1, 0.9], "label": ["no", "yes"]}),
     "V2 outputs of shape [n,1] and [n] give one scalar per row, in response order."),
    ("v2", {"outputs": [{"name": "p", "shape": [2, 3], "datatype": "FP32",
                         "data": [1, 2, 3, 4, 5, 6]}]},
     Predictions({"p": [[1, 2, 3], [4, 5, 6]]}),
     "A flat V2 [n,c] output gives per-row lists."),
    ("v2", {"outputs": [{"name": "p", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]},
     Predictions({"p": [[1, 2], [3, 4]]}),
     "A nested V2 [n,c] output gives per-row lists."),
    ("v1", {"predictions": [0.2, 0.8]}, Predictions({"predictions": [0.2, 0.8]}),
     "V1 scalar predictions are one column."),
    ("v1", {"predictions": [[0.1, 0.9], [0.7, 0.3]]},
     Predictions({"predictions": [[0.1, 0.9], [0.7, 0.3]]}),
     "V1 list predictions keep one list per row."),
    ("tfserving", {"predictions": [{"score": 0.1, "label": "a"}, {"score": 0.7}]},
     Predictions({"score": [0.1, 0.7], "label": ["a", None]}),
     "TF Serving record predictions give one column per key."),
    ("tfserving", {"outputs": {"score": [0.1, 0.2], "label": ["a", "b"]}},
     Predictions({"score": [0.1, 0.2], "label": ["a", "b"]}),
     "TF Serving columnar outputs map names to columns."),
    ("tfserving", {"outputs": [0.5, 0.6]}, Predictions({"outputs": [0.5, 0.6]}),
     "A single TF Serving columnar output is one column."),
    ("tfserving", {"result": [3.9, 5.2]}, Predictions({"result": [3.9, 5.2]}),
     "A TF Serving regress result is one column."),
    ("mlflow", [1, 0, 1], Predictions({"predictions": [1, 0, 1]}),
     "A bare MLflow list is the predictions."),
    ("mlflow", {"predictions": {"yhat": [1.0, 2.0], "lo": [0.5, 1.5]}},
     Predictions({"yhat": [1.0, 2.0], "lo": [0.5, 1.5]}),
     "MLflow predictions given as a dict of columns keep their names."),
    ("openai", {"object": "chat.completion", "choices": [{"message": {"content": "x"}}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}},
     Predictions({}, {"prompt": 12, "completion": 3}),
     "An OpenAI response gives token usage and no outputs."),
    ("openai", {"object": "list", "data": [], "usage": {"prompt_tokens": 4, "total_tokens": 4}},
     Predictions({}, {"prompt": 4}),
     "An OpenAI embeddings response reports prompt tokens only."),
    ("openai", {"choices": []}, Predictions({}, {}), "An OpenAI response without usage has none."),
    ("json", {"prediction": 0.42, "model": "m1"}, Predictions({"prediction": [0.42]}),
     "A JSON response's prediction key is the primary output."),
    ("json", {"scores": [0.1, 0.2], "result": ["a", "b"]}, Predictions({"result": ["a", "b"]}),
     "The first known key in the documented order wins."),
    ("json", [0.3, 0.4], Predictions({"prediction": [0.3, 0.4]}),
     "A bare JSON list is the prediction."),
    ("json", 7, Predictions({"prediction": [7]}), "A bare JSON number is the prediction."),
    ("json", {"label": "cat", "probability": 0.9},
     Predictions({"label": ["cat"], "probability": [0.9]}),
     "A JSON record with no known key is one row of outputs."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("protocol", "payload", "expected"),
    [pytest.param(*case[:3], id=case[3]) for case in RESPONSE_CASES],
)
def test_parse_response(protocol: str, payload: Any, expected: Predictions) -> None:
    got = adapter(protocol).parse_response(body(payload), "application/json")
    assert got == expected
    assert list(got.outputs) == list(expected.outputs)  # order: first is primary


RESPONSE_ERRORS = [
    ("v2", body({"error": "Model is overloaded"}), c.PAYLOAD_INVALID_SHAPE,
     "A V2 error body is invalid shape."),
    ("v2", body({"outputs": [{"name": "p", "shape": [3], "data": [1]}]}),
     c.PAYLOAD_INVALID_SHAPE, "V2 output data not matching its shape is invalid shape."),
    ("tfserving", body({"error": "Serving signature not found"}), c.PAYLOAD_INVALID_SHAPE,
     "A TF Serving error body is invalid shape."),
    ("mlflow", body({"error_code": "BAD_REQUEST", "message": "no"}), c.PAYLOAD_INVALID_SHAPE,
     "An MLflow error body is invalid shape."),
    ("openai", body({"error": {"message": "bad", "type": "invalid_request_error"}}),
     c.PAYLOAD_INVALID_SHAPE, "An OpenAI error body is invalid shape."),
    ("openai", body({"object": "error", "message": "bad", "code": 400}),
     c.PAYLOAD_INVALID_SHAPE, "A vLLM error object is invalid shape."),
    ("json", body({"error": "boom"}), c.PAYLOAD_INVALID_SHAPE,
     "A plain JSON error body is invalid shape."),
    ("json", b"null", c.PAYLOAD_INVALID_SHAPE, "A null JSON response is invalid shape."),
    ("v1", b"<html>502</html>", c.PAYLOAD_INVALID_JSON, "An HTML error page is invalid JSON."),
    ("v1", b'{"predictions": [NaN, 1.0]', c.PAYLOAD_INVALID_JSON,
     "A truncated TF Serving response is invalid JSON."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("protocol", "raw", "reason"),
    [pytest.param(*case[:3], id=case[3]) for case in RESPONSE_ERRORS],
)
def test_parse_response_errors(protocol: str, raw: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as err:
        adapter(protocol).parse_response(raw, "application/json")
    assert err.value.reason == reason


def test_tf_serving_response_with_nan_is_parsed() -> None:
    got = adapter("tfserving").parse_response(b'{"predictions": [NaN, 0.5]}', None)
    assert math.isnan(got.outputs["predictions"][0])
    assert got.outputs["predictions"][1] == 0.5


# --------------------------------------------------------------------------- health / versions


@pytest.mark.parametrize(
    ("protocol", "health", "metadata"),
    [
        pytest.param(
            "v2", "/v2/health/ready", "/v2/models/up", id="V2 probes readiness and metadata."
        ),
        pytest.param("v1", "/v1/models/up", "/v1/models/up", id="V1 probes the model status."),
        pytest.param(
            "tfserving", "/v1/models/up", "/v1/models/up", id="TF Serving probes the model status."
        ),
        pytest.param("mlflow", "/ping", None, id="MLflow probes /ping and has no metadata."),
        pytest.param("openai", "/v1/models", None, id="OpenAI probes the model list."),
        pytest.param("json", None, None, id="Plain JSON accepts any answer on the root path."),
    ],
)
def test_health_and_metadata_paths(protocol: str, health: str | None, metadata: str | None) -> None:
    a = adapter(protocol, name="m1", upstream_name="up")
    assert a.health_path == health
    assert a.metadata_path == metadata
    if health is not None:
        assert a.match("GET", health).template != c.ROUTE_UNMATCHED


def test_spec_health_path_overrides_the_protocol_default() -> None:
    assert adapter("v2", health_path="/live").health_path == "/live"


VERSION_CASES = [
    ("v2", {"name": "m1", "versions": ["1", "2"], "platform": "onnx"}, "2",
     "The last of the V2 metadata versions is served."),
    ("v2", {"name": "m1", "versions": [], "platform": ""}, None,
     "MLServer's empty versions list gives no version."),
    ("v2", {"name": "m1"}, None, "V2 metadata without versions gives no version."),
    ("v2", {"name": "m1", "model_version": 5}, "5", "A V2 model_version is used when present."),
    ("tfserving", {"model_version_status": [
        {"version": "3", "state": "AVAILABLE"}, {"version": "12", "state": "AVAILABLE"},
        {"version": "20", "state": "LOADING"}]}, "12",
     "TF Serving reports the highest AVAILABLE version, compared as numbers."),
    ("tfserving", {"model_version_status": [{"version": "3", "state": "END"}]}, None,
     "TF Serving without an AVAILABLE version gives none."),
    ("v1", {"name": "m1", "ready": True}, None, "KServe V1 status carries no version."),
    ("mlflow", {"version": "1"}, None, "MLflow has no metadata path, so no version."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("protocol", "payload", "expected"),
    [pytest.param(*case[:3], id=case[3]) for case in VERSION_CASES],
)
def test_parse_version(protocol: str, payload: Any, expected: str | None) -> None:
    assert adapter(protocol).parse_version(body(payload)) == expected


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"[1, 2]", b'{"versions": {"a": 1}}', b'{"model_version_status": 3}'],
)
def test_parse_version_never_raises(protocol: str, raw: bytes) -> None:
    assert adapter(protocol).parse_version(raw) is None


# --------------------------------------------------------------------------- SSE streams


def _chunk(content: str | None = None, text: str | None = None, usage: Any = None) -> bytes:
    doc: dict[str, Any] = {"object": "chat.completion.chunk"}
    if usage is not None:
        doc["choices"] = []
        doc["usage"] = usage
    elif text is not None:
        doc["choices"] = [{"index": 0, "text": text}]
    else:
        doc["choices"] = [{"index": 0, "delta": {"content": content}}]
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


STREAM = (
    b": keep-alive comment\n\n"
    + _chunk(content="")  # role-only first chunk: no token yet
    + _chunk(content="Hel")
    + _chunk(content="lo")
    + _chunk(usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})
    + b"data: [DONE]\n\n"
)


def _feed_all(data: bytes, pieces: list[bytes]) -> StreamInspector:
    s = StreamInspector()
    for i, piece in enumerate(pieces):
        s.feed(piece, float(i))
    return s


def test_openai_adapter_gives_a_stream_inspector_and_others_none() -> None:
    assert isinstance(adapter("openai").stream_inspector(), StreamInspector)
    for p in PROTOCOLS:
        if p != "openai":
            assert adapter(p).stream_inspector() is None


def test_stream_inspector_reads_tokens_usage_and_events() -> None:
    s = StreamInspector()
    s.feed(STREAM, 1.5)
    assert s.first_token_at == 1.5
    assert s.usage == {"prompt": 9, "completion": 2}
    assert s.events == 4


def test_stream_fed_byte_by_byte_matches_stream_fed_whole() -> None:
    whole = StreamInspector()
    whole.feed(STREAM, 0.0)
    s = StreamInspector()
    first_token_byte = STREAM.index(b"Hel")
    end_of_that_event = STREAM.index(b"\n\n", first_token_byte) + 1
    for i in range(len(STREAM)):
        s.feed(STREAM[i : i + 1], float(i))
    assert (s.events, s.usage) == (whole.events, whole.usage)
    # The event is dispatched on its terminating blank line.
    assert s.first_token_at == float(end_of_that_event)


@pytest.mark.parametrize(
    "eol",
    [
        pytest.param(b"\r\n", id="CRLF line ends are read like LF."),
        pytest.param(b"\r", id="Bare CR line ends are read like LF."),
    ],
)
def test_stream_other_line_ends_split_anywhere(eol: bytes) -> None:
    data = STREAM.replace(b"\n", eol)
    for step in (1, 2, 3, 7, len(data)):
        s = StreamInspector()
        for i in range(0, len(data), step):
            s.feed(data[i : i + step], 0.0)
        assert (s.events, s.usage, s.first_token_at) == (4, {"prompt": 9, "completion": 2}, 0.0)


def test_stream_without_usage_chunk_has_empty_usage() -> None:
    s = StreamInspector()
    s.feed(_chunk(text="Once") + _chunk(text=" upon") + b"data: [DONE]\n\n", 2.0)
    assert s.usage == {}
    assert s.first_token_at == 2.0
    assert s.events == 2


def test_stream_cut_before_any_token_has_no_first_token() -> None:
    s = StreamInspector()
    s.feed(_chunk(content=""), 1.0)
    s.feed(b'data: {"choices": [{"delta": {"content": "par', 2.0)
    assert s.first_token_at is None
    assert s.events == 1


def test_stream_drops_an_over_long_line_and_recovers() -> None:
    s = StreamInspector()
    s.feed(b"data: " + b"x" * (SSE_MAX_LINE_BYTES + 10), 0.0)
    assert len(s._buf) == 0
    s.feed(b"y" * 1000 + b"\n\n", 1.0)  # the rest of the dropped line
    s.feed(_chunk(content="ok"), 2.0)
    assert s.first_token_at == 2.0
    assert s.events == 1


def test_stream_tolerates_garbage_and_single_newline_servers() -> None:
    s = StreamInspector()
    s.feed(b"event: message\nid: 1\nretry: 10\ndata: {not json}\n\n", 0.0)
    s.feed(b'data: {"choices": [{"delta": {"content": "a"}}]}\n', 1.0)
    s.feed(b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}\n', 1.0)
    s.feed(b"data: [DONE]\n\n", 1.0)
    s.feed(b"\xff\xfe\x00 random", 1.0)
    assert s.events == 3
    assert s.first_token_at == 1.0
    assert s.usage == {"prompt": 1, "completion": 1}


# --------------------------------------------------------------------------- properties


def test_parse_request_only_raises_payload_errors_on_random_bytes() -> None:
    rng = random.Random(13)
    adapters = [adapter(p) for p in PROTOCOLS]
    samples = [C13_BODY, b"{}", b"[]", b"[[]]", b'{"inputs": [{}]}', b'{"instances": [[]]}']
    for _ in range(300):
        n = rng.randint(0, 40)
        samples.append(bytes(rng.choice(b'{}[]:,"0123456789.e-abtrufnl ') for _ in range(n)))
    for a in adapters:
        for raw in samples:
            for ct in (None, "text/csv"):
                try:
                    a.parse_request(raw, ct)
                except PayloadError as exc:
                    assert exc.reason in c.PAYLOAD_REASONS
                try:
                    a.parse_response(raw, ct)
                except PayloadError as exc:
                    assert exc.reason in c.PAYLOAD_REASONS
