"""``monitor generate``: the files it writes, their determinism, ``--check``, the
committed ``alerts/`` and ``dashboards/`` being fresh, and promtool on the generated
rules and tests. The dashboards themselves are tested in tests/test_dashboards.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from monitor import generate as gen
from monitor.generate import GENERATED_MARKER
from tests.support import require_tool

ROOT = Path(__file__).resolve().parents[1]
DEMO_SPEC = ROOT / "deploy" / "monitor.yaml"
ALERT_FILES = ["alerts/alertmanager.yml", "alerts/demo.rules.test.yml", "alerts/demo.rules.yml"]
DASHBOARD_FILES = [
    f"dashboards/demo-{name}.json" for name in ("data-quality", "gpu", "mitigations", "overview")
]
GENERATED_FILES = ALERT_FILES + DASHBOARD_FILES


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", "generate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An output directory freshly generated from the demo spec."""
    d = tmp_path / "out"
    res = run_cli("--config", DEMO_SPEC, "--out", d)
    assert res.returncode == 0, res.stderr
    return d


def test_the_committed_generated_files_are_up_to_date() -> None:
    result = gen.check(DEMO_SPEC, ROOT)
    assert result.ok, (
        "alerts/ or dashboards/ is stale; run: "
        ".venv/bin/monitor generate --config deploy/monitor.yaml --out .\n"
        + "".join(result.changed.values())
        + "".join(f"missing: {p}\n" for p in result.missing)
        + "".join(f"no longer generated: {p}\n" for p in result.stale)
    )


def test_generate_writes_the_alert_files_each_with_a_do_not_edit_header(out: Path) -> None:
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == GENERATED_FILES
    for rel in ALERT_FILES:
        text = (out / rel).read_text()
        assert text.startswith(f"# {GENERATED_MARKER} from {DEMO_SPEC}\n"), rel
        assert yaml.safe_load(text), rel
    tests = yaml.safe_load((out / "alerts/demo.rules.test.yml").read_text())
    assert tests["rule_files"] == ["demo.rules.yml"]


def test_generate_writes_the_dashboards_each_marked_in_its_description(out: Path) -> None:
    """JSON has no comments: the DO NOT EDIT marker ends the dashboard's description."""
    for rel in DASHBOARD_FILES:
        doc = json.loads((out / rel).read_text())
        assert f"{GENERATED_MARKER} from {DEMO_SPEC}" in doc["description"], rel
        assert doc["uid"] == f"mlmon-demo-{rel.removeprefix('dashboards/demo-')[:-5]}"


def test_a_stale_generated_dashboard_is_removed_and_a_hand_made_one_kept(out: Path) -> None:
    stale = out / "dashboards" / "old-overview.json"
    stale.write_text(json.dumps({"description": f"{GENERATED_MARKER} from x"}))
    mine = out / "dashboards" / "mine.json"
    mine.write_text(json.dumps({"title": "hand-made"}))
    res = run_cli("--config", DEMO_SPEC, "--out", out, "--check")
    assert res.returncode == 1
    assert f"{stale}: generated but no longer produced by the spec" in res.stderr
    assert run_cli("--config", DEMO_SPEC, "--out", out).returncode == 0
    assert not stale.exists() and mine.exists()


def test_the_header_names_the_spec_relative_to_the_output_directory_when_under_it(
    tmp_path: Path,
) -> None:
    spec = tmp_path / "deploy" / "monitor.yaml"
    spec.parent.mkdir()
    shutil.copy(DEMO_SPEC, spec)
    gen.generate(spec, tmp_path)
    text = (tmp_path / "alerts" / "alertmanager.yml").read_text()
    assert text.startswith(f"# {GENERATED_MARKER} from deploy/monitor.yaml\n")


def test_two_runs_give_byte_identical_files_and_the_second_rewrites_nothing(
    out: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    assert run_cli("--config", DEMO_SPEC, "--out", again).returncode == 0
    for rel in GENERATED_FILES:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    before = {rel: (out / rel).stat().st_mtime_ns for rel in GENERATED_FILES}
    res = run_cli("--config", DEMO_SPEC, "--out", out)
    assert res.returncode == 0 and "already up to date" in res.stdout
    assert before == {rel: (out / rel).stat().st_mtime_ns for rel in GENERATED_FILES}


def test_check_exits_0_when_the_files_are_fresh(out: Path) -> None:
    res = run_cli("--config", DEMO_SPEC, "--out", out, "--check")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == f"{len(GENERATED_FILES)} file(s) under {out} up to date"


def test_check_exits_1_with_a_unified_diff_after_a_manual_edit(out: Path) -> None:
    path = out / "alerts" / "alertmanager.yml"
    path.write_text(path.read_text().replace("group_wait: 30s", "group_wait: 1s"))
    res = run_cli("--config", DEMO_SPEC, "--out", out, "--check")
    assert res.returncode == 1
    assert "--- alerts/alertmanager.yml (on disk)" in res.stdout
    assert "+++ alerts/alertmanager.yml (generated)" in res.stdout
    assert "-  group_wait: 1s\n+  group_wait: 30s\n" in res.stdout
    assert f"{path}: differs from the spec" in res.stderr
    assert "run: monitor generate --config" in res.stderr
    assert path.read_text().count("group_wait: 1s") == 1  # --check writes nothing


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            lambda d: (d / "alerts/demo.rules.yml").unlink(),
            "alerts/demo.rules.yml: missing",
            id="A missing file is named and fails the check.",
        ),
        pytest.param(
            lambda d: (d / "alerts/old.rules.yml").write_text(f"# {GENERATED_MARKER} from x\n"),
            "alerts/old.rules.yml: generated but no longer produced by the spec",
            id="A generated file the spec no longer produces is named and fails the check.",
        ),
    ],
)
def test_check_exits_1_naming_missing_and_extra_files(
    out: Path, change: Callable[[Path], object], message: str
) -> None:
    change(out)
    res = run_cli("--config", DEMO_SPEC, "--out", out, "--check")
    assert res.returncode == 1
    assert message in res.stderr


def test_files_not_made_by_generate_are_ignored_and_kept(out: Path) -> None:
    (out / "alerts" / "README.md").write_text("hand-written\n")
    assert run_cli("--config", DEMO_SPEC, "--out", out, "--check").returncode == 0
    assert run_cli("--config", DEMO_SPEC, "--out", out).returncode == 0
    assert (out / "alerts" / "README.md").read_text() == "hand-written\n"


def test_generate_removes_its_own_stale_files(out: Path) -> None:
    stale = out / "alerts" / "old.rules.yml"
    stale.write_text(f"# {GENERATED_MARKER} from x\n")
    res = run_cli("--config", DEMO_SPEC, "--out", out)
    assert res.returncode == 0
    assert f"removed {stale} (no longer generated)" in res.stdout
    assert not stale.exists()


def test_an_invalid_spec_exits_1_with_the_field_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    data = yaml.safe_load(DEMO_SPEC.read_text())
    data["slos"][0]["objective"] = 1.5
    bad.write_text(yaml.safe_dump(data))
    res = run_cli("--config", bad, "--out", tmp_path / "out")
    assert res.returncode == 1
    assert res.stderr.startswith(f"{bad}: slos[0].objective:")
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_directory_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    res = run_cli("--config", DEMO_SPEC, "--out", blocker / "sub")
    assert res.returncode == 1
    assert res.stderr.startswith("error: cannot write the generated files under")
    assert "Traceback" not in res.stderr


# --- promtool on the generated files ----------------------------------------------------


def test_promtool_checks_the_generated_rules(out: Path) -> None:
    promtool = require_tool("promtool")
    res = subprocess.run(
        [promtool, "check", "rules", "--lint-fatal", str(out / "alerts" / "demo.rules.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_runs_the_generated_rule_tests_and_they_pass(out: Path) -> None:
    promtool = require_tool("promtool")
    res = subprocess.run(
        [promtool, "test", "rules", "demo.rules.test.yml"],
        cwd=out / "alerts",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout
