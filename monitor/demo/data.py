"""The demo's data: two model versions, the drift baseline, a golden set, and the
rows the traffic sends in each phase.

All of it comes from the breast-cancer dataset bundled with scikit-learn (569 rows,
30 numerical features; no download). The *approved* model (version 2) is what the
primary MLServer serves; the *previous* version (version 1, another split and seed)
is the fallback the mitigator shifts traffic to.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor.modelserver import TrainedModel, train_breast_cancer

SHIFT_FEATURE = "mean_radius"
"""The covariate shift re-weights the held-out rows towards large tumours."""
SHIFT_STRENGTH = 1.0
"""Row weight ``exp(SHIFT_STRENGTH * z)`` with ``z`` the row's standardised
``SHIFT_FEATURE``: a real subpopulation over-represented, as when a clinic with
sicker patients starts sending traffic. Every feature correlated with size
(perimeter, area, concavity, ...) drifts with it, the others barely."""
GOLDEN_REQUESTS = 8
"""Requests in the golden set (one held-out row each)."""


@dataclass
class DemoData:
    """What :func:`prepare` wrote and what the traffic draws from.

    Attributes:
        primary: the approved model (version ``"2"``), served by the primary replica.
        previous: the previous version (``"1"``), served by the fallback replica.
        baseline_path: Parquet of the primary's training rows ``[426, 30]`` plus its
            ``prediction`` column: the drift job's reference.
        golden_inputs_path: JSON list of ``GOLDEN_REQUESTS`` V2 request bodies
            (``monitor canary record --inputs``).
        x: held-out rows ``[143, 30]`` float64; ``y`` their true labels ``[143]``.
        shift_p: the covariate shift's sampling probabilities over ``x`` (sum 1).
    """

    primary: TrainedModel
    previous: TrainedModel
    baseline_path: Path
    golden_inputs_path: Path
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    shift_p: np.ndarray = field(repr=False)


def v2_body(rows: np.ndarray, request_id: str = "") -> dict[str, Any]:
    """An Open Inference Protocol (V2) request body for ``rows`` (``[n, 30]`` floats)."""
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(rows.shape),
                "datatype": "FP64",
                "data": rows.ravel().tolist(),
            }
        ]
    }
    if request_id:
        body["id"] = request_id
    return body


def prepare(out: Path) -> DemoData:
    """Train both versions and write the baseline and the golden inputs under ``out``.

    Raises:
        OSError: ``out`` cannot be written.
    """

    primary = train_breast_cancer(out / "model-v2", seed=0, version="2")
    previous = train_breast_cancer(out / "model-v1", seed=1, version="1")
    estimator = primary.load_estimator()
    baseline = primary.train_frame.copy()
    baseline["prediction"] = estimator.predict(primary.train_frame.to_numpy()).astype(int)
    baseline_path = out / "baseline.parquet"
    baseline.to_parquet(baseline_path, index=False)

    x = np.asarray(primary.x_test, dtype=np.float64)
    y = np.asarray(primary.y_test, dtype=np.int64)
    golden = [v2_body(x[i : i + 1]) for i in range(GOLDEN_REQUESTS)]
    golden_inputs_path = out / "golden-inputs.json"
    golden_inputs_path.write_text(json.dumps(golden))

    col = primary.feature_names.index(SHIFT_FEATURE)
    ref = primary.train_frame[SHIFT_FEATURE].to_numpy()
    z = (x[:, col] - ref.mean()) / ref.std()
    w = np.exp(SHIFT_STRENGTH * z)
    return DemoData(
        primary=primary,
        previous=previous,
        baseline_path=baseline_path,
        golden_inputs_path=golden_inputs_path,
        x=x,
        y=y,
        shift_p=w / w.sum(),
    )


class RowSource:
    """Rows for the traffic: ``healthy`` walks the held-out rows in a shuffled order
    without replacement (a window never repeats a row until all were sent, so an
    unchanged population does not look drifted); ``shifted`` draws them with the
    covariate shift's probabilities. Shared by the sender threads (locked)."""

    def __init__(self, data: DemoData, seed: int = 0) -> None:
        self._data = data
        self._rng = np.random.default_rng(seed)
        self._order: list[int] = []
        self._lock = threading.Lock()

    def next(self, shifted: bool) -> int:
        """Index of the next row in ``data.x``."""
        with self._lock:
            if shifted:
                return int(self._rng.choice(len(self._data.x), p=self._data.shift_p))
            if not self._order:
                self._order = [int(i) for i in self._rng.permutation(len(self._data.x))]
            return self._order.pop()
