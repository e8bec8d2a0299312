"""The fast engine against evidently itself, on many generated datasets.

For every method and for evidently's default choice, ``engine="fast"`` must give
evidently's score (|diff| <= 1e-9, or relative <= 1e-7 for large values), its
method and its verdict. The datasets are drawn from a seeded generator that
mixes sizes on both sides of evidently's 1000-row switch, ties, few-valued and
constant columns, NaN and +/-inf, unseen categories, int/bool/str categories and
pandas nullable dtypes.

The two documented departures (``monitor/drift/methods.py``; cases C01, C04) are
checked against their own right values instead of evidently's degenerate ones.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

pytest.importorskip("evidently")

from monitor.drift import METHODS, compute

DATASETS = 12
ROW_SIZES = [(30, 25), (200, 300), (1000, 700), (1001, 1500), (4000, 2500)]


def _dataset(seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    rng = np.random.default_rng(seed)
    n_ref, n_cur = ROW_SIZES[seed % len(ROW_SIZES)]
    shift = rng.choice([0.0, 0.05, 0.5])
    decimals = int(rng.integers(0, 3))

    def num(n: int, s: float) -> np.ndarray:
        return np.round(rng.normal(s, 1 + s, n), decimals + 1)

    letters = list("abcdefg")
    p_ref = rng.dirichlet(np.ones(5))
    p_cur = rng.dirichlet(np.ones(6)) if shift else np.append(p_ref, 0.0)
    ref = pd.DataFrame(
        {
            "cont": num(n_ref, 0.0),
            "few": rng.integers(0, int(rng.integers(2, 6)), n_ref).astype(float),
            "const": np.full(n_ref, 3.0),
            "wide_int": rng.integers(0, 500, n_ref),
            "cat": rng.choice(letters[:5], n_ref, p=p_ref),
            "cat_int": rng.integers(0, 4, n_ref),
            "flag": rng.random(n_ref) < 0.3,
            "nullable": pd.array(rng.integers(0, 50, n_ref), dtype="Int64"),
            "strings": pd.array(rng.choice(["x", "y", "z"], n_ref), dtype="string"),
        }
    )
    cur = pd.DataFrame(
        {
            "cont": num(n_cur, float(shift)),
            "few": rng.integers(0, 4, n_cur).astype(float),
            "const": np.full(n_cur, 3.0),
            "wide_int": rng.integers(0, 500 + int(shift * 400), n_cur),
            "cat": rng.choice(letters[:6], n_cur, p=p_cur / p_cur.sum()),
            "cat_int": rng.integers(0, 4 + (seed % 3 == 0), n_cur),
            "flag": rng.random(n_cur) < 0.3 + shift / 4,
            "nullable": pd.array(rng.integers(0, 50, n_cur), dtype="Int64"),
            "strings": pd.array(rng.choice(["x", "y", "z"], n_cur), dtype="string"),
        }
    )
    # nulls and infinities in a few places (evidently drops both before testing)
    for frame in (ref, cur):
        idx = rng.choice(len(frame), size=max(1, len(frame) // 50), replace=False)
        frame.loc[idx[: len(idx) // 2], "cont"] = np.nan
        frame.loc[idx[len(idx) // 2 :], "cont"] = rng.choice(
            [np.inf, -np.inf], len(idx) - len(idx) // 2
        )
        frame.loc[idx[:2], "nullable"] = pd.NA
        frame.loc[idx[:1], "cat"] = None
    kinds = {
        "cont": "numerical",
        "few": "numerical",
        "const": "numerical",
        "wide_int": "numerical",
        "cat": "categorical",
        "cat_int": "categorical",
        "flag": "categorical",
        "nullable": "numerical",
        "strings": "categorical",
    }
    return ref, cur, kinds


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 or abs(a - b) <= 1e-7 * abs(b)


def _compare(method: str | None, seed: int) -> int:
    ref, cur, kinds = _dataset(seed)
    if method is not None:
        kinds = {k: v for k, v in kinds.items() if v in METHODS[method].kinds}
    methods = {k: method for k in kinds} if method else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = compute(ref, cur, features=kinds, method=methods)
        ev = compute(ref, cur, features=kinds, method=methods, engine="evidently")
    compared = 0
    for name in kinds:
        a, b = fast.features[name], ev.features[name]
        where = f"seed {seed}, method {method or 'default'}, feature {name}"
        if a.status == "undefined":  # NaN from the method (a t-test on two constants): both say so
            assert (a.reason, b.status, b.reason) == ("nan_score", "undefined", "nan_score"), where
            continue
        assert a.status == "ok", where
        if a.note:  # a documented departure: check it against its own right value
            _check_departure(a, b, ref[name], cur[name], where)
            continue
        assert b.status == "ok", f"{where}: evidently {b.status} {b.reason}"
        assert a.method == b.method, where
        assert a.score is not None and b.score is not None
        assert _close(a.score, b.score), f"{where}: fast {a.score!r} evidently {b.score!r}"
        assert a.drifted == b.drifted, where
        compared += 1
    return compared


def _check_departure(a, b, ref: pd.Series, cur: pd.Series, where: str) -> None:  # type: ignore[no-untyped-def]
    assert a.method == "chisquare", where
    r = ref.dropna().value_counts()
    c = cur.dropna().value_counts()
    keys = sorted(set(r.index) | set(c.index), key=str)
    table = np.array([[c.get(k, 0) for k in keys], [r.get(k, 0) for k in keys]], dtype=float)
    if len(keys) == 1:
        assert a.score == 1.0 and "C01" in a.note, where
        assert b.status == "undefined", where  # evidently: NaN
    else:
        assert (table[1] == 0).any() and "C04" in a.note, where
        expected = stats.chi2_contingency(table, correction=False).pvalue
        assert math.isclose(a.score, expected, rel_tol=1e-12, abs_tol=1e-15), where
        assert b.score == 0.0, where  # evidently: infinite statistic from a zero expected count


@pytest.mark.parametrize(
    "method",
    [
        None,
        "ks",
        "chisquare",
        "z",
        "wasserstein",
        "jensenshannon",
        "psi",
        "kl_div",
        "hellinger",
        "ed",
        "mannw",
        "t_test",
    ],
    ids=lambda m: f"method {m or 'default (evidently choice)'} matches evidently",
)
def test_fast_engine_gives_evidentlys_scores_and_verdicts(method: str | None) -> None:
    compared = sum(_compare(method, seed) for seed in range(DATASETS))
    # every dataset contributes: the comparison is not vacuous
    assert compared >= DATASETS * 2


def test_default_choice_covers_every_branch_of_evidentlys_rule() -> None:
    """Across the generated datasets evidently's rule picks ks, chisquare, z,
    wasserstein and jensenshannon, so the default comparison exercised all five."""
    chosen = set()
    for seed in range(DATASETS):
        ref, cur, kinds = _dataset(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            chosen |= {f.method for f in compute(ref, cur, features=kinds).features.values()}
    assert chosen == {"ks", "chisquare", "z", "wasserstein", "jensenshannon"}
