"""A one-channel convolution and the max-pool after it, fused into one compiled CPU pass (and one for the gradient).

The paper classifier opens with a 2x2 convolution of the single log-mel
channel into 8 maps and a 2x2 max-pool. As torch ops on a CPU that block took
about 60 % of a maximization step: a one-input-channel convolution is a
poor fit for oneDNN's kernels (under 2 GFLOP/s here), and the pool and its
gradient sweep a 29 MB map (at batch 128) several times, once more to zero it.
Fused, each pooled value is computed from its small input patch in registers
and only the pooled maps and the winning position (one byte) are written; the
gradient goes straight from the pooled maps to the input.

The values are the same sums in another order, so they agree with the torch
ops to float rounding (about 1e-7 relative); ties in the pool go to the first
position in row-major order and NaN wins, as in torch's CPU max-pool.
`fused_first_block(model)` swaps such a pair in a traced copy of a model; the
fused layer falls back to the torch ops wherever the compiled pass does not
apply (another device or dtype, an unbatched input, autocast, weights that need gradients).
"""
from __future__ import annotations

import functools
import math
import weakref

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import register_flop_formula


def _pooled_forward(x, w, b, out, arg):  # pragma: no cover - compiled by numba
    """x [N, H, W]; w [4, C] (taps w00 w01 w10 w11); b [C] -> out [N, HP, WP, C]: each 2x2 window's max of conv(x); arg: where.

    Each window reads a 3x3 input patch once; the channel loop then runs in vector registers.
    """
    n_samples, hp, wp, channels = out.shape
    for n in range(n_samples):
        for i in range(hp):
            r = 2 * i
            for j in range(wp):
                s = 2 * j
                x00, x01, x02 = x[n, r, s], x[n, r, s + 1], x[n, r, s + 2]
                x10, x11, x12 = x[n, r + 1, s], x[n, r + 1, s + 1], x[n, r + 1, s + 2]
                x20, x21, x22 = x[n, r + 2, s], x[n, r + 2, s + 1], x[n, r + 2, s + 2]
                for c in range(channels):
                    w00, w01, w10, w11, bc = w[0, c], w[1, c], w[2, c], w[3, c], b[c]
                    best = bc + w00 * x00 + w01 * x01 + w10 * x10 + w11 * x11
                    k = 0
                    v = bc + w00 * x01 + w01 * x02 + w10 * x11 + w11 * x12
                    if v > best or v != v:  # as torch's CPU max-pool: the first maximum in row-major order, NaN wins
                        best, k = v, 1
                    v = bc + w00 * x10 + w01 * x11 + w10 * x20 + w11 * x21
                    if v > best or v != v:
                        best, k = v, 2
                    v = bc + w00 * x11 + w01 * x12 + w10 * x21 + w11 * x22
                    if v > best or v != v:
                        best, k = v, 3
                    out[n, i, j, c] = best
                    arg[n, i, j, c] = k


def _input_gradient(g, arg, w, dx):  # pragma: no cover - compiled by numba
    """g [N, HP, WP, C]: gradient at the pooled maps -> dx [N, H, W], each window's gradient sent through its winner."""
    n_samples, hp, wp, channels = g.shape
    zero = np.float32(0.0)
    dx[:] = 0.0
    for n in range(n_samples):
        for i in range(hp):
            r = 2 * i
            for j in range(wp):
                s = 2 * j
                p00 = p01 = p02 = p10 = p11 = p12 = p20 = p21 = p22 = zero
                for c in range(channels):
                    gv, k = g[n, i, j, c], arg[n, i, j, c]
                    g0, g1 = (gv if k == 0 else zero), (gv if k == 1 else zero)
                    g2, g3 = (gv if k == 2 else zero), (gv if k == 3 else zero)
                    w00, w01, w10, w11 = w[0, c], w[1, c], w[2, c], w[3, c]
                    p00 += w00 * g0
                    p01 += w01 * g0 + w00 * g1
                    p02 += w01 * g1
                    p10 += w10 * g0 + w00 * g2
                    p11 += w11 * g0 + w10 * g1 + w01 * g2 + w00 * g3
                    p12 += w11 * g1 + w01 * g3
                    p20 += w10 * g2
                    p21 += w11 * g2 + w10 * g3
                    p22 += w11 * g3
                dx[n, r, s] += p00
                dx[n, r, s + 1] += p01
                dx[n, r, s + 2] += p02
                dx[n, r + 1, s] += p10
                dx[n, r + 1, s + 1] += p11
                dx[n, r + 1, s + 2] += p12
                dx[n, r + 2, s] += p20
                dx[n, r + 2, s + 1] += p21
                dx[n, r + 2, s + 2] += p22


@functools.cache
def _kernels():
    import numba

    # reassociation lets the channel sums use vector registers; no 'nnan': NaN must still win the pool
    compile_ = numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
    return compile_(_pooled_forward), compile_(_input_gradient)


# As torch operators (not a Python autograd function), so that dispatch-level tools see the fused passes as what
# they are: bench/maximize.py's roofline counts their bytes and FLOPs, torch's FLOP counter their FLOPs.
@torch.library.custom_op("hearsay::conv_pool_2x2", mutates_args=())
def conv_pool(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, H, W], w [4, C], b [C] -> (pooled maps [N, C, HP, WP] stored channels-last, winner positions [N, HP, WP, C])."""
    forward, _ = _kernels()
    n, height, width = x.shape
    out = torch.empty(n, (height - 1) // 2, (width - 1) // 2, w.shape[1])
    arg = torch.empty(out.shape, dtype=torch.int8)
    forward(x.numpy(), w.numpy(), b.numpy(), out.numpy(), arg.numpy())
    return out.permute(0, 3, 1, 2), arg  # channels-last in memory, like the layers after it on a CPU


@torch.library.custom_op("hearsay::conv_pool_2x2_input_grad", mutates_args=())
def conv_pool_input_grad(grad: torch.Tensor, arg: torch.Tensor, w: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The gradient at the pooled maps [N, C, HP, WP] -> the gradient at the input [N, H, W]."""
    _, gradient = _kernels()
    dx = torch.empty(grad.shape[0], height, width)
    gradient(grad.permute(0, 2, 3, 1).contiguous().numpy(), arg.numpy(), w.numpy(), dx.numpy())
    return dx


def _save(ctx, inputs, output) -> None:
    x, w, _ = inputs
    ctx.save_for_backward(output[1], w)
    ctx.size = x.shape[1:]


def _backward(ctx, grad, _grad_arg):
    arg, w = ctx.saved_tensors
    return conv_pool_input_grad(grad, arg, w, *ctx.size), None, None


conv_pool.register_autograd(_backward, setup_context=_save)


@register_flop_formula(torch.ops.hearsay.conv_pool_2x2)
def _conv_pool_flops(x_shape, w_shape, b_shape, out_shape=None, **kwargs) -> int:
    n, channels, hp, wp = out_shape[0]
    return 2 * 4 * 4 * n * channels * hp * wp  # 4 taps for each of a window's 4 positions, multiply and add


@register_flop_formula(torch.ops.hearsay.conv_pool_2x2_input_grad)
def _conv_pool_input_grad_flops(grad_shape, arg_shape, w_shape, height, width, out_shape=None, **kwargs) -> int:
    return 2 * 4 * math.prod(grad_shape)  # the winner's 4 taps per pooled value


class ConvPool(nn.Module):
    """`pool(conv(x))` for a one-input-channel 2x2 conv and a 2x2 pool; compiled and fused on a CPU in float32 with frozen weights."""

    def __init__(self, conv: nn.Conv2d, pool: nn.MaxPool2d):
        super().__init__()
        self.conv, self.pool = conv, pool  # shared with the model it came from: its weights are read at every call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.conv.weight, self.conv.bias
        if (x.device.type != "cpu" or x.dim() != 4 or x.dtype != torch.float32 or weight.dtype != torch.float32
                or torch.is_autocast_enabled("cpu") or weight.requires_grad or (bias is not None and bias.requires_grad)):
            return self.pool(self.conv(x))
        w = weight.detach().reshape(weight.shape[0], 4).T.contiguous()  # [4, C]: the channels innermost, as the kernel loops
        b = bias.detach() if bias is not None else torch.zeros(weight.shape[0])
        return conv_pool(x[:, 0].contiguous(), w, b.contiguous())[0]


def _fits(conv: nn.Module, pool: nn.Module) -> bool:
    if not (type(conv) is nn.Conv2d and type(pool) is nn.MaxPool2d):
        return False
    pair = lambda v: tuple(v) if isinstance(v, tuple) else (v, v)  # noqa: E731
    return (conv.in_channels == 1 and pair(conv.kernel_size) == (2, 2) and pair(conv.stride) == (1, 1)
            and pair(conv.dilation) == (1, 1) and conv.padding in ((0, 0), "valid") and conv.padding_mode == "zeros"
            and pair(pool.kernel_size) == (2, 2) and pair(pool.stride) == (2, 2) and pair(pool.padding) == (0, 0)
            and pair(pool.dilation) == (1, 1) and not pool.ceil_mode and not pool.return_indices)


_FUSED: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, ...], nn.Module | None]]" = weakref.WeakKeyDictionary()


def fused_first_block(model: nn.Module, keep: tuple[str, ...] = ()) -> nn.Module:
    """`model` with each one-input-channel 2x2 Conv2d -> 2x2 MaxPool2d pair (modules, neither named in `keep`) run as `ConvPool`.

    Works on a traced copy (leaf modules shared); a model fx cannot trace, or
    without such a pair, is returned as it is. Cached per model and `keep`.
    """
    cached = _FUSED.setdefault(model, {})
    if keep not in cached:
        fused = _fuse(model, keep)
        cached[keep] = None if fused is model else fused
    return model if cached[keep] is None else cached[keep]


def _fuse(model: nn.Module, keep: tuple[str, ...]) -> nn.Module:
    try:
        traced = torch.fx.symbolic_trace(model)  # a fresh graph also for a graph module: the caller's stays as it is
    except Exception:  # Python control flow on values: use the model as it is
        return model
    modules = dict(traced.named_modules())
    pairs = []
    for conv in traced.graph.nodes:
        if conv.op != "call_module" or conv.target in keep or len(conv.users) != 1:
            continue
        pool = next(iter(conv.users))
        if pool.op == "call_module" and pool.target not in keep and pool.args == (conv,) and not pool.kwargs \
                and _fits(modules[conv.target], modules[pool.target]):
            pairs.append((conv, pool))
    if not pairs:
        return model
    for k, (conv, pool) in enumerate(pairs):
        name = f"fused_conv_pool_{k}"
        traced.add_submodule(name, ConvPool(modules[conv.target], modules[pool.target]))
        with traced.graph.inserting_before(pool):
            node = traced.graph.call_module(name, conv.args)
        pool.replace_all_uses_with(node)
        traced.graph.erase_node(pool)
        traced.graph.erase_node(conv)
    traced.graph.lint()
    traced.recompile()
    return traced
