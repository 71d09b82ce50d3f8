"""Nearest-neighbour upsampling followed by a same-padded convolution, run as one transposed convolution.

The autoencoder's decoder and the GAN generators grow their output by
`nn.Upsample(scale_factor=s)` (nearest) and then a `k`-tap convolution padded
to keep the size. On the upsampled map each output value reads only the input
values its `k` taps fall on (each input value repeated `s` times, so several
taps share one). So the pair equals a transposed convolution with stride `s`,
`s + k - 1` taps per axis and padding `(k-1)/2`, whose weights are sums of the
convolution's weights (`transposed_weight`).

That form never builds the upsampled map, does 4/9 of the multiply-adds of the
pair for s = 2, k = 3 in 2-D, and its input gradient is one strided
convolution instead of the upsampling's scatter-add backward (about a fifth of
the decoder prior's GPU time, bench/gpu_sweep.py). It is exact in arithmetic;
in floating point the summed weights round differently, so outputs agree to
about 1e-6 relative (tests/test_upsampling.py).

`transposed_upsampling(module)` returns a twin of a network with every such
pair inside an `nn.Sequential` replaced, sharing all other layers (and every
parameter) with the original. The new layers' weights are derived when the
twin is built, so build it for frozen weights (the maximization engine does,
once per run) and never train through it.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

_CONVS = {nn.Conv1d: nn.ConvTranspose1d, nn.Conv2d: nn.ConvTranspose2d}


def _scales(up: nn.Upsample, dims: int) -> tuple[int, ...] | None:
    """The upsampling's integer scale per axis, or None when it is not a pure nearest, integer-factor one."""
    if up.mode not in ("nearest", "nearest-exact") or up.size is not None or up.scale_factor is None:
        return None
    factors = up.scale_factor if isinstance(up.scale_factor, tuple) else (up.scale_factor,) * dims
    if len(factors) != dims or any(float(f) != int(f) or int(f) < 1 for f in factors):
        return None  # for integer factors nearest and nearest-exact pick the same source index: floor(i / s)
    return tuple(int(f) for f in factors)


def _fits(conv: nn.Module) -> bool:
    """A stride-1, ungrouped, undilated convolution zero-padded by (k-1)/2 on each side of each axis."""
    if type(conv) not in _CONVS or conv.groups != 1 or conv.padding_mode != "zeros":
        return False
    if any(s != 1 for s in conv.stride) or any(d != 1 for d in conv.dilation):
        return False
    if any(k % 2 == 0 for k in conv.kernel_size):
        return False
    half = tuple((k - 1) // 2 for k in conv.kernel_size)
    return conv.padding == "same" or tuple(conv.padding) == half


def tap_map(scale: int, taps: int) -> torch.Tensor:
    """[scale + taps - 1, taps] 0/1: which of the convolution's taps add into each tap of the transposed kernel.

    Along one axis the pair computes out[r] = sum_d w[d] * x[floor((r + d) / s)]
    for d in [-h, h] (h = (taps - 1) / 2); a transposed convolution computes
    out[r] = sum_t W[t] * x[m] over r = s*m + t - h. So W[t] sums the w[d] with
    0 <= (t - h) + d < s.
    """
    half = (taps - 1) // 2
    t = torch.arange(scale + taps - 1).unsqueeze(1) - half
    d = torch.arange(taps).unsqueeze(0) - half
    return ((t + d >= 0) & (t + d < scale)).to(torch.float64)


def transposed_weight(weight: torch.Tensor, scales: tuple[int, ...]) -> torch.Tensor:
    """The transposed convolution's [in, out, *taps'] weight equal to upsampling by `scales` then `weight` [out, in, *taps]."""
    w = weight.detach().to(torch.float64)
    maps = [tap_map(s, k).to(w.device) for s, k in zip(scales, weight.shape[2:])]
    if len(maps) == 1:
        out = torch.einsum("td,oid->iot", maps[0], w)
    else:
        out = torch.einsum("td,ue,oide->iotu", maps[0], maps[1], w)
    return out.to(weight.dtype)


def _transposed(up: nn.Upsample, conv: nn.Module) -> nn.Module | None:
    if not _fits(conv):
        return None
    dims = conv.weight.dim() - 2
    scales = _scales(up, dims)
    if scales is None:
        return None
    half = tuple((k - 1) // 2 for k in conv.kernel_size)
    taps = tuple(s + k - 1 for s, k in zip(scales, conv.kernel_size))
    layer = _CONVS[type(conv)](conv.in_channels, conv.out_channels, taps, stride=scales, padding=half,
                               bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
    weight = transposed_weight(conv.weight, scales)
    if dims == 2 and conv.weight.is_contiguous(memory_format=torch.channels_last):
        weight = weight.contiguous(memory_format=torch.channels_last)
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if conv.bias is not None:
        layer.bias = conv.bias
    return layer.train(conv.training)


def transposed_upsampling(module: nn.Module) -> nn.Module:
    """`module` itself when it holds no nearest-upsample -> same-padded conv pair in a Sequential; else its twin."""
    if isinstance(module, nn.Sequential):
        layers, changed, i = list(module), False, 0
        out: list[nn.Module] = []
        while i < len(layers):
            pair = _transposed(layers[i], layers[i + 1]) \
                if isinstance(layers[i], nn.Upsample) and i + 1 < len(layers) else None
            if pair is not None:
                out.append(pair)
                changed, i = True, i + 2
                continue
            twin = transposed_upsampling(layers[i])
            changed |= twin is not layers[i]
            out.append(twin)
            i += 1
        return nn.Sequential(*out).train(module.training) if changed else module
    return with_children(module, transposed_upsampling)


def with_children(module: nn.Module, rewrite: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """`module` itself when `rewrite` returns every child unchanged; else a twin holding the rewritten children."""
    children = {name: rewrite(child) for name, child in module.named_children()}
    if all(children[name] is child for name, child in module.named_children()):
        return module
    twin = copy.copy(module)  # shares parameters, buffers and hooks; only the changed children differ
    twin._modules = {**module._modules, **children}
    return twin
