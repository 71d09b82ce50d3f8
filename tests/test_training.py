"""Training on a tiny synthetic Speech Commands V2-layout corpus: checkpoints, resume, bad input."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.management import CommandError, call_command

from generation import checkpoint
from hearsay.errors import HearsayError
from generation.features import extract_files
from generation.train import partial_path, resolve_device, train_autoencoder, train_classifier
from tests.helpers.corpora import TINY_CORPUS_WORDS as WORDS
from tests.helpers.corpora import make_tiny_corpus


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HEARSAY_CACHE_DIR", str(tmp_path / "cache"))
    return make_tiny_corpus(tmp_path / "corpus")


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def test_classifier_checkpoint_round_trip(corpus, tmp_path):
    out = tmp_path / "models" / "A.pt"
    ckpt = train_classifier(corpus, out, epochs=2, seed=1, arch="paper", device="cpu", progress=False)
    loaded = checkpoint.load(out, kind="classifier")
    assert loaded.classes == list(WORDS)
    assert loaded.data_fingerprint == ckpt.data_fingerprint and len(loaded.data_fingerprint) == 64
    assert loaded.train_config["seed"] == 1 and loaded.train_config["epochs_run"] == 2
    assert 1 <= loaded.train_config["best_epoch"] <= 2
    m = loaded.metrics
    assert (m["n_train"], m["n_validation"], m["n_test"]) == (24, 6, 6)
    assert np.array(m["test_confusion"]).sum() == 6 and len(m["test_confusion"]) == 3
    assert m["test_speakers_unseen_in_training"] is True
    assert not partial_path(out).exists()
    umask = os.umask(0)
    os.umask(umask)
    for written in (out, tmp_path / "models" / "A.metrics.json", tmp_path / "models" / "A.confusion.csv"):
        assert written.stat().st_mode & 0o777 == 0o666 & ~umask, "outputs must be as readable as any other file"
    feats = torch.from_numpy(extract_files(sorted(corpus.glob("*/*.wav"))))
    with torch.no_grad():
        assert torch.equal(ckpt.model.eval()(feats).argmax(1), loaded.model(feats).argmax(1))
        assert torch.allclose(ckpt.model(feats), loaded.model(feats), atol=1e-5)
    csv_rows = (tmp_path / "models" / "A.confusion.csv").read_text().splitlines()
    assert csv_rows[0].split(",")[1:] == list(WORDS) and len(csv_rows) == 4
    assert (tmp_path / "models" / "A.confusion.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "models" / "A.metrics.json").read_text())
    assert saved["metrics"]["test_accuracy"] == pytest.approx(m["test_accuracy"])


def test_conv_classifier_learns_tiny_corpus(corpus, tmp_path):
    ckpt = train_classifier(corpus, tmp_path / "c.pt", epochs=3, seed=3, arch="conv", device="cpu", progress=False)
    assert ckpt.metrics["test_accuracy"] > 1 / 3


def test_same_seed_same_model_other_seed_differs(corpus, tmp_path):
    a = train_classifier(corpus, tmp_path / "a.pt", epochs=1, seed=5, arch="paper", device="cpu", progress=False)
    a2 = train_classifier(corpus, tmp_path / "a2.pt", epochs=1, seed=5, arch="paper", device="cpu", progress=False)
    b = train_classifier(corpus, tmp_path / "b.pt", epochs=1, seed=6, arch="paper", device="cpu", progress=False)
    pa, pa2, pb = _params(a.model), _params(a2.model), _params(b.model)
    assert all(torch.equal(pa[k], pa2[k]) for k in pa)
    assert not all(torch.equal(pa[k], pb[k]) for k in pa)


class _Stop(KeyboardInterrupt):
    pass


def _interrupt_after(n: int):
    def callback(record):
        if record["epoch"] == n:
            raise _Stop

    return callback


@pytest.mark.parametrize("kind", ["classifier", "autoencoder"])
def test_resume_after_interruption_matches_uninterrupted_run(corpus, tmp_path, kind):
    train = train_classifier if kind == "classifier" else train_autoencoder
    extra = {"arch": "paper"} if kind == "classifier" else {"latent": 16}
    whole = train(corpus, tmp_path / "whole.pt", epochs=2, seed=7, device="cpu", progress=False, **extra)
    out = tmp_path / "cut.pt"
    with pytest.raises(_Stop):
        train(corpus, out, epochs=2, seed=7, device="cpu", progress=False, on_epoch=_interrupt_after(1), **extra)
    assert partial_path(out).is_file() and not out.exists()
    seen = []
    resumed = train(corpus, out, epochs=2, seed=7, device="cpu", progress=False, on_epoch=seen.append, **extra)
    assert [r["epoch"] for r in seen] == [2]
    assert not partial_path(out).exists()
    pw, pr = _params(whole.model), _params(resumed.model)
    assert all(torch.equal(pw[k], pr[k]) for k in pw)
    assert resumed.metrics["history"] == whole.metrics["history"]


def test_partial_state_from_other_arguments_is_refused(corpus, tmp_path):
    out = tmp_path / "m.pt"
    with pytest.raises(_Stop):
        train_classifier(corpus, out, epochs=2, seed=1, arch="paper", device="cpu", progress=False, on_epoch=_interrupt_after(1))
    with pytest.raises(HearsayError, match="different arguments.*seed"):
        train_classifier(corpus, out, epochs=2, seed=2, arch="paper", device="cpu", progress=False)
    (corpus / "tone" / "spk00_nohash_0.wav").unlink()
    with pytest.raises(HearsayError, match="different data"):
        train_classifier(corpus, out, epochs=2, seed=1, arch="paper", device="cpu", progress=False)


def test_autoencoder_checkpoint_reports_held_out_reconstruction(corpus, tmp_path):
    out = tmp_path / "AE.pt"
    train_autoencoder(corpus, out, epochs=1, seed=1, latent=32, device="cpu", progress=False)
    ae = checkpoint.load(out, kind="autoencoder")
    assert ae.arch_kwargs["latent"] == 32
    for key in ("validation_bce", "test_bce", "validation_mse", "test_mse"):
        assert 0 < ae.metrics[key] < 1
    with torch.no_grad():
        recon = ae.model(torch.rand(2, 90, 80))
    assert recon.shape == (2, 90, 80) and 0 <= float(recon.min()) and float(recon.max()) <= 1


def test_init_from_checkpoint_with_other_classes_is_refused(corpus, tmp_path):
    base = tmp_path / "base.pt"
    train_classifier(corpus, base, epochs=1, seed=1, arch="paper", device="cpu", progress=False)
    other = make_tiny_corpus(tmp_path / "other", speakers=3, takes=1)
    (other / "zebra").mkdir()
    (other / "tone" / "spk00_nohash_0.wav").rename(other / "zebra" / "spk00_nohash_0.wav")
    with pytest.raises(CommandError, match="other classes"):
        call_command("train_classifier", data=str(other), out=str(tmp_path / "x.pt"), init_from=str(base), arch="paper", epochs=1, device="cpu", verbosity=0)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(HearsayError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_is_one_line(corpus, tmp_path):
    with pytest.raises(CommandError, match="no CUDA device"):
        call_command("train_classifier", data=str(corpus), out=str(tmp_path / "m.pt"), device="cuda", verbosity=0)


def _bad_input(tmp_path: Path, problem: str) -> tuple[Path, Path]:
    root = make_tiny_corpus(tmp_path / "bad", speakers=3, takes=1)
    out = tmp_path / "m.pt"
    if problem == "missing":
        root = tmp_path / "nowhere"
    elif problem == "no layout":
        root = tmp_path / "flat"
        root.mkdir()
        (root / "readme.txt").write_text("not a corpus")
    elif problem == "empty word":
        (root / "empty").mkdir()
    elif problem == "corrupt wav":
        (root / "tone" / "spk00_nohash_0.wav").write_bytes(b"RIFF\x00\x00garbage")
    elif problem == "not a wav":
        (root / "tone" / "spk00_nohash_0.wav").write_text("hello, I am text")
    elif problem == "unwritable out":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out = blocker / "m.pt"
    elif problem == "out is a folder":
        out = tmp_path
    return root, out


@pytest.mark.parametrize(
    "problem,message",
    [
        ("missing", "does not exist"),
        ("no layout", "Speech Commands V2 layout"),
        ("empty word", "holds no .wav"),
        ("corrupt wav", "cannot read audio file"),
        ("not a wav", "cannot read audio file"),
        ("unwritable out", "cannot write"),
        ("out is a folder", "is a folder"),
    ],
)
@pytest.mark.parametrize("command", ["train_classifier", "train_autoencoder"])
def test_bad_input_is_one_line_command_error(tmp_path, monkeypatch, problem, message, command):
    monkeypatch.setenv("HEARSAY_CACHE_DIR", str(tmp_path / "cache"))
    root, out = _bad_input(tmp_path, problem)
    with pytest.raises(CommandError, match=message) as err:
        call_command(command, data=str(root), out=str(out), epochs=1, device="cpu", verbosity=0)
    assert "\n" not in str(err.value)
    assert not out.is_file() and not partial_path(out).exists()


def test_autoencoder_trains_channels_last_to_the_same_numbers_and_saves_the_default_layout(corpus, tmp_path):
    fast = train_autoencoder(corpus, tmp_path / "cl.pt", epochs=2, seed=1, latent=16, device="cpu", progress=False)
    plain = train_autoencoder(corpus, tmp_path / "plain.pt", epochs=2, seed=1, latent=16, device="cpu", progress=False,
                              channels_last=False)
    for a, b in zip(fast.metrics["history"], plain.metrics["history"]):  # another summation order, nothing else
        assert a == pytest.approx(b, rel=1e-4)
    saved = torch.load(tmp_path / "cl.pt", weights_only=True)["state_dict"]
    assert all(v.is_contiguous() for v in saved.values())
    pf, pp = _params(fast.model), _params(plain.model)
    assert all(torch.allclose(pf[k], pp[k], atol=1e-4) for k in pf)


def test_trainings_side_by_side_in_workers_equal_trainings_in_this_process(corpus, tmp_path, capfd):
    from generation import workers
    from generation.train import train_and_summarize

    calls = [("classifier", {"corpus_root": str(corpus), "out": str(tmp_path / "w" / "A.pt"), "epochs": 2, "device": "cpu"}),
             ("autoencoder", {"corpus_root": str(corpus), "out": str(tmp_path / "w" / "AE.pt"), "epochs": 1, "latent": 16, "device": "cpu"})]
    with workers.pool(2) as pool:
        summaries = {call[0]: result[0] for call, result in workers.run(pool, train_and_summarize, calls)}
    assert summaries["classifier"].startswith(f"{tmp_path / 'w' / 'A.pt'}: test accuracy ")
    assert "A.pt epoch 2: train_loss " in capfd.readouterr().out
    here = {"classifier": train_classifier(corpus, tmp_path / "A.pt", epochs=2, device="cpu", progress=False),
            "autoencoder": train_autoencoder(corpus, tmp_path / "AE.pt", epochs=1, latent=16, device="cpu", progress=False)}
    for kind, name in (("classifier", "A.pt"), ("autoencoder", "AE.pt")):  # one thread there as here (conftest)
        there = _params(checkpoint.load(tmp_path / "w" / name).model)
        assert all(torch.equal(there[k], v) for k, v in _params(here[kind].model).items()), kind
