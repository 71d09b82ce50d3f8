"""Hostile input on the command line: one line, exit status 1, and nothing written, half-written or lost.

Each test here was a traceback, a silent acceptance or a data loss before its fix. `refused` runs a command
the way manage.py does (call_command raises the CommandError that manage.py prints as
"CommandError: <message>" and exits with its status) and returns the message.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from django.core.management import call_command
from django.core.management.base import CommandError

from evaluation.models import Experiment, Stimulus
from tests.helpers.corpora import make_corpus, save_autoencoder, save_classifier
from tests.helpers.survey import FIXTURE, make_experiment, media_files

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["down", "no", "up", "yes"]


def refused(*argv: str) -> str:
    """The one-line message a command refuses `argv` with (exit status 1); anything else fails the test."""
    with pytest.raises(CommandError) as caught:
        call_command(*argv, stdout=io.StringIO(), stderr=io.StringIO(), verbosity=0)
    message = str(caught.value)
    assert caught.value.returncode == 1
    assert message and "\n" not in message and "\r" not in message and "Traceback" not in message
    return message


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (names relative to it) with its checksum."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny tone corpus and untrained checkpoints: every refusal below comes before any real work."""
    root = tmp_path_factory.mktemp("models")
    return {"corpus": make_corpus(root / "corpus"), "A": save_classifier(root / "A.pt", 1),
            "B": save_classifier(root / "B.pt", 2), "AE": save_autoencoder(root / "AE.pt")}


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict[str, Path]:
    """An MTurk results file of 8 workers over the fixture stimulus set, and a report made from it."""
    root = tmp_path_factory.mktemp("batch")
    with FIXTURE.open(newline="", encoding="utf-8") as handle:
        names = [Path(row["file"]).name for row in csv.DictReader(handle)]
    rng = random.Random(0)
    results = root / "Batch_1_batch_results.csv"
    with results.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["HITId", "AssignmentId", "WorkerId", "AssignmentStatus", "SubmitTime", "Input.audio_url",
                         "Answer.heard-word.label"])
        for w in range(8):
            for n, name in enumerate(names):
                writer.writerow([f"H{n}", f"A{w}-{n}", f"W{w}", "Submitted", "Sun Nov 22 04:04:22 PST 2026",
                                 f"https://files.example.org/x/{name}", rng.choice(WORDS)])
    report = root / "report"
    call_command("analyze", "--mturk-csv", str(results), "--manifest", str(FIXTURE), "--out", str(report),
                 stdout=io.StringIO(), verbosity=0)
    assert (report / "report.html").is_file()
    return {"results": results, "report": report}


def analyze_args(batch, out) -> list[str]:
    return ["analyze", "--mturk-csv", str(batch["results"]), "--manifest", str(FIXTURE), "--out", str(out)]


# ------------------------------------------------------------------------------------------- the base


@pytest.mark.django_db
def test_a_nul_byte_in_any_argument_is_one_line_before_the_os_sees_it(media, tmp_path):
    """Only code (call_command) can pass one; the OS then raised 'embedded null byte' with a traceback."""
    work = tmp_path / "work"
    work.mkdir()
    assert "NUL byte" in refused("load_stimuli", str(FIXTURE), "--experiment", "e1", "--create",
                                 "--gold-from-corpus", str(work / "a\x00b"))
    assert "NUL byte" in refused("make_corpus", "--out", str(work / "c\x00rpus"), "--words", "yes", "--speakers", "3")
    assert not Experiment.objects.exists() and media_files(media) == [] and list(work.iterdir()) == []


@pytest.mark.django_db
def test_a_line_break_in_a_path_does_not_split_the_message(media, tmp_path):
    manifest = tmp_path / "odd\nname.csv"
    message = refused("load_stimuli", str(manifest), "--experiment", "e1", "--create")
    assert message.endswith("odd\\nname.csv does not exist")


def test_from_the_command_line_a_line_break_is_still_one_line_of_stderr(tmp_path):
    blocker = tmp_path / "x\ny"
    blocker.write_text("keep me")
    run = subprocess.run([sys.executable, "manage.py", "make_survey_fixture", str(blocker)], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "HEARSAY_DATA_DIR": str(tmp_path / "data")})
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr == f"CommandError: output {tmp_path}/x\\ny exists and is not a folder\n"
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("argv, line", [
    (["make_corpus", "--out", "corpus", "--speakers", "nan"],
     "CommandError: argument --speakers: invalid int value: 'nan' (see manage.py make_corpus --help)\n"),
    (["mturk", "create-hits", "--experiment", "e1", "--url", "https://x.org/s/e1/", "--hits", "1e3"],
     "CommandError: argument --hits: invalid int value: '1e3' (see manage.py mturk create-hits --help)\n"),
])
def test_a_value_the_parser_refuses_is_one_line_and_exit_status_1(tmp_path, argv, line):
    """argparse printed its whole usage block (6-12 lines) and exited with 2."""
    run = subprocess.run([sys.executable, "manage.py", *argv], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "HEARSAY_DATA_DIR": str(tmp_path / "data")})
    assert (run.returncode, run.stderr, run.stdout) == (1, line, "")


# ------------------------------------------------------------------------------------------- analyze


@pytest.mark.django_db
def test_analyze_never_replaces_a_folder_that_holds_something_else(batch, tmp_path):
    """The report replaces its --out folder whole: pointed at a stimulus set, it used to delete it."""
    stimuli = tmp_path / "stimuli"
    shutil.copytree(FIXTURE.parent, stimuli)
    before = snapshot(stimuli)
    message = refused(*analyze_args(batch, stimuli))
    assert "holds no previous report" in message and str(stimuli) in message
    assert snapshot(stimuli) == before


@pytest.mark.django_db
def test_analyze_output_under_a_file_is_one_line_and_leaves_nothing(batch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    message = refused(*analyze_args(batch, blocker / "report"))
    assert message == f"cannot write the report to {blocker / 'report'}: {blocker} is not a folder"
    assert blocker.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.django_db
def test_analyze_refuses_a_negative_seed_and_keeps_the_previous_report(batch):
    """numpy refuses negative seeds: the rating statistics crashed after the analysis had run."""
    before = snapshot(batch["report"])
    assert refused(*analyze_args(batch, batch["report"]), "--seed", "-1") == "--seed must be a non-negative integer, got -1"
    assert snapshot(batch["report"]) == before
    assert not [p for p in batch["report"].parent.iterdir() if p.name.startswith(".")]


@pytest.mark.django_db
def test_analyze_refuses_a_nul_byte_in_an_objective_table_and_keeps_the_previous_report(batch, tmp_path):
    """pandas read it, and the NUL went into the report's own table."""
    objective = tmp_path / "objective"
    objective.mkdir()
    (objective / "summary.csv").write_bytes(b"method,word,n\nclassifier,yes,4\x00\n")
    before = snapshot(batch["report"])
    assert refused(*analyze_args(batch, batch["report"]), "--objective", str(objective)) == \
        f"cannot read {objective / 'summary.csv'}: it contains a NUL byte (not a text CSV)"
    assert snapshot(batch["report"]) == before


# ------------------------------------------------------------------------------------------- load_stimuli


@pytest.mark.parametrize("extra, message", [
    (["--ratings-per-stimulus", "99999999999999999999"], "--ratings-per-stimulus must be between 1 and 2147483647"),
    (["--gold-per-word", "0"], "--gold-per-word must be between 1 and 2147483647"),
    (["--gold-per-word", "-1"], "--gold-per-word must be between 1 and 2147483647"),
    (["--title", "t" * 201], "--title must be at most 200 characters, got 201"),
])
@pytest.mark.django_db
def test_load_stimuli_refuses_numbers_and_titles_out_of_range_and_loads_nothing(media, models, extra, message):
    assert refused("load_stimuli", str(FIXTURE), "--experiment", "e1", "--create",
                   "--gold-from-corpus", str(models["corpus"]), *extra) == message
    assert not Experiment.objects.exists() and not Stimulus.objects.exists() and media_files(media) == []


@pytest.mark.parametrize("slug", ["two words", "a/../b", "x" * 51, "caf\u00e9!"])
@pytest.mark.django_db
def test_load_stimuli_creates_no_experiment_whose_name_is_no_url(media, slug):
    """Such an experiment broke every page and command that builds its URL (prolific_url: a traceback)."""
    assert "must be 1-50 letters, digits, '_' or '-'" in refused("load_stimuli", str(FIXTURE), "--experiment", slug, "--create")
    assert not Experiment.objects.exists() and media_files(media) == []


@pytest.mark.django_db
def test_a_folder_given_for_a_file_is_named_as_such(media, models):
    assert refused("load_stimuli", str(FIXTURE.parent), "--experiment", "e1", "--create") == \
        f"manifest {FIXTURE.parent} is a folder, not a file"
    make_experiment("e1")
    assert refused("listen", "--experiment", "e1", "--machine", "evaluator", "--checkpoint", str(models["corpus"])) == \
        f"checkpoint {models['corpus']} is a folder, not a file"
    assert refused("mturk", "import-results", str(FIXTURE.parent), "--experiment", "e1") == \
        f"MTurk results file {FIXTURE.parent} is a folder, not a file"


# ------------------------------------------------------------------------------------------- listen, prolific_url, mturk


@pytest.mark.parametrize("device", ["bogus", "gpu"])
@pytest.mark.django_db
def test_listen_refuses_an_unknown_or_missing_device_in_one_line(media, models, device):
    experiment = make_experiment("e1")
    message = refused("listen", "--experiment", "e1", "--machine", "evaluator", "--checkpoint", str(models["A"]),
                      "--device", device)
    assert message == f"unknown device {device!r}: use auto, cpu or cuda"
    assert not experiment.participants.exists()


@pytest.mark.parametrize("base", ["https://survey.example.org/?ref=1", "https://survey.example.org/#top"])
@pytest.mark.django_db
def test_prolific_url_refuses_a_base_url_with_a_query_or_fragment(media, base):
    """It printed https://survey.example.org/?ref=1/s/e1/&PROLIFIC_PID=..., which sends listeners nowhere."""
    make_experiment("e1", completion_code="ABC123")
    out = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("prolific_url", "--experiment", "e1", "--base-url", base, stdout=out)
    assert caught.value.returncode == 1 and "\n" not in str(caught.value)
    assert str(caught.value) == f"--base-url {base!r} must be the survey's address without ?query or #fragment"
    assert out.getvalue() == ""


@pytest.mark.django_db
def test_export_batch_to_a_file_or_below_one_is_one_line_and_changes_nothing(media, tmp_path):
    make_experiment("e1")
    work = tmp_path / "work"
    work.mkdir()
    blocker = work / "batch.csv"
    blocker.write_text("keep me")
    args = ["mturk", "export-batch", "--experiment", "e1", "--base-url", "https://survey.example.org"]
    assert refused(*args, "--out", str(blocker)) == f"output {blocker} exists and is not a folder"
    assert refused(*args, "--out", str(blocker / "sub")) == \
        f"cannot create the output folder {blocker / 'sub'}: {blocker} is not a folder"
    assert blocker.read_text() == "keep me" and [p.name for p in work.iterdir()] == ["batch.csv"]


@pytest.mark.django_db
def test_make_survey_fixture_refuses_a_file_a_negative_seed_and_repeated_words(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert refused("make_survey_fixture", str(blocker)) == f"output {blocker} exists and is not a folder"
    assert refused("make_survey_fixture", str(blocker / "set")).startswith(f"cannot create {blocker / 'set' / 'wav'}")
    assert refused("make_survey_fixture", str(tmp_path / "set"), "--seed", "-1") == "--seed must be a non-negative integer, got -1"
    assert refused("make_survey_fixture", str(tmp_path / "set"), "--words", "yes", "yes") == "--words names a word twice"
    assert blocker.read_text() == "keep me" and [p.name for p in tmp_path.iterdir()] == ["file"]


# ------------------------------------------------------------------------------------------- corpus and training


def test_make_corpus_refuses_an_impossible_size_before_drawing_any_speaker(tmp_path, monkeypatch):
    """--speakers 10**21 used to hang in the speaker draw, with no output and no end."""
    from generation import corpus

    monkeypatch.setattr(corpus, "draw_speakers", lambda *a: pytest.fail("reached the speaker draw"))
    assert refused("make_corpus", "--out", str(tmp_path / "c"), "--words", "yes", "--speakers", str(10**21)) == \
        f"1 words x {10**21} speakers x 1 takes is {10**21:,} clips; at most 10,000,000 can be made"
    assert refused("make_corpus", "--out", str(tmp_path / "c"), "--words", "yes,no", "--speakers", "3",
                   "--takes", "2000000").endswith("at most 10,000,000 can be made")
    assert list(tmp_path.iterdir()) == []


def test_a_byte_order_mark_in_a_split_list_is_not_part_of_the_first_name(models, tmp_path):
    """A list saved by a Windows editor (BOM, CRLF) was refused: its first entry 'did not exist'."""
    from generation.corpus import read_corpus

    root = shutil.copytree(models["corpus"], tmp_path / "corpus")
    for name in ("testing_list.txt", "validation_list.txt"):
        text = (root / name).read_text()
        (root / name).write_bytes(("\ufeff" + text.replace("\n", "\r\n")).encode())
    corpus = read_corpus(root)
    assert {u.split for u in corpus.utterances} == {"train", "validation", "test"}
    assert len(corpus.split("test")) == len(read_corpus(models["corpus"]).split("test"))


def test_a_nul_byte_in_a_split_list_is_one_clean_line(models, tmp_path):
    root = shutil.copytree(models["corpus"], tmp_path / "corpus")
    with (root / "testing_list.txt").open("ab") as handle:
        handle.write(b"bed/\x00.wav\n")
    message = refused("train_classifier", "--data", str(root), "--out", str(tmp_path / "A.pt"), "--epochs", "1")
    assert message == f"cannot read {root / 'testing_list.txt'}: it contains a NUL byte (not a text file)"
    assert not (tmp_path / "A.pt").exists()


def test_a_corpus_clip_of_nan_samples_is_refused_before_training(models, tmp_path):
    """It trained to a checkpoint of NaN weights and exit status 0."""
    root = shutil.copytree(models["corpus"], tmp_path / "corpus")
    clip = root / "bed" / "00000000_nohash_0.wav"
    sf.write(clip, np.full(8000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    out = tmp_path / "A.pt"
    message = refused("train_classifier", "--data", str(root), "--out", str(out), "--epochs", "1", "--device", "cpu")
    assert message == f"audio file {clip} is corrupt: it holds NaN or infinite samples"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


@pytest.mark.parametrize("command, lr", [("train_classifier", "nan"), ("train_classifier", "inf"),
                                         ("train_autoencoder", "nan"), ("train_autoencoder", "inf")])
def test_training_refuses_a_learning_rate_that_is_not_a_finite_positive_number(models, tmp_path, command, lr):
    """nan was a traceback from the optimizer; inf trained a checkpoint of NaN weights with exit status 0."""
    out = tmp_path / "M.pt"
    assert "learning rate positive and finite" in refused(command, "--data", str(models["corpus"]), "--out", str(out),
                                                          "--lr", lr, "--epochs", "1", "--device", "cpu")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, option", [("train_gan", "--lr-g"), ("train_gan", "--lr-d"),
                                             ("train_vocoder", "--lr"), ("train_vocoder", "--lr-d")])
def test_gan_and_vocoder_training_refuse_an_infinite_learning_rate(models, tmp_path, command, option):
    assert "learning rates must be positive and finite" in refused(
        command, "--data", str(models["corpus"]), "--out", str(tmp_path / "M.pt"), option, "inf", "--epochs", "1",
        "--device", "cpu")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["train_gan", "train_vocoder"])
def test_gan_and_vocoder_training_refuse_a_nan_time_budget(models, tmp_path, command):
    assert "max_seconds" in refused(command, "--data", str(models["corpus"]), "--out", str(tmp_path / "M.pt"),
                                    "--max-seconds", "nan", "--epochs", "1", "--device", "cpu")
    assert list(tmp_path.iterdir()) == []


def test_training_never_overwrites_a_file_that_is_not_its_own_kind_of_checkpoint(models, tmp_path):
    """--out pointed at a manifest (or at the autoencoder) replaced it with the new classifier."""
    manifest = tmp_path / "manifest.csv"
    shutil.copy(FIXTURE, manifest)
    autoencoder = shutil.copy(models["AE"], tmp_path / "AE.pt")
    before = snapshot(tmp_path)
    args = ["train_classifier", "--data", str(models["corpus"]), "--epochs", "1", "--device", "cpu"]
    assert refused(*args, "--out", str(manifest)) == \
        f"output {manifest} exists and is not a Hearsay checkpoint; choose another file name"
    assert refused(*args, "--out", str(autoencoder)) == \
        f"output {autoencoder} holds an autoencoder; choose another file name for a classifier"
    assert snapshot(tmp_path) == before


def test_a_model_far_larger_than_memory_is_one_line_and_writes_no_checkpoint(models, tmp_path):
    """--latent 10**14 was torch's allocator traceback."""
    out = tmp_path / "AE.pt"
    message = refused("train_autoencoder", "--data", str(models["corpus"]), "--out", str(out), "--latent", str(10**14),
                      "--epochs", "1", "--device", "cpu")
    assert message.startswith("out of memory:") and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- generate, objective, explain


def test_generate_refuses_an_impossible_sample_count_before_making_its_folder(models, tmp_path):
    """--per-class 10**21 was a traceback from torch after run.json had claimed the folder for those settings."""
    out = tmp_path / "stimuli"
    args = ["generate", "--classifier", str(models["A"]), "--evaluator", str(models["B"]), "--decoder", str(models["AE"]),
            "--corpus", str(models["corpus"]), "--out", str(out), "--words", "yes", "--jobs", "1", "--device", "cpu"]
    assert refused(*args, "--per-class", str(10**21), "--max-attempts", "1").startswith(
        "--per-class x --max-attempts must be at most 100,000")
    assert refused(*args, "--per-class", "3", "--max-attempts", "40000").endswith("got 120,000")
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--n", str(10**12)], "n must be between 1 and 1,000,000 noise starts per word and method, got 1000000000000"),
    (["--n", "4", "--batch-size", "0"], "batch size must be at least 1, got 0"),
    (["--n", "4", "--batch-size", "-1"], "batch size must be at least 1, got -1"),
])
def test_objective_refuses_impossible_counts_before_making_its_folder(models, tmp_path, extra, message):
    """--n 10**12 was a traceback after run.json was written; --batch-size 0 silently meant the default."""
    out = tmp_path / "objective"
    assert refused("objective", "--classifier", str(models["A"]), "--evaluator", str(models["B"]), "--methods", "classifier",
                   "--words", "yes", "--out", str(out), "--jobs", "1", "--device", "cpu", *extra) == message
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--random-runs", str(10**16)], f"random_runs must be between 1 and 1000, got {10**16}"),
    (["--ig-steps", str(10**14)], "--ig-steps must be between 1 and 10,000 and --lime-samples between 2 and 100,000"),
    (["--lime-samples", str(10**9)], "--ig-steps must be between 1 and 10,000 and --lime-samples between 2 and 100,000"),
])
def test_explain_refuses_impossible_counts_before_making_its_folder(models, tmp_path, extra, message):
    """Each was a traceback (an array or a path too big to allocate) after the output folder was made."""
    out = tmp_path / "explain"
    assert refused("explain", "--classifier", str(models["A"]), "--corpus", str(models["corpus"]), "--out", str(out),
                   "--methods", "integrated_gradients", "--n", "1", "--tune-n", "0", "--device", "cpu", *extra) == message
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["visualize", "--tv", "nan"],
    ["visualize", "--lr", "inf"],
    ["importance_masks", "--corpus", "{corpus}", "--n", "1", "--sparsity", "nan"],
    ["veracity", "--corpus", "{corpus}", "--n", "1", "--attack", "spec", "--epsilon", "nan"],
])
def test_explanation_commands_refuse_nan_settings(models, tmp_path, argv):
    """NaN weights ran to 'results' (a NaN total-variation weight, masks of NaN sparsity); NaN epsilon was a traceback."""
    out = tmp_path / "out"
    argv = [a.replace("{corpus}", str(models["corpus"])) for a in argv]
    refused(argv[0], "--classifier", str(models["A"]), "--out", str(out), "--device", "cpu", "--steps", "1", *argv[1:])
    assert not out.exists()


def test_the_load_bench_refuses_a_port_in_use_instead_of_measuring_another_server():
    """Before: gunicorn failed to bind, and the bench drove its listeners against whatever held the port, then ended
    in a traceback ('no median for empty data')."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "--port", str(port), "--listeners", "1",
                               "--database", "hearsay_bench_never_made"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == f"load.py: port {port} is in use (Address already in use); choose a free one with --port"
