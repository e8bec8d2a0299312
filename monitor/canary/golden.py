"""The golden set: requests with the outputs the approved model version gave them.

File format (JSON, written by ``monitor canary record``, keys sorted)::

    {
      "apiVersion": "monitor/v1",
      "kind": "GoldenSet",
      "model": "bc",
      "protocol": "v2",
      "version": "1",                      # what the approved server reported, or null
      "recorded_from": "http://127.0.0.1:8080",
      "cases": [
        {"path": "/v2/models/bc/infer",
         "request": {...},                 # the body sent, as given in --inputs
         "outputs": {"predict": [1, 0]}}   # the outputs read by the protocol adapter
      ]
    }

Outputs are read from responses by the sidecar's protocol adapters
(:meth:`monitor.protocols.Adapter.parse_response`: ``{output name: per-row values}``),
so only model outputs are compared, never ids, timestamps or versions. OpenAI-compatible
answers are read as ``{"choices": [message content or text, ...]}``.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.errors import MonitorError, PayloadError
from monitor.protocols import Adapter, make_adapter
from monitor.spec import ModelSpec

__all__ = [
    "CanaryError",
    "GoldenCase",
    "GoldenSet",
    "inference_path",
    "load_golden",
    "read_outputs",
    "record",
]

KIND = "GoldenSet"
API_VERSION = "monitor/v1"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_MAX_BODY_IN_MESSAGE = 300


class CanaryError(MonitorError):
    """A golden set cannot be recorded or loaded (the message says what to do)."""


@dataclass(frozen=True)
class GoldenCase:
    """One golden request and the outputs expected for it."""

    path: str
    """URL path the request is POSTed to (e.g. ``/v2/models/bc/infer``)."""
    request: Any
    """The JSON request body."""
    outputs: dict[str, Any]
    """Expected ``{output name: per-row values}``."""


@dataclass(frozen=True)
class GoldenSet:
    """A model's golden requests and outputs (see the module docstring for the file)."""

    model: str
    protocol: str
    version: str | None
    recorded_from: str
    cases: list[GoldenCase]

    def to_json(self) -> str:
        """The file's text: sorted keys, two-space indent, trailing newline."""
        doc = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "model": self.model,
            "protocol": self.protocol,
            "version": self.version,
            "recorded_from": self.recorded_from,
            "cases": [
                {"path": c.path, "request": c.request, "outputs": c.outputs} for c in self.cases
            ],
        }
        return json.dumps(doc, indent=2, sort_keys=True, allow_nan=True) + "\n"


def inference_path(model: ModelSpec, request: Any) -> str:
    """Path a golden request of ``model`` is POSTed to, by protocol: v2
    ``/v2/models/<name>/infer``, v1 and tfserving ``/v1/models/<name>:predict``, mlflow
    ``/invocations``, openai ``/v1/chat/completions`` (``/v1/completions`` for a body
    without ``messages``), json the first of ``inference_paths``."""
    name = model.route_name
    match model.protocol:
        case "v2":
            return f"/v2/models/{name}/infer"
        case "v1" | "tfserving":
            return f"/v1/models/{name}:predict"
        case "mlflow":
            return "/invocations"
        case "openai":
            chat = isinstance(request, dict) and "messages" in request
            return "/v1/chat/completions" if chat else "/v1/completions"
        case _:
            return model.inference_paths[0]


def read_outputs(
    model: ModelSpec, adapter: Adapter, body: bytes
) -> tuple[dict[str, Any], str | None]:
    """The outputs of one response body, ``{output name: per-row values}``, and the
    model version it names (V2 ``model_version``), if any.

    Raises:
        PayloadError: the body is not a response of the model's protocol.
    """
    if model.protocol == "openai":
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise PayloadError("invalid_json", str(exc)) from None
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not isinstance(choices, list):
            raise PayloadError("invalid_shape", "expected 'choices'")
        texts = []
        for ch in choices:
            msg = ch.get("message") if isinstance(ch, dict) else None
            if isinstance(msg, dict):
                texts.append(msg.get("content"))
            else:
                texts.append(ch.get("text") if isinstance(ch, dict) else None)
        return {"choices": texts}, None
    preds = adapter.parse_response(body, "application/json")
    if not preds.outputs:
        raise PayloadError("invalid_shape", "the response holds no outputs")
    return {k: list(v) for k, v in preds.outputs.items()}, preds.version


def load_golden(path: Path, model: ModelSpec, where: str = "canary.golden") -> GoldenSet:
    """Read and check a golden file for ``model``.

    Raises:
        CanaryError: unreadable, not a golden set, or recorded for another model or
            protocol (the message names ``where`` and says how to record one).
    """
    hint = (
        f"record it with: monitor canary record --config FILE --model {model.name} "
        f"--inputs INPUTS.json --out {path}"
    )
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CanaryError(f"{where}: cannot read {path}: {exc.strerror or exc}; {hint}") from None
    except ValueError as exc:
        raise CanaryError(f"{where}: {path} is not JSON ({exc}); {hint}") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise CanaryError(f"{where}: {path} is not a golden set (kind: {KIND}); {hint}")
    for key, want in (("model", model.name), ("protocol", model.protocol)):
        if doc.get(key) != want:
            raise CanaryError(
                f"{where}: {path} was recorded for {key} {doc.get(key)!r}, not {want!r}; {hint}"
            )
    cases = []
    for i, case in enumerate(doc.get("cases") or []):
        if (
            not isinstance(case, dict)
            or not isinstance(case.get("path"), str)
            or "request" not in case
            or not isinstance(case.get("outputs"), dict)
        ):
            raise CanaryError(f"{where}: {path}: cases[{i}] needs path, request and outputs")
        cases.append(GoldenCase(case["path"], case["request"], case["outputs"]))
    if not cases:
        raise CanaryError(f"{where}: {path} holds no cases; {hint}")
    version = doc.get("version")
    return GoldenSet(
        model=model.name,
        protocol=model.protocol,
        version=None if version is None else str(version),
        recorded_from=str(doc.get("recorded_from", "")),
        cases=cases,
    )


def record(
    model: ModelSpec, inputs: Path, out: Path, *, source: str | None = None, timeout: float = 30.0
) -> GoldenSet:
    """Send every request body of ``inputs`` (a JSON list) to ``source`` (default the
    model's ``upstream``: the approved version) and write the golden set to ``out``.

    Raises:
        CanaryError: ``inputs`` is not a non-empty JSON list; a request fails, answers
            non-2xx, or its answer holds no outputs (the message names the input index);
            ``out`` cannot be written.
    """
    try:
        bodies = json.loads(Path(inputs).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CanaryError(f"--inputs: cannot read {inputs}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CanaryError(f"--inputs: {inputs} is not JSON: {exc}") from None
    if not isinstance(bodies, list) or not bodies:
        raise CanaryError(
            f"--inputs: {inputs} must hold a non-empty JSON list of request bodies "
            f"in the {model.protocol} protocol"
        )
    bad = [i for i, b in enumerate(bodies) if not isinstance(b, dict | list)]
    if bad:
        raise CanaryError(
            f"--inputs: {inputs}: item {bad[0]} is not a request body (a JSON object or list)"
        )
    base = (source or model.upstream).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise CanaryError(f"--from {source}: expected an http(s) URL, e.g. http://127.0.0.1:8080")
    adapter = make_adapter(model)
    cases: list[GoldenCase] = []
    version: str | None = None
    for i, body in enumerate(bodies):
        path = inference_path(model, body)
        raw = _post(f"{base}{path}", body, timeout, f"inputs[{i}]")
        try:
            outputs, answered_version = read_outputs(model, adapter, raw)
        except PayloadError as exc:
            raise CanaryError(
                f"inputs[{i}]: the answer of {base}{path} holds no outputs ({exc}): "
                f"{raw[:_MAX_BODY_IN_MESSAGE]!r}"
            ) from None
        version = version or answered_version
        cases.append(GoldenCase(path, body, outputs))
    golden = GoldenSet(model.name, model.protocol, version or model.version, base, cases)
    _write_atomic(Path(out), golden.to_json())
    return golden


def _post(url: str, body: Any, timeout: float, what: str) -> bytes:
    data = json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:_MAX_BODY_IN_MESSAGE]
        exc.close()
        raise CanaryError(f"{what}: {url} answered {exc.code}: {detail!r}") from None
    except (OSError, ValueError) as exc:
        raise CanaryError(f"{what}: {url}: {exc}") from None


def _write_atomic(out: Path, text: str) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, out)
    except OSError as exc:
        raise CanaryError(f"--out: cannot write {out}: {exc.strerror or exc}") from None
