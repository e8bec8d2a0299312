"""Shared fixtures: a trained breast-cancer model and the real servers behind it.

The servers run from the separate servers venv (``make servers``). Without it the
server fixtures skip locally, and fail when ``$CI`` is set, so CI can never go
green by skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.errors import MonitorError
from monitor.modelserver import (
    MLflowServerProcess,
    MLServerProcess,
    TrainedModel,
    servers_executable,
    train_breast_cancer,
)


def require_servers_venv() -> Path:
    """Return the servers venv's python; skip (or fail under ``$CI``) when missing."""
    try:
        servers_executable("mlserver")
        return servers_executable("python")
    except MonitorError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI: model servers unavailable: {exc}")
        pytest.skip(f"model servers unavailable: {exc}")


@pytest.fixture(scope="session")
def servers_venv_python() -> Path:
    """The servers venv's python (skips / fails under CI when it is missing)."""
    return require_servers_venv()


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """The breast-cancer classifier (version "1"), trained once per session."""
    return train_breast_cancer(tmp_path_factory.mktemp("model") / "bc", seed=0, version="1")


@pytest.fixture(scope="session")
def mlserver(servers_venv_python: Path, trained_model: TrainedModel) -> Iterator[MLServerProcess]:
    """MLServer (V2) serving ``trained_model`` as ``bc``, started once per session."""
    with MLServerProcess(trained_model.model_dir) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(
    servers_venv_python: Path, trained_model: TrainedModel
) -> Iterator[MLflowServerProcess]:
    """MLflow's scoring server for ``trained_model``, started once per session."""
    with MLflowServerProcess(trained_model) as server:
        yield server
