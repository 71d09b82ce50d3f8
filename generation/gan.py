"""GAN priors (seed 004): maximize a classifier's output through a generator trained here.

Two generators, each plain or conditional on the word:

* ``mel``: z (and the word) -> log-mel features [T, N] in [0, 1] (sigmoid), a
  mirror of the autoencoder's decoder;
* ``wave``: a WaveGAN-style generator z -> one second of raw audio (tanh), turned
  into features by `FeaturePipeline`, a differentiable copy of our feature
  extraction (peak normalization, STFT, mel, dB, [0, 1]). The classifier and the
  critic judge its output through that pipeline, so gradients reach the wave, and
  listeners hear the generator's own audio, with no vocoder in between.

Training: hinge loss with a spectral-norm critic over features (a projection
critic when conditional) and two time-scale learning rates; resumable from
`OUT.partial`. Quality figures at the end: a sample grid per word, classifier
B's accuracy on conditional samples of each word (or its predicted-word spread
for a plain GAN), and the Fréchet distance between real and generated features
in B's penultimate layer, beside the same distance between two real splits.

Maximization: the GAN priors are parameterizations of the engine
(`generation.maximize`), one class per method (``gan``, ``cgan``, ``wave-gan``),
each a `GeneratorParam`: a latent z with x = G(z) or G(z, word), a conditional
generator generating each sample's target word; starts are samples of the GAN
(z ~ N(0, I)). ``maximize(classifier, targets, method="cgan", decoder=G,
settings=preset("paper", "cgan"))`` runs one; a wave generator's audio comes
back in the result's ``waves``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from hearsay import atomic
from hearsay.errors import HearsayError
from hearsay.provenance import library_versions

from . import cache, checkpoint
from .checkpoint import Checkpoint
from .features import PAPER, FeatureConfig, LogMel
from .maximize import PARAMETERIZATIONS, Parameterization, Settings, maximize, noise, preset

KIND = "gan"
DOMAINS = ("mel", "wave")
EpochCallback = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------- the differentiable feature pipeline


class FeaturePipeline(nn.Module):
    """Waves [B, samples] at the feature rate -> features [B, T, N], differentiably, as `prepare_waves` + `LogMel` do."""

    def __init__(self, cfg: FeatureConfig = PAPER):
        super().__init__()
        self.cfg = cfg
        self.logmel = LogMel(cfg)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        n = self.cfg.clip_samples
        wave = wave[:, :n] if wave.shape[1] >= n else F.pad(wave, (0, n - wave.shape[1]))
        peak = wave.abs().amax(dim=1, keepdim=True).clamp(min=1e-8)
        return self.logmel(wave / peak * self.cfg.peak)


# --------------------------------------------------------------------------- generators and critic


class _Conditioning(nn.Module):
    """z, or z joined with a learned embedding of the word."""

    def __init__(self, latent: int, n_classes: int, embed: int = 32):
        super().__init__()
        self.latent, self.n_classes = latent, n_classes
        self.embedding = nn.Embedding(n_classes, embed) if n_classes else None
        self.width = latent + (embed if n_classes else 0)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.embedding is None:
            return z
        if labels is None:
            raise HearsayError("a conditional generator needs the word (labels)")
        return torch.cat([z, self.embedding(labels)], dim=1)


class MelGenerator(nn.Module):
    """z [B, latent] (+ word) -> features [B, T, N] in [0, 1]; upsampling convs as in the autoencoder's decoder."""

    domain = "mel"

    def __init__(self, latent: int = 128, n_classes: int = 0, shape: Sequence[int] = (90, 80), width: int = 64):
        super().__init__()
        frames, mels = shape
        if frames % 18 or mels % 8:
            raise HearsayError(f"the mel generator needs frames divisible by 18 and mels by 8, got {tuple(shape)}")
        self.latent, self.n_classes, self.shape = latent, n_classes, (frames, mels)
        self.cond = _Conditioning(latent, n_classes)
        self.inner = (4 * width, frames // 18, mels // 8)
        self.expand = nn.Linear(self.cond.width, math.prod(self.inner))

        def up(cin: int, cout: int, factor: tuple[int, int]) -> list[nn.Module]:
            return [nn.Upsample(scale_factor=factor), nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2)]

        self.body = nn.Sequential(
            nn.LeakyReLU(0.2),
            *up(4 * width, 2 * width, (2, 2)), *up(2 * width, width, (3, 2)), *up(width, width, (3, 2)),
            nn.Conv2d(width, 1, 3, padding=1),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.expand(self.cond(z, labels)).view(-1, *self.inner)
        return torch.sigmoid(self.body(h).squeeze(1))

    def features(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self(z, labels)


class WaveGenerator(nn.Module):
    """WaveGAN-style: z (+ word) -> one clip of raw audio [B, clip_samples] in (-1, 1), five x4 upsampling stages."""

    domain = "wave"

    def __init__(self, latent: int = 128, n_classes: int = 0, feature_config: dict | None = None, width: int = 32):
        super().__init__()
        cfg = FeatureConfig.from_dict(feature_config) if feature_config else PAPER
        self.latent, self.n_classes, self.shape = latent, n_classes, cfg.shape
        self.samples = cfg.clip_samples
        self.cond = _Conditioning(latent, n_classes)
        self.inner = (8 * width, -(-self.samples // 4**5))
        self.expand = nn.Linear(self.cond.width, math.prod(self.inner))
        chans = [8 * width, 8 * width, 4 * width, 2 * width, width, width]
        layers: list[nn.Module] = [nn.ReLU()]
        for cin, cout in zip(chans, chans[1:]):
            layers += [nn.Upsample(scale_factor=4), nn.Conv1d(cin, cout, 25, padding=12), nn.ReLU()]
        layers.append(nn.Conv1d(width, 1, 25, padding=12))
        self.body = nn.Sequential(*layers)
        self.pipeline = FeaturePipeline(cfg)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.expand(self.cond(z, labels)).view(-1, *self.inner)
        return torch.tanh(self.body(h).squeeze(1))[:, : self.samples]

    def features(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.pipeline(self(z, labels))


class Critic(nn.Module):
    """Spectral-norm conv critic over features [B, T, N]; with classes, a projection term <embed(word), h>."""

    def __init__(self, n_classes: int = 0, width: int = 32):
        super().__init__()
        layers, cin = [], 1
        for cout in (width, 2 * width, 4 * width, 8 * width):
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, 2, 1)), nn.LeakyReLU(0.2)]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.out = spectral_norm(nn.Linear(cin, 1))
        self.embedding = spectral_norm(nn.Embedding(n_classes, cin)) if n_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(x.unsqueeze(1)).sum(dim=(2, 3))
        score = self.out(h).squeeze(1)
        if self.embedding is not None:
            score = score + (self.embedding(labels) * h).sum(dim=1)
        return score


def build(kind: str, arch: str, arch_kwargs: dict[str, Any]) -> nn.Module:
    """Model builder for `checkpoint.load`."""
    if kind != KIND or arch not in DOMAINS:
        raise HearsayError(f"not a GAN checkpoint ({kind}/{arch})")
    return (MelGenerator if arch == "mel" else WaveGenerator)(**arch_kwargs)


def load(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    return checkpoint.load(path, device=device, kind=KIND, build=build)


# --------------------------------------------------------------------------- the engine's parameterizations


class GeneratorParam(Parameterization):
    """Optimize a latent z; x = G(z), or G(z, word) for a conditional generator.

    A conditional generator generates each sample's target word: the engine
    hands the batch's targets to `start`, and they stay fixed while z moves.
    Subclasses that set `method` are the GAN priors reachable by name; `domain`
    and `conditional` (None: either) say which generators serve that method.
    Starts are samples of the GAN (z ~ N(0, I), see `preset_settings`), or given
    latents (`optimize(..., start_latents=z0)`); there is no encoder.
    """

    domain: ClassVar[str | None] = None
    conditional: ClassVar[bool | None] = None

    def __init__(self, generator: nn.Module, z0: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        self.generator = generator
        self.labels: torch.Tensor | None = None
        if z0 is not None:
            self.start(z0, labels)

    @classmethod
    def from_method(cls, settings: Settings, prior: nn.Module | None) -> "GeneratorParam":
        if prior is None:
            raise HearsayError(f"the {cls.method} method needs a generator (a GAN checkpoint from train_gan)")
        problem = cls.mismatch(prior)
        if problem:
            raise HearsayError(f"the {cls.method} method {problem}")
        return cls(prior)

    @classmethod
    def preset_settings(cls, presets: dict[str, Settings]) -> Settings:
        """The preset's decoder-prior settings, but started from samples of the GAN (z ~ N(0, I))."""
        return replace(presets["decoder"], init_std=1.0)

    @classmethod
    def mismatch(cls, generator: nn.Module, name: str = "this one") -> str | None:
        """Why `generator` cannot serve this method (None when it can); `name` names it in the message."""
        if cls.domain is not None and generator.domain != cls.domain:
            return f"needs a {cls.domain} generator, {name} generates {generator.domain}"
        if cls.conditional is not None and bool(generator.n_classes) != cls.conditional:
            kind = "conditional" if generator.n_classes else "plain"
            return f"needs a {'conditional' if cls.conditional else 'plain'} generator; {name} is {kind}"
        return None

    def feature_shape(self, requested: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(self.generator.shape)

    def noise_shape(self, feature_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.generator.latent,)

    def start(self, x0: torch.Tensor, targets: torch.Tensor | None = None) -> "GeneratorParam":
        """Arm with latents x0 and, for a conditional generator, each sample's word (`targets`)."""
        words = self.generator.n_classes
        if words:
            if targets is None or len(targets) != len(x0):
                raise HearsayError("a conditional generator needs the word of every sample")
            if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= words):
                raise HearsayError(f"target class index {int(targets.max())} out of range: the generator knows {words} words")
            self.labels = targets.to(x0.device)
        else:
            self.labels = None
        return super().start(x0, targets)

    def features(self) -> torch.Tensor:
        return self.generator.features(self.parameter, self.labels)

    def latents(self) -> torch.Tensor:
        return self.parameter

    def waves(self) -> torch.Tensor | None:
        """The wave generator's own audio (listeners hear it instead of a vocoded copy); None for mel generators."""
        if self.generator.domain != "wave":
            return None
        with torch.no_grad():
            return self.generator(self.parameter, self.labels)


class MelGanParam(GeneratorParam):
    """``gan``: a plain log-mel generator, x = G(z)."""

    method = "gan"
    domain = "mel"
    conditional = False


class ConditionalMelGanParam(GeneratorParam):
    """``cgan``: a conditional log-mel generator, x = G(z, target word)."""

    method = "cgan"
    domain = "mel"
    conditional = True


class WaveGanParam(GeneratorParam):
    """``wave-gan``: a waveform generator whose audio the classifier judges through `FeaturePipeline`."""

    method = "wave-gan"
    domain = "wave"


def gan_methods() -> dict[str, type[GeneratorParam]]:
    """The GAN priors by method name: every registered generator parameterization."""
    return {m: c for m, c in PARAMETERIZATIONS.items() if issubclass(c, GeneratorParam)}


def check_method(method: str, ckpt: Checkpoint) -> None:
    """Refuse a generator that cannot serve `method` (`gan` needs a plain mel generator, `cgan` a conditional one, ...)."""
    methods = gan_methods()
    if method not in methods:
        raise HearsayError(f"unknown GAN method {method!r}; choose from {', '.join(methods)}")
    problem = methods[method].mismatch(ckpt.model, Path(ckpt.path).name)
    if problem:
        raise HearsayError(f"the {method} method {problem}")


def load_generators(gans: dict[str, str | Path], classifier: Checkpoint, device: torch.device | str) -> dict[str, Checkpoint]:
    """GAN priors by method (gan, cgan, wave-gan), each checked against its method and against classifier A."""
    gens = {}
    for method, path in gans.items():
        gens[method] = load(path, device)
        check_method(method, gens[method])
        checkpoint.require_compatible(classifier, gens[method])
        if gens[method].model.n_classes and gens[method].classes != classifier.classes:
            raise HearsayError(f"{Path(path).name} was trained on other words than {Path(classifier.path).name}")
    return gens


# --------------------------------------------------------------------------- quality figures


def penultimate(classifier: nn.Module, features: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The input of the classifier's final `logits` layer (both architectures name it so)."""
    grabbed: list[torch.Tensor] = []
    handle = classifier.logits.register_forward_hook(lambda _m, inp, _out: grabbed.append(inp[0].detach().flatten(1).cpu()))
    try:
        with torch.no_grad():
            for s in range(0, len(features), batch):
                classifier(features[s : s + batch])
    finally:
        handle.remove()
    return torch.cat(grabbed).double() if grabbed else torch.zeros(0, 1, dtype=torch.float64)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of embeddings [N, D] (FID's formula)."""
    if len(a) < 2 or len(b) < 2:
        raise HearsayError("the Fréchet distance needs at least two samples on each side")
    mu1, mu2 = a.mean(0).numpy(), b.mean(0).numpy()
    s1, s2 = np.atleast_2d(np.cov(a.numpy(), rowvar=False)), np.atleast_2d(np.cov(b.numpy(), rowvar=False))
    # tr sqrt(S1 S2) = sum of the square roots of the eigenvalues of S1 S2 (real and >= 0 for covariance matrices).
    root_trace = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0.0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * root_trace)


@torch.no_grad()
def sample(generator: nn.Module, n: int, labels: torch.Tensor | None, seed: int, device: torch.device, batch: int = 256) -> torch.Tensor:
    """n features from the generator, z ~ N(0, I) drawn per sample index (reproducible whatever the batch)."""
    generator.eval()
    out = []
    for lo in range(0, n, batch):
        hi = min(lo + batch, n)
        z = noise((generator.latent,), 1.0, seed, lo, hi - lo).to(device)
        y = labels[lo:hi].to(device) if labels is not None and generator.n_classes else None
        out.append(generator.features(z, y).cpu())
    return torch.cat(out) if out else torch.zeros(0, *generator.shape)


def quality(generator: nn.Module, classes: list[str], evaluator: Checkpoint | None, real: torch.Tensor, reference: torch.Tensor,
            device: torch.device, per_word: int = 20, seed: int = 7) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """B's view of the samples (per-word accuracy or prediction spread) and FIDs; returns (metrics, samples, their labels)."""
    k = len(classes)
    labels = torch.arange(k).repeat_interleave(per_word)
    samples = sample(generator, len(labels), labels, seed, device)
    metrics: dict[str, Any] = {"samples": len(samples), "sample_mean": float(samples.mean()), "sample_std": float(samples.std())}
    if evaluator is None:
        return metrics, samples, labels
    model = evaluator.model.to(device).eval()
    with torch.no_grad():
        pred = torch.cat([model(samples[s : s + 256].to(device)).argmax(1).cpu() for s in range(0, len(samples), 256)])
    if generator.n_classes:
        metrics["b_accuracy"] = float((pred == labels).float().mean())
        metrics["b_accuracy_per_word"] = {w: float((pred[labels == i] == i).float().mean()) for i, w in enumerate(classes)}
    counts = torch.bincount(pred, minlength=k).float()
    share = counts / counts.sum()
    metrics["b_predicted_words"] = int((counts > 0).sum())
    metrics["b_prediction_entropy_bits"] = float(-(share[share > 0] * share[share > 0].log2()).sum())
    if len(real) < 2:  # a corpus with one test clip: no distance to measure, but the training is not lost for it
        metrics["fid_b_skipped"] = f"the test split holds {len(real)} clip(s); the Fréchet distance needs at least 2"
        metrics["evaluator_sha256"] = evaluator.sha256
        return metrics, samples, labels
    gen_emb = penultimate(model, samples.to(device))
    real_emb = penultimate(model, real.to(device))
    metrics["fid_b"] = frechet_distance(real_emb, gen_emb)
    if len(reference) >= 2:
        metrics["fid_b_real_vs_real"] = frechet_distance(real_emb, penultimate(model, reference.to(device)))
    metrics["fid_reference"] = "test split vs samples; real_vs_real: test vs validation split"
    metrics["evaluator_sha256"] = evaluator.sha256
    return metrics, samples, labels


def write_grid(path: Path, samples: torch.Tensor, labels: torch.Tensor, classes: list[str], title: str, columns: int = 6,
               predicted: list[str] | None = None) -> None:
    """A PNG grid: one row per word (conditional) with `columns` samples each."""
    from hearsay import fonts

    plt = fonts.pyplot(classes, predicted)  # Agg, with fonts for words in any installed script

    rows = [i for i in range(len(classes)) if (labels == i).any()]
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns, 1.1 * len(rows) + 0.6), squeeze=False)
    for r, word in enumerate(rows):
        idx = torch.nonzero(labels == word).flatten()[:columns]
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(idx):
                ax.imshow(samples[idx[c]].T.numpy(), origin="lower", aspect="auto", vmin=0, vmax=1, cmap="magma")
                if predicted is not None:
                    ax.set_title(f"B: {predicted[int(idx[c])]}", fontsize=6)
            if c == 0:
                ax.set_ylabel(classes[word], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    atomic.write_with(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class GanSettings:
    domain: str = "mel"
    conditional: bool = False
    epochs: int = 30
    batch_size: int = 32
    latent: int = 128
    width: int = 16  # a CPU-sized default; on a GPU 32 or more
    lr_g: float = 2e-4
    lr_d: float = 4e-4
    max_seconds: float = 0.0  # training time budget: stop after the epoch that reaches it (0: none)
    seed: int = 1

    def validate(self) -> None:
        if self.domain not in DOMAINS:
            raise HearsayError(f"unknown domain {self.domain!r}; choose from {', '.join(DOMAINS)}")
        if self.epochs < 1 or self.batch_size < 2 or self.latent < 1 or self.width < 1:
            raise HearsayError("epochs, latent and width must be at least 1 and batch_size at least 2")
        if not (0 < self.lr_g < math.inf and 0 < self.lr_d < math.inf):
            raise HearsayError("learning rates must be positive and finite")
        if not self.max_seconds >= 0:
            raise HearsayError("max_seconds must not be negative")


def train_gan(
    corpus_root: str | Path,
    out: str | Path,
    *,
    settings: GanSettings = GanSettings(),
    evaluator: str | Path | None = None,
    device: str | torch.device = "auto",
    feature_config: FeatureConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
) -> Checkpoint:
    """Train (or resume) a GAN prior on the training split; quality figures use classifier B (`evaluator`) when given."""
    from tqdm import tqdm

    from .train import _prepare, finish_checkpoint, partial_path, resume_partial, save_partial, sibling

    settings.validate()
    corpus, out, dev, cfg = _prepare(corpus_root, out, device, feature_config, KIND)
    b = checkpoint.load(evaluator, dev, kind="classifier") if evaluator is not None else None
    if b is not None:
        if b.feature_config != cfg:
            raise HearsayError(f"evaluator {evaluator} reads other features than this GAN is trained on")
        if b.classes != corpus.classes:
            raise HearsayError(f"evaluator {evaluator} knows other words than the corpus at {corpus.root}")
    n_classes = len(corpus.classes) if settings.conditional else 0
    if settings.domain == "mel":
        arch_kwargs: dict[str, Any] = {"latent": settings.latent, "n_classes": n_classes, "shape": list(cfg.shape), "width": 2 * settings.width}
    else:
        arch_kwargs = {"latent": settings.latent, "n_classes": n_classes, "feature_config": cfg.to_dict(), "width": settings.width}
    fingerprint = corpus.fingerprint()
    identity = {"kind": KIND, "arch": settings.domain, "arch_kwargs": arch_kwargs, **settings.__dict__,
                "feature_config": cfg.fingerprint(), "data_fingerprint": fingerprint}
    for budget in ("epochs", "max_seconds"):  # a resumed run may be given more of either
        identity.pop(budget)

    feats = {s: torch.from_numpy(cache.features_for(corpus.split(s), cfg, dev, cache_dir, progress=progress)) for s in ("train", "validation", "test")}
    labels = torch.tensor(corpus.labels(corpus.split("train")), dtype=torch.long)
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    generator = build(KIND, settings.domain, dict(arch_kwargs)).to(dev)
    critic = Critic(n_classes, settings.width).to(dev)
    opt_g = torch.optim.Adam(generator.parameters(), lr=settings.lr_g, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(critic.parameters(), lr=settings.lr_d, betas=(0.0, 0.9))
    state_path = partial_path(out)
    trained = {"generator": generator, "critic": critic, "opt_g": opt_g, "opt_d": opt_d}
    epoch, history, seconds, cpu_seconds = resume_partial(state_path, identity, trained, gen)

    x_train = feats["train"]
    bar = tqdm(total=settings.epochs, initial=min(epoch, settings.epochs), desc=f"{out.name} ({settings.domain} GAN)", unit="epoch", disable=not progress)
    if epoch:
        bar.write(f"resuming {out.name} after epoch {epoch} from {state_path.name}")
    while epoch < settings.epochs and not (settings.max_seconds and seconds >= settings.max_seconds):
        started, cpu_started = time.perf_counter(), time.process_time()
        generator.train()
        critic.train()
        d_sum = g_sum = 0.0
        steps = 0
        for idx in torch.randperm(len(x_train), generator=gen).split(settings.batch_size):
            if len(idx) < 2:
                continue
            real, y = x_train[idx].to(dev), labels[idx].to(dev)
            cond = y if n_classes else None
            z = torch.randn(len(idx), settings.latent, generator=gen).to(dev)
            fake = generator.features(z, cond)
            d_loss = F.relu(1.0 - critic(real, cond)).mean() + F.relu(1.0 + critic(fake.detach(), cond)).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            g_loss = -critic(fake, cond).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            d_sum += float(d_loss.detach())
            g_sum += float(g_loss.detach())
            steps += 1
        epoch += 1
        seconds += time.perf_counter() - started
        cpu_seconds += time.process_time() - cpu_started
        record = {"epoch": epoch, "steps": steps, "critic_loss": d_sum / max(1, steps), "generator_loss": g_sum / max(1, steps), "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1)}
        if not (math.isfinite(record["critic_loss"]) and math.isfinite(record["generator_loss"])):
            raise HearsayError(f"training diverged at epoch {epoch} (NaN loss); lower the learning rates")
        history.append(record)
        save_partial(state_path, identity, trained, gen, epoch=epoch, history=history, seconds=seconds, cpu_seconds=cpu_seconds)
        bar.set_postfix(d=f"{record['critic_loss']:.3f}", g=f"{record['generator_loss']:.3f}")
        bar.update(1)
        if on_epoch:
            on_epoch(record)
    bar.close()

    generator.eval()
    metrics, samples, sample_labels = quality(generator, corpus.classes, b, feats["test"], feats["validation"], dev)
    metrics.update({"n_train": len(x_train), "train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1), "history": history})
    predicted = None
    if b is not None:
        with torch.no_grad():
            predicted = [corpus.classes[int(i)] for i in b.model(samples.to(dev)).argmax(1).cpu()]
    kind = f"{'conditional ' if n_classes else ''}{settings.domain} GAN"
    if n_classes:
        write_grid(sibling(out, ".samples.png"), samples, sample_labels, corpus.classes, f"{out.name}: {kind} samples per word", predicted=predicted)
    else:
        flat = torch.arange(len(samples)) % len(corpus.classes)  # rows are only a layout: the samples carry no word
        write_grid(sibling(out, ".samples.png"), samples, flat, [f"#{i + 1}" for i in range(len(corpus.classes))],
                   f"{out.name}: {kind} samples (B's word above each)", predicted=predicted)
    stopped = "epochs" if epoch >= settings.epochs else f"time budget ({settings.max_seconds:g} s)"
    train_config = {**identity, "epochs": settings.epochs, "max_seconds": settings.max_seconds, "epochs_run": epoch, "stopped_by": stopped,
                    "data": str(corpus.root), "device": str(dev),
                    "evaluator": str(evaluator) if evaluator else None, "loss": "hinge, spectral-norm critic" + (" with projection" if n_classes else ""),
                    "selected": "last epoch"}
    ckpt = Checkpoint(kind=KIND, arch=settings.domain, arch_kwargs=arch_kwargs, model=generator, feature_config=cfg, classes=list(corpus.classes),
                      train_config=train_config, metrics=metrics, data_fingerprint=fingerprint, versions=library_versions())
    return finish_checkpoint(out, ckpt, state_path)


# --------------------------------------------------------------------------- t-SNE of GAN latents


def method_of(ckpt: Checkpoint) -> str:
    """The maximization method a generator serves (the first GAN prior that takes it): gan, cgan or wave-gan."""
    return next(m for m, c in gan_methods().items() if c.mismatch(ckpt.model) is None)


def run_gan_tsne(generator: str | Path, classifier: str | Path, out: str | Path, *, per_word: int = 20, preset_name: str = "paper",
                 seed: int = 0, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Where maximization moves GAN samples in latent space: t-SNE of start and maximized z, per target word.

    `per_word` samples of the generator per word (of that word, for a conditional one)
    are pushed toward the word; the figure colours both ends by target word with
    arrows from start to maximized, and rings starts classifier A already gave to
    another word. Writes tsne.png/.pdf, tsne.csv and tsne.json into `out`.
    """
    from sklearn.manifold import TSNE

    from .objective import save_figure, write_csv

    if per_word < 1:
        raise HearsayError(f"per_word must be at least 1, got {per_word}")
    device = torch.device(device)
    a = checkpoint.load(classifier, device, kind="classifier")
    g = load(generator, device)
    method = method_of(g)
    load_generators({method: generator}, a, device)
    from .tsne import claim_output

    out = Path(out)
    targets = torch.arange(len(a.classes)).repeat_interleave(per_word)
    if len(targets) < 2:
        raise HearsayError("t-SNE needs at least 2 samples")
    settings = preset(preset_name, method)
    claim_output(out, {"method": method, "per_word": per_word, "seed": seed, "settings": settings.to_dict(),
                       "generator_sha256": g.sha256, "classifier_sha256": a.sha256})
    res = maximize(a.model, targets, method=method, decoder=g.model, settings=settings, seed=seed, device=device, keep_waves=False)
    ok = ~res.failed
    z0, z1, t = res.start_latents[ok], res.latents[ok], targets[ok]
    before, after = res.start_prob_a[ok].argmax(1), res.prob_a[ok].argmax(1)
    n = len(t)
    if n < 2:
        raise HearsayError(f"only {n} of {len(targets)} samples were maximized without NaN/inf (is {Path(a.path).name} sound?); "
                           "t-SNE needs at least 2; nothing was written")
    joint = torch.cat([z0, z1]).numpy().astype(np.float64)
    perplexity = float(min(30.0, max(2.0, (2 * n - 1) / 3)))
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(joint)
    words = [a.classes[int(i)] for i in t]
    rows = [[i, words[i], kind, f"{coords[off + i, 0]:.4f}", f"{coords[off + i, 1]:.4f}", a.classes[int(pred[i])]]
            for kind, off, pred in (("start", 0, before), ("maximized", n, after)) for i in range(n)]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "tsne.csv", ["sample", "target", "kind", "x", "y", "pred_a"], rows)

    from matplotlib.lines import Line2D

    from hearsay import fonts

    plt = fonts.pyplot()  # Agg, with fonts for words in any installed script
    cmap = plt.get_cmap("tab20" if len(a.classes) > 10 else "tab10")
    colours = [cmap(int(i) % cmap.N) for i in t]
    fig, ax = plt.subplots(figsize=(9, 8))
    start, end = coords[:n], coords[n:]
    for i in range(n):
        ax.annotate("", xy=end[i], xytext=start[i], arrowprops={"arrowstyle": "->", "color": colours[i], "alpha": 0.35, "lw": 0.7})
    ax.scatter(start[:, 0], start[:, 1], c=colours, s=18, marker="o")
    ax.scatter(end[:, 0], end[:, 1], c=colours, s=22, marker="^")
    elsewhere = (before != t).numpy()
    if elsewhere.any():
        ax.scatter(start[elsewhere, 0], start[elsewhere, 1], s=80, facecolors="none", edgecolors="red", linewidths=1.0)
    handles = [Line2D([], [], marker="o", ls="", color="grey", label="GAN sample (start)"),
               Line2D([], [], marker="^", ls="", color="grey", label="maximized"),
               Line2D([], [], marker="o", ls="", markerfacecolor="none", markeredgecolor="red", label="start not the target for A")]
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of {method} latents: samples → maximized toward the target word (colour), n={n}")
    save_figure(fig, out / "tsne")
    plt.close(fig)
    record = {"method": method, "per_word": per_word, "samples": n, "failed": int((~ok).sum()),
              "start_not_target": int(elsewhere.sum()), "maximized_target": int((after == t).sum()), "seed": seed, "perplexity": perplexity,
              "settings": settings.to_dict(), "generator_sha256": g.sha256, "classifier_sha256": a.sha256,
              "versions": library_versions()}
    atomic.write_text(out / "tsne.json", json.dumps(record, indent=2))
    return record
