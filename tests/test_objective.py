"""`manage.py objective` and `manage.py latent_tsne` end to end on tiny models (36 x 16 features)."""
import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from django.core.management import CommandError, call_command

from generation.checkpoint import Checkpoint, save
from generation.features import FeatureConfig
from generation.nets import Autoencoder, PaperClassifier

CFG = FeatureConfig(n_frames=36, n_mels=16)
WORDS = ["go", "no", "yes"]


def _classifier(path, seed, classes=WORDS, cfg=CFG):
    torch.manual_seed(seed)
    kwargs = {"n_classes": len(classes), "input_shape": (cfg.n_frames, cfg.n_mels)}
    save(path, Checkpoint(kind="classifier", arch="paper", arch_kwargs=kwargs, model=PaperClassifier(**kwargs), feature_config=cfg, classes=list(classes)))
    return str(path)


def _autoencoder(path, cfg=CFG):
    torch.manual_seed(3)
    kwargs = {"latent": 8, "input_shape": (cfg.n_frames, cfg.n_mels)}
    save(path, Checkpoint(kind="autoencoder", arch="paper", arch_kwargs=kwargs, model=Autoencoder(**kwargs), feature_config=cfg, classes=list(WORDS)))
    return str(path)


@pytest.fixture
def models(tmp_path):
    return {
        "classifier": _classifier(tmp_path / "A.pt", 1),
        "evaluator": _classifier(tmp_path / "B.pt", 2),
        "decoder": _autoencoder(tmp_path / "AE.pt"),
    }


def _objective(models, out, *extra):
    args = ["--classifier", models["classifier"], "--evaluator", models["evaluator"], "--decoder", models["decoder"],
            "--out", str(out), "--n", "4", "--device", "cpu", "--batch-size", "3", *extra]
    call_command("objective", *args, verbosity=0)


def test_objective_writes_arrays_heatmaps_summary_and_resumes(models, tmp_path, capsys):
    out = tmp_path / "obj"
    _objective(models, out)
    for method in ("classifier", "decoder"):
        for word in WORDS:
            with np.load(out / method / f"{word}.npz") as data:
                assert data["prob_a_before"].shape == data["prob_b_after"].shape == (4, 3)
                assert data["trajectory"].shape == (4, 21)
                assert not data["failed"].any()
        for ext in ("png", "pdf", "csv"):
            assert (out / f"heatmap_{method}.{ext}").stat().st_size > 0
        with open(out / f"heatmap_{method}.csv", newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["target", *WORDS] and [r[0] for r in rows[1:]] == WORDS
        assert all(sum(map(float, r[1:])) == pytest.approx(1.0, abs=1e-4) for r in rows[1:])
    with open(out / "summary.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    assert [(r["method"], r["word"]) for r in summary] == [(m, w) for m in ("classifier", "decoder") for w in [*WORDS, "ALL"]]
    assert all(0.0 <= float(r["a_picks_target"]) <= 1.0 for r in summary)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["config"]["n"] == 4 and len(run["config"]["classifier_sha256"]) == 64

    kept = out / "classifier" / "go.npz"
    kept_mtime = kept.stat().st_mtime_ns
    redo = out / "decoder" / "no.npz"
    before = dict(np.load(redo))
    redo.unlink()
    capsys.readouterr()
    call_command("objective", "--classifier", models["classifier"], "--evaluator", models["evaluator"], "--decoder", models["decoder"],
                 "--out", str(out), "--n", "4", "--device", "cpu", "--batch-size", "4")
    assert "1 word(s) computed, 5 resumed" in capsys.readouterr().out
    assert kept.stat().st_mtime_ns == kept_mtime
    after = dict(np.load(redo))
    np.testing.assert_allclose(after["prob_b_after"], before["prob_b_after"], rtol=1e-5, atol=1e-6)

    with pytest.raises(CommandError, match="other settings"):
        _objective(models, out, "--seed", "9")


def test_objective_refuses_mismatched_checkpoints_and_unknown_words(models, tmp_path):
    other_classes = _classifier(tmp_path / "B2.pt", 2, classes=["go", "no", "stop"])
    with pytest.raises(CommandError, match="different class lists"):
        _objective({**models, "evaluator": other_classes}, tmp_path / "x")
    other_features = _autoencoder(tmp_path / "AE2.pt", cfg=FeatureConfig(n_frames=36, n_mels=16, f_max=8000.0))
    with pytest.raises(CommandError, match="different features"):
        _objective({**models, "decoder": other_features}, tmp_path / "y")
    with pytest.raises(CommandError, match="unknown word 'maybe'"):
        _objective(models, tmp_path / "z", "--words", "go", "maybe")
    with pytest.raises(CommandError, match="unknown method"):
        _objective(models, tmp_path / "w", "--methods", "classifier,gan")
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_objective_classifier_method_alone_needs_no_decoder(models, tmp_path):
    out = tmp_path / "cls"
    call_command("objective", "--classifier", models["classifier"], "--evaluator", models["evaluator"], "--out", str(out),
                 "--n", "2", "--methods", "classifier", "--words", "yes", "--device", "cpu", verbosity=0)
    assert sorted(p.name for p in (out / "classifier").iterdir()) == ["yes.npz"]
    assert not (out / "decoder").exists()


def test_latent_tsne_plots_original_and_maximized_latents(models, tmp_path):
    root = tmp_path / "corpus"
    rng = np.random.default_rng(0)
    test_list = []
    for w, word in enumerate(WORDS):
        (root / word).mkdir(parents=True)
        for speaker in ("aaaa1111", "bbbb2222", "cccc3333"):
            for k in range(2):
                t = np.arange(8000) / 16000
                wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * w + 20 * k) * t) + 0.01 * rng.standard_normal(8000)
                sf.write(root / word / f"{speaker}_nohash_{k}.wav", wave.astype(np.float32), 16000)
            test_list.append(f"{word}/{speaker}_nohash_1.wav")
    (root / "testing_list.txt").write_text("\n".join(test_list) + "\n")
    out = tmp_path / "tsne"
    call_command("latent_tsne", "--encoder", models["decoder"], "--classifier", models["classifier"], "--corpus", str(root),
                 "--out", str(out), "--device", "cpu", verbosity=0)
    for ext in ("png", "pdf"):
        assert (out / f"tsne.{ext}").stat().st_size > 0
    with open(out / "tsne.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 18 and {r["kind"] for r in rows} == {"original", "maximized"}
    assert {r["speaker"] for r in rows} == {"aaaa1111", "bbbb2222", "cccc3333"}
    assert {r["misclassified"] for r in rows} <= {"0", "1"}
    record = json.loads((out / "tsne.json").read_text())
    assert record["utterances"] == 9 and record["settings"]["lr"] == 0.1

    with pytest.raises(CommandError, match="does not know the corpus word"):
        other = _classifier(tmp_path / "A3.pt", 1, classes=["go", "no", "stop"])
        call_command("latent_tsne", "--encoder", models["decoder"], "--classifier", other, "--corpus", str(root),
                     "--out", str(tmp_path / "t2"), "--device", "cpu", verbosity=0)


def test_objective_results_agree_across_batch_sizes_and_cpu_default_is_small(models, tmp_path):
    from generation.objective import run_objective

    small = tmp_path / "small"
    _objective(models, small)  # batches of 3
    default = tmp_path / "default"
    run_objective(models["classifier"], models["evaluator"], models["decoder"], default, n=4, words=["go"], device="cpu",
                  progress=False)
    assert json.loads((default / "run.json").read_text())["batch_size"] == 64
    for method in ("classifier", "decoder"):
        with np.load(small / method / "go.npz") as a, np.load(default / method / "go.npz") as b:
            for key in a.files:  # batches change the order of float sums only: rounding, never a verdict
                np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=f"{method} {key}")
            assert np.array_equal(a["prob_b_after"].argmax(1), b["prob_b_after"].argmax(1))


def test_objective_in_worker_processes_writes_the_same_arrays_and_summary(models, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _objective(models, one, "--jobs", "1")
    _objective(models, two, "--jobs", "2")  # one thread per worker, like this test process (conftest)
    for method in ("classifier", "decoder"):
        for word in WORDS:
            with np.load(one / method / f"{word}.npz") as a, np.load(two / method / f"{word}.npz") as b:
                for key in a.files:
                    assert np.array_equal(a[key], b[key]), f"{method} {word} {key}"
    assert (one / "summary.csv").read_text() == (two / "summary.csv").read_text()
    with pytest.raises(CommandError, match="parallel jobs must be at least 1, got 0"):
        _objective(models, tmp_path / "none", "--jobs", "0")


def test_a_word_named_all_stays_apart_from_the_pooled_row(tmp_path):
    """Before: summary.csv named the pooled row "ALL", so a class "ALL" gave two "ALL" rows and the report's
    headline read the word's own row (n = 2) as if it were every word pooled (n = 6)."""
    from analysis.report import _objective_headline, _read_csv

    classes = ["ALL", "go", "no"]
    a, b = _classifier(tmp_path / "A.pt", 1, classes), _classifier(tmp_path / "B.pt", 2, classes)
    out = tmp_path / "obj"
    call_command("objective", "--classifier", a, "--evaluator", b, "--methods", "classifier", "--out", str(out),
                 "--n", "2", "--device", "cpu", verbosity=0)
    summary = _read_csv(out / "summary.csv")
    assert [(w, p) for w, p in zip(summary["word"], summary["pooled"])] == [("ALL", False), ("go", False), ("no", False), ("ALL", True)]
    headline = _objective_headline(summary)
    assert list(headline["method"]) == ["classifier"] and list(headline["samples"]) == [6]
