"""The study's three main contrasts, for people and for each machine listener apart.

decoder prior vs classifier only, test start vs noise start (both on clips after
maximization) and after vs before maximization (clips started from real utterances).
People answer many clips and a clip is heard by many people, so their contrasts come
from a logistic model with listener-clustered errors (see report._stage_models). A
machine listener answers every clip once, so its contrasts are exact tests on clips
(analysis.exact). Never pooled: each listener group gets its own rows and its own Holm
family. A contrast is "not estimable" only when a cell it needs is missing, and then
the row names the cell. No Django here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import exact, stats

PEOPLE = "people"
METHODS = ("classifier", "decoder")
INITS = ("noise", "test")


@dataclass(frozen=True)
class Contrast:
    """Group A vs group B, within strata of the other factor."""

    name: str
    factor: str
    a: str
    b: str
    stratum: str
    stage_a: str = "after"
    stage_b: str = "after"


CONTRASTS = (
    Contrast("decoder vs classifier", "method", "decoder", "classifier", "init"),
    Contrast("test start vs noise start", "init", "test", "noise", "method"),
    Contrast("after vs before", "stage", "after", "before", "method", "after", "before"),
)
# the model term that estimates each contrast for people, and the model it lives in
PEOPLE_TERMS = {"decoder vs classifier": ("decoder vs classifier (after maximization)", "after"),
                "test start vs noise start": ("test start vs noise start (after maximization)", "after"),
                "after vs before": ("after vs before maximization (test start)", "test start")}
COLUMNS = ["listeners", "contrast", "accuracy_a", "accuracy_b", "answers_a", "answers_b", "odds_ratio", "ci_low",
           "ci_high", "test", "p", "p_holm", "units", "note"]


def listener_groups(kind: pd.Series, listener: pd.Series) -> pd.Series:
    """'people' for every human listener; each machine listener keeps its own name."""
    groups = np.where(np.asarray(kind) == "human", PEOPLE, np.asarray(listener, dtype=object))
    return pd.Series(pd.Categorical(groups), index=kind.index)


def cell_name(method: str, init: str, stage: str) -> str:
    return f"{method}, {init} start, {stage}"


def _cells(contrast: Contrast) -> list[tuple[str, str, str, str]]:
    """(side, method, init, stage) of every cell the contrast compares."""
    out = []
    if contrast.factor == "stage":
        for method in METHODS:
            out += [("a", method, "test", contrast.stage_a), ("b", method, "test", contrast.stage_b)]
        return out
    for other in (INITS if contrast.factor == "method" else METHODS):
        for side, level in (("a", contrast.a), ("b", contrast.b)):
            method, init = (level, other) if contrast.factor == "method" else (other, level)
            out.append((side, method, init, "after"))
    return out


def _select(frame: pd.DataFrame, method: str, init: str, stage: str) -> pd.DataFrame:
    return frame[(frame["method"] == method) & (frame["init"] == init) & (frame["stage"] == stage)]


def _coverage(frame: pd.DataFrame, contrast: Contrast) -> tuple[list[str], bool, dict[str, pd.DataFrame]]:
    """Missing cells, whether any stratum has both sides, and the answers on each side."""
    cells = _cells(contrast)
    present = {(m, i, s): not _select(frame, m, i, s).empty for _, m, i, s in cells}
    missing = [cell_name(m, i, s) for (m, i, s), ok in present.items() if not ok]
    strata_ok = False
    for j in range(0, len(cells), 2):
        (_, ma, ia, sa), (_, mb, ib, sb) = cells[j], cells[j + 1]
        strata_ok |= present[(ma, ia, sa)] and present[(mb, ib, sb)]
    sides = {side: pd.concat([_select(frame, m, i, s) for sd, m, i, s in cells if sd == side]) for side in "ab"}
    return missing, strata_ok, sides


def _row(group: str, contrast: Contrast, sides: dict[str, pd.DataFrame], missing: list[str]) -> dict:
    a, b = sides["a"]["correct"].astype(float), sides["b"]["correct"].astype(float)
    note = f"cell(s) missing: {'; '.join(missing)}" if missing else ""
    return {"listeners": group, "contrast": contrast.name, "accuracy_a": a.mean() if len(a) else np.nan,
            "accuracy_b": b.mean() if len(b) else np.nan, "answers_a": len(a), "answers_b": len(b),
            "odds_ratio": np.nan, "ci_low": np.nan, "ci_high": np.nan, "test": "", "p": np.nan, "units": "",
            "note": note}


def machine_contrast(frame: pd.DataFrame, contrast: Contrast) -> tuple[exact.ExactResult, str]:
    """Exact test of one contrast on one machine listener's answers (one per clip).

    after vs before: exact McNemar on clip pairs (same pair_id and method), pooled over
    methods; the others: exact conditional test stratified by the other factor.
    """
    if contrast.factor == "stage":
        part = frame[(frame["init"] == "test") & frame["stage"].isin([contrast.stage_a, contrast.stage_b])
                     & frame["method"].isin(METHODS) & (frame["pair_id"] != "")]
        right = part.assign(_c=part["correct"].astype(float)).pivot_table(
            index=["method", "pair_id"], columns="stage", values="_c", aggfunc="mean")
        if not {contrast.stage_a, contrast.stage_b} <= set(right.columns):
            return exact.mcnemar_pairs(0, 0), "no matched before/after pairs (pair_id)"
        right = right.dropna() > 0.5
        before, after = right[contrast.stage_b], right[contrast.stage_a]
        return exact.mcnemar_pairs(int((before & ~after).sum()), int((~before & after).sum())), ""
    strata = []
    for other in (INITS if contrast.factor == "method" else METHODS):
        cells = []
        for level in (contrast.a, contrast.b):
            method, init = (level, other) if contrast.factor == "method" else (other, level)
            c = _select(frame, method, init, "after")["correct"].astype(bool)
            cells += [int(c.sum()), len(c)]
        strata.append(exact.Stratum(*cells))
    return exact.stratified_exact(strata), ""


def main_contrasts(test: pd.DataFrame, people_fits: pd.DataFrame | None) -> pd.DataFrame:
    """One row per listener group and contrast: accuracies, odds ratio A vs B, 95% CI, p, Holm p.

    test: scored answers to test clips with a listener_group column. people_fits: the
    listener-clustered GLM rows (contrast, model, odds_ratio, ci_low, ci_high, p) for people.
    """
    rows = []
    for group in group_order(test["listener_group"]):
        frame = test[test["listener_group"] == group]
        for contrast in CONTRASTS:
            missing, ok, sides = _coverage(frame, contrast)
            row = _row(group, contrast, sides, missing)
            if not ok:
                row["note"] = f"No contrast: {row['note']}"
            elif group == PEOPLE:
                term, model = PEOPLE_TERMS[contrast.name]
                fit = (people_fits[(people_fits["contrast"] == term) & (people_fits["model"] == model)
                                   & (people_fits["clusters"] == "listener")]
                       if people_fits is not None and not people_fits.empty else pd.DataFrame())
                if fit.empty and frame["listener"].nunique() < 2:
                    row["note"] = "No contrast: errors clustered by listener need at least two listeners" + (
                        f" ({row['note']})" if row["note"] else "")
                elif fit.empty:
                    row["note"] = "No contrast: the logistic model could not be fitted" + (
                        f" ({row['note']})" if row["note"] else "")
                elif np.isnan(fit.iloc[0]["p"]):
                    why = str(fit.iloc[0].get("note", "") or "the logistic model could not be fitted")
                    row["note"] = f"No contrast: {why}" + (f" ({row['note']})" if row["note"] else "")
                else:
                    f = fit.iloc[0]
                    row.update(odds_ratio=f["odds_ratio"], ci_low=f["ci_low"], ci_high=f["ci_high"], p=f["p"],
                               test="logistic GLM, listener-clustered",
                               units=f"{int(f['answers'])} answers, {frame['listener'].nunique()} listeners")
            else:
                result, why = machine_contrast(frame, contrast)
                row.update(odds_ratio=result.odds_ratio, ci_low=result.ci_low, ci_high=result.ci_high, p=result.p,
                           test=result.test, units=result.units)
                if why:
                    row["note"] = f"No contrast: {why}"
            rows.append(row)
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "p_holm"])
    table["p_holm"] = np.nan
    for _, idx in table.groupby("listeners", sort=False).groups.items():
        table.loc[idx, "p_holm"] = stats.holm(table.loc[idx, "p"].to_numpy(dtype=float))
    return table[COLUMNS]


def group_order(groups: pd.Series) -> list[str]:
    """People first, then machine listeners by name."""
    names = sorted(map(str, pd.unique(groups)))
    return ([PEOPLE] if PEOPLE in names else []) + [n for n in names if n != PEOPLE]


def sentence(row: pd.Series) -> str:
    """One plain-language line per contrast: direction, accuracies, odds ratio, Holm p."""
    if str(row["note"]).startswith("No contrast"):
        return f"{row['contrast']}: {row['note']}."
    if pd.isna(row["odds_ratio"]):
        return (f"{row['contrast']}: no informative answers (every answer alike, or no discordant pairs: "
                f"{row['accuracy_a']:.0%} vs {row['accuracy_b']:.0%}), Holm p {format_p_clause(row['p_holm'])}.")
    a, b = row["contrast"].split(" vs ")
    if row["ci_low"] > 1:
        verdict = f"right more often with {a} than {b}"
    elif row["ci_high"] < 1:
        verdict = f"right less often with {a} than {b}"
    else:
        verdict = "no clear difference"
    return (f"{row['contrast']}: {verdict} (odds ratio {format_ratio(row['odds_ratio'])}, 95% CI {format_ratio(row['ci_low'])}-"
            f"{format_ratio(row['ci_high'])}, Holm p {format_p_clause(row['p_holm'])}).")


def format_ratio(x: float) -> str:
    return "∞" if np.isinf(x) else f"{x:.3g}"


def format_p_clause(p: float) -> str:
    """'< 0.001' or '= 0.028', to follow 'p' in a sentence; 'not computed' for a missing p (never 'nan')."""
    if np.isnan(p):
        return "not computed"
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def format_p(p: float) -> str:
    if np.isnan(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"
