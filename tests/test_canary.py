"""Golden-set canary: tolerance rules, golden files, and two real MLServer replicas, one of
them serving corrupted weights that still answer 200."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from monitor import conventions as c
from monitor.canary.compare import compare_outputs
from monitor.canary.golden import CanaryError, GoldenCase, GoldenSet, load_golden
from monitor.modelserver import (
    MODEL_FILENAME,
    MODEL_SETTINGS_FILENAME,
    MLServerProcess,
    TrainedModel,
)
from monitor.procs import ManagedProcess, free_ports
from monitor.spec import ModelSpec, parse_spec
from tests.support import MONITOR, Metrics

pytestmark = pytest.mark.timeout(240)

RECORD = [*MONITOR, "canary", "record", "--config"]
ROWS = 12
"""Golden rows: three requests of four rows."""


# --- tolerance rules ----------------------------------------------------------------------------

CASES = [
    pytest.param(
        {"p": [0.5]},
        {"p": [0.5 + 5e-7]},
        True,
        5e-7,
        id="a float off by less than abs_tolerance passes",
    ),
    pytest.param(
        {"p": [1000.0]},
        {"p": [1000.05]},
        True,
        0.05,
        id="a float within rel_tolerance of a large expected value passes",
    ),
    pytest.param(
        {"p": [0.5]}, {"p": [0.5002]}, False, 2e-4, id="a float beyond abs plus rel tolerance fails"
    ),
    pytest.param(
        {"k": [1, 0]},
        {"k": [1, 1]},
        False,
        1,
        id="a flipped integer class fails and counts 1 as its error",
    ),
    pytest.param({"k": ["cat"]}, {"k": ["dog"]}, False, None, id="a different string class fails"),
    pytest.param({"k": [True]}, {"k": [1]}, False, None, id="a boolean never equals an integer"),
    pytest.param(
        {"p": [[0.1, 0.9]]}, {"p": [[0.1]]}, False, None, id="a shorter row fails on its length"
    ),
    pytest.param(
        {"p": [0.1], "q": [1]},
        {"p": [0.1]},
        False,
        0.0,
        id="an output missing from the answer fails",
    ),
    pytest.param(
        {"p": [0.1]}, {"p": [0.1], "q": [1]}, False, 0.0, id="an output the golden set lacks fails"
    ),
    pytest.param({"p": [math.nan]}, {"p": [math.nan]}, True, None, id="NaN equals NaN"),
    pytest.param(
        {"p": [math.nan]}, {"p": [0.0]}, False, None, id="a number where NaN was expected fails"
    ),
    pytest.param(
        {"p": [{"a": 1.0}]},
        {"p": [{"a": 1.0, "b": 2}]},
        False,
        0.0,
        id="a record with an extra key fails",
    ),
]


@pytest.mark.parametrize(("expected", "actual", "ok", "max_err"), CASES)
def test_compare_outputs(expected: Any, actual: Any, ok: bool, max_err: float | None) -> None:
    res = compare_outputs(expected, actual, abs_tolerance=1e-6, rel_tolerance=1e-4)
    assert res.ok is ok, res.mismatches
    if max_err is None:
        assert res.max_abs_error is None
    else:
        assert res.max_abs_error == pytest.approx(max_err, rel=1e-6, abs=1e-12)
    assert (res.mismatch_count == 0) is ok


def test_mismatch_messages_name_the_case_output_and_index() -> None:
    res = compare_outputs(
        {"predict": [0, 1, 1]},
        {"predict": [0, 0, 1]},
        abs_tolerance=0,
        rel_tolerance=0,
        prefix="case 3: ",
    )
    assert res.mismatches == ["case 3: predict[1]: 0 != 1"]


# --- golden files --------------------------------------------------------------------------------


def _model(**kw: Any) -> ModelSpec:
    return ModelSpec.model_validate({"name": "bc", "upstream": "http://127.0.0.1:1", **kw})


def test_a_missing_golden_file_names_the_field_and_how_to_record_it(tmp_path: Path) -> None:
    with pytest.raises(CanaryError) as err:
        load_golden(tmp_path / "nope.json", _model(), "models[0].canary.golden")
    msg = str(err.value)
    assert msg.startswith("models[0].canary.golden: cannot read")
    assert "monitor canary record --config FILE --model bc" in msg


def test_a_golden_file_of_another_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    golden = GoldenSet("other", "v2", "1", "http://x:1", [GoldenCase("/p", {}, {"a": [1]})])
    path.write_text(golden.to_json())
    with pytest.raises(CanaryError, match="recorded for model 'other', not 'bc'"):
        load_golden(path, _model())


def test_canary_spec_fields_are_validated_and_replicas_default_to_upstream() -> None:
    m = _model(canary={"golden": "g.json"})
    assert m.replica_urls == ["http://127.0.0.1:1"]
    assert m.canary is not None and m.canary.interval_seconds == 30
    assert (m.canary.abs_tolerance, m.canary.rel_tolerance) == (1e-6, 1e-4)
    from monitor.errors import SpecError

    with pytest.raises(SpecError) as err:
        parse_spec(
            {
                "apiVersion": "monitor/v1",
                "service": "s",
                "models": [
                    {
                        "name": "bc",
                        "upstream": "http://127.0.0.1:1",
                        "replicas": ["http://127.0.0.1:2", "grpc://x:1"],
                        "canary": {"golden": "g.json", "rel_tolerance": -1, "colour": 1},
                    }
                ],
            }
        )
    assert set(err.value.problems) == {
        "models[0].replicas[1]: must be an http:// URL with a host, e.g. http://127.0.0.1:8080",
        "models[0].canary.rel_tolerance: Input should be greater than or equal to 0",
        "models[0].canary.colour: unknown field (check the spelling; see docs/spec.md)",
    }


def test_canary_run_without_a_canary_section_exits_1_and_says_why(tmp_path: Path) -> None:
    spec = tmp_path / "m.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "monitor/v1",
                "service": "s",
                "models": [{"name": "bc", "upstream": "http://127.0.0.1:1"}],
            }
        )
    )
    res = subprocess.run(
        [*MONITOR, "canary", "run", "--config", str(spec)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert "no model has a canary section" in res.stderr


def test_record_from_a_dead_server_names_the_input(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    spec = tmp_path / "m.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "monitor/v1",
                "service": "s",
                "models": [{"name": "bc", "upstream": f"http://127.0.0.1:{port}"}],
            }
        )
    )
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps([{"inputs": []}]))
    out = tmp_path / "g.json"
    res = subprocess.run(
        [*RECORD, str(spec), "--model", "bc", "--inputs", str(inputs), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert f"inputs[0]: http://127.0.0.1:{port}/v2/models/bc/infer:" in res.stderr
    assert not out.exists()


# --- two real MLServer replicas --------------------------------------------------------------


def _corrupt_copy(trained: TrainedModel, out: Path, scale: float) -> Path:
    """The same model with its logistic-regression coefficients scaled by ``scale``:
    weights silently wrong, same name, same version, still loads and answers 200."""
    import joblib

    out.mkdir(parents=True)
    pipeline = joblib.load(trained.model_path)
    pipeline.named_steps["clf"].coef_ = pipeline.named_steps["clf"].coef_ * scale
    joblib.dump(pipeline, out / MODEL_FILENAME)
    shutil.copy(trained.settings_path, out / MODEL_SETTINGS_FILENAME)
    return out


def _request(rows: list[list[float]]) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input-0",
                "shape": [len(rows), len(rows[0])],
                "datatype": "FP64",
                "data": [v for r in rows for v in r],
            }
        ],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }


def _post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


@pytest.fixture(scope="module")
def corrupted(
    servers_venv_python: Path, trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[MLServerProcess, Path]]:
    model_dir = _corrupt_copy(trained_model, tmp_path_factory.mktemp("corrupt") / "bc", 1.02)
    with MLServerProcess(model_dir) as server:
        yield server, model_dir


class CanaryProc(ManagedProcess):
    def __init__(self, spec: Path, log_dir: Path) -> None:
        (self.port,) = free_ports(1)
        self.listen = f"127.0.0.1:{self.port}"
        super().__init__(
            [*MONITOR, "canary", "run", "--config", str(spec), "--metrics-listen", self.listen],
            ready_url=f"http://127.0.0.1:{self.port}/metrics",
            log_path=log_dir / "canary.log",
            name="canary",
        )

    def scrape(self) -> Metrics:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return Metrics(r.read().decode())


def test_the_canary_fails_only_the_replica_with_corrupted_weights(
    mlserver: MLServerProcess,
    corrupted: tuple[MLServerProcess, Path],
    trained_model: TrainedModel,
    tmp_path: Path,
) -> None:
    import joblib

    bad, bad_dir = corrupted
    (dead_port,) = free_ports(1)
    dead = f"http://127.0.0.1:{dead_port}"
    rows = trained_model.x_test[:ROWS]
    bodies = [_request(rows[i : i + 4]) for i in range(0, ROWS, 4)]
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps(bodies))
    golden = tmp_path / "golden.json"
    spec = tmp_path / "monitor.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "monitor/v1",
                "service": "s",
                "models": [
                    {
                        "name": "bc",
                        "upstream": mlserver.url,
                        "replicas": [mlserver.url, bad.url, dead],
                        "canary": {"golden": str(golden), "interval_seconds": 0.5},
                    }
                ],
            }
        )
    )

    # The corrupted replica answers every golden request with 200 and well-formed outputs.
    path = "/v2/models/bc/infer"
    for body in bodies:
        status, doc = _post(bad.url + path, body)
        assert status == 200 and {o["name"] for o in doc["outputs"]} == {"predict", "predict_proba"}

    res = subprocess.run(
        [*RECORD, str(spec), "--model", "bc", "--inputs", str(inputs), "--out", str(golden)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    recorded = json.loads(golden.read_text())
    assert recorded["version"] == "1" and recorded["recorded_from"] == mlserver.url
    assert [case["path"] for case in recorded["cases"]] == [path] * 3
    good_model = trained_model.load_estimator()
    assert recorded["cases"][0]["outputs"]["predict"] == good_model.predict(rows[:4]).tolist()

    # What the canary must report for the bad replica: the largest probability change.
    bad_model = joblib.load(bad_dir / MODEL_FILENAME)
    x = np.asarray(rows)
    want_err = float(np.abs(bad_model.predict_proba(x) - good_model.predict_proba(x)).max())
    assert want_err > 1e-6 + 1e-4  # beyond tolerance, else the test would prove nothing

    with CanaryProc(spec, tmp_path) as canary:
        deadline = time.monotonic() + 60

        def count(replica: str, result: str) -> float:
            return m.get(c.CANARY_CHECKS_TOTAL, model="bc", replica=replica, result=result)

        while True:
            m = canary.scrape()
            if (
                count(mlserver.url, c.CANARY_PASS) >= 2
                and count(bad.url, c.CANARY_FAIL) >= 2
                and count(dead, c.CANARY_ERROR) >= 2
            ):
                break
            assert time.monotonic() < deadline, m.text
            time.sleep(0.2)
    log = (tmp_path / "canary.log").read_text()

    assert count(mlserver.url, c.CANARY_FAIL) == 0 and count(mlserver.url, c.CANARY_ERROR) == 0
    assert count(bad.url, c.CANARY_PASS) == 0 and count(bad.url, c.CANARY_ERROR) == 0
    assert count(dead, c.CANARY_PASS) == 0 and count(dead, c.CANARY_FAIL) == 0
    assert m.get(c.CANARY_MAX_ABS_ERROR, replica=mlserver.url) == 0
    assert m.get(c.CANARY_MAX_ABS_ERROR, replica=bad.url) == pytest.approx(want_err, rel=1e-9)
    # None for the dead replica: nothing was compared.
    assert {lab["replica"] for lab in m.series(c.CANARY_MAX_ABS_ERROR)} == {mlserver.url, bad.url}
    assert time.time() - 60 < m.get(c.CANARY_LAST_SUCCESS_TIMESTAMP_SECONDS, replica=mlserver.url)
    assert {lab["replica"] for lab in m.series(c.CANARY_LAST_SUCCESS_TIMESTAMP_SECONDS)} == {
        mlserver.url
    }
    assert f"replica {bad.url}: canary fail: case 0: predict_proba[" in log
