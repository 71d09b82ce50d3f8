"""manage.py analyze end to end: a report from a small experiment, byte-stable, and clean failures."""
from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from django.core.management import CommandError, call_command
from statsmodels.stats.multitest import multipletests

from analysis.report import ReportOptions, build_report
from analysis.table import Exclusion

from .report_data import CELLS, WORDS, small_table, stimuli


def build(table, out, task="identification", pdf=False, **opts):
    options = ReportOptions(exclusion=Exclusion(opts.pop("rule", "gold"), include_machines=True), n_boot=300, **opts)
    return build_report(table, {"slug": "small", "task": task, "words": WORDS}, out, options,
                        {"test-table": "0" * 64}, progress=False, pdf=pdf)


def files(root: Path, suffix: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob(f"*{suffix}"))}


def test_identification_report_is_complete_self_contained_and_byte_stable(tmp_path):
    table = small_table()
    first = build(table, tmp_path / "a", pdf=True)
    second = build(table.sample(frac=1.0, random_state=1), tmp_path / "b", pdf=True)  # answer order must not matter
    html = (first / "report.html").read_text()
    assert not re.search(r"""\bsrc\s*=\s*(?!["']?data:)""", html)  # every image embedded
    for target in re.findall(r"""\bhref\s*=\s*["']?([^"' >]+)""", html):  # links stay inside the report folder
        assert target.startswith("#") or (first / target).is_file(), target
    assert html.count("<img") == len(list((first / "figures").glob("*.png")))
    for name in ["accuracy_by_condition", "confusion", "word_accuracy", "contrasts_glm", "before_after_mcnemar",
                 "contrasts_mixed_bayes", "agreement", "exclusions", "listener_qc"]:
        assert (first / "tables" / f"{name}.csv").is_file(), name
    pngs = sorted(p.stem for p in (first / "figures").glob("*.png"))
    assert pngs == sorted(p.stem for p in (first / "figures").glob("*.pdf"))
    # small multiples: one confusion figure per listener group (a panel per condition), one of differences
    assert {"confusion_people", "confusion_l8", "confusion_differences", "accuracy_by_condition",
            "word_accuracy"} <= set(pngs)
    acc = pd.read_csv(first / "tables" / "accuracy_by_condition.csv")
    assert set(acc["listener_kind"]) == {"human", "machine"} and set(acc["listener_group"]) == {"people", "L8"}
    human = acc[(acc.listener_kind == "human")].set_index("cell")
    assert human.loc["original", "answers"] == 8 * len(WORDS) and human.loc["original", "listeners"] == 8
    assert human["chance"].eq(0.2).all()
    glm = pd.read_csv(first / "tables" / "contrasts_glm.csv")
    by_listener = glm[glm.clusters == "listener"].set_index("contrast")
    assert by_listener.loc["test start vs noise start (after maximization)", "odds_ratio"] > 1
    assert by_listener.loc["after vs before maximization (test start)", "odds_ratio"] < 1
    assert set(glm["clusters"]) == {"listener", "stimulus", "listener+stimulus"}
    mcn = pd.read_csv(first / "tables" / "before_after_mcnemar.csv")
    primary = mcn[mcn["primary"]]
    assert set(primary["matching"]) == {"same listener heard both"} and set(primary["method"]) == {"classifier", "decoder"}
    family = np.concatenate([by_listener["p"], primary["p_mcnemar_exact"]])
    reported = np.concatenate([by_listener["p_holm"], primary["p_holm"]])
    assert np.allclose(reported, multipletests(family, method="holm")[1], atol=2e-6)
    for words in ["Wilson", "cluster-robust", "McNemar", "Holm", "Fleiss", "Exclusion rule"]:
        assert words in html, words
    assert files(first, ".csv") == files(second, ".csv")
    assert files(first, ".png") == files(second, ".png") and files(first, ".pdf") == files(second, ".pdf")
    run = json.loads((first / "run.json").read_text())
    assert run["inputs"] == {"test-table": "0" * 64} and run["seed"] == 0
    assert {"numpy", "pandas", "scipy", "statsmodels", "matplotlib"} <= set(run["versions"])
    assert run["options"]["exclusion"]["rule"] == "gold" and "tables/confusion.csv" in run["outputs"]


def test_one_machine_listener_with_zero_and_perfect_cells_is_analysed(tmp_path):
    """A machine scoring 0 of n in one condition and n of n in another once crashed the error bars."""
    one = small_table(listeners=0, machines=1)
    # three clips per word and cell: 12 answers per cell, where floating point once put the bound past 0 of 12
    table = pd.concat([one.assign(stimulus=one["stimulus"] + f"-{copy}") for copy in range(3)], ignore_index=True)
    test = table.stimulus_kind == "test"
    table.loc[test & (table.condition == "1-classifier-noise"), "answer"] = "none"
    table.loc[test & (table.condition == "1-classifier-noise"), "correct"] = False
    for cond in ("original", "2-classifier-test"):
        rows = test & (table.condition == cond)
        table.loc[rows, "answer"] = table.loc[rows, "word"]
        table.loc[rows, "correct"] = True
    out = build(table, tmp_path / "r")
    acc = pd.read_csv(out / "tables" / "accuracy_by_condition.csv").set_index("cell")
    assert acc.loc["1-classifier-noise / after", "answers"] == 12
    assert acc.loc["1-classifier-noise / after", "accuracy"] == 0.0
    assert acc.loc["original", "accuracy"] == 1.0
    assert (acc["ci_low"] <= acc["accuracy"]).all() and (acc["accuracy"] <= acc["ci_high"]).all()
    assert acc.loc["original", "ci_high"] == 1.0 and acc.loc["1-classifier-noise / after", "ci_low"] == 0.0


def test_a_pilot_with_one_listener_is_analysed_and_says_why_people_have_no_contrast(tmp_path):
    """One person's answers (a pilot) once crashed the listener-clustered errors with a division by zero."""
    out = build(small_table(listeners=1, machines=0), tmp_path / "r")
    glm = pd.read_csv(out / "tables" / "contrasts_glm.csv")
    assert set(glm["clusters"]) == {"stimulus"}  # one listener: no between-listener variance to estimate
    main = pd.read_csv(out / "tables" / "main_contrasts.csv")
    assert len(main) == 3 and main["p"].isna().all()
    assert main["note"].str.contains("need at least two listeners").all()
    assert "need at least two listeners" in (out / "report.html").read_text()


def test_rating_report_with_paper_rule_and_generation_outputs(tmp_path):
    table = small_table("rating", machines=0)
    table.loc[(table.listener == "L0") & (table.condition == "1-classifier-noise"), "rating"] = 4.0
    objective = tmp_path / "objective"
    (objective / "decoder").mkdir(parents=True)
    pd.DataFrame({"method": ["classifier"], "target_rate_a": [0.9], "target_rate_b": [0.2]}).to_csv(
        objective / "summary.csv", index=False)
    heat = pd.DataFrame(np.eye(len(WORDS)), index=pd.Index(WORDS, name="target"), columns=WORDS)
    heat.to_csv(objective / "heatmap_classifier.csv")
    plt.imsave(objective / "decoder" / "heatmap.png", np.eye(len(WORDS)))
    tsne = tmp_path / "tsne"
    tsne.mkdir()
    pd.DataFrame({"utterance": ["b", "a"], "x": [0.5, -1.0], "y": [2.0, 0.25]}).to_csv(tsne / "tsne.csv", index=False)
    plt.imsave(tsne / "tsne.png", np.ones((8, 12)))
    out = build(table, tmp_path / "r", task="rating", rule="paper", objective_dir=objective, tsne_dir=tsne)
    exclusions = pd.read_csv(out / "tables" / "exclusions.csv").set_index("step")
    assert exclusions.loc["paper rule: rated a classifier-noise clip Good or Excellent", "listeners"] >= 1
    qc = pd.read_csv(out / "tables" / "listener_qc.csv").set_index("listener")
    assert qc.loc["L0", "excluded"]
    assert exclusions.loc["after exclusions", "listeners"] == 8 - qc["excluded"].sum()
    ratings = pd.read_csv(out / "tables" / "rating_by_condition.csv").set_index("cell")
    assert ratings.loc["original", "mean"] > ratings.loc["1-classifier-noise / after", "mean"]
    assert (ratings["ci_low"] <= ratings["mean"]).all() and (ratings["mean"] <= ratings["ci_high"]).all()
    tests = pd.read_csv(out / "tables" / "rating_tests.csv")
    assert (tests["p_holm"] >= tests["p"]).all() and set(tests["listener_group"]) == {"people"}
    for stem in ["rating_histograms", "rating_by_word", "rating_by_condition", "objective_classifier_heatmap",
                 "objective_decoder_heatmap", "tsne_tsne"]:
        assert (out / "figures" / f"{stem}.png").is_file(), stem
    assert not list((out / "figures").glob("*.pdf"))  # PDFs only on request (--pdf)
    assert (out / "figures" / "tsne_tsne.png").read_bytes() == (tsne / "tsne.png").read_bytes()
    assert pd.read_csv(out / "tables" / "tsne_tsne.csv")["x"].tolist() == [-1.0, 0.5]
    assert (out / "tables" / "objective_summary.csv").is_file()
    assert any("objective/summary.csv" in k for k in json.loads((out / "run.json").read_text())["inputs"])


def test_pdfs_are_written_only_when_asked_for_and_linked_from_the_page(tmp_path):
    table = small_table("rating", listeners=4, machines=1)
    plain = build(table, tmp_path / "png", task="rating", rule="none")
    printed = build(table, tmp_path / "pdf", task="rating", rule="none", pdf=True)
    pngs = sorted(p.stem for p in (plain / "figures").glob("*.png"))
    assert pngs and not list((plain / "figures").glob("*.pdf")) and ".pdf" not in (plain / "report.html").read_text()
    assert sorted(p.stem for p in (printed / "figures").glob("*.pdf")) == pngs
    assert all((printed / "figures" / f"{stem}.pdf").read_bytes().startswith(b"%PDF") for stem in pngs)
    assert "figures/rating_by_word.pdf" in (printed / "report.html").read_text()
    assert files(plain, ".png") == files(printed, ".png") and files(plain, ".csv") == files(printed, ".csv")
    assert json.loads((printed / "run.json").read_text())["figure_formats"] == ["png", "pdf"]


def test_figures_drawn_during_the_analysis_are_the_ones_drawn_when_writing(tmp_path):
    """build_report draws PNGs in a background process while later stages run; same bytes, no process left."""
    import multiprocessing

    from analysis.report import analyse, write_report

    table = small_table(listeners=4, machines=1)
    ahead = build(table, tmp_path / "ahead")
    options = ReportOptions(exclusion=Exclusion("gold", include_machines=True), n_boot=300)
    result = analyse(table, {"slug": "small", "task": "identification", "words": WORDS}, options, progress=False)
    assert result.drawing is None
    later = write_report(result, tmp_path / "later", {"test-table": "0" * 64}, progress=False)
    assert files(ahead, ".png") == files(later, ".png") and len(files(ahead, ".png")) >= 8
    assert not multiprocessing.active_children()


def test_machine_ratings_get_permutation_tests_of_their_own(tmp_path):
    out = build(small_table("rating", listeners=4, machines=1), tmp_path / "r", task="rating", rule="none")
    tests = pd.read_csv(out / "tables" / "rating_tests.csv")
    machine = tests[tests["listener_group"] == "L4"]
    assert len(machine) and machine["test"].str.endswith("_permutation").all()
    assert not tests[tests["listener_group"] == "people"]["test"].str.endswith("_permutation").any()


def test_failed_run_keeps_the_previous_report_and_leaves_no_temp_folder(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.html").write_text("previous")
    with pytest.raises(CommandError, match="objective folder not found"):
        call_command("analyze", mturk_csv=str(write_batch(tmp_path)[0]), manifest=str(tmp_path / "manifest.csv"),
                     out=str(out), objective=str(tmp_path / "missing"), verbosity=0)
    assert (out / "report.html").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Batch_1_batch_results.csv", "manifest.csv", "report"]


def write_batch(tmp_path, rows=None, manifest_rows=None):
    manifest_rows = manifest_rows or [
        {"stimulus_id": f"s{i}", "file": f"wav/{i:010x}.wav", "word": w, "method": m, "init": init, "stage": "after",
         "pair_id": "", "condition": c}
        for i, (w, m, init, c) in enumerate([("yes", "classifier", "noise", "1-classifier-noise"),
                                             ("no", "decoder", "noise", "3-decoder-noise"),
                                             ("up", "classifier", "noise", "1-classifier-noise"),
                                             ("down", "decoder", "noise", "3-decoder-noise")])]
    pd.DataFrame(manifest_rows).to_csv(tmp_path / "manifest.csv", index=False)
    labels = ["Bad", "Poor", "Fair (equally clear and unclear)", "Good (mostly clear)", "Excellent"]
    rows = rows or [{"WorkerId": f"W{k}", "AssignmentId": f"A{k}{i}", "AssignmentStatus": "Approved",
                     "Input.audio_url": f"https://cdn.example/x/{i:010x}.wav",
                     "Answer.audio-naturalness.label": labels[(i + k) % 3 + (2 if i % 2 else 0)]}
                    for k in range(4) for i in range(4)]
    path = tmp_path / "Batch_1_batch_results.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path, tmp_path / "manifest.csv"


def test_mturk_batch_route_through_the_command(tmp_path):
    csv_path, manifest = write_batch(tmp_path)
    call_command("analyze", mturk_csv=str(csv_path), manifest=str(manifest), out=str(tmp_path / "out"),
                 exclude="none", pdf=True, verbosity=0)
    assert (tmp_path / "out" / "figures" / "rating_by_condition.pdf").is_file()  # --pdf reaches the writer
    ratings = pd.read_csv(tmp_path / "out" / "tables" / "rating_by_condition.csv")
    assert set(ratings["condition"]) == {"1-classifier-noise", "3-decoder-noise"} and ratings["answers"].sum() == 16
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert set(run["inputs"]) == {str(csv_path), str(manifest)}


@pytest.mark.parametrize("problem, message", [
    ("missing column", "lacks column.*WorkerId"),
    ("unknown audio", "not in the manifest"),
    ("no manifest", "--mturk-csv needs --manifest"),
    ("bad threshold", "between 0 and 1"),
])
def test_bad_batch_input_is_one_command_error(tmp_path, problem, message):
    csv_path, manifest = write_batch(tmp_path)
    raw = pd.read_csv(csv_path)
    if problem == "missing column":
        raw.drop(columns=["WorkerId"]).to_csv(csv_path, index=False)
    if problem == "unknown audio":
        raw.loc[0, "Input.audio_url"] = "https://cdn.example/x/ffffffffff.wav"
        raw.to_csv(csv_path, index=False)
    kwargs = {"mturk_csv": str(csv_path), "out": str(tmp_path / "out"), "verbosity": 0}
    if problem != "no manifest":
        kwargs["manifest"] = str(manifest)
    if problem == "bad threshold":
        kwargs["min_gold_accuracy"] = 1.5
    if problem == "unknown audio":
        kwargs["strict"] = True  # without it the row is left out and counted, as import-results does
    with pytest.raises(CommandError, match=message):
        call_command("analyze", **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.django_db
def test_unknown_and_empty_experiments_are_command_errors(tmp_path):
    from evaluation.models import Experiment

    with pytest.raises(CommandError, match="no experiment named 'nope'"):
        call_command("analyze", experiment="nope", out=str(tmp_path / "out"), verbosity=0)
    Experiment.objects.create(slug="empty", words=WORDS)
    with pytest.raises(CommandError, match="no answers"):
        call_command("analyze", experiment="empty", out=str(tmp_path / "out"), verbosity=0)
    assert not (tmp_path / "out").exists()


@pytest.mark.django_db
def test_report_from_an_experiment_in_the_database(tmp_path):
    from evaluation.models import Assignment, Experiment, Participant, Response, Stimulus

    experiment = Experiment.objects.create(slug="db-small", words=WORDS, task="identification")
    rows = small_table(listeners=4, machines=1)
    stims = {}
    for s in stimuli():
        stims[s["stimulus"]] = Stimulus.objects.create(
            experiment=experiment, stimulus_id=s["stimulus"], audio=f"stimuli/{s['stimulus']}.wav", word=s["word"],
            method=s["method"], init=s["init"], stage=s["stage"], condition=s["condition"], pair_id=s["pair_id"],
            kind=s["stimulus_kind"])
    for listener, answers in rows.groupby("listener", sort=True):
        kind = answers["listener_kind"].iloc[0]
        participant = Participant.objects.create(experiment=experiment, kind=kind, worker_id=listener,
                                                 source="machine" if kind == "machine" else "web", analyse_ok=True)
        for pos, row in enumerate(answers.itertuples()):
            assignment = Assignment.objects.create(participant=participant, stimulus=stims[row.stimulus], position=pos,
                                                   play_count=1, played_to_end=True, answered=True)
            Response.objects.create(assignment=assignment, participant=participant, stimulus=stims[row.stimulus],
                                    answer=row.answer, play_count=1, listened_to_end=True, response_ms=1000)
    out = tmp_path / "db-report"
    call_command("analyze", experiment="db-small", out=str(out), include_machines=True, verbosity=0)
    acc = pd.read_csv(out / "tables" / "accuracy_by_condition.csv")
    assert set(acc["listener_kind"]) == {"human", "machine"}
    human = acc[acc.listener_kind == "human"]
    assert human["answers"].sum() == 4 * len(WORDS) * len(CELLS)
    expected = rows[(rows.listener_kind == "human") & (rows.stimulus_kind == "test")]["correct"].astype(bool).sum()
    assert human["correct"].sum() == expected
    run = json.loads((out / "run.json").read_text())
    (key, digest), = run["inputs"].items()
    assert key == "database:db-small:long_table" and len(digest) == 64
