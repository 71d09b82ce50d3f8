"""GAN priors: a few training steps on a tiny corpus, reload, shapes and ranges, the engine parameterization, FID."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from django.core.management import CommandError, call_command

from hearsay.errors import HearsayError
from generation.features import PAPER, LogMel, prepare_waves
from generation.gan import (
    ConditionalMelGanParam, FeaturePipeline, GanSettings, GeneratorParam, MelGenerator, WaveGanParam, WaveGenerator, frechet_distance, load,
    train_gan,
)
from generation.maximize import (
    PARAMETERIZATIONS, Parameterization, RMSStep, Settings, ascend, class_probability, maximize, optimize, parts, preset, step_rule,
)
from generation.train import partial_path, train_classifier
from tests.helpers.corpora import TINY_CORPUS_WORDS as WORDS, make_tiny_corpus

TINY = dict(epochs=1, batch_size=8, latent=8, width=4)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("gan")
    import os

    os.environ["HEARSAY_CACHE_DIR"] = str(root / "cache")
    return make_tiny_corpus(root / "corpus", speakers=4, takes=1)


@pytest.fixture(scope="module")
def evaluator(corpus):
    out = corpus.parent / "B.pt"
    train_classifier(corpus, out, epochs=2, seed=2, arch="paper", device="cpu", progress=False)
    return out


def test_conditional_mel_gan_trains_saves_reloads_and_reports(corpus, evaluator, tmp_path):
    out = tmp_path / "G.pt"
    train_gan(corpus, out, settings=GanSettings(conditional=True, **TINY), evaluator=evaluator, device="cpu", progress=False)
    ckpt = load(out)
    g = ckpt.model
    assert ckpt.kind == "gan" and ckpt.arch == "mel" and g.n_classes == len(WORDS) and ckpt.classes == list(WORDS)
    with torch.no_grad():
        x = g.features(torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1]))
    assert x.shape == (5, *PAPER.shape) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    m = ckpt.metrics
    assert set(m["b_accuracy_per_word"]) == set(WORDS) and 0.0 <= m["b_accuracy"] <= 1.0
    assert np.isfinite(m["fid_b"]) and m["fid_b"] >= 0 and np.isfinite(m["fid_b_real_vs_real"])
    assert len(m["history"]) == 1 and np.isfinite(m["history"][0]["critic_loss"])
    assert out.with_name("G.samples.png").stat().st_size > 0 and out.with_name("G.metrics.json").is_file()
    assert not partial_path(out).exists()
    with pytest.raises(HearsayError, match="needs the word"):
        g.features(torch.randn(2, 8))


def test_wave_gan_generates_audio_and_features(corpus, tmp_path):
    out = tmp_path / "W.pt"
    train_gan(corpus, out, settings=GanSettings(domain="wave", **TINY), device="cpu", progress=False)
    g = load(out).model
    assert isinstance(g, WaveGenerator) and g.n_classes == 0
    z = torch.randn(2, 8)
    with torch.no_grad():
        wave, feats = g(z), g.features(z)
    assert wave.shape == (2, PAPER.clip_samples) and float(wave.abs().max()) < 1.0
    assert feats.shape == (2, *PAPER.shape) and float(feats.min()) >= 0.0 and float(feats.max()) <= 1.0


def test_feature_pipeline_matches_the_extractor_and_passes_gradients():
    rng = np.random.default_rng(0)
    wave = (0.3 * rng.standard_normal(PAPER.clip_samples)).astype(np.float32)
    with torch.no_grad():
        expected = LogMel(PAPER)(prepare_waves([wave], PAPER.sample_rate, PAPER))
    x = torch.from_numpy(wave)[None].requires_grad_(True)
    got = FeaturePipeline(PAPER)(x)
    assert torch.allclose(got, expected, atol=1e-5)
    got.sum().backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def _frozen_classifier(path):
    from generation import checkpoint

    b = checkpoint.load(path, kind="classifier").model.eval()
    for p in b.parameters():
        p.requires_grad_(False)
    return b


def test_generator_param_plugs_into_the_engine(corpus, evaluator):
    b = _frozen_classifier(evaluator)
    torch.manual_seed(0)
    gen = MelGenerator(latent=8, n_classes=3, width=4).eval()
    targets = torch.tensor([0, 1, 2, 1])
    param = GeneratorParam(gen, torch.randn(4, 8), targets)
    assert isinstance(param, Parameterization)
    settings = Settings(steps=5, lr=0.1)
    traj, failed, _, _ = ascend(b, param, class_probability(targets), targets, step_rule(settings), settings.steps)
    assert traj.shape == (4, 6) and not failed.any()
    assert param.latents() is param.parameter and param.features().shape == (4, *PAPER.shape)

    res = maximize(b, targets, method="cgan", decoder=gen, settings=settings, seed=3, evaluator=b)
    assert res.features.shape == (4, *PAPER.shape) and res.latents.shape == (4, 8) and res.prob_b.shape == (4, 3)
    assert res.waves is None and res.start_waves is None, "a mel generator's features are vocoded, it has no audio of its own"
    assert float(res.prob_a[torch.arange(4), targets].mean()) >= float(res.start_prob_a[torch.arange(4), targets].mean()) - 1e-6
    param, objective, step = parts(settings, "cgan", gen)
    assert isinstance(param, ConditionalMelGanParam) and isinstance(step, RMSStep)
    by_hand = optimize(b, targets, param, objective, step, steps=5, seed=3, evaluator=b)
    assert torch.equal(by_hand.features, res.features) and torch.equal(by_hand.latents, res.latents)
    again = maximize(b, targets[:2], method="cgan", decoder=gen, settings=settings, seed=3, batch_size=1)
    assert torch.allclose(again.features, res.features[:2], atol=1e-3)  # batching changes rounding only


def test_a_conditional_generator_generates_each_samples_target_word(corpus, evaluator):
    """Mixed targets across batches: every sample starts from G(z_i, target_i), and keeps its word while z moves."""
    b = _frozen_classifier(evaluator)
    torch.manual_seed(1)
    gen = MelGenerator(latent=8, n_classes=3, width=4).eval()
    targets = torch.tensor([2, 0, 1, 1, 2, 0, 0])
    z0 = torch.randn(7, 8)
    res = maximize(b, targets, method="cgan", decoder=gen, settings=Settings(steps=3, lr=0.1), start_latents=z0, batch_size=3)
    assert torch.equal(res.start_latents, z0), "the given latents are the start, as they are"
    with torch.no_grad():
        assert torch.allclose(res.start_features, gen(z0, targets), atol=1e-6)
        assert torch.allclose(res.features, gen(res.latents, targets), atol=1e-6)
        assert not torch.allclose(res.start_features, gen(z0, targets.roll(1)), atol=1e-3), "the word changes what G generates"
    with pytest.raises(HearsayError, match=r"start latents must be \[7, 8\]"):
        maximize(b, targets, method="cgan", decoder=gen, settings=Settings(steps=1), start_latents=z0[:, :4])
    with pytest.raises(HearsayError, match="not both"):
        maximize(b, targets, method="cgan", decoder=gen, settings=Settings(steps=1), start_latents=z0, start=torch.rand(7, *PAPER.shape))
    with pytest.raises(HearsayError, match="cannot start from features"):
        maximize(b, targets, method="cgan", decoder=gen, settings=Settings(steps=1), start=torch.rand(7, *PAPER.shape))
    with pytest.raises(HearsayError, match="needs a conditional generator; this one is plain"):
        maximize(b, targets, method="cgan", decoder=MelGenerator(latent=8, width=4), settings=Settings(steps=1))
    with pytest.raises(HearsayError, match="needs a generator"):
        maximize(b, targets, method="gan", settings=Settings(steps=1))
    small = MelGenerator(latent=8, n_classes=2, width=4)
    with pytest.raises(HearsayError, match="the generator knows 2 words"):
        maximize(b, targets, method="cgan", decoder=small, settings=Settings(steps=1))


def test_from_method_is_all_a_new_gan_prior_needs():
    """A subclass naming its method (and which generators serve it) is reachable by name, preset included."""

    class AnyMelGan(GeneratorParam):
        method = "test-any-mel-gan"
        domain = "mel"

    class Mean(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Linear(PAPER.n_mels, 3)

        def forward(self, x):
            return self.logits(x.mean(dim=1))

    try:
        torch.manual_seed(2)
        gen, model = MelGenerator(latent=8, n_classes=3, width=4), Mean()
        settings = preset("paper", "test-any-mel-gan")
        assert settings == replace(preset("paper", "decoder"), init_std=1.0), "GAN priors start from samples of the GAN"
        targets = torch.tensor([0, 2, 1])
        res = maximize(model, targets, method="test-any-mel-gan", decoder=gen, settings=replace(settings, steps=4), seed=1)
        with torch.no_grad():
            assert torch.allclose(res.features, gen(res.latents, targets), atol=1e-6)
        assert (res.trajectory[:, -1] > res.trajectory[:, 0]).all()
        with pytest.raises(HearsayError, match="needs a mel generator, this one generates wave"):
            maximize(model, targets, method="test-any-mel-gan", decoder=WaveGenerator(latent=8, width=4), settings=settings)
    finally:
        del PARAMETERIZATIONS["test-any-mel-gan"]


def test_wave_gan_audio_comes_back_from_the_engine():
    """The waveform prior's own audio reaches the result at both ends, and matches the features judged."""

    class Mean(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Linear(PAPER.n_mels, 3)

        def forward(self, x):
            return self.logits(x.mean(dim=1))

    torch.manual_seed(3)
    gen, model = WaveGenerator(latent=8, width=4), Mean()
    settings = replace(preset("paper", "wave-gan"), steps=2)
    res = maximize(model, torch.tensor([0, 1]), method="wave-gan", decoder=gen, settings=settings, seed=2)
    assert res.waves.shape == res.start_waves.shape == (2, PAPER.clip_samples)
    with torch.no_grad():
        assert torch.allclose(res.waves, gen(res.latents), atol=1e-6) and torch.allclose(res.start_waves, gen(res.start_latents), atol=1e-6)
        # the engine runs the generator's transposed twin; the log-mel turns its 1e-8 audio rounding into up to ~5e-5
        # (the generator as written moves 4e-5 between float32 and float64)
        assert torch.allclose(res.features, gen.features(res.latents), atol=1e-4)
    lean = maximize(model, torch.tensor([0, 1]), method="wave-gan", decoder=gen, settings=settings, seed=2, keep_waves=False)
    assert lean.waves is None and torch.equal(lean.features, res.features)
    assert isinstance(parts(settings, "wave-gan", gen)[0], WaveGanParam)


def test_failed_samples_are_marked_and_not_vocoded():
    class Broken(torch.nn.Module):
        """Logits of sample 0 are NaN: that sample must fail; the others must not."""

        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Linear(PAPER.n_mels, 3)

        def forward(self, x):
            out = self.logits(x.mean(dim=1))
            return torch.cat([torch.full_like(out[:1], float("nan")), out[1:]])

    gen = MelGenerator(latent=8, width=4)
    res = maximize(Broken(), torch.tensor([0, 1, 2]), method="gan", decoder=gen, settings=Settings(steps=3, lr=0.1))
    assert res.failed.tolist() == [True, False, False]
    from generation.vocoder import GriffinLimVocoder

    poisoned = res.features.clone()
    poisoned[0] = float("nan")
    with pytest.raises(HearsayError, match="NaN"):
        GriffinLimVocoder(PAPER, n_iter=2)(poisoned)


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.standard_normal((400, 4)))
    b = torch.from_numpy(rng.standard_normal((400, 4)))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) < 0.2 < frechet_distance(a, b + 1.0)
    with pytest.raises(HearsayError):
        frechet_distance(a[:1], b)


def test_train_gan_command(corpus, evaluator, tmp_path, capsys):
    out = tmp_path / "G.pt"
    call_command("train_gan", data=str(corpus), out=str(out), epochs=1, batch_size=8, latent=8, width=4, evaluator=str(evaluator),
                 device="cpu", verbosity=0)
    assert "FID(B)" in capsys.readouterr().out
    call_command("train_gan", data=str(corpus), out=str(tmp_path / "T.pt"), epochs=9, max_seconds=1e-6, batch_size=8, latent=8, width=4,
                 device="cpu", verbosity=0)
    assert "1 epochs (stopped by time budget" in capsys.readouterr().out
    with pytest.raises(CommandError, match="domain"):
        call_command("train_gan", data=str(corpus), out=str(out), domain="video", device="cpu", verbosity=0)
    with pytest.raises(CommandError, match="not found"):
        call_command("train_gan", data=str(corpus), out=str(tmp_path / "H.pt"), evaluator=str(tmp_path / "no.pt"), device="cpu", verbosity=0)


# --------------------------------------------------------------------------- generate --method gan|cgan|wave-gan


def _save_generator(path, arch: str, n_classes: int):
    from generation import checkpoint
    from generation.checkpoint import Checkpoint
    from tests.helpers.corpora import TONE_CORPUS_WORDS as GEN_WORDS

    torch.manual_seed(5)
    kwargs = {"latent": 8, "n_classes": n_classes, "width": 4}
    kwargs.update({"shape": list(PAPER.shape)} if arch == "mel" else {"feature_config": PAPER.to_dict()})
    model = MelGenerator(**kwargs) if arch == "mel" else WaveGenerator(**kwargs)
    checkpoint.save(path, Checkpoint(kind="gan", arch=arch, arch_kwargs=kwargs, model=model, feature_config=PAPER, classes=list(GEN_WORDS)))
    return path


@pytest.fixture(scope="module")
def gen_setup(tmp_path_factory):
    from tests.helpers.corpora import save_classifier

    root = tmp_path_factory.mktemp("gangen")
    return {"root": root, "A": save_classifier(root / "A.pt", 1), "B": save_classifier(root / "B.pt", 2),
            "cgan": _save_generator(root / "C.pt", "mel", 3), "gan": _save_generator(root / "G.pt", "mel", 0),
            "wave": _save_generator(root / "W.pt", "wave", 0)}


def _generate(s, out, method, gan, **extra):
    import io

    buf = io.StringIO()
    call_command("generate", classifier=str(s["A"]), evaluator=str(s["B"]), gan=str(gan), method=method, out=str(out), per_class=1,
                 max_attempts=2, seed=3, device="cpu", words="bed,go", verbosity=0, stdout=buf, **extra)
    return buf.getvalue()


def test_generate_cgan_writes_enhancer_pairs_and_resumes(gen_setup, tmp_path):
    import csv

    out = tmp_path / "cgan"
    text = _generate(gen_setup, out, "cgan", gen_setup["cgan"])
    assert "pocketsphinx" in text
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert sorted((r["word"], r["stage"]) for r in rows) == [("bed", "after"), ("bed", "before"), ("go", "after"), ("go", "before")]
    assert {r["method"] for r in rows} == {"cgan"} and {r["condition"] for r in rows} == {"cgan-noise"}
    for r in rows:
        assert (out / r["file"]).is_file() and (out / "features" / f"{r['stimulus_id']}.npy").is_file()
        assert "bed" not in r["stimulus_id"] and r["decoder_sha256"]
    assert len({r["pair_id"] for r in rows}) == 2
    enhancer = list(csv.DictReader(open(out / "enhancer.csv")))
    assert [e["word"] for e in enhancer] == ["bed", "go", "ALL"] and enhancer[-1]["n_after"] == "2"
    assert "0 words run, 2 resumed" in _generate(gen_setup, out, "cgan", gen_setup["cgan"])
    lost = out / "features" / f"{rows[0]['stimulus_id']}.npy"
    kept = lost.read_bytes()
    lost.unlink()  # a word whose feature file is gone is redone, as in the paper set, not taken as done
    assert "1 words run, 1 resumed" in _generate(gen_setup, out, "cgan", gen_setup["cgan"])
    assert lost.read_bytes() == kept


def test_generate_wave_gan_writes_the_generators_audio(gen_setup, tmp_path):
    import soundfile as sf

    out = tmp_path / "wave"
    _generate(gen_setup, out, "wave-gan", gen_setup["wave"])
    wavs = sorted((out / "wav").glob("*.wav"))
    assert len(wavs) == 4
    info = sf.info(str(wavs[0]))
    assert info.samplerate == PAPER.sample_rate and info.frames == PAPER.clip_samples
    assert json_load(out / "run.json")["identity"]["vocoder"] == {"vocoder": "generator"}


def json_load(path):
    import json

    return json.loads(path.read_text())


@pytest.mark.parametrize("method,which,message", [
    ("cgan", "gan", "needs a conditional generator"), ("gan", "cgan", "needs a plain generator"), ("gan", "wave", "needs a mel generator"),
])
def test_generate_refuses_a_generator_of_the_wrong_kind(gen_setup, tmp_path, method, which, message):
    with pytest.raises(CommandError, match=message):
        _generate(gen_setup, tmp_path / "x", method, gen_setup[which])


def test_generate_gan_needs_a_generator_and_paper_needs_a_decoder(gen_setup, tmp_path):
    with pytest.raises(CommandError, match="needs --gan"):
        call_command("generate", classifier=str(gen_setup["A"]), evaluator=str(gen_setup["B"]), method="gan", out=str(tmp_path / "y"), verbosity=0)
    with pytest.raises(CommandError, match="needs --decoder and --corpus"):
        call_command("generate", classifier=str(gen_setup["A"]), evaluator=str(gen_setup["B"]), out=str(tmp_path / "y"), verbosity=0)


def test_objective_puts_gan_priors_beside_the_others(gen_setup, tmp_path):
    import csv
    import io

    out = tmp_path / "objective"
    buf = io.StringIO()
    common = dict(classifier=str(gen_setup["A"]), evaluator=str(gen_setup["B"]), n=3, words=["bed", "go"], out=str(out), device="cpu",
                  verbosity=0, stdout=buf)
    call_command("objective", methods="classifier", cgan=str(gen_setup["cgan"]), wave_gan=str(gen_setup["wave"]), **common)
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert sorted({r["method"] for r in rows}) == ["cgan", "classifier", "wave-gan"]
    assert all(int(r["n"]) == (6 if r["word"] == "ALL" else 3) for r in rows)
    for method in ("classifier", "cgan", "wave-gan"):
        assert (out / f"heatmap_{method}.png").is_file() and len(list((out / method).glob("*.npz"))) == 2
    run = json_load(out / "run.json")["config"]
    assert set(run["generator_sha256"]) == {"cgan", "wave-gan"} and run["settings"]["cgan"]["init_std"] == 1.0
    with pytest.raises(CommandError, match="other settings"):
        call_command("objective", methods="classifier", cgan=str(gen_setup["cgan"]), **common)
    with pytest.raises(CommandError, match="needs a conditional generator"):
        call_command("objective", methods="classifier", cgan=str(gen_setup["gan"]), **{**common, "out": str(tmp_path / "o2")})


def test_latent_tsne_of_gan_latents(gen_setup, tmp_path):
    import csv

    out = tmp_path / "tsne"
    call_command("latent_tsne", gan=str(gen_setup["cgan"]), classifier=str(gen_setup["A"]), out=str(out), per_word=3, device="cpu", verbosity=0)
    rows = list(csv.DictReader(open(out / "tsne.csv")))
    assert len(rows) == 18 and {r["kind"] for r in rows} == {"start", "maximized"}
    assert (out / "tsne.png").is_file() and json_load(out / "tsne.json")["method"] == "cgan"
    with pytest.raises(CommandError, match="--encoder and --corpus"):
        call_command("latent_tsne", classifier=str(gen_setup["A"]), out=str(out), verbosity=0)


@pytest.mark.django_db
def test_gan_stimuli_join_an_existing_experiment(gen_setup, tmp_path, media):
    from evaluation.models import Stimulus
    from tests.helpers.survey import FIXTURE

    out = tmp_path / "cgan-load"
    _generate(gen_setup, out, "cgan", gen_setup["cgan"])
    call_command("load_stimuli", str(FIXTURE), "--experiment", "all-priors", "--create", "--words", "bed", "down", "go", "no", "up", "yes",
                 verbosity=0)
    before = Stimulus.objects.filter(experiment__slug="all-priors").count()
    call_command("load_stimuli", str(out / "manifest.csv"), "--experiment", "all-priors", verbosity=0)
    added = Stimulus.objects.filter(experiment__slug="all-priors", condition="cgan-noise")
    assert added.count() == 4 and Stimulus.objects.filter(experiment__slug="all-priors").count() > before
    assert {s.stage for s in added} == {"before", "after"} and {s.method for s in added} == {"cgan"}


def test_generate_never_writes_failed_gan_samples(gen_setup, tmp_path):
    import csv

    from generation import checkpoint

    bad = tmp_path / "nanA.pt"
    ckpt = checkpoint.load(gen_setup["A"])
    with torch.no_grad():
        ckpt.model.logits.bias.fill_(float("nan"))
    checkpoint.save(bad, ckpt)
    out = tmp_path / "nan"
    text = _generate({**gen_setup, "A": bad}, out, "cgan", gen_setup["cgan"])
    assert "2 failed" in text
    assert list(csv.DictReader(open(out / "manifest.csv"))) == [] and list((out / "wav").iterdir()) == []
    assert json_load(out / "run.json")["failed"] == 2


def test_a_time_budget_stops_gan_training_with_a_proper_checkpoint(corpus, tmp_path):
    out = tmp_path / "G.pt"
    ckpt = train_gan(corpus, out, settings=GanSettings(conditional=True, **{**TINY, "epochs": 50}, max_seconds=1e-6), device="cpu", progress=False)
    assert ckpt.train_config["epochs_run"] == 1 and ckpt.train_config["stopped_by"] == "time budget (1e-06 s)"
    assert len(ckpt.metrics["history"]) == 1 and load(out).train_config["max_seconds"] == 1e-6 and not partial_path(out).exists()
    with pytest.raises(HearsayError, match="max_seconds"):
        train_gan(corpus, tmp_path / "H.pt", settings=GanSettings(**TINY, max_seconds=-1.0), device="cpu", progress=False)
