"""Can listeners hear the explanation? Identification from explanation audio vs its equal-area random control.

`manage.py explain` and `manage.py importance_masks` write, per source clip and
method, the audio of the explanation (``control`` region) and of a random
selection of the same area (``control`` random); their `condition` is
``explain-<method>-<strategy>-<control>`` or ``importance_mask-<strategy>-<control>``.
Here, per listener group (people; each machine listener, e.g. classifier B or
pocketsphinx, on its own), method and strategy: accuracy with 95% Wilson
intervals for both, the difference, and a paired test over source clips
(Wilcoxon signed-rank on each clip's accuracy from region vs random audio),
Holm-corrected over the rows. No Django here.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from . import figures, stats

CONDITION = re.compile(r"^(?:explain-(?P<method>[a-z0-9_]+)|(?P<mask>importance_mask))-(?P<strategy>.+)-(?P<control>region|random)$")
COLUMNS = [
    "listeners", "method", "strategy", "clips", "answers_region", "accuracy_region", "ci_low_region", "ci_high_region",
    "answers_random", "accuracy_random", "ci_low_random", "ci_high_random", "difference", "test", "p_value", "p_holm",
]


def explanation_answers(test: pd.DataFrame) -> pd.DataFrame:
    """The answers to explanation clips, with method, strategy, control and listener group parsed out."""
    parsed = test["condition"].str.extract(CONDITION)
    keep = parsed["control"].notna() & test["correct"].notna()
    if not keep.any():
        return pd.DataFrame(columns=[*test.columns, "strategy", "control", "group"])
    rows = test[keep].copy()
    p = parsed[keep]
    rows["method"] = p["method"].fillna(p["mask"])
    rows["strategy"] = p["strategy"]
    rows["control"] = p["control"]
    rows["group"] = np.where(rows["listener_kind"] == "human", "people", rows["listener"])
    return rows


def comparison(answers: pd.DataFrame) -> pd.DataFrame:
    """One row per (listener group, method, strategy): region vs random identification."""
    out = []
    for (group, method, strategy), part in answers.groupby(["group", "method", "strategy"], sort=True):
        row = {"listeners": group, "method": method, "strategy": strategy}
        for control in ("region", "random"):
            sub = part[part["control"] == control]
            k, n = int(sub["correct"].astype(bool).sum()), len(sub)
            lo, hi = stats.wilson_interval(k, n) if n else (float("nan"), float("nan"))
            row.update({f"answers_{control}": n, f"accuracy_{control}": k / n if n else float("nan"),
                        f"ci_low_{control}": lo, f"ci_high_{control}": hi})
        per_clip = part.assign(_c=part["correct"].astype(float)).pivot_table(index="pair_id", columns="control", values="_c", aggfunc="mean")
        both = {"region", "random"} <= set(per_clip.columns)
        paired = per_clip[["region", "random"]].dropna() if both else pd.DataFrame(columns=["region", "random"])
        test, _, p = stats.rank_test(paired["region"], paired["random"], paired=True)
        row.update({"clips": len(paired), "difference": row["accuracy_region"] - row["accuracy_random"], "test": test, "p_value": p})
        out.append(row)
    table = pd.DataFrame(out, columns=[c for c in COLUMNS if c != "p_holm"])
    table["p_holm"] = stats.holm(table["p_value"]) if len(table) else []
    return table[COLUMNS]


def stage(res, state: dict) -> None:
    """Report stage (called by analysis.report): adds the comparison when the experiment holds explanation clips."""
    from .report import Section, panel_figure

    answers = explanation_answers(state["test"])
    if answers.empty:
        return
    table = comparison(answers)
    res.tables["explanations_region_vs_random"] = table
    panels = []
    for group, part in table.groupby("listeners", sort=True):
        long = pd.concat([
            part.assign(cell=part["method"] + " / " + part["strategy"] + " / " + control, accuracy=part[f"accuracy_{control}"],
                        ci_low=part[f"ci_low_{control}"], ci_high=part[f"ci_high_{control}"])
            for control in ("region", "random")
        ]).sort_values("cell")
        panels.append((str(group), long[["cell", "accuracy", "ci_low", "ci_high"]]))
    figs = [panel_figure(res, "explanations_region_vs_random", figures.interval_bar_panels, panels, "accuracy",
                          "ci_low", "ci_high", "cell", "accuracy",
                          "Word identified from explanation audio vs random control, per listener group", (0, 1))]
    res.sections.append(Section("Explanations: region audio vs random control", (
        "Each explanation clip (the time-frequency regions an attribution method or importance mask marks as relevant) "
        "is paired with a random selection of exactly the same area from the same clip. Accuracy is the share of "
        "answers naming the clip's word, with 95% Wilson intervals. 'clips' counts source clips heard in both "
        "versions; the paired test is a Wilcoxon signed-rank test on each clip's accuracy from region vs random "
        "audio; p_holm is Holm-corrected over all rows. People are pooled; each machine listener is its own row."),
        ["explanations_region_vs_random"], figs))
