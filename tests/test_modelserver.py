"""The real model servers: training, V2 inference on MLServer, MLflow scoring, shutdown."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import sklearn

from monitor.errors import MonitorError
from monitor.modelserver import (
    MODEL_NAME,
    SERVERS_VENV_ENV,
    MLflowServerProcess,
    MLServerProcess,
    TrainedModel,
    breast_cancer_feature_names,
    free_ports,
    servers_python,
    train_breast_cancer,
)

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post_json(url: str, body: object) -> object:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with _NO_PROXY.open(req, timeout=30) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def _gone(pid: int) -> bool:
    """True when neither the process nor its process group exists any more."""
    if psutil.pid_exists(pid):
        return False
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


# --- no server needed -------------------------------------------------------------


def test_feature_names_are_snake_case() -> None:
    names = breast_cancer_feature_names()
    assert len(names) == 30
    assert len(set(names)) == 30
    assert names[0] == "mean_radius"
    assert "worst_concave_points" in names
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*[a-z0-9]", n) for n in names)


def test_train_writes_an_mlserver_model(tmp_path: Path) -> None:
    tm = train_breast_cancer(tmp_path / "bc", seed=1, version="7")
    assert tm.model_path.is_file()
    settings = json.loads(tm.settings_path.read_text())
    assert settings["name"] == MODEL_NAME == tm.name
    assert settings["implementation"] == "mlserver_sklearn.SKLearnModel"
    assert settings["parameters"]["version"] == "7" == tm.version
    assert len(tm.x_test) == len(tm.y_test) == 143
    assert all(len(row) == 30 for row in tm.x_test)
    assert list(tm.train_frame.columns) == tm.feature_names
    assert len(tm.train_frame) == len(tm.y_train) == 569 - 143
    assert tm.accuracy > 0.9
    preds = tm.load_estimator().predict(np.asarray(tm.x_test))
    assert float((preds == np.asarray(tm.y_test)).mean()) == pytest.approx(tm.accuracy)


def test_corrupt_model_is_mostly_wrong(tmp_path: Path) -> None:
    tm = train_breast_cancer(tmp_path / "bad", version="2", corrupt=True)
    assert tm.corrupt
    assert tm.accuracy < 0.2


def test_free_ports_are_distinct() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(1024 <= p < 65536 for p in ports)


def test_missing_servers_venv_says_make_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained_model: TrainedModel
) -> None:
    monkeypatch.setenv(SERVERS_VENV_ENV, str(tmp_path / "nope"))
    with pytest.raises(MonitorError, match="make servers"):
        servers_python()
    with pytest.raises(MonitorError, match="make servers"):
        MLServerProcess(trained_model.model_dir).start()


# --- real servers -----------------------------------------------------------------


def test_servers_venv_has_our_scikit_learn(servers_venv_python: Path) -> None:
    """model.joblib is pickled here and unpickled there: versions must match."""
    out = subprocess.run(
        [str(servers_venv_python), "-c", "import sklearn; print(sklearn.__version__)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == sklearn.__version__


def test_mlserver_v2_inference_matches_local_predict(
    mlserver: MLServerProcess, trained_model: TrainedModel
) -> None:
    import tritonclient.http as httpclient

    rows = np.asarray(trained_model.x_test, dtype=np.float64)
    expected = trained_model.load_estimator().predict(rows)
    client = httpclient.InferenceServerClient(url=mlserver.url.removeprefix("http://"))
    try:
        assert client.is_server_ready()
        assert client.is_model_ready(MODEL_NAME)
        inp = httpclient.InferInput("input-0", list(rows.shape), "FP64")
        inp.set_data_from_numpy(rows, binary_data=False)
        out = httpclient.InferRequestedOutput("predict", binary_data=False)
        result = client.infer(MODEL_NAME, [inp], outputs=[out])
        got = result.as_numpy("predict")
        response = result.get_response()
    finally:
        client.close()
    assert got is not None
    assert response["model_version"] == trained_model.version
    assert got.reshape(-1).tolist() == expected.tolist()
    assert float((got.reshape(-1) == np.asarray(trained_model.y_test)).mean()) > 0.9


def test_mlflow_dataframe_split_matches_local_predict(
    mlflow_server: MLflowServerProcess, trained_model: TrainedModel
) -> None:
    rows = trained_model.x_test
    expected = trained_model.load_estimator().predict(np.asarray(rows)).tolist()
    body = {"dataframe_split": {"columns": trained_model.feature_names, "data": rows}}
    answer = _post_json(mlflow_server.url + "/invocations", body)
    assert answer == {"predictions": expected}


def test_mlserver_is_stopped_by_pid(servers_venv_python: Path, tmp_path: Path) -> None:
    tm = train_breast_cancer(tmp_path / "bc")
    with MLServerProcess(tm.model_dir, metrics=False) as server:
        pid = server.pid
        assert psutil.pid_exists(pid)
        assert server.startup_s is not None and server.startup_s > 0
        assert (
            json.loads(tm.model_dir.joinpath("settings.json").read_text())["metrics_endpoint"]
            is None
        )
    assert _gone(pid)
    assert not server.running
    assert "Loaded model" in server.log_path.read_text()
    server.stop()  # idempotent


def test_mlflow_cli_server_and_its_children_are_stopped(
    servers_venv_python: Path, trained_model: TrainedModel, tmp_path: Path
) -> None:
    """`mlflow models serve` forks uvicorn: the whole group must go."""
    with MLflowServerProcess(trained_model, mlflow_dir=tmp_path / "mlf", launcher="cli") as server:
        pid = server.pid
        children = [c.pid for c in psutil.Process(pid).children(recursive=True)]
        assert children, "expected the CLI to run uvicorn as a child"
        answer = _post_json(
            server.url + "/invocations",
            {
                "dataframe_split": {
                    "columns": trained_model.feature_names,
                    "data": trained_model.x_test[:3],
                }
            },
        )
        assert isinstance(answer, dict) and len(answer["predictions"]) == 3
    assert _gone(pid)
    assert not any(psutil.pid_exists(c) for c in children)


def test_server_that_dies_at_start_up_reports_its_log(
    servers_venv_python: Path, tmp_path: Path
) -> None:
    tm = train_breast_cancer(tmp_path / "bc")
    tm.model_path.write_bytes(b"not a pickle")
    server = MLServerProcess(tm.model_dir, ready_timeout_s=60)
    with pytest.raises(MonitorError, match=r"(?s)exited.*Traceback") as info:
        server.start()
    assert str(server.log_path) in str(info.value)
    assert not server.running
