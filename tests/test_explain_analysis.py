"""analyze's explanation section: word identification from explanation audio vs its equal-area random control."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.explanations import comparison, explanation_answers
from analysis.report import ReportOptions, analyse, write_report
from analysis.table import COLUMNS, Exclusion

WORDS = ["yes", "no", "up", "down"]


def table(seed=0, clips=12, listeners=6, p_region=0.85, p_random=0.3) -> pd.DataFrame:
    """People and one machine listener hear, per clip, integrated-gradients regions and their random control."""
    rng = np.random.default_rng(seed)
    rows = []
    for li in range(listeners + 1):
        kind = "machine" if li == listeners else "human"
        for c in range(clips):
            word = WORDS[c % len(WORDS)]
            for control, p in (("region", p_region), ("random", p_random)):
                right = rng.random() < p
                answer = word if right else "none"
                rows.append(dict(listener="classifier-b" if kind == "machine" else f"L{li}", listener_kind=kind,
                                 listener_source="machine" if kind == "machine" else "web", stimulus=f"s{c}{control}",
                                 stimulus_kind="test", pair_id=f"p{c}", method="integrated_gradients", init="test", stage="after",
                                 condition=f"explain-integrated_gradients-identification-{control}", word=word, answer=answer,
                                 correct=right, rating=np.nan, play_count=1, listened_to_end=True, response_ms=900.0,
                                 pay_ok=True, analyse_ok=True, analyse_reasons="", answered_at="2026-01-01T00:00:00+00:00"))
                if control == "region" and c == 0:  # a natural original and an importance-mask clip
                    rows.append({**rows[-1], "stimulus": f"o{c}", "method": "natural", "init": "none", "stage": "original",
                                 "condition": "original"})
                    rows.append({**rows[-2], "stimulus": f"m{c}", "method": "importance_mask",
                                 "condition": "importance_mask-muted-0.1-region"})
    return pd.DataFrame(rows, columns=COLUMNS)


def test_explanation_conditions_are_parsed_and_the_rest_ignored():
    answers = explanation_answers(table())
    assert set(answers["method"]) == {"integrated_gradients", "importance_mask"}
    assert set(answers["strategy"]) == {"identification", "muted-0.1"}
    assert set(answers["group"]) == {"people", "classifier-b"}
    assert "original" not in set(answers["condition"])


def test_region_audio_identified_more_often_than_random_is_reported_with_intervals_and_a_paired_test():
    t = comparison(explanation_answers(table()))
    row = t[(t["listeners"] == "people") & (t["method"] == "integrated_gradients")].iloc[0]
    assert row["answers_region"] == row["answers_random"] == 6 * 12 and row["clips"] == 12
    assert row["accuracy_region"] > row["accuracy_random"] and row["difference"] > 0.3
    assert row["ci_low_region"] < row["accuracy_region"] < row["ci_high_region"]
    assert row["p_value"] < 0.01 and row["p_holm"] >= row["p_value"]
    mask = t[t["method"] == "importance_mask"].iloc[0]
    assert mask["answers_random"] == 0 and mask["clips"] == 0 and np.isnan(mask["p_value"])


def test_no_difference_gives_no_significance():
    t = comparison(explanation_answers(table(p_region=0.5, p_random=0.5, seed=3)))
    row = t[(t["listeners"] == "people") & (t["method"] == "integrated_gradients")].iloc[0]
    assert row["p_value"] > 0.05


def test_analyze_adds_the_section_only_when_explanation_clips_were_heard():
    options = ReportOptions(exclusion=Exclusion("none", include_machines=True), n_boot=50, bayes_max_answers=0)
    res = analyse(table(), {"slug": "x", "task": "identification", "words": WORDS}, options, progress=False)
    assert "explanations_region_vs_random" in res.tables
    assert any(s.title.startswith("Explanations") for s in res.sections)
    plain = table()
    plain = plain[~plain["condition"].str.startswith(("explain-", "importance_mask-"))]
    res = analyse(plain, {"slug": "x", "task": "identification", "words": WORDS}, options, progress=False)
    assert "explanations_region_vs_random" not in res.tables


def test_the_written_report_carries_the_explanation_figure(tmp_path):
    """The section's figure once reached the writer drawn rather than described, and writing the report failed."""
    options = ReportOptions(exclusion=Exclusion("none", include_machines=True), n_boot=50)
    res = analyse(table(), {"slug": "x", "task": "identification", "words": WORDS}, options, progress=False)
    out = write_report(res, tmp_path / "report", {}, progress=False)
    assert (out / "figures" / "explanations_region_vs_random.png").read_bytes()[:4] == b"\x89PNG"
    assert "explanations_region_vs_random" in (out / "report.html").read_text()
