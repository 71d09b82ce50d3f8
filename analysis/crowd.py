"""Crowd-label aggregation: what each clip was heard as, and how skilled each listener is.

Majority vote counts every listener alike. Dawid-Skene (per-listener confusion matrices,
fitted by EM) and GLAD (listener ability and clip difficulty) from crowd-kit weigh each
listener by how reliable the rest of their answers make them look, using only the answers
(no gold labels), so their skill estimate can be set beside gold accuracy as an independent
check. People only: a machine listener is one deterministic judge, not a crowd. No Django.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import pandas as pd

DS_ITERATIONS = 50
GLAD_ITERATIONS = 30


@dataclass
class CrowdLabels:
    """Per-clip aggregated labels and per-listener skill."""

    clips: pd.DataFrame  # stimulus, answers, majority_vote, majority_share, dawid_skene, glad
    skills: pd.DataFrame  # listener, skill_dawid_skene, skill_glad, agreement_with_majority


def aggregate(answers: pd.DataFrame, glad: bool = True) -> CrowdLabels:
    """Aggregate (listener, stimulus, answer) rows; clips with one answer still get a label.

    Ties in majority vote go to the alphabetically first answer (crowd-kit's MajorityVote
    breaks ties at random), so reruns agree. Dawid-Skene skill is the listener's
    estimated probability of giving the true label, averaged over the estimated label
    shares; GLAD skill is its ability parameter alpha (0 = random, larger = better).
    """
    with warnings.catch_warnings():  # crowd-kit 1.4.2 still passes pandas' deprecated inplace= keyword
        warnings.filterwarnings("ignore", message="The inplace keyword", module="crowdkit")
        return _aggregate(answers, glad)


def _aggregate(answers: pd.DataFrame, glad: bool) -> CrowdLabels:
    from crowdkit.aggregation import GLAD, DawidSkene

    frame = pd.DataFrame({"worker": answers["listener"].astype(str).to_numpy(),
                          "task": answers["stimulus"].astype(str).to_numpy(),
                          "label": answers["answer"].astype(str).to_numpy()})
    counts = frame.groupby(["task", "label"]).size().rename("n").reset_index()
    counts = counts.sort_values(["task", "n", "label"], ascending=[True, False, True])
    top = counts.drop_duplicates("task").set_index("task")
    per_task = counts.groupby("task")["n"].sum()
    clips = pd.DataFrame({"stimulus": per_task.index, "answers": per_task.to_numpy(),
                          "majority_vote": top.loc[per_task.index, "label"].to_numpy(),
                          "majority_share": (top.loc[per_task.index, "n"] / per_task).to_numpy()})
    ds = DawidSkene(n_iter=DS_ITERATIONS).fit(frame)
    clips["dawid_skene"] = ds.labels_.reindex(clips["stimulus"]).to_numpy()
    priors = ds.priors_
    errors = ds.errors_  # index (worker, answered label), columns true label: P(answer | true)
    diag = errors.stack().rename("p").reset_index()
    diag.columns = ["worker", "answered", "true", "p"]
    diag = diag[diag["answered"] == diag["true"]]
    diag = diag.assign(w=diag["true"].map(priors).fillna(0.0) * diag["p"])
    skill_ds = diag.groupby("worker")["w"].sum()
    majority = frame.merge(clips[["stimulus", "majority_vote"]], left_on="task", right_on="stimulus")
    agree = (majority["label"] == majority["majority_vote"]).groupby(majority["worker"]).mean()
    skills = pd.DataFrame({"listener": sorted(frame["worker"].unique())})
    skills["skill_dawid_skene"] = skills["listener"].map(skill_ds).to_numpy(dtype=float)
    if glad:
        fitted = GLAD(n_iter=GLAD_ITERATIONS, silent=True).fit(frame)
        clips["glad"] = fitted.labels_.reindex(clips["stimulus"]).to_numpy()
        skills["skill_glad"] = skills["listener"].map(fitted.alphas_).to_numpy(dtype=float)
    skills["agreement_with_majority"] = skills["listener"].map(agree).to_numpy(dtype=float)
    return CrowdLabels(clips=clips, skills=skills)


def disagreement_by_condition(clips: pd.DataFrame, intended: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Per condition: clips whose aggregated label is not the intended word, for each method.

    intended: stimulus, cell, word (one row per clip). Returns one row per cell with the
    clip count and, per aggregation method, the share of clips labelled as intended.
    """
    merged = clips.merge(intended, on="stimulus")
    rows = []
    for cell, part in merged.groupby("cell", sort=False):
        row = {"cell": cell, "clips": len(part)}
        for m in methods:
            same = part[m] == part["word"]
            row[f"{m}_is_intended"] = float(same.mean())
            row[f"{m}_differs"] = int((~same).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def skill_vs_gold(skills: pd.DataFrame, qc: pd.DataFrame) -> float:
    """Spearman correlation between Dawid-Skene skill and gold accuracy (NaN if too few listeners)."""
    both = qc[["listener", "gold_accuracy"]].merge(skills, on="listener").dropna(
        subset=["gold_accuracy", "skill_dawid_skene"])
    if len(both) < 3 or both["gold_accuracy"].nunique() < 2 or both["skill_dawid_skene"].nunique() < 2:
        return float("nan")
    return float(both["gold_accuracy"].rank().corr(both["skill_dawid_skene"].rank()))


