"""Statistics for listening tests, each written so a perception researcher can check it.

Pure numpy/scipy/statsmodels (no Django), so the same functions serve the report,
the benchmark and the tests. Every function says in plain words what it estimates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse
from scipy import stats as sps
from scipy.linalg import cho_factor, cho_solve
from scipy.special import expit as _expit
from statsmodels.tools.sm_exceptions import PerfectSeparationError

from hearsay.errors import HearsayError

Z95 = float(sps.norm.ppf(0.975))


def wilson_arrays(k, n, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """95% Wilson score intervals for k successes out of n, vectorised (NaN where n = 0).

    Unlike the textbook "p ± 1.96·SE" interval it stays inside [0, 1] and keeps its
    coverage for small n and for accuracies near 0 or 1, which listening tests produce.
    statsmodels computes it; the bounds are then clamped so they always enclose the
    estimate (floating point puts them a hair past it at 0 of n and n of n, which made
    matplotlib refuse the negative error bar).
    """
    from statsmodels.stats.proportion import proportion_confint

    k = np.atleast_1d(np.asarray(k, dtype=float))
    n = np.atleast_1d(np.asarray(n, dtype=float))
    ok = n > 0
    lo = np.full(k.shape, np.nan)
    hi = np.full(k.shape, np.nan)
    if ok.any():
        alpha = 2.0 * (1.0 - sps.norm.cdf(z))
        low, high = proportion_confint(k[ok], n[ok], alpha=alpha, method="wilson")
        p = k[ok] / n[ok]
        lo[ok] = np.clip(np.minimum(low, p), 0.0, 1.0)
        hi[ok] = np.clip(np.maximum(high, p), 0.0, 1.0)
    return lo, hi


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson interval of one proportion (see wilson_arrays)."""
    lo, hi = wilson_arrays([k], [n], z)
    return (float(lo[0]), float(hi[0]))


def chance_corrected(acc: float | np.ndarray, chance: float) -> float | np.ndarray:
    """Accuracy rescaled so chance is 0 and perfect is 1: (acc - chance) / (1 - chance)."""
    return (np.asarray(acc, dtype=float) - chance) / (1.0 - chance)


def binomial_vs_chance(k: int, n: int, chance: float) -> float:
    """One-sided exact binomial p-value that accuracy exceeds chance.

    Treats answers as independent, so with many answers per listener it is optimistic;
    the clustered logistic model is the check that respects listeners.
    """
    if n <= 0:
        return float("nan")
    return float(sps.binomtest(int(k), int(n), chance, alternative="greater").pvalue)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts (statsmodels).

    b = pairs right before and wrong after, c = wrong before and right after; under no
    change each discordant pair is a fair coin, so the test is binomial(b + c, 1/2).
    """
    from statsmodels.stats.contingency_tables import mcnemar

    if int(b) + int(c) == 0:
        return 1.0
    return float(mcnemar(np.array([[0, int(b)], [int(c), 0]]), exact=True).pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values (NaNs left out).

    Controls the family-wise error rate: the i-th smallest p is multiplied by (m - i)
    and adjusted values never decrease. The arithmetic of statsmodels' multipletests
    (method="holm"), step for step, without the full garbage collection it runs on every
    call (a tenth of a second each while a million-answer table is in memory).
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        order = np.argsort(p[ok])
        ranked = p[ok][order]
        adjusted = np.maximum.accumulate(ranked * np.arange(ranked.size, 0, -1))
        adjusted[adjusted > 1] = 1
        back = np.empty_like(adjusted)
        back[order] = adjusted
        out[ok] = back
    return out


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa for a units x categories matrix of answer counts (statsmodels).

    Needs the same number of answers on every unit; kappa is observed agreement
    between pairs of answers beyond what the overall category shares would give.
    """
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

    counts = np.asarray(counts, dtype=float)
    n_per = counts.sum(axis=1)
    if counts.shape[0] < 2 or not np.all(n_per == n_per[0]) or n_per[0] < 2:
        raise HearsayError("Fleiss' kappa needs at least two units with the same number (>= 2) of answers each")
    p_j = counts.sum(axis=0) / counts.sum()
    if np.square(p_j).sum() == 1.0:
        return float("nan")
    return float(sm_fleiss_kappa(counts, method="fleiss"))


def counts_matrix(units, values, categories=None) -> tuple[np.ndarray, list]:
    """Units x categories count matrix from two parallel sequences (one entry per answer).

    Rows are the units in sorted order; answers that are missing or outside `categories` are not counted.
    """
    units = pd.Series(np.asarray(units, dtype=object))
    values = pd.Series(np.asarray(values, dtype=object))
    keep = (units.notna() & values.notna()).to_numpy()
    units, values = units[keep], values[keep]
    cats = sorted(values.unique()) if categories is None else list(categories)
    value_codes = pd.Categorical(values, categories=cats).codes
    counted = value_codes >= 0
    unit_codes, unit_names = pd.factorize(units[counted], sort=True)
    flat = np.bincount(unit_codes * len(cats) + value_codes[counted], minlength=len(unit_names) * len(cats))
    return flat.reshape(len(unit_names), len(cats)).astype(float), cats


def krippendorff_alpha(counts: np.ndarray, level: str = "nominal", values=None) -> float:
    """Krippendorff's alpha from a units x categories count matrix (missing answers allowed).

    alpha = 1 - observed disagreement / disagreement expected by chance, both taken
    over all pairs of answers within a unit. Units with fewer than two answers carry
    no pairs and drop out. level: "nominal" (any difference counts 1), "ordinal"
    (distance by ranks of the pooled answers; categories must be in order), or
    "interval" (squared difference of the numeric `values` of the categories).
    """
    counts = np.asarray(counts, dtype=float)
    m_u = counts.sum(axis=1)
    keep = m_u >= 2
    counts, m_u = counts[keep], m_u[keep]
    if counts.shape[0] == 0:
        return float("nan")
    weighted = counts / (m_u - 1)[:, None]
    coincidence = counts.T @ weighted - np.diag(weighted.sum(axis=0))
    n_c = coincidence.sum(axis=1)
    n = n_c.sum()
    k = counts.shape[1]
    if level == "nominal":
        delta = 1.0 - np.eye(k)
    elif level == "ordinal":
        cum = np.concatenate([[0.0], np.cumsum(n_c)])
        idx = np.arange(k)
        lo = np.minimum.outer(idx, idx)
        hi = np.maximum.outer(idx, idx)
        delta = np.square(cum[hi + 1] - cum[lo] - (n_c[lo] + n_c[hi]) / 2.0)
    elif level == "interval":
        v = np.arange(k, dtype=float) if values is None else np.asarray(values, dtype=float)
        delta = np.square(np.subtract.outer(v, v))
    else:
        raise HearsayError(f"unknown Krippendorff level {level!r} (nominal, ordinal, interval)")
    expected = (np.outer(n_c, n_c) * delta).sum()
    if expected == 0:
        return float("nan")
    return float(1.0 - (n - 1) * (coincidence * delta).sum() / expected)


def agreement(units, values, categories=None, level: str = "nominal") -> dict:
    """Agreement between listeners on the same clips, picking the statistic that fits.

    Fleiss' kappa when every clip has the same number (>= 2) of answers and the scale is
    nominal; Krippendorff's alpha otherwise (it handles unequal counts and ordinal scales).
    """
    counts, cats = counts_matrix(units, values, categories)
    per = counts.sum(axis=1)
    per = per[per > 0]
    usable = int((per >= 2).sum())
    if usable < 2:
        return {"statistic": "none", "value": float("nan"), "units": usable, "answers_per_unit": ""}
    if level == "nominal" and np.all(per == per[0]):
        return {"statistic": "fleiss_kappa", "value": fleiss_kappa(counts[counts.sum(axis=1) > 0]),
                "units": usable, "answers_per_unit": str(int(per[0]))}
    return {"statistic": f"krippendorff_alpha_{level}", "value": krippendorff_alpha(counts, level),
            "units": usable, "answers_per_unit": f"{int(per.min())}-{int(per.max())}"}


def cluster_bootstrap_mean(values: np.ndarray, clusters: np.ndarray, n_boot: int = 2000, seed: int = 0,
                           ) -> tuple[float, float, float]:
    """Mean with a 95% percentile interval from resampling whole listeners (fixed seed).

    Resampling listeners rather than answers keeps one listener's many, correlated
    ratings together, so the interval is not too narrow. scipy.stats.bootstrap resamples
    the per-listener (sum, count) pairs; the statistic is the ratio of their totals,
    i.e. the answer-weighted mean of the resampled listeners.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return (float("nan"), float("nan"), float("nan"))
    codes, _ = pd.factorize(pd.Series(clusters), sort=True)
    sums = np.bincount(codes, weights=values)
    cnts = np.bincount(codes).astype(float)
    mean = float(values.mean())
    if sums.size < 2:
        return (mean, float("nan"), float("nan"))
    if np.all(values == values[0]):
        return (mean, mean, mean)

    def ratio(s, c, axis=-1):
        return s.sum(axis=axis) / c.sum(axis=axis)

    res = sps.bootstrap((sums, cnts), ratio, paired=True, vectorized=True, n_resamples=n_boot,
                        method="percentile", confidence_level=0.95, rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return (mean, float(lo), float(hi))


def rank_test(a, b, paired: bool = False, permutations: int | None = None, seed: int = 0,
              ) -> tuple[str, float, float]:
    """Compare two sets of ordinal ratings without assuming equal spacing.

    Unpaired: two-sided Mann-Whitney U. Paired (same clips before and after): two-sided
    Wilcoxon signed-rank on the paired differences (zero differences dropped; exact for
    up to 50 untied differences, otherwise the tie-corrected normal approximation).
    With permutations set, the p-value comes from that many random relabellings (fixed
    seed) instead, which stays valid with the many ties a machine's ratings have.
    Returns (test name, statistic, p-value).
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if permutations:  # scipy's permutation tests need two values on each side; with fewer there is no test
        method = sps.PermutationMethod(n_resamples=permutations, rng=np.random.default_rng(seed))
        if paired:
            if a.size < 2 or np.all(a == b):
                return ("wilcoxon_signed_rank_permutation", float("nan"), float("nan"))
            statistic, p = _wilcoxon_permutation(a - b, permutations, seed)
            return ("wilcoxon_signed_rank_permutation", statistic, p)
        if a.size < 2 or b.size < 2:
            return ("mann_whitney_u_permutation", float("nan"), float("nan"))
        res = sps.mannwhitneyu(a, b, alternative="two-sided", method=method)
        return ("mann_whitney_u_permutation", float(res.statistic), float(res.pvalue))
    if paired:
        d = a - b
        if d.size == 0 or np.all(d == 0):
            return ("wilcoxon_signed_rank", float("nan"), float("nan"))
        nonzero = np.abs(d[d != 0])
        exact = nonzero.size <= 50 and np.unique(nonzero).size == nonzero.size
        res = sps.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided",
                           method="exact" if exact else "asymptotic")
        return ("wilcoxon_signed_rank", float(res.statistic), float(res.pvalue))
    if a.size == 0 or b.size == 0:
        return ("mann_whitney_u", float("nan"), float("nan"))
    res = sps.mannwhitneyu(a, b, alternative="two-sided")
    return ("mann_whitney_u", float(res.statistic), float(res.pvalue))


def _wilcoxon_permutation(d: np.ndarray, permutations: int, seed: int) -> tuple[float, float]:
    """scipy.stats.wilcoxon(method=PermutationMethod(permutations, rng=seed)) on the differences d, vectorized.

    Flipping signs leaves |d| and so its ranks unchanged: the ranks of the non-zero differences are computed
    once and each relabelling's statistic (the rank sum of the positive differences) is one row of a matrix
    product-sum, instead of scipy re-ranking every relabelling in a Python loop. The same random sign flips
    (permutation_test with the same seed) give the same statistic and p-value as scipy's.
    """
    nonzero = d != 0
    ranks = np.zeros_like(d)
    ranks[nonzero] = sps.rankdata(np.abs(d[nonzero]))

    def positive_rank_sum(x, axis=-1):
        return np.sum((x > 0) * ranks, axis=axis)

    res = sps.permutation_test((d,), positive_rank_sum, permutation_type="samples", vectorized=True,
                               n_resamples=permutations, rng=np.random.default_rng(seed), alternative="two-sided")
    statistic = min(positive_rank_sum(d), np.sum((d < 0) * ranks))
    return float(statistic), float(res.pvalue)


@dataclass(frozen=True)
class ContrastFit:
    """One logistic-model coefficient: odds ratio of the level vs the reference."""

    term: str
    odds_ratio: float
    ci_low: float
    ci_high: float
    z: float
    p: float
    answers: int
    clusters: str


def _estimable(exog: pd.DataFrame) -> pd.DataFrame:
    """The design's columns in order, dropping each one the earlier ones already determine (a constant predictor,
    or one equal to a combination of others): their effects cannot be told apart, so they are not estimated."""
    kept: list[str] = []
    for col in exog.columns:
        trial = kept + [col]
        if np.linalg.matrix_rank(exog[trial].to_numpy()) == len(trial):
            kept.append(col)
    return exog[kept]


def separated(y: np.ndarray, X: pd.DataFrame) -> bool:
    """Whether the logistic model of y on X (plus an intercept) has no finite maximum-likelihood estimate.

    That happens when every answer is right, or every answer wrong, or when some combination of the
    predictors splits right from wrong answers (complete or quasi-complete separation: e.g. every answer
    to decoder clips right). The fit then drifts towards an infinite odds ratio and reports an arbitrary
    large one with a meaningless interval. Checked exactly as a linear program (Konis 2007): is there a
    direction b with x·b >= 0 for every right answer and <= 0 for every wrong one, not zero on all? Rows
    are collapsed to distinct (x, y) patterns first, so a million answers cost nothing.
    """
    from scipy.optimize import linprog

    y = np.asarray(y, dtype=float)
    if y.size == 0 or np.all(y == y[0]):
        return True
    exog = np.column_stack([np.ones(y.size), X.to_numpy(dtype=float)])
    patterns = pd.DataFrame(np.column_stack([exog, y])).drop_duplicates().to_numpy()  # hashed: 15x np.unique's sort
    signed = patterns[:, :-1] * np.where(patterns[:, -1] > 0, 1.0, -1.0)[:, None]
    k = signed.shape[1]
    # maximize the summed margin subject to every signed margin >= 0 and |b_j| <= 1
    res = linprog(-signed.sum(axis=0), A_ub=-signed, b_ub=np.zeros(len(signed)), bounds=[(-1.0, 1.0)] * k,
                  method="highs")
    return bool(res.status == 0 and -res.fun > 1e-9)


def logistic_cluster(y: np.ndarray, X: pd.DataFrame, groups: dict[str, np.ndarray]) -> dict[str, list[ContrastFit]]:
    """Logistic GLM of correct (0/1) on 0/1 predictors, with cluster-robust errors.

    Empty when the model has no finite estimate (every answer alike, or separation: see separated()).
    One fit (maximum likelihood, binomial family, logit link); standard errors are then
    recomputed from it, without refitting, so answers from the same cluster may be correlated: one
    entry per key in `groups` (e.g. listener, stimulus), plus two-way listener x stimulus when two
    are given.
    """
    # the modules themselves: statsmodels.api also imports its plotting and time-series packages (seconds)
    from statsmodels.genmod.families import Binomial
    from statsmodels.genmod.generalized_linear_model import GLM
    from statsmodels.stats.sandwich_covariance import cov_cluster
    from statsmodels.tools.tools import add_constant

    y = np.asarray(y, dtype=float)
    if y.size == 0 or X.shape[1] == 0:
        return {}
    exog = _estimable(add_constant(X.astype(float), has_constant="add"))
    if exog.shape[1] < 2 or separated(y, exog.drop(columns="const")):
        return {}  # no finite estimate: see separated()
    model = GLM(y, exog, family=Binomial())
    codes = {name: pd.factorize(pd.Series(g), sort=True)[0] for name, g in groups.items()}
    try:
        base = model.fit()
    except (np.linalg.LinAlgError, PerfectSeparationError):
        return {}
    # what fit(cov_type="cluster") computes (CRV1 with its small-sample correction), from the one fit; two-way
    # clustering is Cameron-Gelbach-Miller's cov(first) + cov(second) - cov(intersection), as statsmodels' own
    # cov_cluster_2groups, with the intersection found by sorting integer codes rather than pairs
    covs: dict[str, np.ndarray] = {}
    for name, c in codes.items():
        if np.unique(c).size < 2 or y.size <= exog.shape[1]:
            continue  # one cluster (a pilot with one listener, say) gives no between-cluster variance to estimate
        try:
            covs[name] = cov_cluster(base, c)
        except (np.linalg.LinAlgError, PerfectSeparationError):
            continue  # this clustering leaves the errors inestimable; the others still stand
    if len(codes) == 2 and len(covs) == 2:
        (n1, c1), (n2, c2) = codes.items()
        both = np.unique(c1.astype(np.int64) * (int(c2.max()) + 1) + c2, return_inverse=True)[1]
        try:
            covs[f"{n1}+{n2}"] = covs[n1] + covs[n2] - cov_cluster(base, both)
        except (np.linalg.LinAlgError, PerfectSeparationError):
            pass
    params = np.asarray(base.params)
    out: dict[str, list[ContrastFit]] = {}
    for name, cov in covs.items():
        se = np.sqrt(np.diag(cov))
        z = params / se
        p = 2 * sps.norm.sf(np.abs(z))
        low, high = params - Z95 * se, params + Z95 * se
        out[name] = [ContrastFit(term=col, odds_ratio=float(np.exp(params[i])), ci_low=float(np.exp(low[i])),
                                 ci_high=float(np.exp(high[i])), z=float(z[i]), p=float(p[i]),
                                 answers=int(y.size), clusters=name)
                     for i, col in enumerate(exog.columns) if col != "const"]
    return out


def bayes_mixed_logistic(y: np.ndarray, X: pd.DataFrame, listener, stimulus, seed: int = 0,
                         max_answers: int | None = None) -> tuple[pd.DataFrame, int]:
    """Logistic model with random intercepts for listener and clip (variational Bayes).

    statsmodels' BinomialBayesMixedGLM fitted with fit_vb (L-BFGS-B, which reaches the same
    optimum as the default BFGS several times faster with thousands of random effects,
    and a seeded start so reruns agree); the random-effect design is
    built sparse, so memory grows with answers, not answers x listeners. When
    max_answers is set and exceeded, a fixed-seed random subsample of answers is used.
    Returns the fixed-effect table (posterior mean, sd, odds ratio with 95% interval)
    and the number of answers used.
    """
    from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

    y = np.asarray(y, dtype=float)
    X = X.astype(float).reset_index(drop=True)
    listener = np.asarray(listener)
    stimulus = np.asarray(stimulus)
    if max_answers is not None and y.size > max_answers:
        pick = np.sort(np.random.default_rng(seed).choice(y.size, size=max_answers, replace=False))
        y, X, listener, stimulus = y[pick], X.iloc[pick].reset_index(drop=True), listener[pick], stimulus[pick]
    lc, _ = pd.factorize(pd.Series(listener), sort=True)
    sc, _ = pd.factorize(pd.Series(stimulus), sort=True)
    nl, ns = lc.max() + 1, sc.max() + 1
    rows = np.concatenate([np.arange(y.size), np.arange(y.size)])
    cols = np.concatenate([lc, nl + sc])
    exog_vc = sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(y.size, nl + ns))
    ident = np.concatenate([np.zeros(nl, dtype=int), np.ones(ns, dtype=int)])
    exog = np.column_stack([np.ones(y.size), X.to_numpy()])
    names = ["const", *X.columns]
    model = BinomialBayesMixedGLM(y, exog, exog_vc, ident, vcp_p=1.0, fe_p=2.0,
                                  fep_names=names, vcp_names=["listener", "stimulus"])
    res = model.fit_vb(fit_method="L-BFGS-B", rng=seed)
    mean = np.asarray(res.fe_mean)
    sd = np.asarray(res.fe_sd)
    table = pd.DataFrame({"term": names, "posterior_mean": mean, "posterior_sd": sd,
                          "odds_ratio": np.exp(mean), "ci_low": np.exp(mean - Z95 * sd),
                          "ci_high": np.exp(mean + Z95 * sd)})
    vc = pd.DataFrame({"term": ["sd(listener)", "sd(stimulus)"], "posterior_mean": np.exp(np.asarray(res.vcp_mean)),
                       "posterior_sd": np.nan})
    return pd.concat([table[table["term"] != "const"], vc], ignore_index=True), int(y.size)


def mixed_logistic_laplace(y: np.ndarray, X: pd.DataFrame, listener, stimulus, fe_sd: float = 2.0,
                           tol: float = 1e-6, max_iter: int = 200) -> tuple[pd.DataFrame, int]:
    """Logistic model with random intercepts for listener and clip, fitted on every answer.

    Same model and output as bayes_mixed_logistic (normal prior, sd fe_sd, on the fixed
    effects), estimated the way that scales: the joint posterior mode of fixed and random
    effects by Newton steps, and the two variances by EM with each random effect's
    posterior variance taken from the diagonal of the Hessian (a mean-field Laplace
    approximation). Fixed-effect posterior sds come from the exact inverse-Hessian block.
    Each answer has one listener and one clip, so the listener-listener and clip-clip
    blocks of the Hessian are diagonal: Newton steps eliminate the larger of the two
    (a Schur complement) and factor a dense matrix the size of the fixed effects plus the
    smaller one, built from per-listener/per-clip sums (no answers x effects design
    matrix); designs too large for that dense matrix take a sparse LU of the whole Hessian.
    Returns the fixed-effect table and the number of answers used (all of them).
    """
    y = np.asarray(y, dtype=float)
    X = X.astype(float).reset_index(drop=True)
    lc, _ = pd.factorize(pd.Series(listener), sort=True)  # a categorical's codes, else the values, sorted
    sc, _ = pd.factorize(pd.Series(stimulus), sort=True)
    fixed = np.column_stack([np.ones(y.size), X.to_numpy()])
    fit = _LaplaceBlocks if _LaplaceBlocks.fits(fixed.shape[1], lc, sc) else _LaplaceSparse
    mean, sd, var = _laplace_em(fit(y, fixed, lc, sc), fe_sd, tol, max_iter)
    names = ["const", *X.columns]
    table = pd.DataFrame({"term": names, "posterior_mean": mean, "posterior_sd": sd, "odds_ratio": np.exp(mean),
                          "ci_low": np.exp(mean - Z95 * sd), "ci_high": np.exp(mean + Z95 * sd)})
    vc = pd.DataFrame({"term": ["sd(listener)", "sd(stimulus)"], "posterior_mean": np.sqrt(var),
                       "posterior_sd": np.nan})
    return pd.concat([table[table["term"] != "const"], vc], ignore_index=True), int(y.size)


def _laplace_em(model, fe_sd: float, tol: float, max_iter: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior mode by Newton steps (warm-started, at most 3 per variance update) and the variances by EM;
    returns the fixed effects' means and sds and the two variances."""
    p, nl, ns = model.p, model.nl, model.ns
    var = np.array([1.0, 1.0])
    b = np.zeros(p + nl + ns)
    blocks = (slice(p, p + nl), slice(p + nl, p + nl + ns))
    for _ in range(max_iter):
        prec = np.concatenate([np.full(p, 1.0 / fe_sd ** 2), np.full(nl, 1.0 / var[0]), np.full(ns, 1.0 / var[1])])
        for _ in range(3):  # a warm start from the last variances needs few Newton steps
            step, diag = model.newton_step(b, prec)
            b += step
            if np.abs(step).max() < tol:
                break
        new = np.array([(np.square(b[blk]).sum() + (1.0 / diag[blk]).sum()) / (blk.stop - blk.start)
                        for blk in blocks])
        done = np.all(np.abs(new - var) <= 1e-4 * np.maximum(var, 1e-3)) and np.abs(step).max() < tol
        var = np.maximum(new, 1e-8)
        if done:
            break
    return b[:p], np.sqrt(model.fixed_covariance_diagonal()), var


class _LaplaceBlocks:
    """Newton steps on the block structure: fixed effects (dense), listeners and clips (each diagonal)."""

    MAX_KEPT = 4000  # fixed effects + the smaller random-effect block: a dense matrix of at most 128 MB
    MAX_CROSS = 20_000_000  # listener x clip weight sums: at most 160 MB

    @classmethod
    def fits(cls, p: int, lc: np.ndarray, sc: np.ndarray) -> bool:
        nl, ns = int(lc.max()) + 1, int(sc.max()) + 1
        return p + min(nl, ns) <= cls.MAX_KEPT and nl * ns <= cls.MAX_CROSS

    def __init__(self, y: np.ndarray, fixed: np.ndarray, lc: np.ndarray, sc: np.ndarray):
        self.y, self.fixed = y, fixed
        self.p, self.nl, self.ns = fixed.shape[1], int(lc.max()) + 1, int(sc.max()) + 1
        # eliminate the larger random-effect block; "kept" = the smaller one, "gone" = the larger
        self.swap = self.nl < self.ns
        self.kept, self.gone = (lc, sc) if self.swap else (sc, lc)
        self.nk, self.ng = int(self.kept.max()) + 1, int(self.gone.max()) + 1
        self.pair = self.gone.astype(np.int64) * self.nk + self.kept
        self.schur = None

    def newton_step(self, b: np.ndarray, prec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, nl = self.p, self.nl
        b_f, b_l, b_s = b[:p], b[p:p + nl], b[p + nl:]
        mu = _expit(self.fixed @ b_f + b_l[self._lc()] + b_s[self._sc()])
        w = mu * (1.0 - mu)
        r = self.y - mu
        prec_f, prec_l, prec_s = prec[:p], prec[p:p + nl], prec[p + nl:]
        # gradient and Hessian blocks in the order fixed, kept, gone
        g_f = self.fixed.T @ r - prec_f * b_f
        g_k = np.bincount(self.kept, r, self.nk) - (prec_l * b_l if self.swap else prec_s * b_s)
        g_g = np.bincount(self.gone, r, self.ng) - (prec_s * b_s if self.swap else prec_l * b_l)
        wf = self.fixed * w[:, None]
        h_ff = self.fixed.T @ wf + np.diag(prec_f)
        h_fk = np.stack([np.bincount(self.kept, wf[:, j], self.nk) for j in range(p)])
        h_fg = np.stack([np.bincount(self.gone, wf[:, j], self.ng) for j in range(p)])
        d_k = np.bincount(self.kept, w, self.nk) + (prec_l if self.swap else prec_s)
        d_g = np.bincount(self.gone, w, self.ng) + (prec_s if self.swap else prec_l)
        h_gk = np.bincount(self.pair, w, self.ng * self.nk).reshape(self.ng, self.nk)
        # Schur complement of the diagonal "gone" block: S = H_KK - H_KG diag(1/d_g) H_GK
        h_kg = np.vstack([h_fg, h_gk.T])  # (p + nk) x ng
        scaled = h_kg / d_g
        schur = np.block([[h_ff, h_fk], [h_fk.T, np.diag(d_k)]]) - scaled @ h_kg.T
        factor = cho_factor(schur)
        g_kept = np.concatenate([g_f, g_k])
        x_kept = cho_solve(factor, g_kept - scaled @ g_g)
        x_g = (g_g - h_kg.T @ x_kept) / d_g
        self.schur = factor
        x_f, x_k = x_kept[:p], x_kept[p:]
        diag_f = np.diag(h_ff)
        step = np.concatenate([x_f, x_k, x_g] if self.swap else [x_f, x_g, x_k])
        diag = np.concatenate([diag_f, d_k, d_g] if self.swap else [diag_f, d_g, d_k])
        return step, diag

    def _lc(self) -> np.ndarray:
        return self.kept if self.swap else self.gone

    def _sc(self) -> np.ndarray:
        return self.gone if self.swap else self.kept

    def fixed_covariance_diagonal(self) -> np.ndarray:
        """diag of the inverse Hessian's fixed block = that of the inverse Schur complement (last Newton step)."""
        unit = np.zeros((self.p + self.nk, self.p))
        unit[np.arange(self.p), np.arange(self.p)] = 1.0
        return np.diag(cho_solve(self.schur, unit)[:self.p])


class _LaplaceSparse:
    """Newton steps by a sparse LU of the whole Hessian (one sparse design row per answer)."""

    def __init__(self, y: np.ndarray, fixed: np.ndarray, lc: np.ndarray, sc: np.ndarray):
        n = y.size
        self.y = y
        self.p, self.nl, self.ns = fixed.shape[1], int(lc.max()) + 1, int(sc.max()) + 1
        p, nl, ns = self.p, self.nl, self.ns
        rows = np.repeat(np.arange(n), p + 2)
        cols = np.column_stack([np.tile(np.arange(p), (n, 1)), p + lc, p + nl + sc]).ravel()
        vals = np.column_stack([fixed, np.ones(n), np.ones(n)]).ravel()
        self.Z = sparse.csr_matrix((vals, (rows, cols)), shape=(n, p + nl + ns))
        self.Zt = self.Z.T.tocsr()
        self.hess = None

    def newton_step(self, b: np.ndarray, prec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from scipy.sparse.linalg import splu

        mu = _expit(self.Z @ b)
        grad = self.Zt @ (self.y - mu) - prec * b
        self.hess = (self.Zt @ sparse.diags(mu * (1.0 - mu)) @ self.Z + sparse.diags(prec)).tocsc()
        return splu(self.hess).solve(grad), self.hess.diagonal()

    def fixed_covariance_diagonal(self) -> np.ndarray:
        from scipy.sparse.linalg import splu

        unit = np.zeros((self.p + self.nl + self.ns, self.p))
        unit[np.arange(self.p), np.arange(self.p)] = 1.0
        return np.diag(splu(self.hess).solve(unit)[:self.p])
