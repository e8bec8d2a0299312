"""docs/notebooks/drift-report.ipynb runs top to bottom in a real kernel and shows drift."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "docs" / "notebooks" / "drift-report.ipynb"
KERNEL = "monitor-test-python3"
MAX_SECONDS = 60


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The notebook executed by a kernel running this interpreter (so ``monitor`` and
    its dependencies are importable whatever ``python`` on PATH is)."""
    spec_dir = tmp_path_factory.mktemp("jupyter")
    kernel_dir = spec_dir / "kernels" / KERNEL
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "monitor tests",
                "language": "python",
            }
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(spec_dir))
        # jupyter_core warns (DeprecationWarning) about its path migration unless this is set.
        mp.setenv("JUPYTER_PLATFORM_DIRS", "1")
        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = nbclient.NotebookClient(
            nb,
            timeout=120,
            kernel_name=KERNEL,
            resources={"metadata": {"path": str(ROOT)}},
        )
        started = time.perf_counter()
        client.execute()
        elapsed = time.perf_counter() - started
    assert elapsed < MAX_SECONDS, f"notebook took {elapsed:.1f} s"
    return nb


def outputs(nb: Any) -> list[Any]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def test_the_stored_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_no_cell_fails(executed: Any) -> None:
    errors = [o for o in outputs(executed) if o.output_type == "error"]
    assert errors == [], [f"{e.ename}: {e.evalue}" for e in errors]
    stderr = [o.text for o in outputs(executed) if o.get("name") == "stderr"]
    assert stderr == []


def test_drift_results_render_as_html(executed: Any) -> None:
    html = [
        o.data["text/html"]
        for o in outputs(executed)
        if o.output_type in ("execute_result", "display_data") and "text/html" in o.data
    ]
    summaries = [h for h in html if 'class="monitor-drift-summary"' in h]
    assert len(summaries) == 2  # the undrifted and the drifted comparison
    same, moved = summaries
    # DriftResult.summary_html: a headline verdict, then one table row per feature.
    assert "no drift" in same and "<td>mean radius</td>" in same
    assert "<td>mean radius</td>" in moved and "<td>ks</td>" in moved


def test_the_verdicts_printed_by_the_last_cell(executed: Any) -> None:
    last = executed.cells[-1]
    text = "".join(o.text for o in last.outputs if o.output_type == "stream")
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["undrifted"]["dataset_drift"] is False
    assert "mean radius" not in summary["undrifted"]["drifted_features"]
    assert summary["drifted"]["dataset_drift"] is False  # 2 moved features of 30 < 0.5
    assert {"mean radius", "mean texture"} <= set(summary["drifted"]["drifted_features"])
    assert (
        summary["drifted"]["share_of_drifted_features"]
        > summary["undrifted"]["share_of_drifted_features"]
    )


def test_drift_share_section_flags_only_the_drifted_window(executed: Any) -> None:
    text = "".join(o.text for o in outputs(executed) if o.output_type == "stream")
    assert "undrifted  drift_share=0.1:" in text
    lines = {line.split(":")[0]: line for line in text.splitlines() if "drift_share=" in line}
    assert lines["undrifted  drift_share=0.1"].endswith("dataset_drift=False")
    assert lines["drifted    drift_share=0.1"].endswith("dataset_drift=True")
    assert lines["drifted    drift_share=0.5"].endswith("dataset_drift=False")
