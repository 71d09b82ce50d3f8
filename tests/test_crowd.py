"""Crowd-label aggregation: a careless listener gets a low skill, and labels follow the careful majority."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import crowd


def answers(seed=0):
    """Six careful listeners (90% right) and one who always answers 'none', on 40 clips of 4 words."""
    rng = np.random.default_rng(seed)
    words = ["yes", "no", "up", "down"]
    rows = []
    for clip in range(40):
        word = words[clip % 4]
        for listener in range(7):
            if listener == 6:
                answer = "none"
            else:
                answer = word if rng.random() < 0.9 else str(rng.choice([w for w in words if w != word]))
            rows.append({"listener": f"L{listener}", "stimulus": f"c{clip:02d}", "answer": answer, "word": word,
                         "cell": "A" if clip < 20 else "B"})
    return pd.DataFrame(rows)


def test_skills_and_labels():
    data = answers()
    result = crowd.aggregate(data[["listener", "stimulus", "answer"]], glad=True)
    skills = result.skills.set_index("listener")
    careless = skills.loc["L6"]
    careful = skills.drop(index="L6")
    assert careless["skill_dawid_skene"] < careful["skill_dawid_skene"].min()
    assert careless["skill_glad"] < careful["skill_glad"].min()
    assert careless["agreement_with_majority"] == 0.0
    intended = data[["stimulus", "cell", "word"]].drop_duplicates("stimulus")
    merged = result.clips.merge(intended, on="stimulus")
    for method in ["majority_vote", "dawid_skene", "glad"]:
        assert (merged[method] == merged["word"]).mean() >= 0.95, method
    table = crowd.disagreement_by_condition(result.clips, intended, ["majority_vote", "dawid_skene"])
    assert set(table["cell"]) == {"A", "B"} and (table["clips"] == 20).all()
    assert (table["dawid_skene_differs"] == (table["clips"] * (1 - table["dawid_skene_is_intended"])).round()).all()


def test_majority_ties_are_deterministic():
    data = pd.DataFrame({"listener": ["a", "b"], "stimulus": ["c", "c"], "answer": ["yes", "no"]})
    first = crowd.aggregate(data, glad=False).clips
    again = crowd.aggregate(data.iloc[::-1], glad=False).clips
    assert first["majority_vote"].tolist() == again["majority_vote"].tolist() == ["no"]
    assert first["majority_share"].tolist() == [0.5]


def test_skill_vs_gold_correlation():
    skills = pd.DataFrame({"listener": list("abcd"), "skill_dawid_skene": [0.2, 0.4, 0.6, 0.8]})
    qc = pd.DataFrame({"listener": list("abcd"), "gold_accuracy": [0.1, 0.5, 0.7, 0.9]})
    assert crowd.skill_vs_gold(skills, qc) == 1.0


@pytest.mark.parametrize("seed, listeners, noise", [(0, 7, 0.1), (1, 30, 0.6), (2, 12, 0.85)])
def test_dawid_skene_gives_crowd_kits_labels_and_confusions(seed, listeners, noise):
    """Same EM as crowdkit.aggregation.DawidSkene (its start, clipping and stopping rule), on count matrices."""
    from crowdkit.aggregation import DawidSkene

    rng = np.random.default_rng(seed)
    words = ["yes", "no", "up", "down", "left"]
    rows = []
    for clip in range(60):
        for listener in range(listeners):
            if rng.random() < 0.8:  # not every listener hears every clip
                word = words[clip % 5]
                heard = word if rng.random() > noise * (listener % 3) / 2 else str(rng.choice(words + ["none"]))
                rows.append((f"L{listener}", f"c{clip}", heard))
    frame = pd.DataFrame(rows, columns=["worker", "task", "label"])
    theirs = DawidSkene(n_iter=crowd.DS_ITERATIONS).fit(frame)
    ours = crowd.dawid_skene(frame["worker"], frame["task"], frame["label"])
    assert (theirs.labels_.reindex(ours.labels.index) == ours.labels).all()
    diag = theirs.errors_.stack().rename("p").reset_index()
    diag = diag[diag["label"] == diag.iloc[:, 2]]
    skill = (diag.iloc[:, 2].map(theirs.priors_) * diag["p"]).groupby(diag["worker"]).sum()
    assert np.allclose(skill.reindex(ours.skills.index), ours.skills, rtol=1e-12, atol=1e-14)
