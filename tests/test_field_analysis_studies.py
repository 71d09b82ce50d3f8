"""Field audit: what `analyze` makes of unusual but legitimate studies (degenerate data, odd words, repeats).

Each test runs the real command (or the real stage) on a tiny answer table built from tests.report_data and
asserts what an analyst reads in report.html or the CSVs.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

import tests.report_data as report_data
from analysis import stats
from tests.helpers.report import analyze, page_text
from tests.report_data import small_table


def summary(page: str) -> str:
    return page_text(page.split("<ul class=findings>")[1].split("</ul>")[0])


def with_test_answers(table: pd.DataFrame, right: bool, where=None) -> pd.DataFrame:
    table = table.copy()
    mask = (table["stimulus_kind"] == "test") if where is None else where(table)
    table.loc[mask, "answer"] = table.loc[mask, "word"] if right else "none"
    table.loc[mask, "correct"] = right
    return table


@pytest.mark.parametrize("right", [True, False])
def test_every_answer_alike_says_not_estimable_instead_of_a_significant_odds_ratio_of_one(tmp_path, right):
    """All right: the summary read 'right more often with decoder (odds ratio 1, 95% CI 1-1, p < 0.001)';
    all wrong: 'odds ratio 1, 95% CI nan-nan, Holm p = nan'."""
    page = analyze(tmp_path, with_test_answers(small_table(machines=0), right))
    text = summary(page)
    assert "not estimable: every answer was " + ("right" if right else "wrong") in text
    assert "more often" not in text and "nan" not in text.lower()
    assert "Mixed model: model 'after' is not fitted" in page_text(page)


def test_separation_names_the_cells_instead_of_an_odds_ratio_of_ten_to_the_ten(tmp_path):
    """Every decoder clip after maximization answered right: the GLM reported OR 7e10 [3e10, 2e11], p < 0.001."""
    table = with_test_answers(small_table(machines=0), True,
                              lambda t: (t["method"] == "decoder") & (t["stage"] == "after") & (t["stimulus_kind"] == "test"))
    page = analyze(tmp_path, table)
    main = pd.read_csv(tmp_path / "study-report" / "tables" / "main_contrasts.csv").set_index("contrast")
    row = main.loc["decoder vs classifier"]
    assert np.isnan(row["odds_ratio"]) and np.isnan(row["p"])
    assert "separation: decoder, noise start, after all right; decoder, test start, after all right" in row["note"]
    assert not np.isnan(main.loc["after vs before", "p"])  # the other model is fine and still tested
    assert "e+10" not in summary(page)


def test_separation_is_found_exactly_and_a_single_perfect_cell_is_not_separation():
    """The check behind it: one all-right cell of a 2 x 2 additive design leaves a finite estimate (statsmodels
    converges); a whole level all right does not."""
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"d": rng.integers(0, 2, 400), "t": rng.integers(0, 2, 400)})
    y = (rng.random(400) < 0.5).astype(float)
    one_cell = np.where((X["d"] == 1) & (X["t"] == 1), 1.0, y)
    level = np.where(X["d"] == 1, 1.0, y)
    assert not stats.separated(y, X) and not stats.separated(one_cell, X)
    assert stats.separated(level, X) and stats.separated(np.ones(400), X)
    assert stats.logistic_cluster(level, X, {"listener": np.arange(400) % 10}) == {}
    fits = stats.logistic_cluster(one_cell, X, {"listener": np.arange(400) % 10})
    assert np.isfinite(fits["listener"][0].ci_high) and fits["listener"][0].odds_ratio < 100


def test_mcnemar_without_discordant_pairs_says_why_its_p_is_one(tmp_path):
    """Every pair right before and after: the table showed p 1 beside zero discordant pairs and no word why."""
    analyze(tmp_path, with_test_answers(small_table(machines=0), True))
    mcn = pd.read_csv(tmp_path / "study-report" / "tables" / "before_after_mcnemar.csv", keep_default_na=False)
    assert (mcn["p_mcnemar_exact"] == 1).all()
    assert mcn["note"].str.startswith("no discordant pairs").all()


def test_ratings_all_alike_say_so_instead_of_p_nan(tmp_path):
    """Every rating 2: the summary read 'mean 2.00 vs 2.00 (Holm p = nan)' for before vs after."""
    table = small_table(task="rating", machines=0)
    table["rating"] = 2.0
    text = summary(analyze(tmp_path, table))
    assert "nan" not in text.lower()
    assert "no test: every pair got the same rating on both sides" in text
    assert "every rating alike: nothing to rank, p = 1 by definition" in text


def test_a_machine_with_uninformative_answers_gets_a_note_beside_p_one(tmp_path):
    """A machine wrong on every clip: the contrast table showed 'undefined [0, ∞]' and p 1.000 with an empty note."""
    table = small_table(listeners=3, machines=1, machine_names=["machine:asr:deaf"])
    table = with_test_answers(table, False, lambda t: (t["listener_kind"] == "machine") & (t["stimulus_kind"] == "test"))
    page = analyze(tmp_path, table, include_machines=True)
    contrasts_html = page.split("<h3>main_contrasts")[1].split("</table>")[0]
    rows = [r for r in contrasts_html.split("<tr>") if "machine:asr:deaf" in r]
    assert len(rows) == 3 and all("no informative answers" in r for r in rows)


def test_a_word_named_other_is_analysed_not_a_crash(tmp_path, monkeypatch):
    """The word 'other' collided with the bucket for answers outside the word list: 'Categorical categories must
    be unique', a traceback."""
    monkeypatch.setattr(report_data, "WORDS", ["other", "yes", "no"])
    analyze(tmp_path, small_table(listeners=3, machines=0))
    tables = tmp_path / "study-report" / "tables"
    confusion = pd.read_csv(tables / "confusion.csv", keep_default_na=False)
    assert confusion.loc[(confusion["word"] == "other") & (confusion["answer"] == "other"), "count"].sum() > 0
    assert len(pd.read_csv(tables / "agreement.csv")) > 0


def test_the_bucket_for_answers_outside_the_list_never_takes_a_words_name():
    """Answers outside the word list go to 'other', or '(other)' when 'other' is a word of the study."""
    from analysis.report import _confusion_matrix, other_label

    assert other_label(["yes", "no"]) == "other" and other_label(["other", "(other)"]) == "((other))"
    counts = pd.DataFrame({"other": [3, 0], "yes": [0, 2], "free text": [1, 0], "none": [0, 1]}, index=["other", "yes"])
    count, share = _confusion_matrix(counts, ["other", "yes"])
    assert list(count.columns) == ["other", "yes", "(other)", "none"]
    assert count.loc["other"].tolist() == [3, 0, 1, 0] and share.loc["yes", "yes"] == pytest.approx(2 / 3)


def test_special_words_and_listener_names_are_escaped_formula_safe_and_get_distinct_figures(tmp_path, monkeypatch):
    """Markup in words and machine names stays text; two machines whose names slug alike ('a-b', 'a_b') or to
    nothing (é) drew to the same file, one figure overwriting the other."""
    words = ["<script>alert(1)</script>", "a&b", "\"quoted'", "café", "猫", "two words", "=cmd()", "all", "x" * 80]
    monkeypatch.setattr(report_data, "WORDS", words)
    machines = ["asr:a-b", "asr:a_b", "é", "<b>bold</b>"]
    table = small_table(listeners=3, machines=4, machine_names=machines)
    page = analyze(tmp_path, table, include_machines=True)
    assert "<script>" not in page and "<b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    out = tmp_path / "study-report"
    confusion = sorted(p.name for p in (out / "figures").glob("confusion_*.png") if p.name != "confusion_differences.png")
    assert len(confusion) == 1 + len(machines)  # people and one per machine, none overwritten
    assert all(re.fullmatch(r"confusion_[0-9a-z_]+\.png", name) and len(name) < 90 for name in confusion)
    cells = (out / "tables" / "word_accuracy.csv").read_text(encoding="utf-8")
    assert "'=cmd()" in cells and "\n=cmd()" not in cells and ",=cmd()" not in cells
    assert "café" in cells and "猫" in cells


def test_unique_slugs_keep_plain_names_and_separate_the_rest():
    """Plain names keep their readable slug; lossy, empty, long or colliding ones get a hash and stay apart."""
    from analysis.report import unique_slugs

    slugs = unique_slugs(["people", "machine:asr:pocketsphinx", "a-b", "a_b", "é", "ü", "y" * 200])
    assert slugs["people"] == "people" and slugs["machine:asr:pocketsphinx"] == "machine_asr_pocketsphinx"
    assert len(set(slugs.values())) == len(slugs)
    assert all(re.fullmatch(r"[0-9a-z_]{1,69}", s) for s in slugs.values())


def test_a_listener_answering_a_clip_twice_counts_once_and_is_named(tmp_path):
    """A table joined by hand held one listener's answer twice (and one listener's two different answers): both
    were counted, weighting that clip double, without a word."""
    table = small_table(listeners=3, machines=0)
    first = table[(table["listener"] == "L0") & (table["stimulus"] == "s002")].index[0]
    second = table.loc[[first]].assign(answer="none", correct=False)
    doubled = pd.concat([table, table.iloc[:2], second], ignore_index=True)
    page = page_text(analyze(tmp_path, doubled))
    assert "2 answer(s) repeat an earlier row exactly" in page
    assert f"listener 'L0' answered clip 's002' again (answer {first + 1} is kept" in page
    exclusions = pd.read_csv(tmp_path / "study-report" / "tables" / "exclusions.csv")
    practice = int((table["stimulus_kind"] == "practice").sum())
    assert exclusions.loc[0, "answers"] == len(table) - practice


def test_a_clip_missing_from_the_manifest_is_one_line(tmp_path):
    """A manifest of another version of the stimuli was taken for the answer options without a word."""
    table = small_table(listeners=2, machines=0)
    clips = table[table["stimulus_kind"] == "test"].drop_duplicates("stimulus")
    manifest = clips.assign(stimulus_id=clips["stimulus"], file=clips["stimulus"] + ".wav")[
        ["stimulus_id", "file", "word", "method", "init", "stage", "pair_id", "condition"]]
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    table.loc[table["stimulus"] == "s005", "stimulus"] = "not-in-the-manifest"
    path = tmp_path / "answers.csv"
    table.to_csv(path, index=False)
    with pytest.raises(CommandError, match=r"answer 6: clip 'not-in-the-manifest' is not in the manifest .*"
                                           r"\(1 clip\(s\) missing\): give the manifest"):
        call_command("analyze", answers=str(path), manifest=str(tmp_path / "manifest.csv"), out=str(tmp_path / "r"),
                     verbosity=0)
    table.loc[table["stimulus"] == "not-in-the-manifest", "stimulus"] = "s005"  # the right manifest is taken
    table.to_csv(path, index=False)
    call_command("analyze", answers=str(path), manifest=str(tmp_path / "manifest.csv"), out=str(tmp_path / "r"),
                 verbosity=0)


@pytest.mark.parametrize("name, keep, message", [
    ("practice only", lambda t: t["stimulus_kind"] == "practice", "no answers left after dropping practice"),
    ("all excluded", lambda t: t["stimulus_kind"] != "", "every listener was excluded"),
])
def test_studies_with_nothing_to_analyse_stop_in_one_line(tmp_path, name, keep, message):
    """Only practice answers, or every listener rejected by the verdict: a one-line error, no traceback."""
    table = small_table(listeners=2, machines=0)
    table = table[keep(table)].assign(analyse_ok=name != "all excluded")
    path = tmp_path / "answers.csv"
    table.to_csv(path, index=False)
    with pytest.raises(CommandError, match=message):
        call_command("analyze", answers=str(path), out=str(tmp_path / "r"), verbosity=0)


@pytest.mark.parametrize("name, select", [
    ("one listener", lambda t: t[t["listener"] == "L0"]),
    ("one word", lambda t: t[t["word"] == "yes"]),
    ("one clip", lambda t: t[t["stimulus"] == "s002"]),
])
def test_degenerate_designs_write_a_report_that_says_what_is_missing(tmp_path, name, select):
    """One listener, word or clip: a report whose summary names why a contrast is missing, never 'nan'."""
    text = summary(analyze(tmp_path, select(small_table(listeners=4, machines=0))))
    assert "nan" not in text.lower()
    assert name == "one word" or "No contrast:" in text


def test_the_crowd_label_table_is_not_said_to_be_drawn_as_heatmaps(tmp_path):
    """Before: every long-format table's link said 'shown as the heatmaps above', the per-clip crowd labels too,
    which no figure draws."""
    text = page_text(analyze(tmp_path, small_table(machines=0)))
    crowd = re.search(r"Long-format table\s+crowd_labels\.csv\s*: [\d,]+ rows \(([^)]*)\)", text)
    assert crowd is not None and "heatmap" not in crowd.group(1) and "crowd_label_vs_intended" in crowd.group(1)
    assert re.search(r"Long-format table\s+confusion\.csv\s*: [\d,]+ rows \(one per combination, drawn in this section's figures\)", text)
