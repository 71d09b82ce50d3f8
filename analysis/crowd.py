"""Crowd-label aggregation: what each clip was heard as, and how skilled each listener is.

Majority vote counts every listener alike. Dawid-Skene (per-listener confusion matrices,
fitted by EM) and GLAD (listener ability and clip difficulty) weigh each listener by how
reliable the rest of their answers make them look, using only the answers (no gold
labels), so their skill estimate can be set beside gold accuracy as an independent check.
GLAD is crowd-kit's; Dawid-Skene is crowd-kit's algorithm step for step (majority-vote
start, its EM steps, clipping and stopping rule) written on sparse count matrices, which
takes a fraction of a second where crowd-kit's pandas joins take tens of seconds on a
million answers. People only: a machine listener is one deterministic judge, not a crowd.
No Django.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

DS_ITERATIONS = 50
DS_TOLERANCE = 1e-5  # crowd-kit's: stop when the evidence lower bound per answer gains less than this
DS_EPS = 1e-10  # crowd-kit's floor for probabilities before logs
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
        # GLAD takes log(labels - 1), which is log(0) when every answer is the same label: skills stay finite
        warnings.filterwarnings("ignore", message="divide by zero encountered in log", module="crowdkit")
        return _aggregate(answers, glad)


def _aggregate(answers: pd.DataFrame, glad: bool) -> CrowdLabels:
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
    ds = dawid_skene(frame["worker"], frame["task"], frame["label"])
    clips["dawid_skene"] = ds.labels.reindex(clips["stimulus"]).to_numpy()
    skill_ds = ds.skills
    majority = frame.merge(clips[["stimulus", "majority_vote"]], left_on="task", right_on="stimulus")
    agree = (majority["label"] == majority["majority_vote"]).groupby(majority["worker"]).mean()
    skills = pd.DataFrame({"listener": sorted(frame["worker"].unique())})
    skills["skill_dawid_skene"] = skills["listener"].map(skill_ds).to_numpy(dtype=float)
    if glad:
        from crowdkit.aggregation import GLAD

        fitted = GLAD(n_iter=GLAD_ITERATIONS, silent=True).fit(frame)
        clips["glad"] = fitted.labels_.reindex(clips["stimulus"]).to_numpy()
        skills["skill_glad"] = skills["listener"].map(fitted.alphas_).to_numpy(dtype=float)
    skills["agreement_with_majority"] = skills["listener"].map(agree).to_numpy(dtype=float)
    return CrowdLabels(clips=clips, skills=skills)


@dataclass
class DawidSkeneFit:
    labels: pd.Series  # per task: the most probable true label
    skills: pd.Series  # per worker: sum over labels of prior x P(answers that label | it is true)


def dawid_skene(worker: pd.Series, task: pd.Series, label: pd.Series, n_iter: int = DS_ITERATIONS,
                tol: float = DS_TOLERANCE) -> DawidSkeneFit:
    """Dawid-Skene by EM, as crowdkit.aggregation.DawidSkene(n_iter).fit computes it.

    Start from majority-vote label shares; M-step: each worker's confusion rows (for the
    labels they gave), floored at 1e-10 and normalized over their labels; E-step: task
    posteriors from log2 priors plus the summed log2 confusions of the task's answers;
    stop when the evidence lower bound per answer gains less than tol. The answers enter
    through a sparse (worker, label) x task count matrix, so each step is two sparse
    products instead of joins of the answer table.
    """
    w_codes, workers = pd.factorize(worker, sort=True)
    t_codes, tasks = pd.factorize(task, sort=True)
    l_codes, labels = pd.factorize(label, sort=True)
    n, n_tasks, k = len(w_codes), len(tasks), len(labels)
    counts = np.bincount(t_codes * k + l_codes, minlength=n_tasks * k).reshape(n_tasks, k).astype(float)
    pair_keys, pair = np.unique(w_codes.astype(np.int64) * k + l_codes, return_inverse=True)
    pair_worker, pair_label = pair_keys // k, pair_keys % k
    answers = sparse.csr_matrix((np.ones(n), (pair, t_codes)), shape=(len(pair_keys), n_tasks))
    answers_t = answers.T.tocsr()
    by_worker = sparse.csr_matrix((np.ones(len(pair_keys)), (pair_worker, np.arange(len(pair_keys)))),
                                  shape=(len(workers), len(pair_keys)))
    per_task = counts.sum(axis=1)

    def m_step(probas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sums = answers @ probas  # per (worker, answered label): expected count of each true label
        errors = np.maximum(sums, DS_EPS)
        return sums, errors / (by_worker @ errors)[pair_worker]

    probas = counts / per_task[:, None]
    priors = probas.mean(axis=0)
    sums, errors = m_step(probas)
    loss = -np.inf
    for _ in range(n_iter):
        log_likelihood = np.log2(np.maximum(priors, DS_EPS)) + answers_t @ np.log2(errors)
        scaled = np.exp2(log_likelihood - log_likelihood.max(axis=1, keepdims=True))
        probas = scaled / scaled.sum(axis=1, keepdims=True)
        priors = probas.mean(axis=0)
        sums, errors = m_step(probas)
        joint = (sums * np.log(errors)).sum() + (per_task @ probas) @ np.log(np.maximum(priors, DS_EPS))
        clipped = np.maximum(probas, DS_EPS)
        new_loss = (joint - (np.log(clipped) * clipped).sum()) / n
        probas = clipped
        if new_loss - loss < tol:
            break
        loss = new_loss
    own = errors[np.arange(len(pair_keys)), pair_label] * priors[pair_label]
    skills = np.bincount(pair_worker, own, minlength=len(workers))
    return DawidSkeneFit(labels=pd.Series(np.asarray(labels)[probas.argmax(axis=1)], index=np.asarray(tasks)),
                         skills=pd.Series(skills, index=np.asarray(workers)))


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


