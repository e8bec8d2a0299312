"""Real model servers for the tests and the demo.

Trains a small scikit-learn classifier on the breast-cancer data set that ships
with scikit-learn (569 rows, 30 float features, 2 classes; nothing is
downloaded), and runs it behind two real servers:

* MLServer (Open Inference Protocol / V2) with ``mlserver_sklearn.SKLearnModel``
  -- :class:`MLServerProcess`;
* MLflow's pyfunc scoring server (``/ping``, ``/invocations``) --
  :class:`MLflowServerProcess`.

The servers do not run in the project's virtualenv: MLServer pins pandas 3 and
protobuf 6, which clash with ours, so they live in a separate "servers" venv
built from ``deploy/servers-requirements.txt`` (``make servers``), by default
``<repo>/.venv/servers``; ``$MONITOR_SERVERS_VENV`` points elsewhere. This module
only starts that venv's executables as subprocesses; it imports nothing but the
standard library at import time (scikit-learn, joblib and pandas are imported
inside the functions that train or load a model).

Every server is started in its own process group on free loopback ports, is
waited for until its readiness endpoint answers 200, and is stopped by PID
(``SIGTERM`` to the group, then ``SIGKILL``) when its context exits.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from monitor.errors import MonitorError
from monitor.procs import ManagedProcess, free_ports

if TYPE_CHECKING:
    import pandas as pd

MODEL_NAME = "bc"
"""Name the breast-cancer model is served under (``/v2/models/bc/...``)."""

CLASS_NAMES = ("malignant", "benign")
"""Class labels, indexed by the integer prediction (0 = malignant, 1 = benign)."""

SERVERS_VENV_ENV = "MONITOR_SERVERS_VENV"
"""Environment variable that overrides where the servers venv lives."""

MLSERVER_IMPLEMENTATION = "mlserver_sklearn.SKLearnModel"
MODEL_FILENAME = "model.joblib"
MODEL_SETTINGS_FILENAME = "model-settings.json"
SETTINGS_FILENAME = "settings.json"
MLSERVER_LOG_FILENAME = "mlserver.log"
MLFLOW_LOG_FILENAME = "mlflow-server.log"
MLFLOW_SUBDIR = "mlflow"

DEFAULT_READY_TIMEOUT_S = 90.0
DEFAULT_STOP_TIMEOUT_S = 10.0
_LOG_TAIL_LINES = 40


# --- the servers venv ----------------------------------------------------------


def repo_root() -> Path:
    """Return the repository root (the parent of the ``monitor`` package).

    Only meaningful for an editable install / a source checkout; set
    ``$MONITOR_SERVERS_VENV`` when the package is installed elsewhere.
    """
    return Path(__file__).resolve().parent.parent


def servers_venv() -> Path:
    """Return the servers venv directory, without checking that it exists.

    ``$MONITOR_SERVERS_VENV`` when set and non-empty, else ``<repo>/.venv/servers``.
    """
    override = os.environ.get(SERVERS_VENV_ENV, "").strip()
    if override:
        return Path(override).expanduser().resolve()
    return repo_root() / ".venv" / "servers"


def _missing_venv_error(venv: Path, what: str) -> MonitorError:
    return MonitorError(
        f"model-server venv not usable: {what} not found in {venv}; "
        f"run `make servers` to build it (or set ${SERVERS_VENV_ENV} to an existing one)"
    )


def servers_python() -> Path:
    """Return the Python interpreter of the servers venv.

    Raises:
        MonitorError: the venv (or its ``bin/python``) does not exist; the
            message says to run ``make servers``.
    """
    venv = servers_venv()
    python = venv / "bin" / "python"
    if not python.exists():
        raise _missing_venv_error(venv, "bin/python")
    return python


def servers_executable(name: str) -> Path:
    """Return ``<servers venv>/bin/<name>`` (e.g. ``mlserver``, ``mlflow``).

    Raises:
        MonitorError: the venv or that executable is missing ("run `make servers`").
    """
    python = servers_python()
    exe = python.parent / name
    if not exe.exists():
        raise _missing_venv_error(python.parent.parent, f"bin/{name}")
    return exe


# --- training --------------------------------------------------------------------


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def breast_cancer_feature_names() -> list[str]:
    """Return the 30 breast-cancer feature names as safe snake_case identifiers.

    Derived from ``sklearn.datasets.load_breast_cancer().feature_names`` in
    data-set column order, e.g. ``"mean radius"`` -> ``"mean_radius"``,
    ``"worst concave points"`` -> ``"worst_concave_points"``. Imports
    scikit-learn.
    """
    from sklearn.datasets import load_breast_cancer

    names = [_snake(str(n)) for n in load_breast_cancer().feature_names]
    if len(set(names)) != len(names):  # pragma: no cover - data-set invariant
        raise MonitorError(f"feature names collide after snake_casing: {names}")
    return names


@dataclass(frozen=True)
class TrainedModel:
    """A trained breast-cancer classifier on disk, plus its held-out data.

    Attributes:
        model_dir: directory holding ``model.joblib`` and ``model-settings.json``
            (MLServer's model repository root; servers write their files here too).
        model_path: the joblib pickle of a scikit-learn ``Pipeline``
            (``SimpleImputer`` + ``StandardScaler`` + ``LogisticRegression``) fitted on a float64
            ndarray of shape ``[n, 30]`` (no column names), predicting int 0/1.
        settings_path: MLServer's ``model-settings.json``.
        name: served model name (``"bc"``).
        version: served model version (``parameters.version``).
        feature_names: the 30 snake_case feature names, in column order.
        class_names: ``("malignant", "benign")``, indexed by prediction.
        x_test: held-out rows, ``[n_test][30]`` floats (n_test = 143 by default).
        y_test: held-out true labels (``[n_test]`` ints), never inverted.
        y_train: training labels as fitted (inverted when ``corrupt``).
        train_frame: training features as a pandas DataFrame ``[n_train, 30]``
            with ``feature_names`` as columns (a drift baseline).
        accuracy: held-out accuracy of this model in [0, 1].
        seed: the seed of the split and the estimator.
        corrupt: whether the model was trained on inverted labels.
    """

    model_dir: Path
    model_path: Path
    settings_path: Path
    name: str
    version: str
    feature_names: list[str]
    class_names: tuple[str, ...]
    x_test: list[list[float]] = field(repr=False)
    y_test: list[int] = field(repr=False)
    y_train: list[int] = field(repr=False)
    train_frame: pd.DataFrame = field(repr=False)
    accuracy: float
    seed: int
    corrupt: bool

    def load_estimator(self) -> Any:
        """Load and return the fitted scikit-learn pipeline from ``model_path``.

        Call ``.predict(rows)`` on it with an ``[n, 30]`` float array/list to
        get the same int labels the servers return. Imports joblib.
        """
        import joblib

        return joblib.load(self.model_path)


def train_breast_cancer(
    out_dir: Path,
    *,
    seed: int = 0,
    version: str = "1",
    corrupt: bool = False,
) -> TrainedModel:
    """Train the breast-cancer classifier and write it as an MLServer model.

    Splits the 569 rows 75/25 (stratified, ``random_state=seed``), fits
    ``SimpleImputer`` (median) + ``StandardScaler`` + ``LogisticRegression`` on the
    training part, and writes
    into ``out_dir`` (created if needed, files overwritten):

    * ``model.joblib`` -- the fitted pipeline;
    * ``model-settings.json`` -- ``{"name": "bc", "implementation":
      "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./model.joblib",
      "version": version}}``.

    With ``corrupt=True`` the training labels are inverted: the model loads and
    serves normally but is wrong most of the time (held-out accuracy about
    ``1 - normal``), i.e. a bad release for rollback / quality-alert demos.
    ``y_test`` always holds the true labels.

    Raises:
        OSError: ``out_dir`` cannot be created or written.
    """
    import joblib
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_breast_cancer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    x = np.asarray(data.data, dtype=np.float64)
    y = np.asarray(data.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=seed
    )
    if corrupt:
        y_train = 1 - y_train
    # The imputer lets the served model answer rows with a missing value (NaN)
    # as production pipelines do, so a null feature is a data-quality signal for
    # the sidecar to count, not a 500 from the model server.
    model = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median")),
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(max_iter=1000, random_state=seed)),
        ]
    )
    model.fit(x_train, y_train)
    accuracy = float((model.predict(x_test) == y_test).mean())

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_FILENAME
    joblib.dump(model, model_path)
    settings_path = out_dir / MODEL_SETTINGS_FILENAME
    settings = {
        "name": MODEL_NAME,
        "implementation": MLSERVER_IMPLEMENTATION,
        "parameters": {"uri": f"./{MODEL_FILENAME}", "version": str(version)},
    }
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")

    names = breast_cancer_feature_names()
    return TrainedModel(
        model_dir=out_dir,
        model_path=model_path,
        settings_path=settings_path,
        name=MODEL_NAME,
        version=str(version),
        feature_names=names,
        class_names=CLASS_NAMES,
        x_test=x_test.tolist(),
        y_test=[int(v) for v in y_test],
        y_train=[int(v) for v in y_train],
        train_frame=pd.DataFrame(x_train, columns=names),
        accuracy=accuracy,
        seed=seed,
        corrupt=corrupt,
    )


# --- processes ---------------------------------------------------------------------


def _child_env(venv: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a servers-venv child: its bin first on PATH, no leaks."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
        and not k.startswith(("MLSERVER_", "__PYVENV"))
    }
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", os.defpath)])
    env["PYTHONUNBUFFERED"] = "1"
    # MLflow: no telemetry, no network look-ups from a sandboxed test server.
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["DO_NOT_TRACK"] = "1"
    if extra:
        env.update(extra)
    return env


class _ServerProcess(ManagedProcess):
    """A :class:`ManagedProcess` whose command line is built at ``start()``.

    Subclasses pick ports and write config files in ``_prepare`` (so a missing
    servers venv is reported by ``start``, not by the constructor).
    """

    def __init__(
        self,
        *,
        name: str,
        host: str,
        ready_timeout_s: float,
        stop_timeout_s: float,
        log_path: Path,
    ) -> None:
        super().__init__(
            [],
            ready_url="",
            log_path=log_path,
            name=name,
            ready_timeout_s=ready_timeout_s,
            stop_timeout_s=stop_timeout_s,
        )
        self.host = host
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL of the server's HTTP API, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.host}:{self.port}"

    def _prepare(self) -> None:
        """Pick ports, write config; set ``argv``, ``env``, ``cwd``, ``port``."""
        raise NotImplementedError

    def _ready_path(self) -> str:
        raise NotImplementedError

    def start(self) -> Self:
        """Start the server and block until its readiness probe returns 200.

        Sets ``startup_s`` to the seconds from spawn to ready.

        Raises:
            MonitorError: already started; the servers venv is missing ("run
                `make servers`"); the process exited during start-up; or it was
                not ready within ``ready_timeout_s`` seconds. The message
                includes the log tail, and the process is stopped before raising.
        """
        if self._proc is not None:
            raise MonitorError(f"{self.name} already started (pid {self._proc.pid})")
        self._prepare()
        self.ready_url = self.url + self._ready_path()
        return super().start()


class MLServerProcess(_ServerProcess):
    """MLServer serving the model repository in ``model_dir``, as a context manager.

    ``with MLServerProcess(trained.model_dir) as srv:`` writes
    ``<model_dir>/settings.json`` (``parallel_workers: 0``, free ``http_port``,
    ``grpc_port`` and ``metrics_port`` on ``host``, ``debug: false``; with
    ``metrics=False`` MLServer's own metrics server is switched off via
    ``metrics_endpoint: null``), runs ``<servers venv>/bin/mlserver start
    <model_dir>`` in a new process group with its output in
    ``<model_dir>/mlserver.log``, and returns once ``GET
    /v2/models/<model_name>/ready`` answers 200. On exit it is stopped by PID.

    ``parallel_workers: 0`` keeps inference in the server process (no worker
    pool), which avoids MLServer 1.7's start-up failure with recent uvloop.
    Run one server per ``model_dir`` at a time (the settings and log files are
    per directory).

    Attributes (after start): ``url`` (``http://host:http_port``), ``pid``,
    ``port`` (HTTP), ``grpc_port``, ``metrics_port`` (0 when disabled),
    ``log_path``, ``startup_s``.

    Raises (from ``start``/``__enter__``):
        MonitorError: servers venv missing ("run `make servers`"), the server
            exited, or it was not ready within ``ready_timeout_s`` seconds
            (message includes the log tail).
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        model_name: str = MODEL_NAME,
        host: str = "127.0.0.1",
        metrics: bool = True,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    ) -> None:
        self.model_dir = Path(model_dir).resolve()
        super().__init__(
            name="MLServer",
            host=host,
            ready_timeout_s=ready_timeout_s,
            stop_timeout_s=stop_timeout_s,
            log_path=self.model_dir / MLSERVER_LOG_FILENAME,
        )
        self.model_name = model_name
        self.metrics = metrics
        self.grpc_port = 0
        self.metrics_port = 0

    def _ready_path(self) -> str:
        return f"/v2/models/{self.model_name}/ready"

    def _prepare(self) -> None:
        exe = servers_executable("mlserver")
        if not (self.model_dir / MODEL_SETTINGS_FILENAME).exists() and not any(
            self.model_dir.rglob(MODEL_SETTINGS_FILENAME)
        ):
            raise MonitorError(f"no {MODEL_SETTINGS_FILENAME} under {self.model_dir}")
        self.port, self.grpc_port, self.metrics_port = free_ports(3, self.host)
        settings: dict[str, Any] = {
            "parallel_workers": 0,
            "http_port": self.port,
            "grpc_port": self.grpc_port,
            "metrics_port": self.metrics_port,
            "host": self.host,
            "debug": False,
        }
        if not self.metrics:
            settings["metrics_endpoint"] = None
            self.metrics_port = 0
        (self.model_dir / SETTINGS_FILENAME).write_text(json.dumps(settings, indent=2) + "\n")
        self.argv = [str(exe), "start", str(self.model_dir)]
        self.env = _child_env(exe.parent.parent)
        self.cwd = self.model_dir


_SAVE_MLFLOW_SCRIPT = r"""
import json, sys
import joblib
import mlflow.sklearn
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

model_path, out_dir, names_json, requirement = sys.argv[1:5]
names = json.loads(names_json)
signature = ModelSignature(
    inputs=Schema([ColSpec("double", n) for n in names]),
    outputs=Schema([ColSpec("long")]),
)
mlflow.sklearn.save_model(
    joblib.load(model_path),
    out_dir,
    signature=signature,
    pip_requirements=[requirement],
    serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
)
"""


def save_mlflow_model(trained: TrainedModel, out_dir: Path, *, timeout_s: float = 120.0) -> Path:
    """Save ``trained``'s pipeline as an MLflow model (sklearn flavour) in ``out_dir``.

    Runs inside the servers venv (mlflow is not a dependency of this project):
    loads ``model.joblib`` and calls ``mlflow.sklearn.save_model`` with a
    signature of 30 ``double`` columns named ``trained.feature_names`` and a
    ``long`` output, so ``/invocations`` accepts ``dataframe_split`` /
    ``dataframe_records`` with those column names. ``out_dir`` must not exist
    yet (MLflow refuses to overwrite). Returns ``out_dir``.

    Raises:
        MonitorError: servers venv missing, ``out_dir`` exists, or saving failed
            (message includes the subprocess output).
    """
    python = servers_python()
    out_dir = Path(out_dir).resolve()
    if out_dir.exists():
        raise MonitorError(f"MLflow model dir already exists: {out_dir}")
    import sklearn

    argv = [
        str(python),
        "-c",
        _SAVE_MLFLOW_SCRIPT,
        str(trained.model_path.resolve()),
        str(out_dir),
        json.dumps(trained.feature_names),
        f"scikit-learn=={sklearn.__version__}",
    ]
    try:
        res = subprocess.run(
            argv,
            env=_child_env(python.parent.parent),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise MonitorError(f"saving the MLflow model timed out after {timeout_s:.0f}s") from exc
    if res.returncode != 0 or not (out_dir / "MLmodel").exists():
        out = (res.stdout + res.stderr).decode(errors="replace")
        tail = "\n".join(out.splitlines()[-_LOG_TAIL_LINES:])
        raise MonitorError(f"saving the MLflow model failed (status {res.returncode}):\n{tail}")
    return out_dir


class MLflowServerProcess(_ServerProcess):
    """MLflow's pyfunc scoring server for a :class:`TrainedModel`, as a context manager.

    On start, saves the model with :func:`save_mlflow_model` into ``mlflow_dir``
    (default ``<model_dir>/mlflow``) unless an ``MLmodel`` is already there,
    picks a free port, and runs in a new process group, output in
    ``<mlflow_dir>/mlflow-server.log``:

    * ``launcher="uvicorn"`` (default, faster): ``<servers python> -m uvicorn
      mlflow.pyfunc.scoring_server.app:app`` with the model path in the
      environment -- exactly the command ``mlflow models serve`` execs, without
      the CLI process in front;
    * ``launcher="cli"``: ``<servers venv>/bin/mlflow models serve -m <dir> -h
      host -p port --env-manager local``.

    Returns once ``GET /ping`` answers 200; on exit the process group is
    stopped by PID. Score with ``POST /invocations`` and ``{"dataframe_split":
    {"columns": feature_names, "data": rows}}``; the answer is
    ``{"predictions": [int, ...]}``.

    Attributes (after start): ``url``, ``pid``, ``port``, ``mlflow_dir``,
    ``log_path``, ``startup_s`` (excludes the one-off model save).

    Raises (from ``start``/``__enter__``):
        MonitorError: servers venv missing ("run `make servers`"), saving the
            model failed, the server exited, or it was not ready within
            ``ready_timeout_s`` seconds (message includes the log tail).
    """

    def __init__(
        self,
        trained: TrainedModel,
        *,
        mlflow_dir: Path | None = None,
        host: str = "127.0.0.1",
        launcher: str = "uvicorn",
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    ) -> None:
        if launcher not in ("uvicorn", "cli"):
            raise MonitorError(f"launcher must be 'uvicorn' or 'cli', not {launcher!r}")
        self.trained = trained
        self.mlflow_dir = Path(
            mlflow_dir if mlflow_dir is not None else trained.model_dir / MLFLOW_SUBDIR
        ).resolve()
        super().__init__(
            name="MLflow scoring server",
            host=host,
            ready_timeout_s=ready_timeout_s,
            stop_timeout_s=stop_timeout_s,
            log_path=self.mlflow_dir / MLFLOW_LOG_FILENAME,
        )
        self.launcher = launcher

    def _ready_path(self) -> str:
        return "/ping"

    def _prepare(self) -> None:
        python = servers_python()
        venv = python.parent.parent
        if not (self.mlflow_dir / "MLmodel").exists():
            save_mlflow_model(self.trained, self.mlflow_dir)
        (self.port,) = free_ports(1, self.host)
        if self.launcher == "cli":
            exe = servers_executable("mlflow")
            argv = [
                str(exe),
                "models",
                "serve",
                "-m",
                str(self.mlflow_dir),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "--env-manager",
                "local",
            ]
            env = _child_env(venv)
        else:
            argv = [
                str(python),
                "-m",
                "uvicorn",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "mlflow.pyfunc.scoring_server.app:app",
            ]
            # mlflow.pyfunc.scoring_server._SERVER_MODEL_PATH (mlflow-skinny 3.x).
            env = _child_env(venv, {"__pyfunc_model_path__": str(self.mlflow_dir)})
        # pyfunc hands sklearn a named DataFrame; the pipeline was fitted on a bare
        # ndarray (so V2 tensors work silently), so hush that one warning per request.
        env["PYTHONWARNINGS"] = "ignore:X has feature names:UserWarning"
        self.argv, self.env, self.cwd = argv, env, self.mlflow_dir


__all__ = [
    "CLASS_NAMES",
    "MODEL_NAME",
    "SERVERS_VENV_ENV",
    "MLServerProcess",
    "MLflowServerProcess",
    "TrainedModel",
    "breast_cancer_feature_names",
    "free_ports",
    "repo_root",
    "save_mlflow_model",
    "servers_executable",
    "servers_python",
    "servers_venv",
    "train_breast_cancer",
]
