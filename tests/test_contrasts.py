"""Machine-listener contrasts against exact p-values computed by hand, and the summary's contrast table."""
from __future__ import annotations

from math import comb

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact
from scipy.stats.contingency import odds_ratio

from analysis import contrasts, exact


def test_fisher_exact_by_hand():
    # A: 3 of 3 right, B: 0 of 3 right. Margins: 3 right of 6. P(X = 3) = C(3,3)C(3,0)/C(6,3) = 1/20,
    # and the only other table as unlikely is X = 0, so two-sided p = 2/20.
    r = exact.stratified_exact([exact.Stratum(3, 3, 0, 3)])
    assert r.p == pytest.approx(2 / 20) and r.test == "Fisher exact"
    assert r.odds_ratio == np.inf and r.ci_high == np.inf and r.ci_low > 0


def test_stratified_exact_by_hand():
    # Two strata, each A 1 of 1 right vs B 0 of 1 right (one right answer per stratum).
    # Per stratum X ~ {0, 1} with probability 1/2 each; T = X1 + X2 has pmf 1/4, 1/2, 1/4.
    # Observed T = 2 (probability 1/4); as unlikely: T = 0. Two-sided p = 1/2.
    r = exact.stratified_exact([exact.Stratum(1, 1, 0, 1), exact.Stratum(1, 1, 0, 1)])
    assert r.p == pytest.approx(0.5) and r.test == "exact conditional, 2 strata"
    # Stratum 1: A 2/3 right, B 0/2; stratum 2: A 1/2, B 1/2.
    # s1: right=2, n_a=3, n_b=2: P(X=x) = C(3,x)C(2,2-x)/C(5,2) for x=0..2 -> 1/10, 6/10, 3/10
    # s2: right=2, n_a=2, n_b=2: P(X=x) = C(2,x)C(2,2-x)/C(4,2) -> 1/6, 4/6, 1/6
    # T = X1 + X2 (observed 2 + 1 = 3): pmf in sixtieths 1, 10, 28, 18, 3. As unlikely as 18/60 or less:
    # T = 0, 1, 3, 4, so p = 32/60.
    by_hand = 32 / 60
    s1 = [comb(3, x) * comb(2, 2 - x) / comb(5, 2) for x in range(3)]
    s2 = [comb(2, x) * comb(2, 2 - x) / comb(4, 2) for x in range(3)]
    assert np.allclose(np.convolve(s1, s2) * 60, [1, 10, 28, 18, 3])
    r = exact.stratified_exact([exact.Stratum(2, 3, 0, 2), exact.Stratum(1, 2, 1, 2)])
    assert r.p == pytest.approx(by_hand)


@pytest.mark.parametrize("table", [(7, 10, 2, 10), (0, 10, 5, 10), (12, 30, 25, 31), (3, 5, 3, 5)])
def test_one_stratum_matches_scipy_fisher_and_conditional_odds_ratio(table):
    r = exact.stratified_exact([exact.Stratum(*table)])
    t = np.array([[table[0], table[1] - table[0]], [table[2], table[3] - table[2]]])
    ref = odds_ratio(t, kind="conditional")
    ci = ref.confidence_interval()
    assert r.p == pytest.approx(fisher_exact(t).pvalue, rel=1e-9)
    assert r.odds_ratio == pytest.approx(ref.statistic, rel=1e-6, abs=1e-12)
    assert (r.ci_low, r.ci_high) == (pytest.approx(ci.low, rel=1e-6, abs=1e-12), pytest.approx(ci.high, rel=1e-6))


def test_mcnemar_exact_by_hand():
    # 1 pair right only before, 9 right only after: p = 2 * P(X <= 1 | 10, 1/2) = 2 * 11 / 1024
    r = exact.mcnemar_pairs(1, 9)
    assert r.p == pytest.approx(22 / 1024) and r.odds_ratio == pytest.approx(9.0)
    # Clopper-Pearson lower bound of 9/10 solves P(X >= 9 | 10, q) = 0.025
    q = r.ci_low / (1 + r.ci_low)
    assert 10 * q ** 9 * (1 - q) + q ** 10 == pytest.approx(0.025, rel=1e-6)
    assert exact.mcnemar_pairs(0, 0).p == 1.0


def machine_answers(right: dict[tuple[str, str, str], list[bool]]) -> pd.DataFrame:
    """One machine's answers: right[(method, init, stage)] lists one outcome per clip (pair k = clip k)."""
    rows = []
    for (method, init, stage), outcomes in right.items():
        for k, ok in enumerate(outcomes):
            rows.append({"listener": "machine:asr:pocketsphinx", "listener_group": "machine:asr:pocketsphinx",
                         "method": method, "init": init, "stage": stage, "pair_id": f"{method}-{k}" if init == "test"
                         else "", "correct": ok, "stimulus": f"{method}-{init}-{stage}-{k}"})
    return pd.DataFrame(rows)


def test_machine_contrasts_against_hand_computed_p_values():
    T, F = True, False
    answers = machine_answers({
        ("classifier", "noise", "after"): [F, F, F, F],
        ("decoder", "noise", "after"): [T, T, T, F],
        ("classifier", "test", "before"): [T, T, T, T],
        ("classifier", "test", "after"): [T, F, F, F],
        ("decoder", "test", "before"): [T, T, F, T],
        ("decoder", "test", "after"): [F, F, F, T],
    })
    table = contrasts.main_contrasts(answers, None).set_index("contrast")
    assert set(table["listeners"]) == {"machine:asr:pocketsphinx"} and (table["note"] == "").all()
    # after vs before: pairs right only before = classifier 1, 2, 3 and decoder 0, 1 = 5; right only after: none
    # (decoder pair 3 is right both times). p = 2 * P(X <= 0 | 5, 1/2) = 2/32.
    row = table.loc["after vs before"]
    assert row["test"] == "McNemar exact" and row["p"] == pytest.approx(2 / 32) and row["odds_ratio"] == 0
    # decoder vs classifier, strata by start: noise: A 3/4 vs B 0/4 (3 right of 8), test: A 1/4 vs B 1/4 (2 of 8)
    noise = [comb(4, x) * comb(4, 3 - x) / comb(8, 3) for x in range(4)]
    test = [comb(4, x) * comb(4, 2 - x) / comb(8, 2) for x in range(3)]
    t = np.convolve(noise, test)
    p = t[t <= t[3 + 1] * (1 + 1e-7)].sum()
    row = table.loc["decoder vs classifier"]
    assert row["test"] == "exact conditional, 2 strata" and row["p"] == pytest.approx(p)
    assert row["accuracy_a"] == pytest.approx(4 / 8) and row["accuracy_b"] == pytest.approx(1 / 8)
    # Holm over the three contrasts of this machine
    ps = table["p"].to_numpy()
    order = np.argsort(ps)
    expected = np.maximum.accumulate(np.minimum(1, ps[order] * (3 - np.arange(3))))
    assert np.allclose(table["p_holm"].to_numpy()[order], expected)


def test_missing_cell_is_named_and_only_then_no_contrast():
    T, F = True, False
    answers = machine_answers({
        ("classifier", "noise", "after"): [F, F, T],
        ("classifier", "test", "after"): [T, T, F],
        ("decoder", "test", "after"): [T, T, T],
    })
    table = contrasts.main_contrasts(answers, None).set_index("contrast")
    # decoder vs classifier: the test-start stratum is complete, so it is estimated, noting the missing cell
    row = table.loc["decoder vs classifier"]
    assert not np.isnan(row["p"]) and row["note"] == "cell(s) missing: decoder, noise start, after"
    assert row["test"] == "Fisher exact"
    row = table.loc["after vs before"]
    assert np.isnan(row["p"]) and row["note"].startswith("No contrast: cell(s) missing: classifier, test start, before")


def test_cells_present_but_uninformative_are_tested_not_called_missing():
    F = False
    answers = machine_answers({cell: [F, F, F] for cell in [
        ("classifier", "noise", "after"), ("decoder", "noise", "after"), ("classifier", "test", "before"),
        ("classifier", "test", "after"), ("decoder", "test", "before"), ("decoder", "test", "after")]})
    table = contrasts.main_contrasts(answers, None)
    assert (table["note"] == "").all() and (table["p"] == 1.0).all() and table["odds_ratio"].isna().all()
    for _, row in table.iterrows():
        assert "no informative answers" in contrasts.sentence(row) and "No contrast" not in contrasts.sentence(row)
