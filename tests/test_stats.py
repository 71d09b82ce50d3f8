"""The report's statistics against hand-computed and published textbook values."""
import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from analysis import stats
from hearsay.errors import HearsayError

# Fleiss (1971) example as in Wikipedia's "Fleiss' kappa": 10 subjects, 14 raters, 5 categories.
FLEISS = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                   [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders x 12 units, values 1-5, gaps.
N = np.nan
KRIPP = np.array([[1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
                  [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
                  [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
                  [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N]])


def kripp_counts():
    coder, unit = np.nonzero(~np.isnan(KRIPP))
    return stats.counts_matrix(unit, KRIPP[coder, unit], [1.0, 2.0, 3.0, 4.0, 5.0])[0]


def test_wilson_matches_hand_computation():
    lo, hi = stats.wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    lo, hi = stats.wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 3) == 0.278
    vlo, vhi = stats.wilson_arrays(np.array([8, 0]), np.array([10, 10]))
    assert np.allclose(vlo, [0.490162, 0.0], atol=1e-6) and np.allclose(vhi, [0.943318, 0.277533], atol=1e-6)


@pytest.mark.parametrize("n", [3, 7, 9, 10, 12, 13, 14, 25])
def test_wilson_bounds_enclose_zero_and_perfect_scores(n):
    lo, hi = stats.wilson_arrays(np.array([0, n]), np.array([n, n]))
    assert lo[0] == 0.0 and hi[1] == 1.0
    assert lo[1] < 1.0 and hi[0] > 0.0
    assert stats.wilson_interval(n, n)[1] == 1.0 and stats.wilson_interval(0, n)[0] == 0.0
    nan_lo, nan_hi = stats.wilson_arrays(np.array([0]), np.array([0]))
    assert np.isnan(nan_lo[0]) and np.isnan(nan_hi[0])


def test_chance_corrected_accuracy():
    assert stats.chance_corrected(0.5, 0.25) == pytest.approx(1 / 3)
    assert stats.chance_corrected(0.25, 0.25) == 0.0


def test_binomial_vs_chance_is_exact_one_sided():
    # P(X >= 3 | n = 3, p = 0.5) = 1/8
    assert stats.binomial_vs_chance(3, 3, 0.5) == pytest.approx(0.125)
    # P(X >= 8 | n = 10, p = 0.5) = (45 + 10 + 1) / 1024
    assert stats.binomial_vs_chance(8, 10, 0.5) == pytest.approx(56 / 1024)


def test_mcnemar_exact_on_hand_made_table():
    # discordant 1 vs 9: two-sided p = 2 * P(X <= 1 | n = 10, 1/2) = 2 * 11 / 1024
    assert stats.mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert stats.mcnemar_exact(5, 5) == 1.0
    assert stats.mcnemar_exact(0, 0) == 1.0


def test_holm_by_hand_and_against_statsmodels():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1 -> running max 0.06
    assert np.allclose(stats.holm(p), [0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(1)
    many = rng.random(25) ** 3
    assert np.allclose(stats.holm(many), multipletests(many, method="holm")[1])
    with_nan = stats.holm([0.01, np.nan, 0.02])
    assert np.isnan(with_nan[1]) and np.allclose(with_nan[[0, 2]], [0.02, 0.02])


def test_fleiss_kappa_textbook_value():
    assert stats.fleiss_kappa(FLEISS) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_refuses_unequal_answer_counts():
    with pytest.raises(HearsayError):
        stats.fleiss_kappa(np.array([[2, 0], [1, 2]]))


def test_krippendorff_alpha_textbook_values():
    counts = kripp_counts()
    assert stats.krippendorff_alpha(counts, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert stats.krippendorff_alpha(counts, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert stats.krippendorff_alpha(counts, "interval", [1, 2, 3, 4, 5]) == pytest.approx(0.849, abs=5e-4)


def test_krippendorff_equals_fleiss_scale_on_complete_data():
    # with equal counts per unit nominal alpha and kappa differ only by the small-sample term
    alpha = stats.krippendorff_alpha(FLEISS, "nominal")
    n = FLEISS.sum()
    kappa = stats.fleiss_kappa(FLEISS)
    assert alpha == pytest.approx(1 - (1 - kappa) * (n - 1) / n, abs=1e-3)


def test_agreement_picks_the_fitting_statistic():
    units = ["a", "a", "b", "b", "c", "c"]
    same = stats.agreement(units, ["x", "x", "y", "y", "x", "x"], ["x", "y"])
    assert same["statistic"] == "fleiss_kappa" and same["value"] == pytest.approx(1.0)
    ragged = stats.agreement(units + ["c"], ["x", "x", "y", "y", "x", "x", "y"], ["x", "y"])
    assert ragged["statistic"] == "krippendorff_alpha_nominal"


def test_cluster_bootstrap_is_seeded_and_covers_mean():
    values = np.array([0, 1, 2, 3, 4, 4, 3, 2, 1, 0], dtype=float)
    clusters = np.repeat(np.arange(5), 2)
    a = stats.cluster_bootstrap_mean(values, clusters, 500, seed=3)
    b = stats.cluster_bootstrap_mean(values, clusters, 500, seed=3)
    assert a == b and a[1] <= a[0] <= a[2] and a[0] == 2.0


def test_rank_tests():
    name, _, p = stats.rank_test([0, 0, 1, 1, 0], [4, 4, 3, 4, 3])
    assert name == "mann_whitney_u" and p < 0.05
    name, _, p = stats.rank_test([1, 2, 1, 2, 1, 2, 1, 1], [3, 4, 4, 3, 4, 4, 3, 4], paired=True)
    assert name == "wilcoxon_signed_rank" and p < 0.05


def tiny_clustered(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for listener in range(20):
        skill = rng.normal(0, 0.5)
        for stim in range(16):
            decoder = stim % 2
            p = 1 / (1 + np.exp(-(-0.5 + 1.5 * decoder + skill)))
            rows.append({"listener": listener, "stimulus": stim, "decoder": decoder, "correct": rng.random() < p})
    return pd.DataFrame(rows)


def test_glm_cluster_robust_has_right_sign_and_all_clusterings():
    df = tiny_clustered()
    fits = stats.logistic_cluster(df["correct"].astype(float).to_numpy(), df[["decoder"]],
                                  {"listener": df["listener"].to_numpy(), "stimulus": df["stimulus"].to_numpy()})
    assert set(fits) == {"listener", "stimulus", "listener+stimulus"}
    for terms in fits.values():
        (fit,) = terms
        assert fit.term == "decoder" and fit.odds_ratio > 1 and fit.ci_low < fit.odds_ratio < fit.ci_high
        assert fit.p < 0.05
    # same point estimate whatever the clustering; only the errors change
    assert len({round(t[0].odds_ratio, 9) for t in fits.values()}) == 1


def test_bayes_mixed_model_agrees_in_sign_and_subsamples():
    df = tiny_clustered()
    table, used = stats.bayes_mixed_logistic(df["correct"].astype(float).to_numpy(), df[["decoder"]],
                                             df["listener"], df["stimulus"], seed=0, max_answers=200)
    assert used == 200
    row = table.set_index("term").loc["decoder"]
    assert row["odds_ratio"] > 1 and row["ci_low"] < row["odds_ratio"] < row["ci_high"]
    again, _ = stats.bayes_mixed_logistic(df["correct"].astype(float).to_numpy(), df[["decoder"]],
                                          df["listener"], df["stimulus"], seed=0, max_answers=200)
    assert np.allclose(table["posterior_mean"], again["posterior_mean"])


def test_sparse_laplace_mixed_model_agrees_with_statsmodels_vb_on_small_data():
    df = tiny_clustered()
    y = df["correct"].astype(float).to_numpy()
    ours, used = stats.mixed_logistic_laplace(y, df[["decoder"]], df["listener"], df["stimulus"])
    theirs, _ = stats.bayes_mixed_logistic(y, df[["decoder"]], df["listener"], df["stimulus"], seed=0)
    assert used == len(df)
    a, b = ours.set_index("term"), theirs.set_index("term")
    assert abs(a.loc["decoder", "posterior_mean"] - b.loc["decoder", "posterior_mean"]) < 0.15
    assert a.loc["decoder", "ci_low"] < a.loc["decoder", "odds_ratio"] < a.loc["decoder", "ci_high"]
    # mean-field VB ignores the correlation between a clip-level effect and the clip intercepts,
    # so its sd is never wider than the Laplace one taken from the full inverse Hessian
    assert a.loc["decoder", "posterior_sd"] >= b.loc["decoder", "posterior_sd"] * 0.95
    assert abs(a.loc["sd(listener)", "posterior_mean"] - b.loc["sd(listener)", "posterior_mean"]) < 0.25


def test_sparse_laplace_recovers_simulated_effects():
    rng = np.random.default_rng(5)
    n_l, n_s = 120, 160
    skill, difficulty = rng.normal(0, 0.6, n_l), rng.normal(0, 0.7, n_s)
    listener = np.repeat(np.arange(n_l), 60)
    stimulus = np.concatenate([rng.choice(n_s, 60, replace=False) for _ in range(n_l)])
    decoder = (stimulus % 2).astype(float)
    eta = -0.2 + 0.9 * decoder + skill[listener] + difficulty[stimulus]
    y = (rng.random(eta.size) < 1 / (1 + np.exp(-eta))).astype(float)
    table, _ = stats.mixed_logistic_laplace(y, pd.DataFrame({"decoder": decoder}), listener, stimulus)
    t = table.set_index("term")
    assert np.log(t.loc["decoder", "ci_low"]) < 0.9 < np.log(t.loc["decoder", "ci_high"])
    assert 0.4 < t.loc["sd(listener)", "posterior_mean"] < 0.8 and 0.5 < t.loc["sd(stimulus)", "posterior_mean"] < 0.9


def test_permutation_rank_tests_are_exact_when_relabellings_are_few():
    # 5 vs 5 fully separated: 2 of the C(10, 5) = 252 relabellings are as extreme
    name, _, p = stats.rank_test([0] * 5, [4] * 5, permutations=4999)
    assert name == "mann_whitney_u_permutation" and p == pytest.approx(2 / 252)
    # 4 pairs all improving: 2 of the 2^4 = 16 sign patterns are as extreme
    name, _, p = stats.rank_test([1, 1, 2, 0], [3, 4, 4, 2], paired=True, permutations=4999)
    assert name == "wilcoxon_signed_rank_permutation" and p == pytest.approx(2 / 16)


def test_logistic_cluster_skips_terms_the_design_cannot_separate():
    """A predictor equal to another (or constant) made analyze crash with 'Singular matrix'; it is left out instead."""
    rng = np.random.default_rng(0)
    n = 400
    decoder = rng.integers(0, 2, n)
    y = (rng.random(n) < np.where(decoder == 1, 0.7, 0.4)).astype(float)
    X = pd.DataFrame({"decoder": decoder, "copy_of_decoder": decoder, "constant": np.ones(n)})
    fits = stats.logistic_cluster(y, X, {"listener": np.arange(n) % 20, "stimulus": np.arange(n) % 40})
    assert set(fits) == {"listener", "stimulus", "listener+stimulus"}
    for terms in fits.values():
        assert [t.term for t in terms] == ["decoder"]
        assert terms[0].odds_ratio > 1 and 0 < terms[0].ci_low < terms[0].ci_high


@pytest.mark.parametrize("n_listeners, n_clips", [(40, 90), (90, 40)])
def test_laplace_block_newton_steps_match_the_sparse_lu_of_the_whole_hessian(n_listeners, n_clips):
    """The Schur-complement steps (eliminating whichever random-effect block is larger) give the sparse fit."""
    rng = np.random.default_rng(3)
    listener = np.repeat(np.arange(n_listeners), 30)
    stimulus = np.concatenate([rng.choice(n_clips, 30, replace=False) for _ in range(n_listeners)])
    fixed = np.column_stack([np.ones(listener.size), stimulus % 2, rng.random(listener.size) < 0.5]).astype(float)
    eta = fixed @ [0.3, 0.8, -0.5] + rng.normal(0, 0.7, n_listeners)[listener] + rng.normal(0, 0.9, n_clips)[stimulus]
    y = (rng.random(eta.size) < 1 / (1 + np.exp(-eta))).astype(float)
    assert stats._LaplaceBlocks.fits(3, listener, stimulus)
    block = stats._laplace_em(stats._LaplaceBlocks(y, fixed, listener, stimulus), 2.0, 1e-6, 200)
    whole = stats._laplace_em(stats._LaplaceSparse(y, fixed, listener, stimulus), 2.0, 1e-6, 200)
    for ours, theirs in zip(block, whole):
        assert np.allclose(ours, theirs, rtol=1e-8, atol=1e-10)


def test_cluster_robust_errors_are_statsmodels_fit_with_cov_type_cluster():
    """One fit with each clustering's CRV1 covariance (two-way: first + second - intersection), as statsmodels."""
    import statsmodels.api as sm

    rng = np.random.default_rng(11)
    n = 3000
    listener, stimulus = rng.integers(0, 40, n), rng.integers(0, 25, n)
    X = pd.DataFrame({"decoder": rng.random(n) < 0.5, "after": rng.random(n) < 0.4})
    eta = 0.2 + 0.7 * X["decoder"] - 0.4 * X["after"] + rng.normal(0, 0.8, 40)[listener] + rng.normal(0, 0.5, 25)[stimulus]
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    ours = stats.logistic_cluster(y, X, {"listener": listener.astype(str), "stimulus": stimulus.astype(str)})
    model = sm.GLM(y, sm.add_constant(X.astype(float)), family=sm.families.Binomial())
    codes = {"listener": pd.factorize(listener.astype(str), sort=True)[0],
             "stimulus": pd.factorize(stimulus.astype(str), sort=True)[0]}
    codes["listener+stimulus"] = np.column_stack([codes["listener"], codes["stimulus"]])
    assert set(ours) == set(codes)
    for name, groups in codes.items():
        theirs = model.fit(cov_type="cluster", cov_kwds={"groups": groups})
        for fit in ours[name]:
            assert fit.z == pytest.approx(theirs.tvalues[fit.term], rel=1e-8)
            assert fit.p == pytest.approx(theirs.pvalues[fit.term], rel=1e-6)
            assert fit.ci_low == pytest.approx(np.exp(theirs.conf_int().loc[fit.term, 0]), rel=1e-8)


@pytest.mark.parametrize("seed", range(6))
def test_paired_permutation_test_is_scipys_wilcoxon_with_the_same_seed(seed):
    """The vectorized sign-flip test gives scipy.stats.wilcoxon(method=PermutationMethod)'s statistic and p exactly."""
    from scipy import stats as sps

    rng = np.random.default_rng(seed)
    n = [6, 9, 14, 30, 45, 80][seed]  # up to 9 pairs every sign pattern is enumerated, above that 999 are drawn
    a, b = rng.integers(0, 5, n).astype(float), rng.integers(0, 5, n).astype(float)
    if seed % 2:
        a = np.round(a + rng.normal(0, 0.3, n), 1)  # fewer ties
    theirs = sps.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided",
                          method=sps.PermutationMethod(n_resamples=999, rng=np.random.default_rng(seed)))
    name, statistic, p = stats.rank_test(a, b, paired=True, permutations=999, seed=seed)
    assert name == "wilcoxon_signed_rank_permutation"
    assert (statistic, p) == (float(theirs.statistic), float(theirs.pvalue))


def test_permutation_tests_on_a_single_pair_or_answer_are_not_run_instead_of_failing():
    """scipy refuses a permutation test on one value (ValueError), which would stop the report for a machine
    listener with a single matched clip pair; such a test is now reported as not run (NaN)."""
    assert np.isnan(stats.rank_test([3.0], [1.0], paired=True, permutations=999)[2])
    assert np.isnan(stats.rank_test([3.0], [1.0, 2.0], permutations=999)[2])
    assert stats.rank_test([3.0, 4.0], [1.0, 2.0], permutations=999)[2] > 0
