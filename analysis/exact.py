"""Exact conditional tests for listeners who answer every clip once (machine listeners).

A machine listener gives one deterministic answer per clip, so there is no listener
variance to model and no clustering to correct for: the clips are the units. For two
groups of clips (e.g. decoder vs classifier), possibly split into strata (e.g. noise and
test start) whose accuracy may differ, the exact conditional test conditions on each
stratum's margins; the number of right answers in the first group is then a sum of
independent hypergeometric counts, whose distribution is computed exactly by convolution.
With one stratum this is Fisher's exact test and its conditional odds ratio with the
exact interval (as scipy.stats.fisher_exact and scipy.stats.contingency.odds_ratio give);
scipy offers no stratified version, hence this module. Matched pairs (before/after of one
clip) use the exact McNemar test with the Clopper-Pearson interval of the conditional
odds ratio. No Django here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as sps
from scipy.special import logsumexp

# scipy's fisher_exact counts outcomes as "as extreme" within this relative tolerance
_REL_TOL = 1 + 1e-7


@dataclass(frozen=True)
class Stratum:
    """One 2x2 table: right answers and answers in group A and in group B."""

    a_right: int
    a_total: int
    b_right: int
    b_total: int


@dataclass(frozen=True)
class ExactResult:
    """Odds ratio of group A vs B (conditional MLE) with its exact 95% interval and p-value."""

    test: str
    odds_ratio: float
    ci_low: float
    ci_high: float
    p: float
    units: str


def _null_distribution(strata: list[Stratum]) -> tuple[int, np.ndarray]:
    """Support start and log-pmf of T = sum of group-A right answers under no difference."""
    logpmf = np.zeros(1)
    start = 0
    for s in strata:
        right = s.a_right + s.b_right
        lo, hi = max(0, right - s.b_total), min(s.a_total, right)
        x = np.arange(lo, hi + 1)
        pmf = sps.hypergeom.pmf(x, s.a_total + s.b_total, right, s.a_total)
        logpmf = np.log(np.convolve(np.exp(logpmf - logpmf.max()), pmf)) + logpmf.max()
        start += lo
    return start, logpmf


def _tilted(logpmf: np.ndarray, support: np.ndarray, theta: float) -> np.ndarray:
    """pmf of T when the common log odds ratio is theta (noncentral hypergeometric sum)."""
    w = logpmf + theta * support
    return np.exp(w - logsumexp(w))


def stratified_exact(strata: list[Stratum], confidence: float = 0.95) -> ExactResult:
    """Exact conditional test of a common odds ratio of 1 across strata (two-sided).

    p sums the null probabilities of every total no more likely than the observed one
    (Fisher's rule); the odds ratio is the conditional maximum-likelihood estimate and
    its interval inverts the two one-sided exact tests at (1 - confidence) / 2 each.
    """
    strata = [s for s in strata if s.a_total > 0 and s.b_total > 0]
    units = f"{sum(s.a_total for s in strata)} vs {sum(s.b_total for s in strata)} clips"
    test = "Fisher exact" if len(strata) == 1 else f"exact conditional, {len(strata)} strata"
    if not strata:
        return ExactResult(test, float("nan"), float("nan"), float("nan"), float("nan"), units)
    start, logpmf = _null_distribution(strata)
    support = np.arange(start, start + logpmf.size, dtype=float)
    observed = sum(s.a_right for s in strata)
    pmf0 = np.exp(logpmf)
    p = float(min(1.0, pmf0[pmf0 <= pmf0[observed - start] * _REL_TOL].sum()))
    if logpmf.size == 1:
        return ExactResult(test, float("nan"), 0.0, float("inf"), 1.0, units)
    tail = (1.0 - confidence) / 2.0

    def solve(f) -> float:
        return float(np.exp(optimize.brentq(f, -60.0, 60.0, xtol=1e-12)))

    at_min, at_max = observed == support[0], observed == support[-1]
    mle = 0.0 if at_min else float("inf") if at_max else solve(
        lambda t: _tilted(logpmf, support, t) @ support - observed)
    low = 0.0 if at_min else solve(lambda t: _tilted(logpmf, support, t)[support >= observed].sum() - tail)
    high = float("inf") if at_max else solve(lambda t: _tilted(logpmf, support, t)[support <= observed].sum() - tail)
    return ExactResult(test, mle, low, high, p, units)


def mcnemar_pairs(right_before_only: int, right_after_only: int, confidence: float = 0.95) -> ExactResult:
    """Exact McNemar test on matched pairs; odds ratio after vs before = c / b.

    Only discordant pairs carry information: under no change each is a fair coin. The
    interval is the Clopper-Pearson interval of c / (b + c), mapped to odds.
    """
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.proportion import proportion_confint

    b, c = int(right_before_only), int(right_after_only)
    units = f"{b + c} discordant pairs"
    if b + c == 0:
        return ExactResult("McNemar exact", float("nan"), 0.0, float("inf"), 1.0, units)
    p = float(mcnemar(np.array([[0, b], [c, 0]]), exact=True).pvalue)
    lo, hi = proportion_confint(c, b + c, alpha=1.0 - confidence, method="beta")

    def odds(q: float) -> float:
        return float("inf") if q >= 1.0 else float(q / (1.0 - q))

    return ExactResult("McNemar exact", odds(c / (b + c)), odds(lo), odds(hi), p, units)
