"""Tests of the capture store: real Parquet files under tmp_path, an injected clock."""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from monitor import conventions as c
from monitor.capture import CaptureWriter, capture_schema, read_capture
from monitor.errors import CaptureError
from monitor.payload import MISSING, Predictions, Rows
from monitor.spec import CaptureSpec, FeatureSpec, ModelSpec, OutputSpec

MODEL = "fraud"
T0 = 1_700_000_000.25  # 2023-11-14T22:13:20.25Z
TS = pa.timestamp("us", tz="UTC")

FEATURES = [
    FeatureSpec(name="age", type="numerical"),
    FeatureSpec(name="city", type="categorical"),
    FeatureSpec(name="ssn", type="categorical", pii=True),
    FeatureSpec(name="amount", type="numerical"),
]


class FakeClock:
    """A settable unix clock in seconds."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class CountingRandom(random.Random):
    """A seeded rng that counts its draws."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.calls = 0

    def random(self) -> float:
        self.calls += 1
        return super().random()


def make_model(
    directory: Path,
    *,
    features: list[FeatureSpec] | None = None,
    outputs: list[OutputSpec] | None = None,
    name: str = MODEL,
    **capture: Any,
) -> ModelSpec:
    return ModelSpec(
        name=name,
        upstream="http://127.0.0.1:8080",
        features=FEATURES if features is None else features,
        outputs=outputs or [OutputSpec(name="*")],
        capture=CaptureSpec(dir=directory, **capture),
    )


def value(registry: CollectorRegistry, name: str, model: str = MODEL, **labels: str) -> float:
    sample = registry.get_sample_value(name, {c.LABEL_MODEL: model, **labels})
    assert sample is not None, f"{name} {labels} is not exported"
    return sample


def dropped(registry: CollectorRegistry, reason: str, model: str = MODEL) -> float:
    return value(registry, c.CAPTURE_DROPPED_ROWS_TOTAL, model, **{c.LABEL_REASON: reason})


def one_row(i: int = 0) -> Rows:
    return Rows(n=1, columns={"age": [float(i)], "city": ["a"], "ssn": ["x"], "amount": [1.0]})


def committed(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b) and type(a) is type(b)


# --- schema and values -----------------------------------------------------------

NUMERIC_OUTPUT = [OutputSpec(name="*", type="numerical")]
CATEGORICAL_OUTPUT = [OutputSpec(name="*", type="categorical", classes=["a", "b"])]
ROWS_IN = Rows(
    n=10,
    columns={
        "age": [1, 2.5, math.nan, math.inf, -math.inf, True, "3", None, MISSING, [1]],
        "city": ["a", 7, 1.5, False, None, MISSING, {"k": 1}, ["l"], "b", ""],
        "ssn": ["123-45-6789"] * 10,
        # "amount" absent from the payload: every row is null
    },
)
PREDICTIONS_IN = Predictions(
    outputs={
        "y": [0.5, 1, "a", True, None, [0.2, 0.8], math.nan, math.inf, -2],  # 9 of 10 rows
        "other": [9] * 10,
    }
)
AGE_OUT = [1.0, 2.5, math.nan, math.inf, -math.inf, None, None, None, None, None]
CITY_OUT = [
    "a",
    "7",
    "1.5",
    "false",
    None,
    None,
    None,
    None,
    "b",
    "",
]  # canonical form, as coverage compares


@pytest.mark.parametrize(
    ("outputs", "prediction_type", "prediction_out"),
    [
        pytest.param(
            NUMERIC_OUTPUT,
            pa.float64(),
            [0.5, 1.0, None, None, None, None, math.nan, math.inf, -2.0, None],
            id="A numerical first output is written as float64, non-numbers as null.",
        ),
        pytest.param(
            CATEGORICAL_OUTPUT,
            pa.string(),
            ["0.5", "1", "a", "true", None, None, None, "inf", "-2", None],
            id="A categorical first output is written as strings, non-scalars as null.",
        ),
    ],
)
def test_file_has_the_exact_schema_and_values(
    tmp_path: Path,
    registry: CollectorRegistry,
    outputs: list[OutputSpec],
    prediction_type: pa.DataType,
    prediction_out: list[Any],
) -> None:
    model = make_model(tmp_path, outputs=outputs)
    writer = CaptureWriter(model, registry=registry, clock=FakeClock())
    writer.submit(ROWS_IN, PREDICTIONS_IN, "req-1")
    writer.flush()

    [name] = committed(tmp_path)
    assert name == f"{MODEL}-20231114T221320.250000-000001.parquet"
    table = pq.read_table(tmp_path / name)
    expected = pa.schema(
        [
            ("timestamp", TS),
            ("request_id", pa.string()),
            ("age", pa.float64()),
            ("city", pa.string()),
            ("amount", pa.float64()),
            ("prediction", prediction_type),
        ]
    )
    assert table.schema.equals(expected)
    assert capture_schema(model).equals(expected)
    rows = table.to_pydict()
    assert rows["timestamp"] == [datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC)] * 10
    assert rows["request_id"] == ["req-1"] * 10
    assert all(same(a, b) for a, b in zip(rows["age"], AGE_OUT, strict=True)), rows["age"]
    assert rows["city"] == CITY_OUT
    assert rows["amount"] == [None] * 10
    assert all(same(a, b) for a, b in zip(rows["prediction"], prediction_out, strict=True)), rows[
        "prediction"
    ]
    assert b"123-45-6789" not in (tmp_path / name).read_bytes()
    assert value(registry, c.CAPTURE_ROWS_TOTAL) == 10
    assert value(registry, c.CAPTURE_FILES_TOTAL) == 1
    assert value(registry, c.CAPTURE_STORE_BYTES) == (tmp_path / name).stat().st_size


def test_a_named_first_output_is_read_by_name(tmp_path: Path, registry: CollectorRegistry) -> None:
    model = make_model(tmp_path, outputs=[OutputSpec(name="proba")])
    writer = CaptureWriter(model, registry=registry, clock=FakeClock())
    rows = Rows(n=2, columns={"age": [1, 2]})
    writer.submit(rows, Predictions(outputs={"label": ["a", "b"], "proba": [0.1, 0.9]}), "r")
    writer.submit(rows, Predictions(outputs={"label": ["a", "b"]}), "r")
    writer.flush()
    assert read_capture(tmp_path)["prediction"].to_pylist() == [0.1, 0.9, None, None]


def test_metrics_exist_at_zero_before_any_row(tmp_path: Path, registry: CollectorRegistry) -> None:
    CaptureWriter(make_model(tmp_path), registry=registry)
    for name in (c.CAPTURE_ROWS_TOTAL, c.CAPTURE_FILES_TOTAL, c.CAPTURE_STORE_BYTES):
        assert value(registry, name) == 0
    for reason in (c.DROP_QUEUE_FULL, c.DROP_RETENTION, c.DROP_WRITE_ERROR):
        assert dropped(registry, reason) == 0


@pytest.mark.parametrize(
    "model_kwargs",
    [
        pytest.param({"capture": None}, id="A model without a capture section is refused."),
        pytest.param(
            {"features": [FeatureSpec.model_construct(name="timestamp", type="numerical")]},
            id="A feature named like a fixed capture column is refused.",
        ),
    ],
)
def test_invalid_model_raises_capture_error(tmp_path: Path, model_kwargs: dict[str, Any]) -> None:
    base: dict[str, Any] = {
        "name": MODEL,
        "upstream": "http://127.0.0.1:8080",
        "capture": CaptureSpec(dir=tmp_path),
    }
    # model_construct: the spec itself already refuses reserved names; the writer
    # checks again for models built in code.
    with pytest.raises(CaptureError):
        CaptureWriter(
            ModelSpec.model_construct(**{**base, **model_kwargs}), registry=CollectorRegistry()
        )


def test_two_models_share_one_registry_and_one_directory(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    a = CaptureWriter(make_model(tmp_path, name="a"), registry=registry, clock=FakeClock())
    ab = CaptureWriter(make_model(tmp_path, name="a-b"), registry=registry, clock=FakeClock())
    a.submit(one_row(), None, "ra")
    ab.submit(Rows(n=2, columns={}), None, "rab")
    a.flush()
    ab.flush()
    assert read_capture(tmp_path, model="a")["request_id"].to_pylist() == ["ra"]
    assert read_capture(tmp_path, model="a-b")["request_id"].to_pylist() == ["rab"] * 2
    assert read_capture(tmp_path).num_rows == 3
    assert value(registry, c.CAPTURE_ROWS_TOTAL, "a") == 1
    assert value(registry, c.CAPTURE_ROWS_TOTAL, "a-b") == 2


# --- sampling and the queue ----------------------------------------------------------


def test_sample_rate_zero_writes_nothing_and_never_draws(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    rng = CountingRandom()
    writer = CaptureWriter(make_model(tmp_path, sample_rate=0.0), registry=registry, rng=rng)
    for i in range(50):
        writer.submit(Rows(n=4, columns={"age": [i] * 4}), None, f"r{i}")
    writer.flush()
    assert rng.calls == 0
    assert writer.rows_written == 0
    assert committed(tmp_path) == []


def test_sample_rate_half_with_a_seeded_rng_writes_the_expected_rows(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    replay = random.Random(42)
    kept = [i for i in range(1000) if replay.random() < 0.5]  # one draw per row, in order
    writer = CaptureWriter(
        make_model(tmp_path, sample_rate=0.5), registry=registry, rng=random.Random(42)
    )
    for r in range(10):
        ages = list(range(r * 100, r * 100 + 100))
        writer.submit(Rows(n=100, columns={"age": ages}), None, f"r{r}")
    writer.flush()
    assert writer.rows_written == len(kept)
    assert read_capture(tmp_path)["age"].to_pylist() == [float(i) for i in kept]


@pytest.mark.parametrize(
    "requests",
    [
        pytest.param([25], id="One request of 25 rows keeps the 10 that fit."),
        pytest.param([1] * 25, id="Twenty-five one-row requests keep the first 10."),
        pytest.param([4, 4, 4, 13], id="A request that only partly fits keeps its first rows."),
    ],
)
def test_a_full_queue_drops_and_counts_rows_without_blocking(
    tmp_path: Path, registry: CollectorRegistry, requests: list[int]
) -> None:
    writer = CaptureWriter(make_model(tmp_path, queue_rows=10), registry=registry)  # not started
    ages = iter(range(100))
    began = time.perf_counter()
    for n in requests:
        writer.submit(Rows(n=n, columns={"age": [next(ages) for _ in range(n)]}), None, "r")
    assert time.perf_counter() - began < 0.5
    assert dropped(registry, c.DROP_QUEUE_FULL) == 15
    writer.flush()
    assert writer.rows_written == 10
    assert read_capture(tmp_path)["age"].to_pylist() == [float(i) for i in range(10)]
    writer.submit(one_row(), None, "r")  # the flush freed the queue
    assert dropped(registry, c.DROP_QUEUE_FULL) == 15


def test_malformed_input_never_raises(tmp_path: Path, registry: CollectorRegistry) -> None:
    writer = CaptureWriter(make_model(tmp_path), registry=registry, clock=FakeClock())
    short = Rows(n=3, columns={"age": [1.0], "city": ["a", "b", "c", "d"]})
    not_a_list: Any = "not a list"
    writer.submit(short, Predictions(outputs={"y": not_a_list}), 17)  # type: ignore[arg-type]
    writer.submit(None, None, "r")  # type: ignore[arg-type]
    writer.flush()
    table = read_capture(tmp_path)
    assert table["age"].to_pylist() == [1.0, None, None]
    assert table["city"].to_pylist() == ["a", "b", "c"]
    assert table["request_id"].to_pylist() == ["17"] * 3
    assert table["prediction"].to_pylist() == [None] * 3


def test_an_unreadable_request_is_counted_and_frees_its_queue_room(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    writer = CaptureWriter(make_model(tmp_path, queue_rows=5), registry=registry)
    bad: Any = 42  # a column that is not a list
    writer.submit(Rows(n=5, columns={"age": bad}), None, "bad")
    assert dropped(registry, c.DROP_WRITE_ERROR) == 5
    writer.submit(Rows(n=5, columns={"age": [1, 2, 3, 4, 5]}), None, "good")
    assert dropped(registry, c.DROP_QUEUE_FULL) == 0
    writer.flush()
    assert writer.rows_written == 5


def test_one_row_requests_with_absent_or_empty_columns_are_written_as_nulls(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    writer = CaptureWriter(make_model(tmp_path), registry=registry, clock=FakeClock())
    writer.submit(Rows(n=1, columns={}), None, "absent")
    writer.submit(Rows(n=1, columns={"age": [], "city": []}), Predictions(), "empty")
    writer.submit(one_row(5), Predictions(outputs={"y": [0.25]}), "full")
    writer.flush()
    table = read_capture(tmp_path)
    assert table["request_id"].to_pylist() == ["absent", "empty", "full"]
    assert table["age"].to_pylist() == [None, None, 5.0]
    assert table["city"].to_pylist() == [None, None, "a"]
    assert table["prediction"].to_pylist() == [None, None, 0.25]


# --- rotation ------------------------------------------------------------------------


def test_rows_further_apart_than_rotate_seconds_go_to_separate_files(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    clock = FakeClock(1000.0)
    writer = CaptureWriter(make_model(tmp_path, rotate_seconds=60), registry=registry, clock=clock)
    for t in (1000.0, 1000.0, 1059.0, 1060.0, 1200.0, 1201.0):
        clock.t = t
        writer.submit(one_row(), None, f"t{t}")
    writer.flush()
    names = committed(tmp_path)
    assert names == [
        f"{MODEL}-19700101T001640.000000-000001.parquet",
        f"{MODEL}-19700101T001740.000000-000002.parquet",
        f"{MODEL}-19700101T002000.000000-000003.parquet",
    ]
    assert [pq.read_metadata(tmp_path / n).num_rows for n in names] == [3, 1, 2]
    assert value(registry, c.CAPTURE_FILES_TOTAL) == 3


def test_the_writer_thread_commits_a_file_once_it_is_rotate_seconds_old(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    clock = FakeClock()
    writer = CaptureWriter(make_model(tmp_path, rotate_seconds=0.4), registry=registry, clock=clock)
    writer.start()
    try:
        writer.submit(one_row(), None, "r")
        time.sleep(0.3)  # three writer wake-ups (every 0.1 s); the fake clock stands still
        assert writer.files_written == 0
        clock.t += 1.0
        wait_for(lambda: writer.files_written == 1)
        assert read_capture(tmp_path).num_rows == 1
    finally:
        writer.close()


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param([1] * 200, id="Two hundred one-row requests are split by size."),
        pytest.param([200], id="One request of 200 rows is split across files by size."),
    ],
)
def test_files_are_committed_when_they_reach_max_file_bytes(
    tmp_path: Path, registry: CollectorRegistry, sizes: list[int]
) -> None:
    features = [FeatureSpec(name="age")]
    writer = CaptureWriter(
        make_model(tmp_path, features=features, max_file_bytes=1000),
        registry=registry,
        clock=FakeClock(),
    )
    ages = iter(range(1000))
    for n in sizes:
        writer.submit(Rows(n=n, columns={"age": [next(ages) for _ in range(n)]}), None, "rq")
    writer.flush()
    names = committed(tmp_path)
    per_file = [pq.read_metadata(tmp_path / n).num_rows for n in names]
    # In memory a row is 8 (timestamp) + 4 + 2 (request id offset and text) + 8 (age)
    # + 8 (prediction) bytes plus 1 bit of the null prediction's bitmap: 34 rows a file.
    assert len(names) >= 5
    assert max(per_file) <= 40
    assert sum(per_file) == 200
    assert read_capture(tmp_path)["age"].to_pylist() == [float(i) for i in range(200)]


# --- retention ------------------------------------------------------------------------


def write_files(writer: CaptureWriter, clock: FakeClock, count: int, rows: int = 10) -> None:
    for _ in range(count):
        clock.t += 100.0
        writer.submit(Rows(n=rows, columns={"age": [1.0] * rows}), None, "same")
        writer.flush()


def test_retention_deletes_the_oldest_files_and_counts_their_rows(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    probe_dir = tmp_path / "probe"
    clock = FakeClock()
    probe = CaptureWriter(make_model(probe_dir), registry=CollectorRegistry(), clock=clock)
    write_files(probe, clock, 1)
    size = sum(p.stat().st_size for p in probe_dir.iterdir())

    store = tmp_path / "store"
    clock = FakeClock()
    writer = CaptureWriter(
        make_model(store, max_bytes=2 * size + size // 2), registry=registry, clock=clock
    )
    write_files(writer, clock, 5)

    assert writer.files_written == 5
    assert value(registry, c.CAPTURE_ROWS_TOTAL) == 50
    assert dropped(registry, c.DROP_RETENTION) == 30
    names = committed(store)
    assert len(names) == 2
    stamps = read_capture(store)["timestamp"].to_pylist()
    assert {s.timestamp() for s in stamps} == {T0 + 400.0, T0 + 500.0}
    on_disk = sum((store / n).stat().st_size for n in names)
    assert value(registry, c.CAPTURE_STORE_BYTES) == on_disk


# --- reading -----------------------------------------------------------------------------


def test_read_capture_filters_by_since_inclusive_and_until_exclusive(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    clock = FakeClock()
    writer = CaptureWriter(make_model(tmp_path), registry=registry, clock=clock)
    for t in (100.0, 200.0, 200.5, 300.0):
        clock.t = t
        writer.submit(one_row(int(t)), None, f"t{t}")
        writer.flush()

    def ages(since: float | None = None, until: float | None = None) -> list[float]:
        return read_capture(tmp_path, since=since, until=until)["age"].to_pylist()

    assert ages() == [100.0, 200.0, 200.0, 300.0]
    assert ages(since=200.0) == [200.0, 200.0, 300.0]
    assert ages(until=300.0) == [100.0, 200.0, 200.0]
    assert ages(since=200.0, until=200.5) == [200.0]
    empty = read_capture(tmp_path, since=1000.0)
    assert empty.num_rows == 0
    assert empty.schema.equals(pa.schema([("timestamp", TS)]))


def test_read_capture_of_a_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="does not exist"):
        read_capture(tmp_path / "nope")


def test_temp_files_are_invisible_to_read_capture(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    writer = CaptureWriter(make_model(tmp_path), registry=registry, clock=FakeClock())
    writer.submit(one_row(), None, "real")
    writer.flush()
    [name] = committed(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp file is left behind
    # A complete Parquet file under a temp name, as a writer crashed before the rename.
    shutil.copy(tmp_path / name, tmp_path / f".{MODEL}-20990101T000000.000000-000009.parquet.tmp")
    (tmp_path / ".x.tmp").write_bytes(b"half a file")
    assert read_capture(tmp_path)["request_id"].to_pylist() == ["real"]


def test_start_removes_stale_temp_files_and_reports_the_store_size(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    first = CaptureWriter(make_model(tmp_path), registry=CollectorRegistry(), clock=FakeClock())
    first.submit(one_row(), None, "old")
    first.flush()
    stale = tmp_path / ".x.tmp"
    stale.write_bytes(b"half a file")

    writer = CaptureWriter(make_model(tmp_path), registry=registry)
    writer.start()
    writer.close()
    assert not stale.exists()
    [name] = committed(tmp_path)
    assert value(registry, c.CAPTURE_STORE_BYTES) == (tmp_path / name).stat().st_size


# --- lifecycle and errors ---------------------------------------------------------------


def test_close_is_idempotent_and_flushes(tmp_path: Path, registry: CollectorRegistry) -> None:
    writer = CaptureWriter(make_model(tmp_path), registry=registry, clock=FakeClock())
    writer.start()
    writer.submit(one_row(), None, "r")
    writer.close()
    writer.close()
    assert writer.rows_written == 1
    writer.submit(one_row(), None, "late")
    assert dropped(registry, c.DROP_QUEUE_FULL) == 1
    with pytest.raises(CaptureError, match="closed"):
        writer.start()


def test_a_write_error_is_counted_and_the_writer_thread_keeps_going(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    store = tmp_path / "store"
    clock = FakeClock()
    writer = CaptureWriter(make_model(store, rotate_seconds=0.4), registry=registry, clock=clock)
    writer.start()
    try:
        os.rmdir(store)
        store.write_bytes(b"a file where the directory should be")
        writer.submit(Rows(n=4, columns={}), None, "lost")
        clock.t += 1.0
        wait_for(lambda: dropped(registry, c.DROP_WRITE_ERROR) == 4)
        assert writer.files_written == 0

        store.unlink()
        writer.submit(Rows(n=3, columns={}), None, "kept")
        clock.t += 1.0
        wait_for(lambda: writer.files_written == 1)
    finally:
        writer.close()
    assert read_capture(store)["request_id"].to_pylist() == ["kept"] * 3
    assert value(registry, c.CAPTURE_ROWS_TOTAL) == 3
    assert dropped(registry, c.DROP_WRITE_ERROR) == 4


# --- row-major rows (V2 tensors) -----------------------------------------------------

RECORDS = [[30, "a", "123-45", 9.5], [None, 7, "999", MISSING], [41.5, True, None, "x"]]
NAMES = ["age", "city", "ssn", "amount"]


def _columns_of(records: list[list[object]]) -> dict[str, list[object]]:
    return {n: [r[j] for r in records] for j, n in enumerate(NAMES)}


@pytest.mark.parametrize(
    "shapes",
    [["records"], ["records", "records"], ["records", "columns", "records"]],
    ids=[
        "One row-major request is written like its column form.",
        "Several row-major requests are transposed together.",
        "Row-major and column requests in one file are written alike.",
    ],
)
def test_row_major_rows_are_written_exactly_like_columns(tmp_path: Path, shapes: list[str]) -> None:
    expected: list[dict[str, object]] = []
    got: list[dict[str, object]] = []
    for form, out in (("columns", expected), ("as-given", got)):
        d = tmp_path / form
        w = CaptureWriter(make_model(d), registry=CollectorRegistry(), clock=FakeClock())
        for i, shape in enumerate(shapes):
            recs = [list(r) for r in RECORDS]
            rows = (
                Rows(3, _columns_of(recs))
                if form == "columns" or shape == "columns"
                else Rows(3, records=recs, names=NAMES)
            )
            w.submit(rows, Predictions({"y": [1, 0, 1]}), f"r{i}")
        w.close()
        out.extend(read_capture(d).to_pylist())
    assert got == expected
    assert "ssn" not in got[0]  # pii stays out in the row-major path too
    assert [r["city"] for r in got[:3]] == ["a", "7", "true"]


def test_sampling_picks_the_same_rows_from_records_as_from_columns(tmp_path: Path) -> None:
    out = {}
    for form in ("columns", "records"):
        d = tmp_path / form
        w = CaptureWriter(
            make_model(d, sample_rate=0.5),
            registry=CollectorRegistry(),
            clock=FakeClock(),
            rng=random.Random(7),
        )
        recs = [[float(i), str(i), "x", float(-i)] for i in range(40)]
        w.submit(
            Rows(40, _columns_of(recs))
            if form == "columns"
            else Rows(40, records=recs, names=NAMES),
            None,
            "r",
        )
        w.close()
        out[form] = read_capture(d)["age"].to_pylist()
    assert out["records"] == out["columns"] and 0 < len(out["records"]) < 40
