"""Feature coverage: each (row, feature) counts exactly one state."""

from __future__ import annotations

import math

import pytest

from monitor.coverage import CoverageEvaluator
from monitor.payload import MISSING, Rows
from monitor.spec import FeatureSpec

NUM = FeatureSpec(name="x", type="numerical", min=0, max=10)
FREE = FeatureSpec(name="x", type="numerical")
CAT = FeatureSpec(name="x", type="categorical", categories=["a", "b", 1])
ANYCAT = FeatureSpec(name="x", type="categorical")


@pytest.mark.parametrize(
    ("feature", "value", "state"),
    [
        (NUM, 5, "present"),
        (NUM, 0, "present"),
        (NUM, 10.0, "present"),
        (NUM, 10.0001, "out_of_range"),
        (NUM, -1, "out_of_range"),
        (FREE, math.inf, "out_of_range"),
        (FREE, -math.inf, "out_of_range"),
        (FREE, 1e300, "present"),
        (NUM, math.nan, "null"),
        (NUM, None, "null"),
        (NUM, MISSING, "missing"),
        (NUM, "5", "wrong_type"),
        (NUM, True, "wrong_type"),
        (NUM, [5], "wrong_type"),
        (CAT, "a", "present"),
        (CAT, 1, "present"),
        (CAT, "1", "present"),
        (CAT, 1.0, "present"),
        (CAT, "c", "unseen_category"),
        (CAT, None, "null"),
        (CAT, {"a": 1}, "wrong_type"),
        (ANYCAT, "anything", "present"),
    ],
    ids=[
        "A number inside the range is present.",
        "The lower bound itself is present.",
        "The upper bound itself is present.",
        "Just above the upper bound is out of range.",
        "Below the lower bound is out of range.",
        "Infinity is out of range even without bounds.",
        "Minus infinity is out of range even without bounds.",
        "A huge finite number is present when no bounds are set.",
        "NaN counts as null.",
        "JSON null counts as null.",
        "An absent value counts as missing.",
        "A numeric string is the wrong type for a numerical feature.",
        "A boolean is the wrong type for a numerical feature.",
        "A list is the wrong type for a numerical feature.",
        "A declared category is present.",
        "An integer category matches its declared integer.",
        "A quoted integer matches a declared integer category.",
        "A float 1.0 matches a declared integer category 1.",
        "An undeclared category is unseen.",
        "Null in a categorical feature counts as null.",
        "An object is the wrong type for a categorical feature.",
        "A categorical feature without declared categories accepts any scalar.",
    ],
)
def test_each_value_lands_in_exactly_one_state(
    feature: FeatureSpec, value: object, state: str
) -> None:
    by_column = CoverageEvaluator([feature])
    by_column.evaluate(Rows(n=1, columns={"x": [value]}))
    by_record = CoverageEvaluator([feature])  # the row-major path (V2 tensors) must agree
    by_record.evaluate(Rows(1, records=[[value]], names=["x"]))
    assert by_record.counts == by_column.counts
    counts = dict(
        zip(
            ("present", "missing", "null", "wrong_type", "out_of_range", "unseen_category"),
            by_column.counts[0],
            strict=True,
        )
    )
    assert counts[state] == 1
    assert sum(counts.values()) == 1


def test_an_absent_column_counts_every_row_missing_and_a_short_column_the_shortfall() -> None:
    ev = CoverageEvaluator([FeatureSpec(name="a"), FeatureSpec(name="b")])
    ev.evaluate(Rows(n=4, columns={"b": [1.0, 2.0]}))
    assert ev.state_count("a", "missing") == 4
    assert ev.state_count("b", "present") == 2
    assert ev.state_count("b", "missing") == 2


def test_counts_accumulate_across_requests() -> None:
    ev = CoverageEvaluator([NUM])
    for _ in range(3):
        ev.evaluate(Rows(n=2, columns={"x": [1, 20]}))
    assert ev.state_count("x", "present") == 3
    assert ev.state_count("x", "out_of_range") == 3
