"""Turn the long answer table into a report: tables (CSV), figures (PNG + PDF), report.html, run.json.

analyse() computes everything in memory (stage by stage, timed, with a progress bar);
write_report() puts it on disk in a temporary folder and renames it into place only
when complete, so a failed run never leaves a half-written report. No Django here.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from hearsay import atomic
from hearsay.errors import HearsayError

from hearsay.answers import NONE_ALIASES as NONE_ANSWERS
from hearsay.csvsafe import safe_frame
from hearsay.provenance import file_sha256 as sha256_file
from hearsay.provenance import library_versions

from . import contrasts, crowd, explanations, figures, stats
from .table import Exclusion, apply_exclusions, as_categories, normalize, plain

STAGE_ORDER = {"original": 0, "before": 1, "after": 2}
FLOAT_FORMAT = "%.6f"


@dataclass(frozen=True)
class ReportOptions:
    """Everything that changes the report's numbers, recorded in run.json."""

    exclusion: Exclusion = field(default_factory=Exclusion)
    seed: int = 0
    n_boot: int = 2000
    bayes_max_answers: int | None = None
    objective_dir: Path | None = None
    tsne_dir: Path | None = None


@dataclass
class Section:
    """One part of the report: a sentence of guidance, figures first, then tables; text holds the methods."""

    title: str
    text: str
    tables: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    guide: str = ""
    more_figures: list[str] = field(default_factory=list)


@dataclass
class Analysis:
    """The report's content before it touches the disk."""

    info: dict
    options: ReportOptions
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, figures.Later] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    long_tables: dict[str, str] = field(default_factory=dict)  # name -> what its rows are and where they are shown
    wide_figures: set[str] = field(default_factory=set)
    drawing: figures.DrawingAhead | None = None
    summary: list[str] = field(default_factory=list)
    summary_crowd: str = ""


def cell_label(condition: str, stage: str) -> str:
    return condition if stage in ("", condition) else f"{condition} / {stage}"


def _with_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Adds the cell (condition / stage) as a categorical, labelling each distinct pair once."""
    condition, stage = df["condition"].cat, df["stage"].cat
    n_stages = len(stage.categories)
    pairs, rows = np.unique(condition.codes.to_numpy(dtype=np.int64) * n_stages + stage.codes.to_numpy(),
                            return_inverse=True)
    labels = [cell_label(condition.categories[p // n_stages], stage.categories[p % n_stages]) for p in pairs]
    names = sorted(set(labels))
    codes = np.array([names.index(label) for label in labels], dtype=np.int32)
    return df.assign(cell=pd.Categorical.from_codes(codes[rows], categories=names))


def _cell_order(df: pd.DataFrame) -> list[str]:
    cells = plain(df[["cell", "condition", "stage"]].drop_duplicates())
    cells = cells.assign(_s=cells["stage"].map(lambda s: STAGE_ORDER.get(s, 3)))
    return cells.sort_values(["condition", "_s", "cell"])["cell"].tolist()


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


SLUG_MAX = 60


def unique_slugs(names) -> dict[str, str]:
    """A file-name-safe slug per name ([0-9a-z_], at most SLUG_MAX + 9 characters), distinct for distinct names.

    A name whose slug is empty (é, 猫), too long, or shared with another name ('asr:a-b' and 'asr_a.b') gets a
    short hash of the name itself appended, so no figure or table overwrites another's file.
    """
    names = list(dict.fromkeys(str(n) for n in names))
    plain_slugs = {n: _slug(n) for n in names}
    counts = pd.Series(list(plain_slugs.values()), dtype=object).value_counts()
    out = {}
    for n, slug in plain_slugs.items():
        if not slug or len(slug) > SLUG_MAX or counts[slug] > 1:
            digest = hashlib.sha1(n.encode("utf-8")).hexdigest()[:8]
            slug = f"{slug[:SLUG_MAX]}_{digest}" if slug else digest
        out[n] = slug
    return out


def _words(info: dict, df: pd.DataFrame) -> list[str]:
    words = [str(w).lower() for w in info.get("words") or [] if str(w).lower() not in NONE_ANSWERS]
    return words or sorted(map(str, df["word"].unique()))


def analyse(table: pd.DataFrame, info: dict, options: ReportOptions, progress: bool = True,
            draw_ahead: bool = False) -> Analysis:
    """Run every stage of the report on the long table; raises HearsayError on bad input.

    draw_ahead: start drawing each stage's figures (PNG) in a background process while the
    later stages run; write_report then uses them and stops that process.
    """
    start = time.perf_counter()
    df = as_categories(normalize(table))
    result = Analysis(info=dict(info), options=options)
    invalid = list(info.get("invalid_rows") or [])
    if invalid:  # the command prints each line; the report keeps them with the numbers they changed
        result.notes.append(f"Answers left out before the analysis: {'; '.join(invalid[:4])}"
                            + (f"; and {len(invalid) - 4} more lines" if len(invalid) > 4 else "") + ".")
    result.timings["normalize"] = time.perf_counter() - start
    stages: list[tuple[str, Callable]] = [("exclusions", _stage_exclusions)]
    identification = df["correct"].notna().any()
    rating = df["rating"].notna().any()
    if identification:
        stages += [("accuracy", _stage_accuracy), ("confusion", _stage_confusion), ("word accuracy", _stage_words),
                   ("models", _stage_models), ("mixed model", _stage_bayes), ("agreement", _stage_agreement),
                   ("crowd labels", _stage_crowd), ("explanations", explanations.stage)]
    if rating:
        stages += [("ratings", _stage_ratings), ("rating tests", _stage_rating_tests),
                   ("rating agreement", _stage_rating_agreement)]
    if options.objective_dir is not None:
        stages.append(("objective", _stage_objective))
    if options.tsne_dir is not None:
        stages.append(("t-SNE", _stage_tsne))
    stages.append(("summary", _stage_summary))
    state = {"df": df}
    if draw_ahead and figures.DrawingAhead.worthwhile():
        result.drawing = figures.DrawingAhead()
    try:
        for name, stage in tqdm(stages, desc="analyze", unit="stage", disable=not progress):
            start = time.perf_counter()
            stage(result, state)
            if result.drawing is not None:
                result.drawing.submit(result.figures)
            result.timings[name] = time.perf_counter() - start
    except BaseException:
        if result.drawing is not None:
            result.drawing.close()
        raise
    result.notes += figures.font_notes(result.figures)  # labels with characters no installed font draws
    return result


def panel_figure(res: Analysis, name: str, draw: Callable, panels: list, *args, **kwargs) -> str:
    """Describe a small-multiples figure (one panel per listener group or condition); returns its name."""
    res.figures[name] = figures.Later(draw, panels, *args, **kwargs)
    if len(panels) > 1:
        res.wide_figures.add(name)
    return name


def _by_group(frame: pd.DataFrame):
    """(group, rows) pairs with people first, then each machine listener by name."""
    for group in contrasts.group_order(frame["listener_group"]):
        yield group, frame[frame["listener_group"] == group]


def _stage_exclusions(res: Analysis, state: dict) -> None:
    kept, counts, qc = apply_exclusions(state["df"], res.options.exclusion)
    kept = kept.assign(listener_group=contrasts.listener_groups(kept["listener_kind"], kept["listener"]))
    state["kept"] = _with_cells(kept)
    state["words"] = _words(res.info, kept)
    state["test"] = state["kept"][state["kept"]["stimulus_kind"] == "test"]
    if state["test"].empty:
        raise HearsayError("no answers to test clips remain after exclusions")
    res.tables["exclusions"] = counts
    res.tables["listener_qc"] = qc
    figs = []
    gold = qc["gold_accuracy"].dropna()
    if not gold.empty:
        res.figures["gold_accuracy_per_listener"] = figures.Later(
            figures.histogram, gold.to_numpy(), "Gold accuracy per listener (before exclusions)", "gold accuracy")
        figs.append("gold_accuracy_per_listener")
    rule = res.options.exclusion
    res.sections.append(Section("Listeners and exclusions", (
        f"Practice trials are never analysed. Exclusion rule: '{rule.rule}'"
        + (f" (gold accuracy threshold {rule.min_gold_accuracy:g})" if rule.rule == "gold" else "")
        + ". 'none' keeps every listener; 'traps' drops listeners whose verdict says not fit to analyse or who "
        "failed any trap clip; 'gold' also drops listeners whose accuracy on gold clips (clean natural words) is "
        "below the threshold; 'paper' applies only the original study's rule: a listener who rated any "
        "classifier-from-noise clip Good or Excellent is dropped entirely. A listener can match several reasons, "
        "so the reason rows may add up to more than the difference between before and after. Machine listeners "
        "are never judged by these human rules" + ("." if rule.include_machines else
                                                    " and are left out unless --include-machines is given.")),
        ["exclusions", "listener_qc"], figs))


def _accuracy_table(frame: pd.DataFrame, keys: list[str], chance: float) -> pd.DataFrame:
    scored = frame.assign(_c=frame["correct"].astype(float))
    grouped = scored.groupby(keys, sort=True)
    out = grouped.agg(answers=("_c", "size"), correct=("_c", "sum"), listeners=("listener", "nunique"),
                      stimuli=("stimulus", "nunique")).reset_index()
    out["correct"] = out["correct"].astype(int)
    out["accuracy"] = out["correct"] / out["answers"]
    out["ci_low"], out["ci_high"] = stats.wilson_arrays(out["correct"], out["answers"])
    out["chance"] = chance
    out["chance_corrected"] = stats.chance_corrected(out["accuracy"], chance)
    return plain(out)


def _stage_accuracy(res: Analysis, state: dict) -> None:
    test = state["test"][state["test"]["correct"].notna()]
    chance = 1.0 / (len(state["words"]) + 1)
    state["chance"] = chance
    acc = _accuracy_table(test, ["listener_kind", "listener_group", "cell", "condition", "method", "init", "stage"],
                          chance)
    acc["p_vs_chance"] = [stats.binomial_vs_chance(k, n, chance) for k, n in zip(acc["correct"], acc["answers"])]
    acc["p_holm"] = acc.groupby("listener_group")["p_vs_chance"].transform(lambda p: stats.holm(p.to_numpy()))
    res.tables["accuracy_by_condition"] = acc
    qc = state["kept"][state["kept"]["stimulus_kind"].isin(["gold", "trap"]) & state["kept"]["correct"].notna()]
    tables = ["accuracy_by_condition"]
    if not qc.empty:
        res.tables["accuracy_gold_trap"] = _accuracy_table(qc, ["listener_group", "stimulus_kind"], chance)
        tables.append("accuracy_gold_trap")
    order = {c: i for i, c in enumerate(_cell_order(state["test"]))}
    panels = [(kind, part.sort_values("cell", key=lambda s: s.map(order))[["cell", "accuracy", "ci_low", "ci_high",
                                                                            "chance"]])
              for kind, part in _by_group(acc)]
    figs = [panel_figure(res, "accuracy_by_condition", figures.interval_bar_panels, panels, "accuracy", "ci_low",
                          "ci_high", "cell", "accuracy",
                          "Identification accuracy per listener group, 95% Wilson intervals", (0, 1),
                          reference="chance")]
    res.sections.append(Section("Identification accuracy", (
        f"Accuracy is the share of answers naming the intended word; 'can't tell' counts as wrong. Chance is "
        f"1 / (number of answer options including 'can't tell') = 1/{len(state['words']) + 1} = {chance:.4f}. "
        "Chance-corrected accuracy rescales accuracy so that chance is 0 and perfect is 1. Intervals are 95% Wilson "
        "score intervals, which stay inside [0, 1] and keep their coverage for small counts. p_vs_chance is a "
        "one-sided exact binomial test that accuracy exceeds chance; it treats answers as independent, so the "
        "clustered models below are the listener-aware check. p_holm is Holm-corrected over the rows of each "
        "listener group (people, or one machine listener). Gold and "
        "trap clips are quality checks, listed separately and never mixed into the conditions."), tables, figs))


def other_label(words: list[str]) -> str:
    """The name of the bucket for answers outside the word list: 'other', unless a word of the study is itself
    'other' (then '(other)', and so on), so the bucket never merges with a word's own answers."""
    label = "other"
    while label in words:
        label = f"({label})"
    return label


def _confusion_matrix(counts: pd.DataFrame, words: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    extra = sorted(set(counts.columns) - set(words) - {"none"})
    other = other_label(words)
    cols = list(words) + ([other] if extra else []) + ["none"]
    if extra:
        counts = counts.assign(**{other: counts[extra].sum(axis=1)}).drop(columns=extra)
    counts = counts.reindex(index=words, columns=cols, fill_value=0).fillna(0)
    totals = counts.sum(axis=1)
    share = counts.div(totals.where(totals > 0), axis=0)
    return counts.astype(int), share


def _stage_confusion(res: Analysis, state: dict) -> None:
    test = state["test"][state["test"]["correct"].notna()]
    words = state["words"]
    keys = ["listener_group", "cell", "word", "answer"]
    grouped = plain(test.groupby(keys, sort=True).size().rename("n").reset_index()).set_index(keys)["n"]
    long_rows, figs, shares = [], [], {}
    order = _cell_order(test)
    present = set(grouped.index.droplevel([2, 3]))
    slugs = unique_slugs(contrasts.group_order(test["listener_group"]))
    for kind in contrasts.group_order(test["listener_group"]):
        panels = []
        for cell in order:
            if (kind, cell) not in present:
                continue
            counts = grouped.loc[(kind, cell)].unstack("answer", fill_value=0)
            count_m, share_m = _confusion_matrix(counts, words)
            shares[(kind, cell)] = share_m
            stacked = pd.DataFrame({"count": count_m.stack(), "share": share_m.stack()}).reset_index()
            stacked.columns = ["word", "answer", "count", "share"]
            long_rows.append(stacked.assign(listener_group=kind, cell=cell))
            panels.append((cell, share_m))
        if panels:
            figs.append(panel_figure(res, f"confusion_{slugs[kind]}", figures.confusion_panels, panels,
                                      f"Intended x heard per condition ({kind}); rows sum to 1"))
    confusion = pd.concat(long_rows, ignore_index=True)
    res.tables["confusion"] = confusion[["listener_group", "cell", "word", "answer", "count", "share"]]
    res.long_tables["confusion"] = "one per combination, drawn in this section's figures"
    attrs = test[["cell", "method", "init", "stage"]].drop_duplicates().set_index("cell")
    diff_figs, diff_rows, diff_panels = [], [], []
    for (kind, a), (kind_b, b) in _single_factor_pairs(shares.keys(), attrs):
        if kind != kind_b or kind != contrasts.PEOPLE:  # a machine's one answer per clip makes differences noise
            continue
        delta = shares[(kind, a)].fillna(0) - shares[(kind, b)].fillna(0)
        diff_panels.append((f"{a} minus {b}", delta))
        diag = np.diag(delta.reindex(columns=delta.index).to_numpy())
        diff_rows.append({"listener_group": kind, "a": a, "b": b, "mean_diagonal_difference": float(np.mean(diag)),
                          "none_share_difference": float(delta["none"].mean())})
    tables = ["confusion"]
    if diff_rows:
        res.tables["confusion_differences"] = pd.DataFrame(diff_rows)
        tables.append("confusion_differences")
        diff_figs.append(panel_figure(res, "confusion_differences", figures.confusion_difference_panels,
                                       diff_panels, f"Pairs of conditions that differ in one factor "
                                                    f"({contrasts.PEOPLE}): first minus second"))
    res.sections.append(Section("Confusions", (
        "Each heatmap crosses the intended word (rows) with the answer (columns), one panel per condition and one "
        "figure per listener group; the last column is 'can't tell'"
        " and an 'other' column appears only if free-text answers fell outside the word list. Rows are normalized "
        "to sum to 1 and every heatmap uses the same colour scale [0, 1]. Difference heatmaps subtract two "
        "conditions that differ in exactly one factor (method, start or stage), for people, on a fixed diverging scale "
        "[-1, 1]: red means the first condition drew more of those answers."), tables,
        diff_figs or figs[:1], guide="Where do answers go when they are wrong? Difference heatmaps first (red: the "
                                     "first condition drew more of those answers); every condition's full matrix "
                                     "is folded below.", more_figures=figs[1:] if not diff_figs else figs))


def _single_factor_pairs(keys, attrs: pd.DataFrame):
    keys = list(keys)
    for i, (kind_a, a) in enumerate(keys):
        for kind_b, b in keys[i + 1:]:
            if a not in attrs.index or b not in attrs.index:
                continue
            diff = [f for f in ("method", "init", "stage") if attrs.at[a, f] != attrs.at[b, f]]
            if len(diff) == 1 and "natural" not in (attrs.at[a, "method"], attrs.at[b, "method"]):
                yield (kind_a, a), (kind_b, b)


def _stage_words(res: Analysis, state: dict) -> None:
    test = state["test"][state["test"]["correct"].notna()]
    table = _accuracy_table(test, ["listener_group", "cell", "word"], state["chance"])
    res.tables["word_accuracy"] = table
    res.long_tables["word_accuracy"] = "one per combination, drawn in this section's figures"
    order = _cell_order(test)
    panels = []
    for kind, part in _by_group(table):
        matrix = part.pivot(index="word", columns="cell", values="accuracy")
        panels.append((kind, matrix.reindex(index=state["words"], columns=[c for c in order if c in matrix.columns])))
    figs = [panel_figure(res, "word_accuracy", figures.word_accuracy_panels, panels,
                          "Accuracy per word and condition, per listener group")]
    res.sections.append(Section("Accuracy per word", (
        "Accuracy for every intended word in every condition, with 95% Wilson intervals in the table; blank "
        "cells in the figure had no answers."), ["word_accuracy"], figs))


def _contrast_designs(test: pd.DataFrame) -> list[tuple[str, pd.DataFrame, dict[str, str]]]:
    """The paper's main contrasts as two logistic models on 0/1 predictors."""
    designs = []
    after = test[(test["stage"] == "after") & test["method"].isin(["classifier", "decoder"])]
    cols = {}
    if after["method"].nunique() == 2:
        cols["decoder"] = "decoder vs classifier (after maximization)"
    if after["init"].isin(["noise", "test"]).all() and after["init"].nunique() == 2:
        cols["test_start"] = "test start vs noise start (after maximization)"
    if cols:
        X = pd.DataFrame({"decoder": (after["method"] == "decoder"), "test_start": (after["init"] == "test")})
        designs.append(("after", after, X[list(cols)], cols))
    paired = test[(test["init"] == "test") & test["stage"].isin(["before", "after"])
                  & test["method"].isin(["classifier", "decoder"])]
    if paired["stage"].nunique() == 2:
        X = pd.DataFrame({"after": paired["stage"] == "after", "decoder": paired["method"] == "decoder"})
        use = ["after"] + (["decoder"] if paired["method"].nunique() == 2 else [])
        designs.append(("test start", paired, X[use], {"after": "after vs before maximization (test start)"}))
    return designs


def _mcnemar(test: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for method in sorted(test["method"].unique()):
        part = test[(test["method"] == method) & (test["init"] == "test") & test["stage"].isin(["before", "after"])
                    & (test["pair_id"] != "")]
        if part["stage"].nunique() < 2:
            continue
        scored = part.assign(_c=part["correct"].astype(float))
        by_listener = scored.pivot_table(index=["listener", "pair_id"], columns="stage", values="_c", aggfunc="mean")
        by_listener = by_listener.dropna()
        majority = scored.groupby(["pair_id", "stage"])["_c"].mean().unstack("stage").dropna()
        majority = majority[(majority["before"] != 0.5) & (majority["after"] != 0.5)] > 0.5
        for matching, pairs in (("same listener heard both", by_listener >= 0.5),
                                ("per-pair majority (ties dropped)", majority)):
            if pairs.empty:
                continue
            before, after = pairs["before"].astype(bool), pairs["after"].astype(bool)
            b, c = int((before & ~after).sum()), int((~before & after).sum())
            rows.append({"method": method, "matching": matching, "pairs": len(pairs),
                         "both_right": int((before & after).sum()), "right_before_only": b,
                         "right_after_only": c, "both_wrong": int((~before & ~after).sum()),
                         "p_mcnemar_exact": stats.mcnemar_exact(b, c),
                         "note": "" if b + c else "no discordant pairs: nothing to test, exact p = 1 by definition"})
    table = pd.DataFrame(rows)
    if not table.empty:
        has_listener = table.groupby("method")["matching"].transform(lambda m: (m == "same listener heard both").any())
        table["primary"] = (table["matching"] == "same listener heard both") | ~has_listener
    return table


def _not_estimable(frame: pd.DataFrame, y: np.ndarray, X: pd.DataFrame) -> str:
    """Why the logistic model of these answers has no finite estimate, in words ('' when it has one)."""
    if y.size and np.all(y == 1):
        return "not estimable: every answer was right, so there is no difference to model"
    if y.size and np.all(y == 0):
        return "not estimable: every answer was wrong, so there is no difference to model"
    if not stats.separated(y, X):
        return ""
    right = frame.assign(_c=y).groupby(["method", "init", "stage"], observed=True)["_c"].mean()
    alike = [f"{contrasts.cell_name(m, i, st)} all {'right' if v == 1 else 'wrong'}"
             for (m, i, st), v in right.items() if v in (0.0, 1.0)]
    return ("not estimable: the conditions predict every answer in some cells exactly (separation: "
            + ("; ".join(alike) if alike else "no cell alike, but a combination of them")
            + "), so the logistic model has no finite estimate and gives no interval or p-value; see the "
            "accuracies, and the mixed model below, whose prior keeps its estimates finite")


def _stage_models(res: Analysis, state: dict) -> None:
    test = state["test"][(state["test"]["listener_group"] == contrasts.PEOPLE) & state["test"]["correct"].notna()]
    rows = []
    for model, frame, X, names in _contrast_designs(test):
        y = frame["correct"].astype(float).to_numpy()
        why = _not_estimable(frame, y, X)
        fits = {} if why else stats.logistic_cluster(y, X.reset_index(drop=True),
                                                     {"listener": frame["listener"], "stimulus": frame["stimulus"]})
        for clusters, terms in fits.items():
            for fit in terms:
                if fit.term in names:
                    rows.append({"contrast": names[fit.term], "model": model, "clusters": clusters,
                                 "odds_ratio": fit.odds_ratio, "ci_low": fit.ci_low, "ci_high": fit.ci_high,
                                 "z": fit.z, "p": fit.p, "answers": fit.answers, "note": ""})
        if why:  # one row per contrast saying why, instead of an arbitrary huge odds ratio and a tiny p
            for term, contrast in names.items():
                rows.append({"contrast": contrast, "model": model, "clusters": "listener", "odds_ratio": np.nan,
                             "ci_low": np.nan, "ci_high": np.nan, "z": np.nan, "p": np.nan, "answers": len(y),
                             "note": why})
    mcn = _mcnemar(test)
    glm = pd.DataFrame(rows, columns=["contrast", "model", "clusters", "odds_ratio", "ci_low", "ci_high", "z", "p",
                                      "answers", "note"])
    primary = mcn.index[mcn["primary"]] if not mcn.empty else pd.Index([])
    mcn_p = mcn.loc[primary, "p_mcnemar_exact"].to_numpy(dtype=float) if len(primary) else np.array([])
    glm["p_holm"] = np.nan
    if not mcn.empty:
        mcn["p_holm"] = np.nan
        mcn.loc[primary, "p_holm"] = stats.holm(mcn_p)
    for clusters, idx in glm.groupby("clusters").groups.items():
        adjusted = stats.holm(np.concatenate([glm.loc[idx, "p"].to_numpy(dtype=float), mcn_p]))
        glm.loc[idx, "p_holm"] = adjusted[: len(idx)]
        if clusters == "listener" and len(primary):
            mcn.loc[primary, "p_holm"] = adjusted[len(idx):]
    res.tables["contrasts_glm"] = glm
    tables = ["contrasts_glm"]
    if not mcn.empty:
        res.tables["before_after_mcnemar"] = mcn
        tables.append("before_after_mcnemar")
    res.sections.append(Section("Main contrasts", (
        "Human answers to test clips only. A logistic regression (binomial GLM, logit link) predicts whether an "
        "answer is right. Model 'after' uses clips after maximization and has two 0/1 predictors, decoder (vs "
        "classifier) and test start (vs noise start), each adjusted for the other; model 'test start' uses "
        "clips started from real utterances and compares after vs before, adjusted for method. Odds ratios above "
        "1 favour the first-named level. Because one listener gives many answers and one clip is heard by many "
        "listeners, answers are not independent: standard errors are cluster-robust by listener (the primary "
        "analysis), checked by clip and by two-way listener x clip clustering. Before vs after is also tested by "
        "the exact McNemar test on pairs with matched outcomes: when the same listener heard both clips of a pair "
        "the pair is (listener, pair) and that matching is primary; otherwise each pair's majority answer (right if "
        "more than half right, ties dropped) is compared. The Holm correction runs over the family of the model "
        "contrasts plus the primary McNemar tests, separately for each clustering."), tables, []))


def _stage_summary(res: Analysis, state: dict) -> None:
    """The study's answer first: main contrasts per listener group, one chart across groups, objective rates."""
    test = state["test"]
    tables, figs, lines = [], [], []
    scored = test[test["correct"].notna()]
    if not scored.empty:
        table = contrasts.main_contrasts(scored, res.tables.get("contrasts_glm"))
        res.tables["main_contrasts"] = table
        tables.append("main_contrasts")
        for group, part in table.groupby("listeners", sort=False):
            lines.append(f"{_group_title(group, scored)}: "
                         + " ".join(contrasts.sentence(r) for _, r in part.iterrows()))
        acc = res.tables["accuracy_by_condition"]
        figs.append(_across_groups_figure(res, acc, "accuracy", "accuracy", "summary_accuracy",
                                          "Accuracy by condition, each listener group apart (95% Wilson intervals)",
                                          (0, 1), state.get("chance")))
    rated = res.tables.get("rating_by_condition")
    if rated is not None and not rated.empty:
        figs.append(_across_groups_figure(res, rated, "mean", "mean rating (0-4)", "summary_rating",
                                          "Mean rating by condition, each listener group apart (95% bootstrap)",
                                          (0, 4), None))
        tests = res.tables.get("rating_tests")
        if tests is not None and not tests.empty:
            for group, part in _by_group(tests):
                who = "People" if group == contrasts.PEOPLE else f"Machine listener {group}"
                lines.append(f"{who}, ratings: " + " ".join(
                    f"{r['contrast']}: mean {r['mean_a']:.2f} vs {r['mean_b']:.2f} ("
                    + (r["note"] if r["note"] else f"Holm p {contrasts.format_p_clause(r['p_holm'])}") + ")."
                    for _, r in part.iterrows()))
    if res.summary_crowd:
        lines.append(res.summary_crowd)
    headline = _objective_headline(res.tables.get("objective_summary"))
    if headline is not None:
        res.tables["objective_headline"] = headline
        tables.append("objective_headline")
        rates = "; ".join(f"{r.method} {r.b_rate:.1%} (95% CI {r.ci_low:.1%}-{r.ci_high:.1%}, n = {r.samples})"
                          for r in headline.itertuples())
        lines.append(f"Objective experiment, judged by the independent classifier B: share of maximized samples "
                     f"B assigns to their target word: {rates}.")
    res.summary = lines
    res.sections.insert(0, Section("Summary", (
        "Each listener group is analysed apart and never pooled: people (all human listeners) with a logistic model "
        "whose errors are clustered by listener, and each machine listener by name with exact tests on clips, "
        "since a machine answers every clip once: McNemar's exact test on before/after pairs of the same clip, "
        "and an exact conditional (Fisher-type) test, stratified by the other factor, for decoder vs classifier "
        "and test vs noise start. Odds ratios above 1 favour the first-named level; Holm's correction runs over "
        "the three contrasts of each group. A contrast is missing when a cell it needs has no answers or its model "
        "cannot be estimated (people's errors clustered by listener need two listeners at least), and the row "
        "says why."), tables, figs,
        guide="What the study asks: did the decoder prior, the start and maximization itself make words more "
              "recognisable, to people and to each machine listener?"))


def _group_title(group: str, test: pd.DataFrame) -> str:
    part = test[test["listener_group"] == group]
    if group == contrasts.PEOPLE:
        return f"People ({part['listener'].nunique()} listeners, {len(part):,} answers)"
    return f"Machine listener {group} ({len(part):,} answers)"


def _across_groups_figure(res: Analysis, table: pd.DataFrame, value: str, ylabel: str, name: str, title: str,
                          ylim: tuple[float, float], chance: float | None) -> str:
    order = _cell_order(table)
    groups = sorted(set(table["listener_group"]), key=lambda g: (g != contrasts.PEOPLE, g))
    pivot = {col: table.pivot_table(index="cell", columns="listener_group", values=col, aggfunc="first")
             .reindex(index=order, columns=groups) for col in (value, "ci_low", "ci_high")}
    res.figures[name] = figures.Later(figures.grouped_interval_bars, pivot[value], pivot["ci_low"], pivot["ci_high"],
                                      ylabel, title, ylim, chance)
    return name


def _objective_headline(summary: pd.DataFrame | None) -> pd.DataFrame | None:
    """Per method: how often classifier B picks the target word, pooled over words, with a Wilson interval."""
    need = {"method", "word", "n", "failed", "b_picks_target"}
    if summary is None or not need <= set(summary.columns):
        return None
    if "pooled" in summary.columns:  # a class may itself be named "ALL"
        pooled = summary[summary["pooled"].astype(str).str.strip().str.lower() == "true"]
    else:  # a summary written before the column existed
        pooled = summary[summary["word"].astype(str) == "ALL"]
    if pooled.empty:
        return None
    samples = (pd.to_numeric(pooled["n"]) - pd.to_numeric(pooled["failed"])).astype(int).to_numpy()
    rate = pd.to_numeric(pooled["b_picks_target"]).to_numpy(dtype=float)
    hits = np.round(rate * samples)
    lo, hi = stats.wilson_arrays(hits, samples)
    out = pd.DataFrame({"method": pooled["method"].to_numpy(), "samples": samples, "b_rate": rate, "ci_low": lo,
                        "ci_high": hi})
    if "a_picks_target" in pooled.columns:
        out["a_rate"] = pd.to_numeric(pooled["a_picks_target"]).to_numpy(dtype=float)
    return out


def _stage_bayes(res: Analysis, state: dict) -> None:
    test = state["test"][(state["test"]["listener_group"] == contrasts.PEOPLE) & state["test"]["correct"].notna()]
    parts = []
    cap = res.options.bayes_max_answers
    skipped = []
    for model, frame, X, names in _contrast_designs(test):
        if frame["listener"].nunique() < 2 or frame["stimulus"].nunique() < 2:
            continue
        if frame["correct"].astype(bool).nunique() < 2:  # its estimate would be the prior's, not the data's
            skipped.append(f"model '{model}' is not fitted: every answer was "
                           f"{'right' if frame['correct'].astype(bool).iloc[0] else 'wrong'}")
            continue
        if cap is not None and len(frame) > cap:
            pick = np.sort(np.random.default_rng(res.options.seed).choice(len(frame), size=cap, replace=False))
            frame, X = frame.iloc[pick], X.iloc[pick]
            res.notes.append(f"Mixed model '{model}' was fitted on a fixed-seed random subsample of {cap:,} answers "
                             "(--mixed-max-answers).")
        table, used = stats.mixed_logistic_laplace(frame["correct"].astype(float).to_numpy(), X, frame["listener"],
                                                   frame["stimulus"])
        table = table[table["term"].isin(names) | table["term"].str.startswith("sd(")].copy()
        table["term"] = table["term"].map(lambda t: names.get(t, t))
        parts.append(table.assign(model=model, answers_used=used))
    if skipped and not parts:
        res.notes.append("Mixed model: " + "; ".join(skipped) + ".")
    if parts:
        res.tables["contrasts_mixed_bayes"] = pd.concat(parts, ignore_index=True)
        res.sections.append(Section("Sensitivity check: mixed model", (
            "The same contrasts from a logistic model with random intercepts for listener and for clip, fitted on "
            "every answer: normal prior (sd 2) on the fixed effects, the joint posterior mode of fixed and random "
            "effects by Newton steps on a sparse design, the two variances by EM with a mean-field Laplace "
            "approximation. Intervals are posterior mode ± 1.96 posterior sd (from the inverse Hessian) on the "
            "log-odds scale, shown as odds ratios; the sd rows give the estimated spread of listener and clip "
            "intercepts. If it agrees with the clustered GLM the conclusions do not hinge on how clustering is "
            "handled." + "".join(f" The {why}." for why in skipped)), ["contrasts_mixed_bayes"], [],
            guide="Do the main contrasts hold when listeners and clips get their own random intercepts?"))


def _stage_agreement(res: Analysis, state: dict) -> None:
    test = state["test"][state["test"]["correct"].notna()]
    cats = state["words"] + ["none"]
    other = other_label(state["words"])
    rows = []
    for (kind, cell), part in test.groupby(["listener_group", "cell"], sort=True):
        answers = np.where(part["answer"].isin(cats), part["answer"].to_numpy(dtype=object), other)
        rows.append({"listener_group": kind, "cell": cell,
                     **stats.agreement(part["stimulus"], answers, cats + [other], "nominal")})
    res.tables["agreement"] = pd.DataFrame(rows)
    res.sections.append(Section("Agreement between listeners", (
        "Do listeners give the same answer to the same clip? Fleiss' kappa is used when every clip in a condition "
        "has the same number of answers, Krippendorff's alpha (nominal) otherwise; both are 0 at chance-level "
        "agreement and 1 when all listeners agree. Clips with a single answer carry no information on agreement."),
        ["agreement"], []))


GLAD_MAX_ANSWERS = 2_000


def _stage_crowd(res: Analysis, state: dict) -> None:
    test = state["test"]
    people = test[(test["listener_group"] == contrasts.PEOPLE) & test["correct"].notna()]
    if people.empty or people["listener"].nunique() < 2:
        return
    glad = len(people) <= GLAD_MAX_ANSWERS
    labels = crowd.aggregate(people[["listener", "stimulus", "answer"]], glad=glad)
    methods = ["majority_vote", "dawid_skene"] + (["glad"] if glad else [])
    intended = plain(people[["stimulus", "cell", "word"]].drop_duplicates("stimulus"))
    clips = intended.merge(labels.clips, on="stimulus")
    res.tables["crowd_labels"] = clips
    res.long_tables["crowd_labels"] = "one per clip, summarized by condition in crowd_label_vs_intended"
    order = {c: i for i, c in enumerate(_cell_order(test))}
    by_cell = crowd.disagreement_by_condition(labels.clips, intended, methods)
    res.tables["crowd_label_vs_intended"] = by_cell.sort_values("cell", key=lambda c: c.map(order))
    qc = res.tables["listener_qc"].drop(columns=[c for c in labels.skills.columns if c != "listener"], errors="ignore")
    res.tables["listener_qc"] = qc.merge(labels.skills, on="listener", how="left")
    rho = crowd.skill_vs_gold(labels.skills, res.tables["listener_qc"])
    figs = []
    both = res.tables["listener_qc"].dropna(subset=["skill_dawid_skene"])
    if both["gold_accuracy"].notna().any():
        res.figures["crowd_skill_vs_gold"] = figures.Later(
            figures.scatter, both["gold_accuracy"].to_numpy(dtype=float),
            both["skill_dawid_skene"].to_numpy(dtype=float), "gold accuracy",
            "Dawid-Skene skill (from test answers)",
            "Listener skill estimated without gold labels vs accuracy on gold clips")
        figs.append("crowd_skill_vs_gold")
    worst = by_cell.sort_values("dawid_skene_is_intended").iloc[0]
    res.summary_crowd = (f"Crowd labels (people, Dawid-Skene): the aggregated label is the intended word for "
                         f"{(clips['dawid_skene'] == clips['word']).mean():.0%} of clips; least often in "
                         f"{worst['cell']} ({worst['dawid_skene_is_intended']:.0%} of {int(worst['clips'])} clips).")
    res.sections.append(Section("Crowd labels", (
        "People's answers to test clips aggregated per clip by majority vote (ties to the alphabetically first "
        f"answer), by Dawid-Skene (crowd-kit, EM over per-listener confusion matrices, {crowd.DS_ITERATIONS} "
        "iterations)" + (f" and by GLAD (crowd-kit; listener ability and clip difficulty, {crowd.GLAD_ITERATIONS} "
                          "iterations)" if glad else
                          f"; GLAD is skipped above {GLAD_MAX_ANSWERS:,} answers, where its gradient fit takes "
                          "minutes") + ". None of them sees the intended word or gold labels, so a listener's "
        "estimated skill (Dawid-Skene: probability of giving the true label; GLAD: ability alpha) is an "
        "independent check on gold accuracy; both appear in the listener QC table. "
        + ("" if np.isnan(rho) else f"Spearman correlation of Dawid-Skene skill with gold accuracy: {rho:.2f}. ")
        + "The per-condition table gives, for each aggregation, the share of clips whose label is the intended "
        "word and how many clips differ; crowd_labels.csv lists every clip."),
        ["crowd_label_vs_intended", "crowd_labels"], figs,
        guide="Which word did the crowd, weighted by each listener's estimated skill, hear in each clip?"))


def _ratings(state: dict) -> pd.DataFrame:
    return state["test"][state["test"]["rating"].notna()]


def _stage_ratings(res: Analysis, state: dict) -> None:
    rated = _ratings(state)
    if rated.empty:
        return
    rows = []
    for (kind, cell, cond, method, init, stage), part in rated.groupby(
            ["listener_group", "cell", "condition", "method", "init", "stage"], sort=True):
        mean, lo, hi = stats.cluster_bootstrap_mean(part["rating"].to_numpy(), part["listener"].to_numpy(),
                                                    res.options.n_boot, res.options.seed)
        hist = np.bincount(part["rating"].round().astype(int), minlength=5)
        rows.append({"listener_group": kind, "cell": cell, "condition": cond, "method": method, "init": init,
                     "stage": stage, "answers": len(part), "listeners": part["listener"].nunique(),
                     "stimuli": part["stimulus"].nunique(), "mean": mean, "ci_low": lo, "ci_high": hi,
                     "sd": float(part["rating"].std(ddof=1)) if len(part) > 1 else float("nan"),
                     **{f"n_{i}": int(hist[i]) for i in range(5)}})
    table = pd.DataFrame(rows)
    res.tables["rating_by_condition"] = table
    order = {c: i for i, c in enumerate(_cell_order(rated))}
    panels = [(kind, part.sort_values("cell", key=lambda s: s.map(order))[["cell", "mean", "ci_low", "ci_high"]])
              for kind, part in _by_group(table)]
    figs = [panel_figure(res, "rating_by_condition", figures.interval_bar_panels, panels, "mean", "ci_low",
                          "ci_high", "cell", "mean rating (0-4)",
                          "Mean rating per listener group, 95% listener-bootstrap intervals", (0, 4))]
    words = plain(rated.groupby(["listener_group", "cell", "method", "stage", "word"], sort=True)["rating"].agg(
        answers="size", mean="mean").reset_index())
    res.tables["rating_by_word"] = words
    res.long_tables["rating_by_word"] = "one per combination, drawn in this section's figures"
    panels = []
    for kind, part in _by_group(words[words["stage"].isin(["original", "after"])]):
        part = part.assign(group=np.where(part["stage"] == "original", "original", part["method"]))
        weighted = part.assign(_s=part["mean"] * part["answers"]).groupby(["word", "group"])[["_s", "answers"]].sum()
        sums = (weighted["_s"] / weighted["answers"]).unstack("group")
        cols = [c for c in ["original", "classifier", "decoder"] if c in sums.columns]
        cols += sorted(c for c in sums.columns if c not in cols)
        panels.append((kind, sums.reindex(index=state["words"], columns=cols)))
    if panels:
        figs.append(panel_figure(res, "rating_by_word", figures.grouped_bar_panels, panels, "mean rating (0-4)",
                                  "Mean rating per word, per listener group", (0, 4)))
    histograms = {}  # per listener group: noise-start then test-start conditions, a row of panels each
    for label, init in (("1 vs 3 (noise start)", "noise"), ("2 vs 4 (test start)", "test")):
        for kind, part in _by_group(rated[(rated["init"] == init) & (rated["stage"] == "after")
                                          & rated["method"].isin(["classifier", "decoder"])]):
            counts = pd.DataFrame({cell: np.bincount(p["rating"].round().astype(int), minlength=5)
                                   for cell, p in part.groupby("cell", sort=True)})
            histograms.setdefault(kind, []).append((f"conditions {label} ({kind})", counts))
    panels = [panel for kind in contrasts.group_order(pd.Series(list(histograms), dtype=object))
              for panel in histograms[kind]]
    if panels:
        figs.append(panel_figure(res, "rating_histograms", figures.rating_histogram_panels, panels,
                                  "Ratings: share of answers at each rating"))
    res.sections.append(Section("Ratings", (
        "Ratings run from Bad = 0 to Excellent = 4. Means come with 95% percentile intervals from a bootstrap "
        f"that resamples whole listeners ({res.options.n_boot} resamples, seed {res.options.seed}), so one "
        "listener's correlated ratings stay together. Per-word bars compare the original recordings with the "
        "clips after classifier and decoder maximization; histograms compare condition 1 with 3 and 2 with 4."),
        ["rating_by_condition", "rating_by_word"], figs))


def _rating_contrasts(rated: pd.DataFrame):
    def sel(method=None, init=None, stage=None):
        mask = pd.Series(True, index=rated.index)
        for col, val in (("method", method), ("init", init), ("stage", stage)):
            if val is not None:
                mask &= rated[col] == val
        return rated[mask]

    for init in ("noise", "test"):
        yield f"classifier vs decoder ({init} start, after)", sel("classifier", init, "after"), sel("decoder", init, "after"), False
    for method in ("classifier", "decoder"):
        yield f"noise vs test start ({method}, after)", sel(method, "noise", "after"), sel(method, "test", "after"), False
        yield f"before vs after ({method}, test start)", sel(method, "test", "before"), sel(method, "test", "after"), True
        yield f"original vs after ({method}, test start)", sel(stage="original"), sel(method, "test", "after"), True


RATING_PERMUTATIONS = 999


def _rank_test_note(a: np.ndarray, b: np.ndarray, paired: bool, p: float) -> str:
    """Why a rating comparison has no p-value, or a p of 1 that says nothing, in words ('' otherwise)."""
    if paired and np.all(a == b):
        return "no test: every pair got the same rating on both sides, so there is no difference to rank"
    if np.isnan(p):
        return "no test: too few ratings on a side (a permutation test needs two at least)"
    both = np.concatenate([a, b])
    if np.all(both == both[0]):
        return "every rating alike: nothing to rank, p = 1 by definition"
    return ""


def _stage_rating_tests(res: Analysis, state: dict) -> None:
    rows = []
    for group, rated in _by_group(_ratings(state)):
        machine = group != contrasts.PEOPLE
        perms = RATING_PERMUTATIONS if machine else None
        for name, a, b, paired in _rating_contrasts(rated):
            if a.empty or b.empty:
                continue
            if paired:
                pa = a[a["pair_id"] != ""].groupby("pair_id")["rating"].mean()
                pb = b[b["pair_id"] != ""].groupby("pair_id")["rating"].mean()
                common = pa.index.intersection(pb.index)
                if len(common) == 0:
                    continue
                va, vb = pa[common].to_numpy(), pb[common].to_numpy()
                test, stat, p = stats.rank_test(va, vb, paired=True, permutations=perms, seed=res.options.seed)
                units = f"{len(common)} pairs (mean rating per clip)"
            else:
                va, vb = a["rating"].to_numpy(), b["rating"].to_numpy()
                test, stat, p = stats.rank_test(va, vb, permutations=perms, seed=res.options.seed)
                units = f"{len(a)} vs {len(b)} {'clips' if machine else 'answers'}"
            rows.append({"listener_group": group, "contrast": name, "test": test, "units": units,
                         "mean_a": float(va.mean()), "mean_b": float(vb.mean()), "statistic": stat, "p": p,
                         "note": _rank_test_note(va, vb, paired, p)})
    table = pd.DataFrame(rows, columns=["listener_group", "contrast", "test", "units", "mean_a", "mean_b",
                                        "statistic", "p", "note"])
    table["p_holm"] = (table.groupby("listener_group")["p"].transform(lambda p: stats.holm(p.to_numpy()))
                       if not table.empty else [])
    res.tables["rating_tests"] = table
    res.sections.append(Section("Rating comparisons", (
        "Each listener group apart. Ratings are ordinal, so comparisons use rank tests rather than means: "
        "independent groups by the two-sided Mann-Whitney U test on individual answers; before vs after and "
        "original vs after by the two-sided Wilcoxon signed-rank test on matched clip pairs (same pair_id, each "
        "clip's mean rating). For people the Mann-Whitney test treats answers as independent. A machine listener "
        f"rates every clip once, with many ties, so its p-values come from {RATING_PERMUTATIONS:,} random "
        f"relabellings (seed {res.options.seed}). Holm correction over the rows of each listener group."),
        ["rating_tests"], []))


def _stage_rating_agreement(res: Analysis, state: dict) -> None:
    rated = _ratings(state)
    rows = []
    for (kind, cell), part in rated.groupby(["listener_group", "cell"], sort=True):
        counts, _ = stats.counts_matrix(part["stimulus"], part["rating"], [0.0, 1.0, 2.0, 3.0, 4.0])
        usable = int((counts.sum(axis=1) >= 2).sum())
        rows.append({"listener_group": kind, "cell": cell, "units": usable,
                     "krippendorff_alpha_ordinal": stats.krippendorff_alpha(counts, "ordinal"),
                     "krippendorff_alpha_interval": stats.krippendorff_alpha(counts, "interval")})
    if rows:
        res.tables["rating_agreement"] = pd.DataFrame(rows)
        res.sections.append(Section("Agreement on ratings", (
            "Krippendorff's alpha on the ratings of each clip, ordinal (distances by ranks, no assumption of equal "
            "steps) and interval (squared differences of the 0-4 values); clips rated fewer than twice drop out."),
            ["rating_agreement"], []))


def _stage_objective(res: Analysis, state: dict) -> None:
    root = Path(res.options.objective_dir)
    if not root.is_dir():
        raise HearsayError(f"objective folder not found: {root}")
    tables, figs = [], []
    summary = root / "summary.csv"
    used = [p for p in (summary, root / "run.json") if p.is_file()]
    if summary.is_file():
        res.tables["objective_summary"] = _read_csv(summary)
        tables.append("objective_summary")
    found = {p.stem[len("heatmap_"):]: p for p in sorted(root.glob("heatmap_*.csv"))}
    found.update({p.parent.name: p for p in sorted(root.glob("*/heatmap.csv"))})
    pictures = {p.stem[len("heatmap_"):]: p for p in sorted(root.glob("heatmap_*.png"))}
    pictures.update({p.parent.name: p for p in sorted(root.glob("*/heatmap.png"))})
    slugs = unique_slugs(sorted(set(found) | set(pictures)))
    for method in sorted(set(found) | set(pictures)):
        name = f"objective_{slugs[method]}_heatmap"
        used.append(found.get(method) or pictures[method])
        if method in found:
            matrix = _read_csv(found[method])
            res.tables[name] = matrix
            tables.append(name)
            res.figures[name] = figures.Later(
                figures.heatmap, matrix.set_index(matrix.columns[0]),
                f"Objective: classifier B mean softmax after maximization ({method})",
                xlabel="classifier B class", ylabel="target class", colorbar_label="mean probability")
        else:
            res.images[name] = pictures[method].read_bytes()
        figs.append(name)
    if not tables and not figs:
        raise HearsayError(f"objective folder {root} has no summary.csv and no heatmap_<method>.csv|png")
    res.inputs.update(_checksums(used))
    res.sections.append(Section("Objective experiment (from generation)", (
        f"Copied from {root.name}: how often maximized inputs are classified as their target by the classifier "
        "that produced them (A) and by an independently trained one (B). Heatmap rows are the target class, "
        "columns classifier B's mean softmax over the maximized samples."), tables, figs))


def _stage_tsne(res: Analysis, state: dict) -> None:
    root = Path(res.options.tsne_dir)
    if not root.is_dir():
        raise HearsayError(f"tsne folder not found: {root}")
    tables, figs = [], []
    slugs = unique_slugs(p.stem for p in sorted(root.glob("*.csv")) + sorted(root.glob("*.png")))
    for path in sorted(root.glob("*.csv")):
        name = f"tsne_{slugs[path.stem]}"
        res.tables[name] = _read_csv(path)
        tables.append(name)
    for path in sorted(root.glob("*.png")):
        name = f"tsne_{slugs[path.stem]}"
        res.images[name] = path.read_bytes()
        figs.append(name)
    if not tables and not figs:
        raise HearsayError(f"tsne folder {root} has no .csv or .png files")
    res.inputs.update(_checksums(sorted(root.glob("*.csv")) + sorted(root.glob("*.png")) + sorted(root.glob("*.json"))))
    res.sections.append(Section("t-SNE of latents (from generation)", (
        f"Copied from {root.name}: encoded test utterances and their maximized versions embedded by t-SNE."),
        tables, figs))


def _read_csv(path: Path) -> pd.DataFrame:
    data = path.read_bytes()
    if b"\x00" in data:
        raise HearsayError(f"cannot read {path}: it contains a NUL byte (not a text CSV)")
    try:
        return pd.read_csv(io.BytesIO(data))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise HearsayError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc


def _checksums(paths: list[Path]) -> dict[str, str]:
    return {str(p): sha256_file(p) for p in paths}


def table_sha256(table: pd.DataFrame) -> str:
    """Checksum of a long table's canonical CSV, recorded when the input is the database."""
    return hashlib.sha256(csv_bytes(normalize(table), sort=False)).hexdigest()


def csv_bytes(df: pd.DataFrame, sort: bool = True) -> bytes:
    """Canonical CSV: rows sorted by every column, fixed float format, '\\n' line ends."""
    if sort and not df.empty:
        keyed = df.copy()
        for col in keyed.columns:
            if keyed[col].dtype == object or isinstance(keyed[col].dtype, pd.CategoricalDtype):
                keyed[col] = keyed[col].astype(object).fillna("").astype(str)  # missing sorts as ""
        order = keyed.sort_values(list(keyed.columns), kind="mergesort", na_position="last").index
        df = df.loc[order]
    return safe_frame(df).to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n").encode("utf-8")


def _versions() -> dict[str, str]:
    return library_versions(("numpy", "pandas", "scipy", "statsmodels", "matplotlib"))


REPORT_TOOL = "hearsay manage.py analyze"


def _holds_a_report(folder: Path) -> bool:
    if (folder / "report.html").is_file():
        return True
    try:
        return json.loads((folder / "run.json").read_text(encoding="utf-8")).get("tool") == REPORT_TOOL
    except (OSError, ValueError, AttributeError):
        return False


def check_output(out: Path) -> Path:
    """`out` resolved, when a report may be written there: a new or empty folder, or a previous report.

    A file, or a folder holding anything else, is refused: the report replaces the whole folder, which
    would delete what is in it. Checked before the analysis runs and again before writing.
    """
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise HearsayError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not _holds_a_report(out):
        raise HearsayError(f"output folder {out} is not empty and holds no previous report (report.html); "
                           "the report replaces the whole folder, so choose a new or empty one")
    above = atomic.nearest_existing(out.parent)
    if not above.is_dir():
        raise HearsayError(f"cannot write the report to {out}: {above} is not a folder")
    return out


def write_report(result: Analysis, out: Path, inputs: dict[str, str], progress: bool = True, pdf: bool = False,
                 ) -> Path:
    """Write tables, figures, report.html and run.json into a temp folder, then swap it into `out`.

    Figures are PNGs (embedded in report.html); pdf=True also writes each as a PDF for print.
    """
    out = check_output(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise HearsayError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    try:
        start = time.perf_counter()
        (tmp / "tables").mkdir()
        (tmp / "figures").mkdir()
        for name, df in result.tables.items():
            (tmp / "tables" / f"{name}.csv").write_bytes(csv_bytes(df))
        pngs = dict(result.images)
        for name, data in result.images.items():
            figures.save_png_copy(data, tmp / "figures" / name, pdf)
        result.timings["tables"] = time.perf_counter() - start
        drawing = time.perf_counter()
        pngs.update(figures.render_all(result.figures, tmp / "figures", progress=progress, pdf=pdf,
                                       ahead=result.drawing))
        result.timings["figures"] = time.perf_counter() - drawing
        (tmp / "report.html").write_text(_html(result, pngs, pdf), encoding="utf-8")
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        run = {
            "tool": REPORT_TOOL,
            "experiment": result.info.get("slug", ""),
            "task": result.info.get("task", ""),
            "options": _jsonable(asdict(result.options)),
            "seed": result.options.seed,
            "inputs": dict(sorted({**inputs, **result.inputs}.items())),
            "versions": _versions(),
            "figure_formats": ["png", "pdf"] if pdf else ["png"],
            "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
            "notes": result.notes,
            "outputs": files,
        }
        (tmp / "run.json").write_text(json.dumps(run, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        result.timings["write"] = time.perf_counter() - start
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if result.drawing is not None:
            result.drawing.close()
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


INLINE_ROWS = 15
SHOWN_FIGURES = 1
DETAILS_ROWS = 200
# columns the page shows for wide tables; the CSV keeps every column
HTML_COLUMNS = {
    "listener_qc": ["listener", "listener_kind", "answers", "gold_accuracy", "skill_dawid_skene", "skill_glad",
                    "agreement_with_majority", "trap_failed", "excluded", "exclusion_reasons"],
    "accuracy_by_condition": ["listener_group", "cell", "answers", "correct", "accuracy", "ci_low", "ci_high",
                              "chance_corrected", "p_vs_chance", "p_holm"],
    "rating_by_condition": ["listener_group", "cell", "answers", "listeners", "mean", "ci_low", "ci_high", "sd"],
}
STYLE = (
    "*{box-sizing:border-box}body{font-family:system-ui,sans-serif;max-width:1100px;margin:0 auto;padding:0 12px 2em;"
    "line-height:1.45;color:#222}h1{font-size:1.5em;margin:.6em 0 .2em}h2{margin:1.4em 0 .3em;border-bottom:1px solid "
    "#ddd}h3{font-size:1em;margin:.8em 0 .2em}img{max-width:100%;height:auto;display:block}figure{margin:.6em 0}"
    ".meta,.more,.note,figcaption{color:#666;font-size:13px}.toc{font-size:14px;margin:.3em 0}.toc a{margin-right:"
    ".9em;white-space:nowrap}.guide{font-weight:600}.tw{overflow-x:auto;max-width:100%}table.t{border-collapse:"
    "collapse;font-size:12px;margin:.3em 0}table.t td,table.t th{border:1px solid #ccc;padding:2px 5px;text-align:"
    "right;overflow-wrap:anywhere}details{margin:.4em 0}summary{cursor:pointer;color:#245}.grid{display:grid;"
    "grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:8px}.grid>*{min-width:0}.grid>.wide{grid-column:1/-1}ul.findings li{margin:"
    ".25em 0}p,li,figcaption,summary,h3{overflow-wrap:anywhere}"
)


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        if np.isnan(v):
            return ""
        if np.isinf(v):
            return "∞" if v > 0 else "-∞"
        return f"{v:.4g}"
    return str(v)


def _table_html(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<div class=tw><table class=t><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>"


def _html_table(name: str, df: pd.DataFrame, long_format: str | None) -> str:
    """Short tables inline, long ones folded, long-format ones only linked (`long_format` says where they are shown)."""
    link = f"<a href='tables/{html.escape(name)}.csv'>{html.escape(name)}.csv</a>"
    if long_format:
        return f"<p class=more>Long-format table {link}: {len(df):,} rows ({html.escape(long_format)}).</p>"
    shown = df[[c for c in HTML_COLUMNS[name] if c in df.columns]] if name in HTML_COLUMNS else df
    hidden = "" if shown.shape[1] == df.shape[1] else f"; {df.shape[1] - shown.shape[1]} more columns in the CSV"
    if len(df) <= INLINE_ROWS:
        return f"<h3>{html.escape(name)} <small>({link}{hidden})</small></h3>{_table_html(shown)}"
    more = (f"<p class=more>First {DETAILS_ROWS} of {len(df):,} rows; all in {link}.</p>"
            if len(df) > DETAILS_ROWS else "")
    return (f"<details><summary>{html.escape(name)}: {len(df):,} rows <small>({link}{hidden})</small></summary>"
            f"{_table_html(shown.head(DETAILS_ROWS))}{more}</details>")


def _main_contrasts_html(df: pd.DataFrame) -> str:
    """The summary's contrast table in reading form: A vs B accuracy, odds ratio [95% CI], Holm p."""
    rows = []
    for r in df.itertuples(index=False):
        tested = not np.isnan(r.p_holm)
        ratio = "undefined" if np.isnan(r.odds_ratio) else contrasts.format_ratio(r.odds_ratio)
        note = r.note
        if tested and np.isnan(r.odds_ratio) and not note:  # an exact test on answers that carry no information
            note = ("no informative answers (every answer alike, or no discordant pairs): "
                    "nothing to test, p = 1 by definition")
        rows.append({"listeners": r.listeners, "contrast": r.contrast,
                     "accuracy A vs B": f"{_pct(r.accuracy_a)} vs {_pct(r.accuracy_b)}",
                     "odds ratio [95% CI]": (f"{ratio} [{contrasts.format_ratio(r.ci_low)}, "
                                             f"{contrasts.format_ratio(r.ci_high)}]") if tested else "",
                     "p (Holm)": contrasts.format_p(r.p_holm) if tested else "", "test": r.test,
                     "note": note})
    return ("<h3>main_contrasts <small>(<a href='tables/main_contrasts.csv'>main_contrasts.csv</a>)</small></h3>"
            + _table_html(pd.DataFrame(rows)))


def _pct(x: float) -> str:
    return "" if np.isnan(x) else f"{x:.0%}"


def _figure_html(name: str, pngs: dict[str, bytes], pdf: bool, wide: bool) -> str:
    """An embedded PNG that opens full size when clicked; small multiples take a whole row of a grid."""
    data = base64.b64encode(pngs[name]).decode("ascii")
    stem = html.escape(name)
    also = f" (<a href='figures/{stem}.pdf'>PDF</a>)" if pdf else ""
    return (f"<figure{' class=wide' if wide else ''}><a href='figures/{stem}.png'><img alt='{stem}' "
            f"src='data:image/png;base64,{data}'></a><figcaption>figures/{stem}.png{also}</figcaption></figure>")


def _html(result: Analysis, pngs: dict[str, bytes], pdf: bool = False) -> str:
    info = result.info
    slug = html.escape(str(info.get("slug", "")))
    anchors = [(f"s-{_slug(sec.title)}", sec) for sec in result.sections]
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        f"<title>Hearsay analysis: {slug}</title><style>{STYLE}</style></head><body>",
        f"<h1>Listening test analysis: {slug}</h1>",
        f"<p class=meta>Task: {html.escape(str(info.get('task', '')))}; {len(info.get('words') or [])} words; "
        f"seed {result.options.seed}. Every table is a CSV under tables/, every figure a PNG"
        f"{' and PDF' if pdf else ''} under figures/ (click a figure for full size); "
        "run.json records versions, options and input checksums.</p>",
        "<nav class=toc aria-label=Contents>" + " ".join(
            f"<a href='#{a}'>{html.escape(sec.title)}</a>" for a, sec in anchors) + "</nav>",
    ]
    for note in result.notes:
        parts.append(f"<p class=note>Note: {html.escape(note)}</p>")
    for anchor, section in anchors:
        parts.append(f"<section id={anchor}><h2>{html.escape(section.title)}</h2>")
        if section.guide:
            parts.append(f"<p class=guide>{html.escape(section.guide)}</p>")
        for name in section.figures[:SHOWN_FIGURES]:
            parts.append(_figure_html(name, pngs, pdf, False))
        if section.title == "Summary" and result.summary:
            parts.append("<ul class=findings>" + "".join(f"<li>{html.escape(line)}</li>" for line in result.summary)
                         + "</ul>")
        folded = section.figures[SHOWN_FIGURES:] + section.more_figures
        if folded:
            parts.append(f"<details><summary>{len(folded)} more figures</summary><div class=grid>"
                         + "".join(_figure_html(n, pngs, pdf, n in result.wide_figures) for n in folded)
                         + "</div></details>")
        for name in section.tables:
            if name == "main_contrasts":
                parts.append(_main_contrasts_html(result.tables[name]))
            else:
                parts.append(_html_table(name, result.tables[name], result.long_tables.get(name)))
        parts.append(f"<details><summary>How this was computed</summary><p>{html.escape(section.text)}</p></details>"
                     "</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def build_report(table: pd.DataFrame, info: dict, out: Path, options: ReportOptions, inputs: dict[str, str],
                 progress: bool = True, pdf: bool = False) -> Path:
    """Analyse the long table and write the complete report folder (PDFs of the figures too if pdf); returns its
    path."""
    result = analyse(table, info, options, progress=progress, draw_ahead=True)
    return write_report(result, out, inputs, progress=progress, pdf=pdf)
