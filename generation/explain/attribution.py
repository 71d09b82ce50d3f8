"""Attribution maps through captum: one relevance value per log-mel bin, batched.

Every method returns relevance shaped like the input ([B, frames, mels]) for a
given target class per clip. Methods whose output is coarser than the input
(Grad-CAM on the last feature block) are upsampled to it; LIME explains
rectangular time x frequency cells and spreads each cell's weight over its bins.

Layer support, honestly: captum's Deconvolution and GuidedBackprop override only
`nn.ReLU` modules, so the functional `torch.relu` after each residual sum of the
`conv` architecture passes plain gradients. LRP needs a rule for every leaf
module; `lrp_unsupported` names the module types it lacks (the `conv`
architecture's Conv1d, BatchNorm1d, AdaptiveAvgPool1d and its functional
residual additions), and the `paper` architecture is supported with an identity
rule for `nn.Flatten`.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from hearsay.errors import HearsayError

METHODS = (
    "saliency", "input_x_gradient", "integrated_gradients", "deconvolution", "guided_backprop",
    "grad_cam", "occlusion", "lime", "lrp",
)
DEFAULT_METHODS = METHODS[:-1]


@dataclass(frozen=True)
class AttributionSettings:
    """Knobs of the slower methods; recorded in run.json."""

    ig_steps: int = 32
    occlusion_frames: int = 0  # 0: about 1/15 of the frames
    occlusion_mels: int = 0  # 0: about 1/10 of the mels
    lime_samples: int = 300
    lime_cells: tuple[int, int] = (10, 8)  # time x frequency cells
    seed: int = 0

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def parse_methods(text: str) -> list[str]:
    chosen = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not chosen:
        raise HearsayError("no attribution methods given")
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise HearsayError(f"unknown attribution method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    return chosen


def lrp_unsupported(model: nn.Module) -> list[str]:
    """Leaf module types (and functional parts) captum's LRP has no rule for; empty means LRP works."""
    from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS

    known = set(SUPPORTED_LAYERS_WITH_RULES) | set(SUPPORTED_NON_LINEAR_LAYERS) | {nn.Flatten}
    missing = sorted({type(m).__name__ for m in model.modules() if not list(m.children()) and type(m) not in known})
    # A residual block adds and rectifies in forward(), where no module (hence no rule) sees it.
    if any(type(m).__name__ == "_TemporalBlock" for m in model.modules()):
        missing.append("functional residual addition")
    return missing


def feature_layer(model: nn.Module) -> nn.Module:
    """The last block before pooling/dense layers: what Grad-CAM weighs."""
    layer = getattr(model, "features", None)
    if not isinstance(layer, nn.Module):
        raise HearsayError(f"Grad-CAM needs a `features` block; {type(model).__name__} has none")
    return layer


def lime_mask(shape: tuple[int, int], cells: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """[frames, mels] integer map of rectangular time x frequency cells (LIME's interpretable features)."""
    frames, mels = shape
    nt, nf = min(cells[0], frames), min(cells[1], mels)
    t_id = torch.div(torch.arange(frames) * nt, frames, rounding_mode="floor")
    f_id = torch.div(torch.arange(mels) * nf, mels, rounding_mode="floor")
    return (t_id[:, None] * nf + f_id[None, :]).to(device)


class Explainer:
    """Relevance maps of one classifier (in eval mode, on its device) for any captum method in METHODS."""

    def __init__(self, model: nn.Module, settings: AttributionSettings = AttributionSettings()):
        self.model = model.eval()
        self.settings = settings
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(self.model(x.to(self.device)), dim=1)

    def attribute(self, method: str, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Relevance [B, frames, mels] (float32, on CPU) of each clip's target class."""
        if method not in METHODS:
            raise HearsayError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
        x = x.to(self.device, torch.float32)
        targets = torch.as_tensor(targets, device=self.device).long()
        run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = getattr(self, f"_{method}")
        with warnings.catch_warnings():  # captum's notes that it set requires_grad or hooked ReLUs: expected here
            warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
            out = run(x, targets).detach()
        if out.shape != x.shape:
            raise AssertionError(f"{method} returned {list(out.shape)} for input {list(x.shape)}")
        return torch.nan_to_num(out.float()).cpu()

    # ------------------------------------------------------------------ gradient methods

    def _saliency(self, x, t):
        from captum.attr import Saliency

        return Saliency(self.model).attribute(x, target=t, abs=True)

    def _input_x_gradient(self, x, t):
        from captum.attr import InputXGradient

        return InputXGradient(self.model).attribute(x, target=t)

    def _integrated_gradients(self, x, t):
        from captum.attr import IntegratedGradients

        # Baseline 0 is the -100 dB floor: silence in feature space.
        return IntegratedGradients(self.model).attribute(
            x, baselines=torch.zeros_like(x), target=t, n_steps=self.settings.ig_steps, internal_batch_size=max(len(x), 1) * 8
        )

    def _deconvolution(self, x, t):
        from captum.attr import Deconvolution

        return Deconvolution(self.model).attribute(x, target=t)

    def _guided_backprop(self, x, t):
        from captum.attr import GuidedBackprop

        return GuidedBackprop(self.model).attribute(x, target=t)

    def _grad_cam(self, x, t):
        from captum.attr import LayerGradCam

        cam = LayerGradCam(self.model, feature_layer(self.model)).attribute(x, target=t, relu_attributions=True)
        frames, mels = x.shape[1:]
        if cam.dim() == 3:  # [B, 1, time']: 1-D convolutions over time, every mel band alike
            up = torch.nn.functional.interpolate(cam, size=frames, mode="linear", align_corners=False)
            return up[:, 0, :, None].expand(-1, -1, mels).contiguous()
        if cam.dim() == 4:  # [B, 1, time', mels']
            return torch.nn.functional.interpolate(cam, size=(frames, mels), mode="bilinear", align_corners=False)[:, 0]
        raise HearsayError(f"Grad-CAM got a feature map shaped {list(cam.shape)}; expected 1-D or 2-D")

    # ------------------------------------------------------------------ perturbation methods

    def occlusion_window(self, shape: tuple[int, int]) -> tuple[int, int]:
        frames, mels = shape
        return (self.settings.occlusion_frames or max(1, frames // 15), self.settings.occlusion_mels or max(1, mels // 10))

    def _occlusion(self, x, t):
        from captum.attr import Occlusion

        wt, wf = self.occlusion_window(tuple(x.shape[1:]))
        return Occlusion(self.model).attribute(
            x, sliding_window_shapes=(wt, wf), strides=(max(1, wt // 2), max(1, wf // 2)), baselines=0.0, target=t,
            perturbations_per_eval=16,
        )

    def _lime(self, x, t):
        """One clip at a time (captum's Lime explains one example per call); cells off = silence."""
        from captum.attr import Lime
        from captum._utils.models.linear_model import SkLearnRidge

        mask = lime_mask(tuple(x.shape[1:]), self.settings.lime_cells, x.device)
        out = torch.zeros_like(x)
        for i in range(len(x)):
            torch.manual_seed(self.settings.seed + i)
            lime = Lime(lambda inp: torch.softmax(self.model(inp), dim=1), interpretable_model=SkLearnRidge(alpha=1.0))
            out[i] = lime.attribute(
                x[i : i + 1], target=int(t[i]), baselines=0.0, feature_mask=mask[None], n_samples=self.settings.lime_samples,
                perturbations_per_eval=64,
            )[0]
        return out

    def _lrp(self, x, t):
        from captum.attr import LRP

        missing = lrp_unsupported(self.model)
        if missing:
            raise HearsayError(f"LRP is not available for {type(self.model).__name__}: no LRP rule for {', '.join(missing)}")
        if not all(isinstance(getattr(self.model, n, None), nn.Module) for n in ("features", "head", "logits")):
            raise HearsayError(f"LRP needs a classifier made of features, head and logits; {type(self.model).__name__} is not")
        # LRP attaches rules and hooks to modules, so it works on a copy whose reshapes are plain tensor
        # views between modules (relevance passes them like gradients; an identity rule on Flatten cannot).
        return LRP(_LrpChain(copy.deepcopy(self.model)).eval()).attribute(x, target=t)


class _LrpChain(nn.Module):
    """The paper classifier's layers with its two reshapes (channel axis, flatten) done outside any module."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.features = model.features
        self.dense = nn.Sequential(*[m for m in model.head if not isinstance(m, nn.Flatten)])
        self.logits = model.logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.dense(self.features(x.unsqueeze(1)).flatten(1)))


def relevance_batches(explainer: Explainer, method: str, x: torch.Tensor, targets: torch.Tensor, batch_size: int) -> np.ndarray:
    """Attributions for many clips, `batch_size` at a time: [N, frames, mels] float32."""
    parts = [explainer.attribute(method, x[lo : lo + batch_size], targets[lo : lo + batch_size]) for lo in range(0, len(x), batch_size)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, *x.shape[1:]), dtype=np.float32)
