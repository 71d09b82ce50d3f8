"""`manage.py generate`: the perceptual stimulus set a listening test is built from."""
import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from django.core.management import CommandError, call_command

from generation import checkpoint
from generation.features import FeatureConfig, extract_files
from generation.stimuli import COLUMNS, JOURNAL, generate_stimuli
from generation.vocoder import GriffinLimVocoder
from tests.helpers.corpora import TONE_CORPUS_WORDS as WORDS
from tests.helpers.corpora import make_corpus, save_autoencoder, save_classifier


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    return {
        "root": root,
        "corpus": make_corpus(root / "corpus"),
        "A": save_classifier(root / "A.pt", 1),
        "B": save_classifier(root / "B.pt", 2),
        "AE": save_autoencoder(root / "AE.pt"),
    }


def args(s, out, **extra):
    opts = {"classifier": str(s["A"]), "evaluator": str(s["B"]), "decoder": str(s["AE"]), "corpus": str(s["corpus"]),
            "out": str(out), "per_class": 1, "max_attempts": 3, "seed": 7, "device": "cpu", "verbosity": 0}
    opts.update(extra)
    return opts


def call_command_output(setup, out, **extra) -> str:
    buf = io.StringIO()
    call_command("generate", stdout=buf, **args(setup, out, **extra))
    return buf.getvalue()


def read_manifest(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def digest_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in ("run.json", JOURNAL)}


@pytest.fixture(scope="module")
def done(setup):
    out = setup["root"] / "stimuli"
    call_command("generate", **args(setup, out))
    return out


def test_manifest_follows_the_paper_design(done):
    rows = read_manifest(done / "manifest.csv")
    with open(done / "manifest.csv", newline="", encoding="utf-8") as fh:
        assert next(csv.reader(fh)) == list(COLUMNS)
    counts = {}
    for r in rows:
        key = (r["word"], r["condition"], r["method"], r["init"], r["stage"])
        counts[key] = counts.get(key, 0) + 1
    for w in WORDS:
        assert counts[(w, "1-classifier-noise", "classifier", "noise", "after")] == 1
        assert counts[(w, "2-classifier-test", "classifier", "test", "before")] == 1
        assert counts[(w, "2-classifier-test", "classifier", "test", "after")] == 1
        assert counts[(w, "3-decoder-noise", "decoder", "noise", "after")] == 1
        assert counts[(w, "4-decoder-test", "decoder", "test", "before")] == 1
        assert counts[(w, "4-decoder-test", "decoder", "test", "after")] == 1
        assert counts[(w, "original", "natural", "none", "original")] == 1
    assert len(rows) == 7 * len(WORDS)
    assert len({r["stimulus_id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["status"] in {"converged", "unconverged", "original"}
        assert r["classifier_sha256"] and r["evaluator_sha256"]
        assert r["pred_a"] in WORDS and r["pred_b"] in WORDS
        assert 0.0 <= float(r["prob_a"]) <= 1.0 and 0.0 <= float(r["prob_b"]) <= 1.0
        if r["stage"] == "after":
            assert 1 <= int(r["attempts"]) <= 3
            assert (r["status"] == "converged") == (r["pred_a"] == r["word"])
            if r["status"] == "unconverged":
                assert r["attempts"] == "3"


def test_pair_ids_link_before_after_and_original(done):
    rows = read_manifest(done / "manifest.csv")
    pairs = {}
    for r in rows:
        if r["pair_id"]:
            pairs.setdefault(r["pair_id"], []).append(r)
        else:
            assert r["condition"] in {"1-classifier-noise", "3-decoder-noise"}
    assert len(pairs) == 2 * len(WORDS)
    for members in pairs.values():
        stages = sorted(r["stage"] for r in members)
        assert stages in (["after", "before"], ["after", "before", "original"])
        assert len({r["word"] for r in members}) == 1
        assert len({r["source_file"] for r in members}) == 1 and members[0]["source_file"].startswith(members[0]["word"] + "/")
        if "original" in stages:
            assert {r["condition"] for r in members} == {"4-decoder-test", "original"}


def test_files_are_opaque_valid_audio_with_features(done):
    rows = read_manifest(done / "manifest.csv")
    labels = WORDS + ["classifier", "decoder", "natural", "noise", "test", "before", "after", "original"]
    for r in rows:
        name = Path(r["file"]).name
        assert r["file"] == f"wav/{r['stimulus_id']}.wav"
        assert not any(label in name for label in labels)
        info = sf.info(str(done / r["file"]))
        assert info.channels == 1 and info.frames > 0 and info.subtype == "PCM_16"
        wave, _ = sf.read(str(done / r["file"]), dtype="float32")
        assert np.isfinite(wave).all() and np.abs(wave).max() > 0
        assert np.load(done / "features" / f"{r['stimulus_id']}.npy").shape == (90, 80)
    assert sorted(p.name for p in (done / "wav").iterdir()) == sorted(Path(r["file"]).name for r in rows)
    natural = [r for r in rows if r["method"] == "natural"]
    assert all(sf.info(str(done / r["file"])).samplerate == 16000 for r in natural)


def test_before_stages_are_the_real_features_and_the_reconstruction(done, setup):
    rows = read_manifest(done / "manifest.csv")
    ae = checkpoint.load(setup["AE"]).model
    for r in rows:
        if r["stage"] not in ("before", "original"):
            continue
        real = torch.from_numpy(extract_files([setup["corpus"] / r["source_file"]]))
        saved = torch.from_numpy(np.load(done / "features" / f"{r['stimulus_id']}.npy"))
        expected = real[0] if r["method"] != "decoder" else ae(real)[0].detach()
        torch.testing.assert_close(saved, expected, atol=2e-4, rtol=0)


def test_run_json_records_provenance(done, setup):
    run = json.loads((done / "run.json").read_text())
    assert run["complete"] is True
    assert run["identity"]["classifier_sha256"] == checkpoint.file_sha256(setup["A"])
    assert run["identity"]["settings"]["classifier"]["lr"] == 0.01
    assert run["identity"]["settings"]["decoder"]["lr"] == 0.1
    assert run["identity"]["seed"] == 7 and run["identity"]["vocoder"]["vocoder"] == "griffin-lim"
    assert {"torch", "numpy", "python"} <= set(run["versions"])
    assert run["manifest_sha256"] == checkpoint.file_sha256(done / "manifest.csv")


def test_rerun_after_losing_files_resumes_to_identical_output(done, setup, tmp_path):
    before = digest_tree(done)
    copy = tmp_path / "copy"
    shutil.copytree(done, copy)
    journal = (copy / JOURNAL).read_text().splitlines(keepends=True)
    (copy / JOURNAL).write_text("".join(journal[:-1]) + journal[-1][:40])  # last unit cut mid-line, as a crash would
    (copy / "manifest.csv").unlink()
    first = json.loads(journal[0])["rows"][0]
    (copy / first["file"]).unlink()
    out = call_command_output(setup, copy)
    assert "2 units run, 10 resumed" in out
    assert digest_tree(copy) == before


def test_interrupted_run_resumes_where_it_stopped(done, setup, tmp_path):
    class Flaky(GriffinLimVocoder):
        calls = 0

        def __call__(self, features):
            Flaky.calls += 1
            if Flaky.calls == 4:
                raise KeyboardInterrupt
            return super().__call__(features)

    out = tmp_path / "run"
    kw = dict(per_class=1, max_attempts=3, seed=7, device="cpu")
    paths = (setup["A"], setup["B"], setup["AE"], setup["corpus"], out)
    with pytest.raises(KeyboardInterrupt):
        generate_stimuli(*paths, vocoder=Flaky(FeatureConfig()), **kw)
    assert not (out / "manifest.csv").exists()
    assert len((out / JOURNAL).read_text().splitlines()) == 3
    summary = generate_stimuli(*paths, vocoder=Flaky(FeatureConfig()), **kw)
    assert (summary.units_resumed, summary.units_run) == (3, 9)
    assert digest_tree(out) == digest_tree(done)


def test_worker_processes_write_the_same_stimulus_set_as_one_process(done, setup, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    call_command("generate", **args(setup, one, jobs=1))
    call_command("generate", **args(setup, two, jobs=2))  # one thread per worker, like this test process (conftest)
    assert digest_tree(one) == digest_tree(two) == digest_tree(done)


def test_other_settings_on_the_same_folder_are_refused(done, setup):
    with pytest.raises(CommandError, match="other settings.*seed"):
        call_command("generate", **args(setup, done, seed=8))


def test_nan_samples_are_never_written_as_audio(setup, tmp_path):
    bad = tmp_path / "nanA.pt"
    ckpt = checkpoint.load(setup["A"])
    with torch.no_grad():
        ckpt.model.logits.bias.fill_(float("nan"))
    checkpoint.save(bad, ckpt)
    out = tmp_path / "out"
    call_command("generate", **args(setup, out, classifier=str(bad), words="go"))
    assert read_manifest(out / "manifest.csv") == []
    assert list((out / "wav").iterdir()) == []
    run = json.loads((out / "run.json").read_text())
    assert {f["condition"] for f in run["failed"]} == {"1-classifier-noise", "2-classifier-test", "3-decoder-noise", "4-decoder-test"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"words": "go,cat"}, "unknown word 'cat'"),
        ({"classifier": "missing.pt"}, "checkpoint not found"),
        ({"per_class": 0}, "--per-class"),
        ({"max_attempts": 0}, "--max-attempts"),
        ({"device": "tpu"}, "unknown device"),
        ({"jobs": 0}, "parallel jobs must be at least 1, got 0"),
    ],
)
def test_bad_options_fail_with_one_line(setup, tmp_path, change, message):
    out = tmp_path / "out"
    with pytest.raises(CommandError, match=message):
        call_command("generate", **args(setup, out, **change))
    assert not out.exists()


def test_incompatible_models_and_corpus_are_refused(setup, tmp_path):
    other_words = save_classifier(tmp_path / "B2.pt", 2, classes=["bed", "go", "no"])
    other_features = save_autoencoder(tmp_path / "AE2.pt", cfg=FeatureConfig(f_max=8000.0))
    corpus2 = make_corpus(tmp_path / "corpus2", words=["bed", "go", "no"])
    out = tmp_path / "out"
    with pytest.raises(CommandError, match="different class lists"):
        call_command("generate", **args(setup, out, evaluator=str(other_words)))
    with pytest.raises(CommandError, match="different features.*f_max"):
        call_command("generate", **args(setup, out, decoder=str(other_features)))
    with pytest.raises(CommandError, match="other words than A.pt"):
        call_command("generate", **args(setup, out, corpus=str(corpus2)))
    assert not out.exists()
