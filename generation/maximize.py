"""Activation maximization: what input does a classifier find most like a word?

Built from small parts so each method is a few lines:

* a *parameterization* owns the optimized tensor and turns it into features:
  `InputParam` (the log-mel input itself) or `DecoderParam` (a latent z with
  x = decoder(z), the paper's "prior"); a GAN generator is one more subclass
  whose `features()` calls the generator;
* an *objective* scores every sample of a batch ([B] tensor) and objectives
  combine arithmetically, e.g. ``class_probability(t) - 0.1 * total_variation()``;
* a *step* rule: the paper's RMS-normalized gradient ascent, or Adam.

`maximize` runs all of it batched over thousands of samples with mixed targets.
Each sample's noise start is drawn from its own generator seeded by (seed, sample
index), so results depend on the seed only, not on the batch size or device.
Every update is per sample (the classifier runs in eval mode, so no sample can
influence another), and a sample whose values become NaN/inf is marked failed
and frozen; callers must never turn a failed sample into audio.

Range of direct inputs: the paper let the optimized log-mel input leave the
feature range [0, 1] (values were never clamped before vocoding). The ``paper``
preset reproduces that (``clamp=False``); Hearsay's default preset ``hearsay``
clamps direct inputs to [0, 1] after every step (and at the start), so the
classifier only ever judges features that a real sound could produce. Decoder
outputs lie in [0, 1] by construction (sigmoid).
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from hearsay.errors import HearsayError
from .nets import Autoencoder

STEPS = ("rms", "adam")
OBJECTIVES = ("probability", "logit", "log_probability", "neuron")
METHODS = ("classifier", "decoder")


@dataclass(frozen=True)
class Settings:
    steps: int = 20
    lr: float = 0.01
    step: str = "rms"
    objective: str = "probability"
    layer: str | None = None
    units: tuple[int, ...] = ()
    tv_weight: float = 0.0
    l2_weight: float = 0.0
    clamp: bool = True
    init_std: float = 0.1
    range_weight: float = 0.0

    def validate(self) -> None:
        """Reject impossible settings before any work starts."""
        if self.steps < 0:
            raise HearsayError(f"steps must be >= 0, got {self.steps}")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise HearsayError(f"lr must be a positive number, got {self.lr}")
        if self.step not in STEPS:
            raise HearsayError(f"unknown step rule {self.step!r}; choose from {', '.join(STEPS)}")
        if self.objective not in OBJECTIVES:
            raise HearsayError(f"unknown objective {self.objective!r}; choose from {', '.join(OBJECTIVES)}")
        if self.objective == "neuron" and not self.layer:
            raise HearsayError("the neuron objective needs a layer name")
        if self.init_std < 0:
            raise HearsayError(f"init_std must be >= 0, got {self.init_std}")
        for name in ("tv_weight", "l2_weight", "range_weight"):
            if getattr(self, name) < 0:
                raise HearsayError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


_PAPER = Settings(steps=20, step="rms", objective="probability", clamp=False, init_std=0.1)

PRESETS: dict[str, dict[str, Settings]] = {
    # Soomro et al. 2019 exactly: softmax probability, g / RMS(g) * lr, 20 steps, no clipping, no regularizer.
    "paper": {"classifier": replace(_PAPER, lr=0.01), "decoder": replace(_PAPER, lr=0.1)},
    # Hearsay's default: the same, but direct inputs stay in the feature range [0, 1].
    "hearsay": {"classifier": replace(_PAPER, lr=0.01, clamp=True), "decoder": replace(_PAPER, lr=0.1, clamp=True)},
}


def preset(name: str, method: str) -> Settings:
    """Look up a preset by name with a one-line error for typos."""
    if name not in PRESETS:
        raise HearsayError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    if method not in PRESETS[name]:
        raise HearsayError(f"unknown method {method!r}; choose from {', '.join(PRESETS[name])}")
    return PRESETS[name][method]


# --------------------------------------------------------------------------- parameterizations


class Parameterization:
    """Owns the optimized leaf tensor `parameter` ([B, ...]) and maps it to features [B, T, N]."""

    parameter: torch.Tensor

    def features(self) -> torch.Tensor:
        raise NotImplementedError

    def latents(self) -> torch.Tensor | None:
        return None

    def project(self) -> None:
        """Called after every step (and once at the start) to enforce hard constraints."""


class InputParam(Parameterization):
    """Optimize the log-mel input directly (the paper's "classifier-only" method)."""

    def __init__(self, start: torch.Tensor, clamp: bool):
        self.parameter = start.detach().clone().requires_grad_(True)
        self.clamp = clamp
        self.project()

    def features(self) -> torch.Tensor:
        return self.parameter

    def project(self) -> None:
        if self.clamp:
            with torch.no_grad():
                self.parameter.clamp_(0.0, 1.0)


class DecoderParam(Parameterization):
    """Optimize a latent z and let the decoder produce the features: x = decoder(z)."""

    def __init__(self, decoder: Autoencoder, z0: torch.Tensor):
        self.decoder = decoder
        self.parameter = z0.detach().clone().requires_grad_(True)

    def features(self) -> torch.Tensor:
        return self.decoder.decode(self.parameter)

    def latents(self) -> torch.Tensor:
        return self.parameter


# --------------------------------------------------------------------------- objectives


@dataclass
class Context:
    """What one forward pass exposes to objectives."""

    features: torch.Tensor
    logits: torch.Tensor
    activations: dict[str, torch.Tensor]
    parameter: torch.Tensor


class Objective:
    """A per-sample score [B] to maximize; objectives add, subtract and scale."""

    def __init__(self, fn: Callable[[Context], torch.Tensor], name: str, layers: tuple[str, ...] = ()):
        self.fn = fn
        self.name = name
        self.layers = layers

    def __call__(self, ctx: Context) -> torch.Tensor:
        return self.fn(ctx)

    def __add__(self, other: "Objective") -> "Objective":
        return Objective(lambda c: self(c) + other(c), f"{self.name} + {other.name}", self.layers + other.layers)

    def __sub__(self, other: "Objective") -> "Objective":
        return self + (-1.0) * other

    def __mul__(self, weight: float) -> "Objective":
        return Objective(lambda c: weight * self(c), f"{weight:g} * {self.name}", self.layers)

    __rmul__ = __mul__

    def __neg__(self) -> "Objective":
        return (-1.0) * self

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def _picked(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, targets.view(-1, 1)).squeeze(1)


def class_probability(targets: torch.Tensor) -> Objective:
    """Softmax probability of each sample's target: the paper's objective."""
    return Objective(lambda c: _picked(torch.softmax(c.logits, dim=1), targets), "probability")


def class_logit(targets: torch.Tensor) -> Objective:
    """The target's raw logit: no saturation, but can grow without making the class likelier."""
    return Objective(lambda c: _picked(c.logits, targets), "logit")


def log_probability(targets: torch.Tensor) -> Objective:
    """log softmax of the target: keeps a gradient where the probability saturates."""
    return Objective(lambda c: _picked(torch.log_softmax(c.logits, dim=1), targets), "log_probability")


def neuron(layer: str, units: tuple[int, ...] = ()) -> Objective:
    """Mean activation of chosen channels/units (dim 1) of a named layer, over all positions (seed 001)."""
    index = list(units)

    def fn(c: Context) -> torch.Tensor:
        act = c.activations[layer]
        if index:
            act = act[:, index]
        return act.flatten(1).mean(dim=1)

    return Objective(fn, f"neuron({layer}{':' + ','.join(map(str, units)) if units else ''})", (layer,))


def tv_value(x: torch.Tensor) -> torch.Tensor:
    """Total variation over time and frequency per sample, 1/(T*N) * sum |dX| (seed 001)."""
    dt = (x[:, 1:, :] - x[:, :-1, :]).abs().flatten(1).sum(dim=1)
    df = (x[:, :, 1:] - x[:, :, :-1]).abs().flatten(1).sum(dim=1)
    return (dt + df) / (x.shape[1] * x.shape[2])


def total_variation() -> Objective:
    return Objective(lambda c: tv_value(c.features), "tv")


def l2() -> Objective:
    """Squared L2 norm of the optimized tensor (z for the decoder prior, as in seed 004)."""
    return Objective(lambda c: c.parameter.pow(2).flatten(1).sum(dim=1), "l2")


def range_penalty() -> Objective:
    """Mean squared excursion of the features outside [0, 1]: a soft alternative to clamping."""
    return Objective(lambda c: (torch.relu(-c.features) + torch.relu(c.features - 1.0)).pow(2).flatten(1).mean(dim=1), "range")


def build_objective(settings: Settings, targets: torch.Tensor) -> Objective:
    """The objective `settings` describe, for one batch of targets."""
    main = {
        "probability": lambda: class_probability(targets),
        "logit": lambda: class_logit(targets),
        "log_probability": lambda: log_probability(targets),
        "neuron": lambda: neuron(settings.layer or "", settings.units),
    }[settings.objective]()
    if settings.tv_weight:
        main = main - settings.tv_weight * total_variation()
    if settings.l2_weight:
        main = main - settings.l2_weight * l2()
    if settings.range_weight:
        main = main - settings.range_weight * range_penalty()
    return main


# --------------------------------------------------------------------------- the loop


@dataclass
class Result:
    features: torch.Tensor
    start_features: torch.Tensor
    latents: torch.Tensor | None
    start_latents: torch.Tensor | None
    trajectory: torch.Tensor
    prob_a: torch.Tensor
    start_prob_a: torch.Tensor
    prob_b: torch.Tensor | None
    start_prob_b: torch.Tensor | None
    failed: torch.Tensor


@contextmanager
def frozen(*models: nn.Module | None) -> Iterator[None]:
    """Eval mode (dropout off, batch-norm statistics fixed) and no weight gradients, restored afterwards.

    Weights also go channels-last for the duration: the paper net's tiny 2x2
    convolutions run about twice as fast in that layout on CPU at batch sizes
    of 32 and more, and the layout changes no result beyond rounding.
    """
    saved = []
    for m in models:
        if m is None:
            continue
        saved.append((m, m.training, [(p, p.requires_grad) for p in m.parameters()]))
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
        m.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for m, training, params in saved:
            m.train(training)
            m.to(memory_format=torch.contiguous_format)
            for p, flag in params:
                p.requires_grad_(flag)


@contextmanager
def capture(model: nn.Module, layers: tuple[str, ...]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of named layers during forward passes."""
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    for name in layers:
        if not name or name not in modules:
            known = [n for n in modules if n]
            raise HearsayError(f"unknown layer {name!r}; the classifier has: {', '.join(known)}")
    handles = []
    for name in dict.fromkeys(layers):
        handles.append(modules[name].register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out)))
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def ascend(
    classifier: nn.Module, param: Parameterization, objective: Objective, targets: torch.Tensor, settings: Settings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run `settings.steps` updates on one batch.

    Returns (trajectory [B, steps+1] of the target probability, failed [B],
    logits at the start, logits at the end). Failed samples are frozen: their
    update is zeroed so NaN never reaches optimizer state.
    """
    x = param.parameter
    batch = x.shape[0]
    rows = torch.arange(batch, device=x.device)
    failed = torch.zeros(batch, dtype=torch.bool, device=x.device)
    trajectory = []
    optimizer = torch.optim.Adam([x], lr=settings.lr) if settings.step == "adam" else None
    start_logits = None
    with capture(classifier, objective.layers) as acts:
        for _ in range(settings.steps):
            feats = param.features()
            logits = classifier(feats)
            score = objective(Context(feats, logits, acts, x))
            (grad,) = torch.autograd.grad(score.sum(), x)
            with torch.no_grad():
                if start_logits is None:
                    start_logits = logits.detach().clone()
                trajectory.append(torch.softmax(logits, dim=1)[rows, targets])
                failed |= ~torch.isfinite(score) | ~torch.isfinite(logits).all(dim=1) | ~torch.isfinite(grad.flatten(1)).all(dim=1)
                grad = torch.where(_per_sample(failed, grad), torch.zeros_like(grad), grad)
                if optimizer is None:
                    rms = grad.pow(2).flatten(1).mean(dim=1).sqrt().clamp_min(1e-12)
                    x.add_(settings.lr * grad / _per_sample(rms, grad))
                else:
                    x.grad = -grad
                    optimizer.step()
                    x.grad = None
            param.project()
        with torch.no_grad():
            logits = classifier(param.features())
    if start_logits is None:
        start_logits = logits.clone()
    trajectory.append(torch.softmax(logits, dim=1)[rows, targets])
    failed |= ~torch.isfinite(logits).all(dim=1) | ~torch.isfinite(x.detach().flatten(1)).all(dim=1)
    return torch.stack(trajectory, dim=1), failed, start_logits, logits


def sample_seed(seed: int, index: int) -> int:
    """A generator seed per (run seed, sample index): noise never depends on batching."""
    return int.from_bytes(hashlib.sha256(f"hearsay:{seed}:{index}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def derive_seed(seed: int, *keys: object) -> int:
    """A sub-seed for a named part of a run (e.g. a method and a word), stable across Python versions."""
    text = ":".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def noise(shape: tuple[int, ...], std: float, seed: int, first_index: int, count: int) -> torch.Tensor:
    """N(0, std) starts for samples first_index .. first_index+count-1, drawn on CPU for device-independence."""
    out = torch.empty(count, *shape)
    gen = torch.Generator()
    for k in range(count):
        gen.manual_seed(sample_seed(seed, first_index + k))
        out[k].normal_(0.0, std, generator=gen)
    return out


def _probe(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.zeros(1, *shape, device=device))


def maximize(
    classifier: nn.Module,
    targets: torch.Tensor,
    *,
    method: str = "classifier",
    decoder: Autoencoder | None = None,
    start: torch.Tensor | None = None,
    settings: Settings = Settings(),
    seed: int = 0,
    evaluator: nn.Module | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 1024,
    progress: bool = False,
    shape: tuple[int, int] = (90, 80),
    first_index: int = 0,
) -> Result:
    """Push every sample toward its target class of `classifier` (A) and report A's and B's verdicts.

    `start` None draws noise starts (input or latent space); otherwise it holds
    features [B, T, N] to start from (decoder: they are encoded first). `shape`
    is the feature shape for noise starts of the classifier method; noise for
    sample i uses index `first_index + i`, so retries can ask for fresh draws.
    The models are moved to `device`.
    """
    from tqdm import tqdm

    settings.validate()
    if method not in METHODS:
        raise HearsayError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if method == "decoder" and decoder is None:
        raise HearsayError("the decoder method needs a decoder (autoencoder checkpoint)")
    if batch_size < 1:
        raise HearsayError(f"batch size must be >= 1, got {batch_size}")
    device = torch.device(device)
    targets = torch.as_tensor(targets).long().flatten().cpu()
    total = len(targets)
    if start is not None and (start.dim() != 3 or start.shape[0] != total):
        raise HearsayError(f"start features must be [{total}, frames, mels], got {list(start.shape)}")
    if start is not None:
        shape = tuple(start.shape[1:])
    classifier.to(device)
    for m in (evaluator, decoder):
        if m is not None:
            m.to(device)
    with frozen(classifier, evaluator, decoder):
        if method == "decoder":
            shape = tuple(decoder.decode(torch.zeros(1, decoder.latent, device=device)).shape[1:]) if start is None else shape
        n_classes = _probe(classifier, shape, device).shape[1]
        if evaluator is not None and _probe(evaluator, shape, device).shape[1] != n_classes:
            raise HearsayError("classifier and evaluator have different numbers of classes")
        if total and (targets.min() < 0 or targets.max() >= n_classes):
            bad = int(targets[(targets < 0) | (targets >= n_classes)][0])
            raise HearsayError(f"target class index {bad} out of range: the classifier has {n_classes} classes")
        if settings.objective == "neuron":
            with capture(classifier, (settings.layer or "",)) as acts:
                _probe(classifier, shape, device)
            width = acts[settings.layer].shape[1] if acts[settings.layer].dim() > 1 else 1
            if any(u < 0 or u >= width for u in settings.units):
                raise HearsayError(f"units {list(settings.units)} out of range: layer {settings.layer!r} has {width}")

        parts: dict[str, list[torch.Tensor]] = {}
        chunks = range(0, total, batch_size)
        for lo in tqdm(chunks, desc=f"maximize ({method})", unit="batch", disable=not progress or len(chunks) < 2):
            hi = min(lo + batch_size, total)
            chunk_targets = targets[lo:hi].to(device)
            if method == "classifier":
                x0 = start[lo:hi].float() if start is not None else noise(shape, settings.init_std, seed, first_index + lo, hi - lo)
                param: Parameterization = InputParam(x0.to(device), settings.clamp)
            else:
                if start is not None:
                    with torch.no_grad():
                        z0 = decoder.encode(start[lo:hi].float().to(device))
                else:
                    z0 = noise((decoder.latent,), settings.init_std, seed, first_index + lo, hi - lo).to(device)
                param = DecoderParam(decoder, z0)
            with torch.no_grad():
                start_feats = param.features().detach().clone()
                start_lat = param.latents()
                start_lat = None if start_lat is None else start_lat.detach().clone()
            traj, failed, logits0, logits1 = ascend(classifier, param, build_objective(settings, chunk_targets), chunk_targets, settings)
            with torch.no_grad():
                feats = param.features().detach()
                out = {
                    "features": feats,
                    "start_features": start_feats,
                    "trajectory": traj,
                    "prob_a": torch.softmax(logits1, dim=1),
                    "start_prob_a": torch.softmax(logits0, dim=1),
                    "failed": failed,
                }
                if method == "decoder":
                    out["latents"] = param.parameter.detach()
                    out["start_latents"] = start_lat
                if evaluator is not None:
                    out["prob_b"] = torch.softmax(evaluator(feats), dim=1)
                    out["start_prob_b"] = torch.softmax(evaluator(start_feats), dim=1)
            for k, v in out.items():
                parts.setdefault(k, []).append(v.float().cpu() if v.dtype != torch.bool else v.cpu())

    def cat(key: str) -> torch.Tensor | None:
        return torch.cat(parts[key]) if key in parts else None

    if total == 0:
        empty = torch.zeros(0, *shape)
        none_b = torch.zeros(0, n_classes) if evaluator is not None else None
        return Result(empty, empty.clone(), None, None, torch.zeros(0, settings.steps + 1), torch.zeros(0, n_classes),
                      torch.zeros(0, n_classes), none_b, none_b, torch.zeros(0, dtype=torch.bool))
    return Result(
        features=cat("features"),
        start_features=cat("start_features"),
        latents=cat("latents"),
        start_latents=cat("start_latents"),
        trajectory=cat("trajectory"),
        prob_a=cat("prob_a"),
        start_prob_a=cat("start_prob_a"),
        prob_b=cat("prob_b"),
        start_prob_b=cat("start_prob_b"),
        failed=cat("failed"),
    )
