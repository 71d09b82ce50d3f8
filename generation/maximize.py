"""Activation maximization: what input does a classifier find most like a word?

The engine, `optimize(classifier, targets, param, objective, step)`, takes its
three parts as objects (as lucent's ``render_vis(model, objective, param)`` or
captum.optim's ``InputOptimization`` do):

* a *parameterization* (`Parameterization`) owns the optimized tensor of one
  batch and turns it into features: `InputParam` (the log-mel input itself),
  `DecoderParam` (a latent z with x = decoder(z), the paper's "prior") or the
  GAN priors of `generation.gan` (x = G(z) or G(z, word)). A new prior is one
  more subclass and nothing else;
* an *objective* (`Objective`) scores every sample of a batch ([B] tensor);
  objectives combine arithmetically, e.g.
  ``class_probability() - 0.1 * total_variation()``;
* a *step rule* (`StepRule`): the paper's RMS-normalized gradient ascent
  (`RMSStep`) or Adam (`AdamStep`).

`maximize(classifier, targets, method=..., settings=...)` is the front door the
commands use: a preset's `Settings` and a method name only *build* those parts
(`parts`) and hand them to `optimize`.

The engine runs thousands of samples batched with mixed targets. Each sample's
noise start is drawn from its own generator seeded by (seed, sample index), so
results depend on the seed only, not on the batch size or device. Every update
is per sample (the classifier runs in eval mode, so no sample can influence
another), and a sample whose values become NaN/inf is marked failed and frozen;
callers must never turn a failed sample into audio.

Range of direct inputs: the paper let the optimized log-mel input leave the
feature range [0, 1] (values were never clamped before vocoding). The ``paper``
preset reproduces that (``clamp=False``); Hearsay's default preset ``hearsay``
clamps direct inputs to [0, 1] after every step (and at the start), so the
classifier only ever judges features that a real sound could produce. Decoder
outputs lie in [0, 1] by construction (sigmoid).
"""
from __future__ import annotations

import copy
import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar, Iterator

import numpy as np
import torch
from torch import nn

from hearsay.errors import HearsayError
from .fused import RewriteCache, fused_layers, single_map_convs
from .heap import retained_heap
from .nets import Autoencoder
from .upsampling import transposed_upsampling

STEPS = ("rms", "adam")
OBJECTIVES = ("probability", "logit", "log_probability", "logit_margin", "neuron")
METHODS = ("classifier", "decoder")


@dataclass(frozen=True)
class Settings:
    """A preset's numbers: what `parts` turns into an objective, a step rule and (with a method) a parameterization."""

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
    # Seed 004's GAN-prior loss: maximize target logit - mean of the other logits - 0.01 * ||z||^2 (the seed leaves the
    # weight to its notebooks). Priors (decoder and, through its settings, the GAN methods) get the latent penalty;
    # direct inputs have no latent, so they are clamped to the feature range instead.
    "seed004": {"classifier": replace(_PAPER, lr=0.01, clamp=True, objective="logit_margin"),
                "decoder": replace(_PAPER, lr=0.1, objective="logit_margin", l2_weight=0.01)},
}


def preset(name: str, method: str) -> Settings:
    """A preset's settings for a method, with a one-line error for typos.

    Methods without their own entry in `PRESETS` (the GAN priors) derive theirs
    from the preset's others (`Parameterization.preset_settings`).
    """
    if name not in PRESETS:
        raise HearsayError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    if method in PRESETS[name]:
        return PRESETS[name][method]
    registry = registered()
    if method not in registry:
        raise HearsayError(f"unknown method {method!r}; choose from {', '.join(dict.fromkeys([*PRESETS[name], *registry]))}")
    return registry[method].preset_settings(PRESETS[name])


# --------------------------------------------------------------------------- parameterizations


PARAMETERIZATIONS: dict[str, type["Parameterization"]] = {}
# Modules whose Parameterization subclasses register further priors; imported on the first lookup by name,
# so that `maximize(..., method="cgan")` works without the caller importing them (they import this module).
PRIOR_MODULES = ("generation.gan",)


def registered() -> dict[str, type["Parameterization"]]:
    """Every parameterization reachable by method name (this module's and those of `PRIOR_MODULES`)."""
    import importlib

    for module in PRIOR_MODULES:
        importlib.import_module(module)
    return PARAMETERIZATIONS


class Parameterization:
    """How an optimized tensor becomes features [B, T, N]: the engine's only view of a prior.

    One object serves a whole run; `start(x0, targets)` arms it with one batch's
    leaf tensor `parameter` ([B, ...], what the step rule updates) and that
    batch's target classes. The engine uses:

    * `modules()`: networks it must move to the device and freeze (a decoder, a generator);
    * `feature_shape(requested)`: the features' [T, N] (a generator decides its own);
    * `noise_shape(feature_shape)`: the shape of one sample's start in this space
      (N(0, init_std) noise, or given latents);
    * `encode(features)`: a start from real features, mapped into this space (a prior
      without an encoder keeps the default, which refuses with a one-line error);
    * `start(x0, targets)`: take x0 as the new `parameter` and `project()` it; `targets`
      ([B] class indices, on the device) are each sample's word, for priors that
      generate a given word (a conditional generator); the base ignores them;
    * `features()`, `latents()` (None where the space is the features), `project()`
      (called after every step and once at the start, for hard constraints) and
      `parameters()` (the tensors a step rule updates);
    * `waves()`: audio the prior produces itself (a waveform generator), which the
      result carries for the stimulus writer instead of a vocoded copy; None by default.

    Three ways to start a batch, all through `optimize`: noise (the default),
    real features (`start=`, mapped by `encode`), or points of this space given
    as they are (`start_latents=`, [B, *noise_shape]: e.g. chosen GAN latents, to
    push a generator's own sample toward its word, the seed's "enhancer").

    A subclass that sets `method` (a CLI method name) is registered in
    `PARAMETERIZATIONS`, `from_method(settings, prior)` builds it from a preset
    and the prior's network, and `preset_settings(presets)` names its settings
    where `PRESETS` has no entry of its own: that is all a new prior needs to be
    reachable by name from `maximize(..., method=...)` and `preset(...)`.
    """

    parameter: torch.Tensor
    method: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("method"):  # its own name only: a subclass of a registered prior must not replace it
            PARAMETERIZATIONS[cls.method] = cls

    @classmethod
    def from_method(cls, settings: Settings, prior: nn.Module | None) -> "Parameterization":
        raise NotImplementedError

    @classmethod
    def preset_settings(cls, presets: dict[str, Settings]) -> Settings:
        """This method's settings in one preset (`presets`: that preset's settings by method)."""
        raise HearsayError(f"no preset has settings for the {cls.method} method")

    def modules(self) -> tuple[nn.Module, ...]:
        """By default every network held as an attribute (a decoder, a generator)."""
        return tuple(v for v in vars(self).values() if isinstance(v, nn.Module))

    def with_networks(self, rewrite: Callable[[nn.Module], nn.Module]) -> "Parameterization":
        """A copy holding `rewrite(net)` for each network attribute (the engine's faster equal forms); self if none changes."""
        twin, changed = copy.copy(self), False
        for name, value in vars(self).items():
            if isinstance(value, nn.Module) and (new := rewrite(value)) is not value:
                setattr(twin, name, new)
                changed = True
        return twin if changed else self

    def feature_shape(self, requested: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(requested)

    def noise_shape(self, feature_shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError(f"{type(self).__name__} must say the shape of one sample's noise start (noise_shape)")

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        raise HearsayError(f"{type(self).__name__} cannot start from features: it has no encoder; start from noise or from latents")

    def start(self, x0: torch.Tensor, targets: torch.Tensor | None = None) -> "Parameterization":
        self.parameter = x0.detach().clone().requires_grad_(True)
        self.project()
        return self

    def parameters(self) -> list[torch.Tensor]:
        return [self.parameter]

    def features(self) -> torch.Tensor:
        raise NotImplementedError

    def latents(self) -> torch.Tensor | None:
        return None

    def waves(self) -> torch.Tensor | None:
        """Audio [B, samples] the prior generates itself, or None where features must be vocoded."""
        return None

    def project(self) -> None:
        """Enforce hard constraints in place (no-op by default)."""


class InputParam(Parameterization):
    """Optimize the log-mel input directly (the paper's "classifier-only" method); `clamp` keeps it in [0, 1]."""

    method = "classifier"

    def __init__(self, start: torch.Tensor | None = None, clamp: bool = True):
        self.clamp = clamp
        if start is not None:
            self.start(start)

    @classmethod
    def from_method(cls, settings: Settings, prior: nn.Module | None) -> "InputParam":
        return cls(clamp=settings.clamp)

    def noise_shape(self, feature_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(feature_shape)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def features(self) -> torch.Tensor:
        return self.parameter

    def project(self) -> None:
        if self.clamp:
            with torch.no_grad():
                self.parameter.clamp_(0.0, 1.0)


class DecoderParam(Parameterization):
    """Optimize a latent z and let the decoder produce the features: x = decoder(z)."""

    method = "decoder"

    def __init__(self, decoder: Autoencoder, z0: torch.Tensor | None = None):
        self.decoder = decoder
        if z0 is not None:
            self.start(z0)

    @classmethod
    def from_method(cls, settings: Settings, prior: nn.Module | None) -> "DecoderParam":
        if prior is None:
            raise HearsayError("the decoder method needs a decoder (autoencoder checkpoint)")
        return cls(prior)

    def modules(self) -> tuple[nn.Module, ...]:
        return (self.decoder,)

    def feature_shape(self, requested: tuple[int, ...]) -> tuple[int, ...]:
        device = next(self.decoder.parameters()).device
        with torch.no_grad():
            return tuple(self.decoder.decode(torch.zeros(1, self.decoder.latent, device=device)).shape[1:])

    def noise_shape(self, feature_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.decoder.latent,)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.decoder.encode(features)

    def features(self) -> torch.Tensor:
        return self.decoder.decode(self.parameter)

    def latents(self) -> torch.Tensor:
        return self.parameter


# --------------------------------------------------------------------------- objectives


@dataclass
class Context:
    """What one forward pass exposes to objectives (`targets`: each sample's class index)."""

    features: torch.Tensor
    logits: torch.Tensor
    activations: dict[str, torch.Tensor]
    parameter: torch.Tensor
    targets: torch.Tensor | None = None


class Objective:
    """A per-sample score [B] to maximize; objectives add, subtract and scale.

    `layers` names the activations it reads; `check(activations)` runs once on a
    probe pass so a bad unit index fails before any work starts.
    """

    def __init__(self, fn: Callable[[Context], torch.Tensor], name: str, layers: tuple[str, ...] = (),
                 checks: tuple[Callable[[dict[str, torch.Tensor]], None], ...] = ()):
        self.fn = fn
        self.name = name
        self.layers = layers
        self.checks = checks

    def __call__(self, ctx: Context) -> torch.Tensor:
        return self.fn(ctx)

    def check(self, activations: dict[str, torch.Tensor]) -> None:
        for c in self.checks:
            c(activations)

    def __add__(self, other: "Objective") -> "Objective":
        return Objective(lambda c: self(c) + other(c), f"{self.name} + {other.name}", self.layers + other.layers,
                         self.checks + other.checks)

    def __sub__(self, other: "Objective") -> "Objective":
        return self + (-1.0) * other

    def __mul__(self, weight: float) -> "Objective":
        return Objective(lambda c: weight * self(c), f"{weight:g} * {self.name}", self.layers, self.checks)

    __rmul__ = __mul__

    def __neg__(self) -> "Objective":
        return (-1.0) * self

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def _targets(fixed: torch.Tensor | None, c: Context) -> torch.Tensor:
    if fixed is not None:
        return fixed
    if c.targets is None:
        raise HearsayError("this objective needs target classes")
    return c.targets


def _picked(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, targets.view(-1, 1)).squeeze(1)


def class_probability(targets: torch.Tensor | None = None) -> Objective:
    """Softmax probability of each sample's target (the engine's targets unless given): the paper's objective."""
    return Objective(lambda c: _picked(torch.softmax(c.logits, dim=1), _targets(targets, c)), "probability")


def class_logit(targets: torch.Tensor | None = None) -> Objective:
    """The target's raw logit: no saturation, but can grow without making the class likelier."""
    return Objective(lambda c: _picked(c.logits, _targets(targets, c)), "logit")


def log_probability(targets: torch.Tensor | None = None) -> Objective:
    """log softmax of the target: keeps a gradient where the probability saturates."""
    return Objective(lambda c: _picked(torch.log_softmax(c.logits, dim=1), _targets(targets, c)), "log_probability")


def logit_margin(targets: torch.Tensor | None = None) -> Objective:
    """The target's logit minus the mean of the other logits (seed 004): rises only as the target pulls ahead."""

    def fn(c: Context) -> torch.Tensor:
        picked = _picked(c.logits, _targets(targets, c))
        return picked - (c.logits.sum(dim=1) - picked) / (c.logits.shape[1] - 1)

    return Objective(fn, "logit_margin")


def neuron(layer: str, units: tuple[int, ...] = ()) -> Objective:
    """Mean activation of chosen channels/units (dim 1) of a named layer, over all positions (seed 001)."""
    index = list(units)

    def fn(c: Context) -> torch.Tensor:
        act = c.activations[layer]
        if index:
            act = act[:, index]
        return act.flatten(1).mean(dim=1)

    def check(acts: dict[str, torch.Tensor]) -> None:
        width = acts[layer].shape[1] if acts[layer].dim() > 1 else 1
        if any(u < 0 or u >= width for u in units):
            raise HearsayError(f"units {list(units)} out of range: layer {layer!r} has {width}")

    return Objective(fn, f"neuron({layer}{':' + ','.join(map(str, units)) if units else ''})", (layer,), (check,))


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


def build_objective(settings: Settings, targets: torch.Tensor | None = None) -> Objective:
    """The objective `settings` describe (targets: fixed ones, or None to read each batch's from the engine)."""
    main = {
        "probability": lambda: class_probability(targets),
        "logit": lambda: class_logit(targets),
        "log_probability": lambda: log_probability(targets),
        "logit_margin": lambda: logit_margin(targets),
        "neuron": lambda: neuron(settings.layer or "", settings.units),
    }[settings.objective]()
    if settings.tv_weight:
        main = main - settings.tv_weight * total_variation()
    if settings.l2_weight:
        main = main - settings.l2_weight * l2()
    if settings.range_weight:
        main = main - settings.range_weight * range_penalty()
    return main


# --------------------------------------------------------------------------- step rules


class StepRule:
    """How an ascent direction (the objective's gradient) updates the parameter, in place.

    `reset(parameter)` is called once per batch before the first step; failed
    samples arrive with a zero gradient so no NaN reaches any state.
    `update` may overwrite `grad` (the engine does not read it afterwards).
    """

    def reset(self, parameter: torch.Tensor) -> None:
        """Forget any state from a previous batch."""

    def update(self, parameter: torch.Tensor, grad: torch.Tensor) -> None:
        raise NotImplementedError


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class RMSStep(StepRule):
    """The paper's rule: x += lr * g / RMS(g), the RMS taken per sample."""

    lr: float

    def update(self, parameter: torch.Tensor, grad: torch.Tensor) -> None:
        rms = grad.pow(2).flatten(1).mean(dim=1).sqrt().clamp_min(1e-12)
        parameter.add_(grad.mul_(self.lr).div_(_per_sample(rms, grad)))  # in place: the same operations, no new tensors


@dataclass
class AdamStep(StepRule):
    """Adam ascent (torch.optim.Adam on the negated gradient); its moments are per element, so per sample."""

    lr: float
    _optimizer: torch.optim.Adam | None = field(default=None, repr=False)

    def reset(self, parameter: torch.Tensor) -> None:
        self._optimizer = torch.optim.Adam([parameter], lr=self.lr)

    def update(self, parameter: torch.Tensor, grad: torch.Tensor) -> None:
        if self._optimizer is None:
            self.reset(parameter)
        parameter.grad = -grad
        self._optimizer.step()
        parameter.grad = None


def step_rule(settings: Settings) -> StepRule:
    """The step rule `settings` name."""
    return AdamStep(settings.lr) if settings.step == "adam" else RMSStep(settings.lr)


def parameterization(method: str, settings: Settings, decoder: nn.Module | None = None) -> Parameterization:
    """The parameterization a CLI method name stands for (`decoder`: the prior's network, where it has one)."""
    registry = registered()
    if method not in registry:
        raise HearsayError(f"unknown method {method!r}; choose from {', '.join(registry)}")
    return registry[method].from_method(settings, decoder)


def parts(settings: Settings, method: str = "classifier", decoder: nn.Module | None = None
          ) -> tuple[Parameterization, Objective, StepRule]:
    """What a preset and a method name build: (parameterization, objective, step rule); `decoder`: the prior's network."""
    settings.validate()
    return parameterization(method, settings, decoder), build_objective(settings), step_rule(settings)


# --------------------------------------------------------------------------- the loop


@dataclass
class Result:
    features: torch.Tensor | None  # None where `optimize(..., keep_features=False)`
    start_features: torch.Tensor | None
    latents: torch.Tensor | None
    start_latents: torch.Tensor | None
    trajectory: torch.Tensor
    prob_a: torch.Tensor
    start_prob_a: torch.Tensor
    prob_b: torch.Tensor | None
    start_prob_b: torch.Tensor | None
    failed: torch.Tensor
    waves: torch.Tensor | None = None  # the prior's own audio (`Parameterization.waves`), where it has any
    start_waves: torch.Tensor | None = None


@contextmanager
def frozen(*models: nn.Module | None, channels_last: bool = True) -> Iterator[None]:
    """Eval mode (dropout off, batch-norm statistics fixed) and no weight gradients, restored afterwards.

    With `channels_last` weights also go channels-last for the duration: the
    paper net's tiny 2x2 convolutions run about twice as fast in that layout on
    CPU at batch sizes of 32 and more, and the layout changes no result beyond
    rounding.
    """
    saved = []
    for m in models:
        if m is None:
            continue
        saved.append((m, m.training, [(p, p.requires_grad) for p in m.parameters()]))
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
        if channels_last:
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


def _is(node: torch.fx.Node, modules: dict[str, nn.Module], kind: type, function: object) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], kind)
    return node.op == "call_function" and node.target is function


def pool_before_relu(model: nn.Module, keep: tuple[str, ...] = ()) -> nn.Module:
    """The same network with every ReLU -> max-pool pair run as max-pool -> ReLU.

    ReLU is monotone, so max(relu(x)) = relu(max(x)) bit for bit, and the input
    gradient is identical too (both routes send it to the same arg-max, and
    zero it where the window's maximum is <= 0). The ReLU and its backward then
    touch a quarter of the values: in the paper net those two passes over the
    full-resolution conv outputs were about a quarter of a maximization step.
    Layers named in `keep` (read by an objective) keep their outputs; a model
    fx cannot trace, or whose kept layer is a container, is returned unchanged.
    Leaf modules are shared, not copied, so forward hooks on them still fire.
    Results are cached per model (tracing costs about 10 ms a call).
    """
    return _pools_before_relus(model, keep)


def _pool_before_relu(model: nn.Module, keep: tuple[str, ...]) -> nn.Module:
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception:  # any Python control flow on values makes tracing fail; the model is then used as it is
        return model
    modules = dict(traced.named_modules())
    called = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    if not set(keep) <= called:
        return model  # a container's output (inlined by tracing) is read: its hooks must fire, so no rewrite
    swapped = False
    for relu in list(traced.graph.nodes):
        if not (_is(relu, modules, nn.ReLU, torch.relu) or _is(relu, modules, nn.ReLU, nn.functional.relu)):
            continue
        users = list(relu.users)
        if len(users) != 1 or relu.kwargs.get("inplace") or len(relu.args) != 1:
            continue
        pool = users[0]
        if not _is(pool, modules, nn.MaxPool2d, nn.functional.max_pool2d) or pool.args[0] is not relu:
            continue
        if pool.op == "call_module" and modules[pool.target].return_indices or pool.kwargs.get("return_indices"):
            continue
        if {relu.target, pool.target} & set(keep):
            continue
        source = relu.args[0]
        pool.replace_all_uses_with(relu)
        pool.args = (source, *pool.args[1:])
        relu.args = (pool,)
        pool.append(relu)  # the ReLU now reads the pool's output, so it runs after it
        swapped = True
    if not swapped:
        return model
    traced.graph.lint()
    traced.recompile()
    return traced


_pools_before_relus = RewriteCache(_pool_before_relu)


def ascend(
    classifier: nn.Module, param: Parameterization, objective: Objective, targets: torch.Tensor, step: StepRule, steps: int,
    net: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run `steps` updates on one armed batch (`net`: the classifier's faster equal form, see `pool_before_relu`).

    Returns (trajectory [B, steps+1] of the target probability, failed [B],
    logits at the start, logits at the end). Failed samples are frozen: their
    update is zeroed so NaN never reaches step-rule state.
    """
    x = param.parameter
    batch = x.shape[0]
    rows = torch.arange(batch, device=x.device)
    failed = torch.zeros(batch, dtype=torch.bool, device=x.device)
    trajectory = []
    step.reset(x)
    start_logits = None
    net = pool_before_relu(classifier, objective.layers) if net is None else net
    with capture(classifier, objective.layers) as acts:
        for _ in range(steps):
            feats = param.features()
            logits = net(feats)
            score = objective(Context(feats, logits, acts, x, targets))
            (grad,) = torch.autograd.grad(score.sum(), x)
            with torch.no_grad():
                if start_logits is None:
                    start_logits = logits.detach().clone()
                trajectory.append(torch.softmax(logits, dim=1)[rows, targets])
                # max |g| is finite exactly when every g is (max propagates NaN): two passes over the gradient, not four
                failed |= ~torch.isfinite(score) | ~torch.isfinite(logits).all(dim=1) | ~torch.isfinite(grad.flatten(1).abs().amax(dim=1))
                grad.masked_fill_(_per_sample(failed, grad), 0.0)
                step.update(x, grad)
            param.project()
        with torch.no_grad():
            logits = net(param.features())
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


def noise(shape: tuple[int, ...], std: float, seed: int, first_index: int, count: int, workers: int = 1) -> torch.Tensor:
    """N(0, std) starts for samples first_index .. first_index+count-1, drawn on CPU for device-independence.

    Each sample has its own generator, so `workers` threads can fill disjoint
    samples (torch releases the GIL while it draws) with the same result as one.
    """
    out = torch.empty(count, *shape)

    def fill(lo: int, hi: int) -> None:
        gen = torch.Generator()
        for k in range(lo, hi):
            gen.manual_seed(sample_seed(seed, first_index + k))
            out[k].normal_(0.0, std, generator=gen)

    workers = max(1, min(workers, count // 256))
    if workers == 1:
        fill(0, count)
    else:
        step = -(-count // workers)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda lo: fill(lo, min(lo + step, count)), range(0, count, step)))
    return out


PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(mode: str) -> None:
    if mode not in PRECISIONS:
        raise HearsayError(f"unknown precision {mode!r}; choose from {', '.join(PRECISIONS)}")


@contextmanager
def precision(mode: str, device: torch.device) -> Iterator[None]:
    """fp32 as written; tf32 lets CUDA matmuls and convolutions use TF32; bf16 runs the networks under autocast.

    Step-rule updates and the recorded probabilities stay fp32 in every mode;
    only the networks' arithmetic changes (bench/gpu.py prints the agreement).
    """
    check_precision(mode)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def layouts(device: torch.device, precision_mode: str) -> tuple[bool, bool]:
    """Whether (the classifiers, the prior's networks) run channels-last: whichever was faster where measured.

    On a CPU both (the paper net's 2x2 convolutions run about twice as fast).
    On an H100 (bench/gpu_sweep.py) the paper classifier, whose first layer has
    one input channel, ran 0.76x as fast channels-last, and the decoder 0.82x in
    fp32 but 1.2x (TF32) to 1.4x (bf16) faster than in its default layout.
    """
    if device.type == "cpu":
        return True, True
    return False, precision_mode != "fp32"


def core_workers(device: torch.device, batch_size: int, objective: Objective, cores: int | None = None) -> int:
    """How many CPU cores each run their own share of every batch, on one thread each (1: the batch as a whole).

    The engine's operations are small (a paper-net layer is a few MB), so two
    threads splitting each one mostly wait for each other, and on a busy
    machine a preempted thread stalls every operation of its partner. One
    share per core keeps the cores independent (bench/maximize.py on 2 cores:
    1.2-1.3x the samples/s of two threads on one batch at load 2-3, 2.3-3.3x
    at load 4-5); the per-sample results are the
    same, since no sample sees another. Serial on a GPU, below 8 samples per
    core, and for objectives that read layers (their forward hooks record
    into one dict).
    """
    cores = torch.get_num_threads() if cores is None else cores
    if cores < 1:
        raise HearsayError(f"cores must be >= 1, got {cores}")
    if device.type != "cpu" or objective.layers:
        return 1
    return max(1, min(cores, batch_size // 8))


def default_batch_size(device: torch.device) -> int:
    """64 on a CPU (small batches stay in cache); on a GPU up to 4,096, as far as free memory allows.

    The decoder prior holds about 5 MB per sample with its gradients in fp32;
    beyond 4,096 samples an H100 ran no faster (bench/gpu_sweep.py).
    """
    if device.type != "cuda":
        return 64
    free, _ = torch.cuda.mem_get_info(device)
    fit = max(256, free // (8 << 20))
    return int(min(4096, 1 << (int(fit).bit_length() - 1)))


def chunk_size(total: int, batch_size: int, cores: int = 1) -> int:
    """Samples per chunk: `total` in equal batches of at most `batch_size` (no small tail batch), each split over `cores`.

    10,000 samples at batch size 4,096 run as three batches of 3,334 rather than 4,096 + 4,096 + 1,808, and 50
    samples on two cores as 25 + 25 rather than 32 + 18 (where one core would idle for a third of the run).
    """
    batches = max(1, -(-total // batch_size))
    per_batch = -(-total // batches)
    return max(1, -(-per_batch // cores))


class NoiseStarts:
    """The noise starts of one run, chunk by chunk; on a GPU the next chunk is drawn while the device works."""

    def __init__(self, shape: tuple[int, ...], std: float, seed: int, first_index: int, device: torch.device):
        self.shape, self.std, self.seed, self.first_index, self.device = shape, std, seed, first_index, device
        overlap = device.type == "cuda"
        # threads pay off for feature-sized starts only (measured: 10,000 x 7,200 values 0.82 s on one thread,
        # 0.46 s on eight; 10,000 x 256 latents 0.12 s on one, slower on more)
        per_sample = int(np.prod(shape))
        self.workers = max(1, min(8, (os.cpu_count() or 1) - 1, per_sample // 1024)) if overlap else 1
        self.pool = ThreadPoolExecutor(1) if overlap else None
        self.pending: dict[tuple[int, int], Future] = {}

    def _draw(self, lo: int, hi: int) -> torch.Tensor:
        x = noise(self.shape, self.std, self.seed, self.first_index + lo, hi - lo, self.workers)
        return x.pin_memory() if self.device.type == "cuda" else x

    def prefetch(self, lo: int, hi: int) -> None:
        if self.pool is not None and hi > lo and (lo, hi) not in self.pending:
            self.pending[(lo, hi)] = self.pool.submit(self._draw, lo, hi)

    def get(self, lo: int, hi: int) -> torch.Tensor:
        job = self.pending.pop((lo, hi), None)
        x = job.result() if job is not None else self._draw(lo, hi)
        return x.to(self.device, non_blocking=True)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _probe(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.zeros(1, *shape, device=device))


def optimize(
    classifier: nn.Module,
    targets: torch.Tensor,
    param: Parameterization,
    objective: Objective,
    step: StepRule,
    *,
    steps: int = 20,
    start: torch.Tensor | None = None,
    start_latents: torch.Tensor | None = None,
    init_std: float = 0.1,
    seed: int = 0,
    evaluator: nn.Module | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 1024,
    progress: bool = False,
    shape: tuple[int, int] = (90, 80),
    first_index: int = 0,
    rewrite: bool = True,
    keep_waves: bool = True,
    keep_features: bool = True,
    precision_mode: str = "fp32",
    channels_last: bool | None = None,
    cores: int | None = None,
) -> Result:
    """Push every sample toward its target class of `classifier` (A) with the given parts; report A's and B's verdicts.

    Starts: by default N(0, init_std) noise in the parameterization's space;
    `start` holds features [B, T, N] to start from (`param.encode` maps them
    into its space); `start_latents` holds points of that space
    ([B, *param.noise_shape]) used as they are. `shape` is the feature shape for
    noise starts where the parameterization does not fix it; noise for sample i
    uses index `first_index + i`, so retries can ask for fresh draws. Each
    batch's targets reach the parameterization with its start (`param.start`).
    The models are moved to `device`. `rewrite` runs the gradient steps on
    `pool_before_relu(classifier)`, which gives the same numbers faster, with
    a one-channel 2x2 convolution and the 2x2 max-pool after it fused into one
    compiled pass and the later 2x2 pools (each with the ReLU after it)
    compiled, on a CPU (numba) and on CUDA (Triton) (`generation.fused`: equal
    up to float rounding; the paper classifier's first block, 2x faster per
    network pass on a CPU), and the prior's
    upsampling convolutions as transposed convolutions (`generation.upsampling`:
    equal up to float rounding; the decoder prior's maximization ran 1.6x as
    fast on 2 CPU cores and on an H100 in bf16), on a CPU its convolutions into
    one map as products and shifted sums (`generation.fused.single_map_convs`);
    False runs the networks as written. Audio a prior generates itself
    (`param.waves()`) is kept in the result unless `keep_waves` is False (it is
    large: one clip per sample, twice); likewise features unless `keep_features`
    (the objective experiment needs only the verdicts: on a GPU the copies of
    10,000 feature maps back to the host cost more than their maximization).
    `precision_mode` is one of `PRECISIONS` (see `precision`); `channels_last`
    sets every network's weight layout for the run (default: `layouts`).
    On a CPU the batch is shared out over `cores` (default: torch's thread
    count), each core running its own share single-threaded (`core_workers`).
    """
    from tqdm import tqdm

    if steps < 0:
        raise HearsayError(f"steps must be >= 0, got {steps}")
    if batch_size < 1:
        raise HearsayError(f"batch size must be >= 1, got {batch_size}")
    device = torch.device(device)
    targets = torch.as_tensor(targets).long().flatten().cpu()
    total = len(targets)
    if start is not None and start_latents is not None:
        raise HearsayError("start from features or from latents, not both")
    if start is not None and (start.dim() != 3 or start.shape[0] != total):
        raise HearsayError(f"start features must be [{total}, frames, mels], got {list(start.shape)}")
    classifier.to(device)
    for m in (evaluator, *param.modules()):
        if m is not None:
            m.to(device)
    classifier_last, prior_last = layouts(device, precision_mode) if channels_last is None else (channels_last, channels_last)
    with frozen(classifier, evaluator, channels_last=classifier_last), frozen(*param.modules(), channels_last=prior_last), \
            precision(precision_mode, device):
        shape = tuple(start.shape[1:]) if start is not None else param.feature_shape(tuple(shape))
        if start_latents is not None and tuple(start_latents.shape) != (total, *param.noise_shape(shape)):
            raise HearsayError(f"start latents must be {[total, *param.noise_shape(shape)]}, got {list(start_latents.shape)}")
        n_classes = _probe(classifier, shape, device).shape[1]
        if evaluator is not None and _probe(evaluator, shape, device).shape[1] != n_classes:
            raise HearsayError("classifier and evaluator have different numbers of classes")
        if total and (targets.min() < 0 or targets.max() >= n_classes):
            bad = int(targets[(targets < 0) | (targets >= n_classes)][0])
            raise HearsayError(f"target class index {bad} out of range: the classifier has {n_classes} classes")
        if objective.layers:
            with capture(classifier, objective.layers) as acts:
                _probe(classifier, shape, device)
            objective.check(acts)

        net = classifier
        if rewrite:
            net = fused_layers(pool_before_relu(classifier, objective.layers), objective.layers)
            # the prior's twins come after `frozen`: derived weights follow device and layout
            if device.type == "cpu":
                param = param.with_networks(lambda prior: single_map_convs(transposed_upsampling(prior)))
            else:
                param = param.with_networks(transposed_upsampling)
        workers = core_workers(device, batch_size, objective, cores)
        size = chunk_size(total, batch_size, workers)  # each core's share of a batch
        chunks = range(0, total, size)
        workers = max(1, min(workers, len(chunks)))
        starts = NoiseStarts(param.noise_shape(shape), init_std, seed, first_index, device) \
            if start is None and start_latents is None else None

        def run_chunk(lo: int, param: Parameterization, step: StepRule) -> dict[str, torch.Tensor]:
            hi = min(lo + size, total)
            chunk_targets = targets[lo:hi].to(device)
            if start is not None:
                x0 = param.encode(start[lo:hi].float().to(device))
            elif start_latents is not None:
                x0 = start_latents[lo:hi].float().to(device)
            else:
                x0 = starts.get(lo, hi)
                starts.prefetch(hi, min(hi + size, total))
            param.start(x0, chunk_targets)
            with torch.no_grad():
                start_feats = param.features().detach().clone()
                start_lat = param.latents()
                start_lat = None if start_lat is None else start_lat.detach().clone()
                start_waves = param.waves() if keep_waves else None
            traj, failed, logits0, logits1 = ascend(classifier, param, objective, chunk_targets, step, steps, net)
            with torch.no_grad():
                feats = param.features().detach()
                out = {
                    **({"features": feats, "start_features": start_feats} if keep_features else {}),
                    "trajectory": traj,
                    "prob_a": torch.softmax(logits1, dim=1),
                    "start_prob_a": torch.softmax(logits0, dim=1),
                    "failed": failed,
                }
                lat = param.latents()
                if lat is not None:
                    out["latents"] = lat.detach()
                    out["start_latents"] = start_lat
                if evaluator is not None:
                    out["prob_b"] = torch.softmax(evaluator(feats), dim=1)
                    out["start_prob_b"] = torch.softmax(evaluator(start_feats), dim=1)
                if start_waves is not None:
                    out["waves"], out["start_waves"] = param.waves(), start_waves
            return {k: v.float().cpu() if v.dtype != torch.bool else v.cpu() for k, v in out.items()}

        done: list[dict[str, torch.Tensor]] = [{}] * len(chunks)
        bar = tqdm(total=len(chunks), desc="maximize", unit="batch", disable=not progress or len(chunks) < 2)

        def worker(k: int) -> None:
            """Chunks k, k + workers, ... on one core, with its own copies of the per-batch state."""
            own_param, own_step = (param, step) if k == 0 else (copy.copy(param), copy.copy(step))
            torch.set_num_threads(1)
            with precision(precision_mode, device):  # autocast is per thread
                for i in range(k, len(chunks), workers):
                    done[i] = run_chunk(chunks[i], own_param, own_step)
                    bar.update()

        threads = torch.get_num_threads()
        try:
            with retained_heap(device):
                if workers == 1:
                    for i, lo in enumerate(chunks):
                        done[i] = run_chunk(lo, param, step)
                        bar.update()
                else:
                    with ThreadPoolExecutor(workers) as pool:
                        list(pool.map(worker, range(workers)))
        finally:
            torch.set_num_threads(threads)
            bar.close()
            if starts is not None:
                starts.close()

    def cat(key: str) -> torch.Tensor | None:
        return torch.cat([d[key] for d in done]) if total and key in done[0] else None

    if total == 0:
        empty = torch.zeros(0, *shape)
        none_b = torch.zeros(0, n_classes) if evaluator is not None else None
        return Result(empty, empty.clone(), None, None, torch.zeros(0, steps + 1), torch.zeros(0, n_classes),
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
        waves=cat("waves"),
        start_waves=cat("start_waves"),
    )


def maximize(
    classifier: nn.Module,
    targets: torch.Tensor,
    *,
    method: str = "classifier",
    decoder: nn.Module | None = None,
    settings: Settings = Settings(),
    **options,
) -> Result:
    """`optimize` with the parts a method name and a preset's `Settings` build (see `parts`).

    `decoder` is the prior's network: the autoencoder for ``decoder``, the
    generator for ``gan``, ``cgan`` and ``wave-gan``.

    `options` are `optimize`'s keywords (start, start_latents, seed, evaluator,
    device, batch_size, progress, shape, first_index, rewrite, keep_waves, keep_features, precision_mode,
    channels_last, cores).
    """
    param, objective, step = parts(settings, method, decoder)
    return optimize(classifier, targets, param, objective, step, steps=settings.steps, init_std=settings.init_std, **options)
