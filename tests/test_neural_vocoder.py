"""The neural vocoder trained here: a few steps on a tiny corpus, save, reload, right shapes, ranges and refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from django.core.management import CommandError, call_command

from generation import checkpoint
from hearsay.errors import HearsayError
from generation.features import PAPER, LogMel, prepare_waves
from generation import neural_vocoder
from generation.neural_vocoder import (
    NeuralVocoder, SpectralLosses, TrainSettings, VocosGenerator, load, load_vocoder, mel_cepstral_distortion, score, train_vocoder,
)
from generation.train import partial_path
from generation.vocoder import GriffinLimVocoder, Vocoder, finish
from tests.helpers.corpora import make_tiny_corpus

TINY = TrainSettings(epochs=2, batch_size=8, segment_frames=8, adversarial_after=1, dim=16, hidden=32, layers=1)


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("HEARSAY_CACHE_DIR", str(tmp_path / "cache"))
    return make_tiny_corpus(tmp_path / "corpus", speakers=4, takes=1)


@pytest.fixture
def trained(corpus, tmp_path):
    out = tmp_path / "V.pt"
    train_vocoder(corpus, out, settings=TINY, device="cpu", progress=False)
    return out


def test_generator_output_is_aligned_with_the_frames():
    gen = VocosGenerator(dim=8, hidden=16, layers=1)
    wave = gen(torch.rand(2, 12, 80))
    assert wave.shape == (2, 11 * PAPER.hop_length)


def test_magnitude_prior_gives_the_right_envelope_before_any_training():
    """Untrained, the prior alone must already put energy where the features have it (phase still random)."""
    t = np.arange(PAPER.clip_samples) / PAPER.sample_rate
    low = np.sin(2 * np.pi * 300 * t).astype(np.float32)
    high = np.sin(2 * np.pi * 4000 * t).astype(np.float32)
    with torch.no_grad():
        feats = LogMel(PAPER)(prepare_waves([low, high], PAPER.sample_rate, PAPER))
        torch.manual_seed(0)
        waves = VocosGenerator(dim=8, hidden=16, layers=1)(feats)
        again = LogMel(PAPER)(prepare_waves(list(waves.numpy()), PAPER.sample_rate, PAPER))
    peak_bands = again[:, 10:60].mean(dim=1).argmax(dim=1)
    expected = feats[:, 10:60].mean(dim=1).argmax(dim=1)
    assert (peak_bands - expected).abs().max() <= 2 and expected[1] - expected[0] > 40  # random phase smears by a band or two
    with torch.no_grad():
        plain = VocosGenerator(dim=8, hidden=16, layers=1, magnitude_prior=False)(feats)
    assert not torch.allclose(plain, waves)


def test_train_save_reload_and_vocode(trained):
    ckpt = load(trained)
    assert ckpt.kind == "vocoder" and ckpt.feature_config == PAPER
    assert ckpt.train_config["epochs_run"] == 2 and ckpt.train_config["adversarial_after"] == 1
    assert len(ckpt.data_fingerprint) == 64
    m = ckpt.metrics
    assert (m["n_train"], m["n_validation"], m["n_test"]) == (6, 3, 3)
    assert [h["adversarial"] for h in m["history"]] == [False, True]
    assert m["best_epoch"] in (1, 2) and ckpt.train_config["selected"].startswith(f"epoch {m['best_epoch']} of 2")
    assert ckpt.train_config["stopped_by"] == "epochs"
    assert "train_discriminator" in m["history"][1] and "train_discriminator" not in m["history"][0]
    assert np.isfinite([m["test_feature_l1"], m["test_mcd_db"], m["test_griffin_lim_mcd_db"]]).all()
    assert not partial_path(trained).exists()
    assert trained.with_name("V.metrics.json").is_file()

    vocoder = load_vocoder(str(trained))
    assert isinstance(vocoder, NeuralVocoder) and isinstance(vocoder, Vocoder)
    waves = vocoder(torch.rand(3, *PAPER.shape))
    assert waves.dtype == np.float32 and waves.shape == (3, (PAPER.n_frames - 1) * PAPER.hop_length)
    assert np.isfinite(waves).all() and np.abs(waves).max() <= 0.99 + 1e-6
    assert vocoder.config()["checkpoint_sha256"] == ckpt.sha256


def test_failed_samples_are_never_vocoded(trained):
    vocoder = load_vocoder(str(trained))
    feats = torch.rand(2, *PAPER.shape)
    feats[1, 3, 4] = float("nan")
    with pytest.raises(HearsayError, match="NaN"):
        vocoder(feats)
    with pytest.raises(HearsayError, match="expects features"):
        vocoder(torch.rand(2, 10, 80))


def test_interrupted_training_resumes_to_the_same_weights(corpus, tmp_path):
    straight = train_vocoder(corpus, tmp_path / "A.pt", settings=TINY, device="cpu", progress=False)

    def stop(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_vocoder(corpus, tmp_path / "B.pt", settings=TINY, device="cpu", progress=False, on_epoch=stop)
    assert partial_path(tmp_path / "B.pt").is_file()
    resumed = train_vocoder(corpus, tmp_path / "B.pt", settings=TINY, device="cpu", progress=False)
    for k, v in straight.model.state_dict().items():
        assert torch.allclose(v, resumed.model.state_dict()[k]), k
    assert [h["train_mel_l1"] for h in resumed.metrics["history"]] == pytest.approx([h["train_mel_l1"] for h in straight.metrics["history"]])


def test_partial_of_other_arguments_is_refused(corpus, tmp_path):
    out = tmp_path / "V.pt"

    def stop(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_vocoder(corpus, out, settings=TINY, device="cpu", progress=False, on_epoch=stop)
    other = TrainSettings(**{**TINY.__dict__, "lr": 1e-3})
    with pytest.raises(HearsayError, match="different arguments.*lr"):
        train_vocoder(corpus, out, settings=other, device="cpu", progress=False)


def test_load_vocoder_choices_and_refusals(trained, corpus, tmp_path):
    assert isinstance(load_vocoder("griffin-lim"), GriffinLimVocoder)
    assert isinstance(load_vocoder(None), GriffinLimVocoder)
    with pytest.raises(HearsayError, match="no such file"):
        load_vocoder(str(tmp_path / "missing.pt"))
    other = PAPER.__class__(**{**PAPER.to_dict(), "f_min": 0.0})
    with pytest.raises(HearsayError, match="other features"):
        load_vocoder(str(trained), cfg=other)
    from generation.train import train_classifier

    clf = tmp_path / "A.pt"
    train_classifier(corpus, clf, epochs=1, arch="paper", device="cpu", progress=False)
    with pytest.raises(HearsayError, match="needed here"):
        load_vocoder(str(clf))
    with pytest.raises(HearsayError, match="unknown model kind"):
        checkpoint.load(trained)


def test_mel_cepstral_distortion_is_zero_for_equal_and_grows_with_difference():
    with torch.no_grad():
        t = torch.arange(PAPER.clip_samples) / PAPER.sample_rate
        feats = LogMel(PAPER)(prepare_waves([np.sin(2 * np.pi * 440 * t.numpy()).astype(np.float32)], PAPER.sample_rate, PAPER))
    assert float(mel_cepstral_distortion(feats, feats)) == pytest.approx(0.0, abs=1e-6)
    tilt = torch.linspace(0, 0.1, PAPER.n_mels)
    small, large = mel_cepstral_distortion(feats, (feats + 0.3 * tilt).clamp(0, 1)), mel_cepstral_distortion(feats, (feats + tilt).clamp(0, 1))
    assert 0 < float(small) < float(large)


def test_command_trains_and_reports(corpus, tmp_path, capsys):
    out = tmp_path / "V.pt"
    call_command("train_vocoder", data=str(corpus), out=str(out), epochs=1, adversarial_after=1, batch_size=8, segment_frames=8,
                 dim=16, layers=1, device="cpu", verbosity=0)
    assert "MCD" in capsys.readouterr().out and out.is_file()
    call_command("train_vocoder", data=str(corpus), out=str(tmp_path / "T.pt"), epochs=9, max_seconds=1e-6, adversarial_after=0,
                 adversarial_ramp=0, lr_d=1e-4, batch_size=8, segment_frames=8, dim=16, hidden=16, layers=1, device="cpu", verbosity=0)
    assert "kept epoch 1 of 1" in (said := capsys.readouterr().out) and "stopped by time budget" in said
    assert load(tmp_path / "T.pt").train_config["lr_d"] == 1e-4
    with pytest.raises(CommandError, match="does not exist"):
        call_command("train_vocoder", data=str(tmp_path / "nowhere"), out=str(out), device="cpu", verbosity=0)
    with pytest.raises(CommandError, match="segment_frames"):
        call_command("train_vocoder", data=str(corpus), out=str(tmp_path / "W.pt"), segment_frames=1, device="cpu", verbosity=0)


def _save_untrained_vocoder(path, cfg=PAPER):
    from generation.checkpoint import Checkpoint

    torch.manual_seed(0)
    kwargs = {"feature_config": cfg.to_dict(), "dim": 8, "hidden": 16, "layers": 1}
    checkpoint.save(path, Checkpoint(kind="vocoder", arch="vocos", arch_kwargs=kwargs, model=VocosGenerator(**kwargs), feature_config=cfg, classes=[]))
    return path


def test_generate_takes_a_neural_vocoder(tmp_path):
    import json

    from tests.helpers.corpora import make_corpus, save_autoencoder, save_classifier
    corpus = make_corpus(tmp_path / "corpus")
    a, b, ae = save_classifier(tmp_path / "A.pt", 1), save_classifier(tmp_path / "B.pt", 2), save_autoencoder(tmp_path / "AE.pt")
    voc = _save_untrained_vocoder(tmp_path / "V.pt")
    common = {"classifier": str(a), "evaluator": str(b), "decoder": str(ae), "corpus": str(corpus), "per_class": 1, "max_attempts": 1,
              "words": "go", "device": "cpu", "verbosity": 0}
    call_command("generate", out=str(tmp_path / "out"), vocoder=str(voc), **common)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["identity"]["vocoder"]["vocoder"] == "neural"
    assert run["identity"]["vocoder"]["checkpoint_sha256"] == checkpoint.file_sha256(voc)
    assert len(list((tmp_path / "out" / "wav").glob("*.wav"))) == 7
    with pytest.raises(CommandError, match="no such file"):
        call_command("generate", out=str(tmp_path / "out2"), vocoder=str(tmp_path / "none.pt"), **common)
    other = _save_untrained_vocoder(tmp_path / "V2.pt", PAPER.__class__(**{**PAPER.to_dict(), "f_max": 8000.0}))
    with pytest.raises(CommandError, match="other features"):
        call_command("generate", out=str(tmp_path / "out3"), vocoder=str(other), **common)


def _scripted_validation(monkeypatch, val_mcd):
    """Make validation report `val_mcd` epoch after epoch (test scoring stays real) and keep each epoch's weights."""
    real_evaluate, seen = neural_vocoder.evaluate, []

    def scripted(model, feats, cfg, device, batch=32):
        if len(seen) == len(val_mcd):
            return real_evaluate(model, feats, cfg, device, batch)
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"feature_l1": 0.1, "mcd_db": val_mcd[len(seen) - 1]}

    monkeypatch.setattr(neural_vocoder, "evaluate", scripted)
    return seen


def test_a_later_worse_epoch_never_replaces_the_best_one(corpus, tmp_path, monkeypatch):
    seen = _scripted_validation(monkeypatch, [6.0, 5.0, 9.0])
    ckpt = train_vocoder(corpus, tmp_path / "V.pt", settings=TrainSettings(**{**TINY.__dict__, "epochs": 3}), device="cpu", progress=False)
    assert ckpt.metrics["best_epoch"] == 2 and ckpt.metrics["best_val_mcd_db"] == 5.0
    assert ckpt.train_config["selected"] == "epoch 2 of 3 (lowest validation MCD)" and ckpt.train_config["epochs_run"] == 3
    assert [h["best_epoch"] for h in ckpt.metrics["history"]] == [1, 2, 2]
    saved = load(tmp_path / "V.pt").model.state_dict()
    for k, v in saved.items():
        assert torch.equal(v, seen[1][k]), k
    assert any(not torch.equal(v, seen[2][k]) for k, v in saved.items())


def test_the_best_epoch_survives_an_interruption(corpus, tmp_path, monkeypatch):
    seen = _scripted_validation(monkeypatch, [5.0, 7.0, 8.0])
    settings = TrainSettings(**{**TINY.__dict__, "epochs": 3})

    def stop(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_vocoder(corpus, tmp_path / "V.pt", settings=settings, device="cpu", progress=False, on_epoch=stop)
    ckpt = train_vocoder(corpus, tmp_path / "V.pt", settings=settings, device="cpu", progress=False)
    assert ckpt.metrics["best_epoch"] == 1 and len(ckpt.metrics["history"]) == 3
    for k, v in ckpt.model.state_dict().items():
        assert torch.equal(v.cpu(), seen[0][k]), k


def test_a_time_budget_stops_training_with_a_proper_checkpoint(corpus, tmp_path):
    out = tmp_path / "V.pt"
    ckpt = train_vocoder(corpus, out, settings=TrainSettings(**{**TINY.__dict__, "epochs": 50, "max_seconds": 1e-6}), device="cpu", progress=False)
    assert ckpt.train_config["epochs_run"] == 1 and ckpt.train_config["stopped_by"] == "time budget (1e-06 s)"
    assert ckpt.metrics["best_epoch"] == 1 and np.isfinite(ckpt.metrics["test_mcd_db"])
    assert load(out).train_config["max_seconds"] == 1e-6 and not partial_path(out).exists()


def test_schedules_decay_the_learning_rate_and_ramp_the_adversarial_terms():
    s = TrainSettings(epochs=10, adversarial_after=4, adversarial_ramp=2, final_lr_ratio=0.1)
    assert s.lr_factor(0, 0.0) == pytest.approx(1.0) and s.lr_factor(10, 0.0) == pytest.approx(0.1)
    assert s.lr_factor(5, 0.0) == pytest.approx(0.55)
    budget = TrainSettings(epochs=1000, max_seconds=100.0, final_lr_ratio=0.1)
    assert budget.lr_factor(1, 50.0) == pytest.approx(0.55) and budget.lr_factor(1, 500.0) == pytest.approx(0.1)
    assert [s.adversarial_share(e) for e in range(7)] == [0, 0, 0, 0, 0.5, 1.0, 1.0]
    assert TrainSettings(adversarial_after=0, adversarial_ramp=0).adversarial_share(0) == 1.0
    with pytest.raises(HearsayError, match="final_lr_ratio"):
        TrainSettings(final_lr_ratio=0.0).validate(PAPER)


def _real_like_waves(n=2):
    t = np.arange(PAPER.clip_samples) / PAPER.sample_rate
    rng = np.random.default_rng(0)
    env = np.exp(-((t - 0.5) ** 2) / 0.02)
    return [(env * (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(2 * np.pi * 2.5 * f * t)) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
            for f in (180.0, 260.0)[:n]]


def test_the_mel_loss_measures_what_the_features_see():
    """On the features' bands and dB range: it is the feature L1 (times 100 dB in nepers) wherever the fake is not below the floor."""
    real = torch.from_numpy(np.stack(_real_like_waves()))
    losses, logmel = SpectralLosses(PAPER), LogMel(PAPER)
    frames = 1 + PAPER.clip_samples // PAPER.hop_length
    nepers = -PAPER.min_level_db / 20.0 * np.log(10.0)
    for louder in (1.5, 3.0):  # louder everywhere: never below the floor where the real one is above it
        fake = real * louder
        feature_l1 = float((logmel(fake) - logmel(real))[:, :frames].abs().mean())
        assert float(losses.mel_l1(fake, real)) == pytest.approx(nepers * feature_l1, rel=1e-3)
    quiet = real * 1e-3  # mostly under the floor: the loss still pulls it up, more than the clipped features show
    assert float(losses.mel_l1(quiet, real)) > nepers * float((logmel(quiet) - logmel(real))[:, :frames].abs().mean())
    quiet.requires_grad_(True)
    losses.mel_l1(quiet, real).backward()
    assert quiet.grad.abs().sum() > 0


def test_every_vocoder_is_scored_on_the_same_aligned_path():
    """Finished originals score almost perfectly (fades touch one frame), and a one-hop shift is what the score punishes."""
    waves = torch.from_numpy(np.stack(_real_like_waves()))
    feats = LogMel(PAPER)(prepare_waves(list(waves.numpy()), PAPER.sample_rate, PAPER))
    _, l1, mcd = score(finish(waves, PAPER.sample_rate), feats, PAPER)
    assert float(l1.max()) < 0.002 and float(mcd.max()) < 0.5
    shifted = torch.roll(waves, PAPER.hop_length, dims=1)
    _, l1_shift, mcd_shift = score(finish(shifted, PAPER.sample_rate), feats, PAPER)
    assert float(mcd_shift.min()) > 5 * float(mcd.max()) + 0.5 and float(l1_shift.min()) > float(l1.max())
