"""Faster equal forms of layers the stock kernels run poorly: the paper net's 2x2 blocks compiled, a convolution into one map.

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

The later blocks' 2x2 max-pools (over channels-last maps of 16 and 32
channels) run as compiled passes too. Torch's pool writes an 8-byte index per
value, and its gradient zeroes the full-resolution map before scattering into
it; the compiled pool keeps a one-byte winner per value, and its gradient
writes the full-resolution map once, in order (20 steps at batch 128 on one
core: 0.98 -> 0.91 s). Its values and gradients are torch's bit for bit.

On a CUDA device with Triton the same passes run as Triton kernels
(`generation.fused_gpu`), in float32 or the autocast dtype, in either layout.

`fused_layers(model)` swaps such layers in a traced copy of a model; a
fused layer falls back to the torch ops wherever its compiled pass does not
apply (another device or dtype, an unbatched input, autocast on a CPU, weights
that need gradients, on a CPU a map not stored channels-last).

A convolution into a single map (the decoder prior's last layer) runs as a
matrix product per sample and shifted sums (`SingleMapConv`, `single_map_convs`).
"""
from __future__ import annotations

import functools
import importlib.util
import math
import warnings
import weakref
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from .upsampling import with_children


def _pooled_forward(x, w, b, relu, out, arg):  # pragma: no cover - compiled by numba
    """x [N, H, W]; w [4, C] (taps w00 w01 w10 w11); b [C] -> out [N, HP, WP, C]: each 2x2 window's max of conv(x); arg: where.

    With `relu` the maximum goes through a ReLU too.

    Each window reads a 3x3 input patch once; the channel loop then runs in vector registers.
    """
    n_samples, hp, wp, channels = out.shape
    zero = np.float32(0.0)
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
                    if relu and best <= 0:  # as torch's ReLU: 0 and no gradient (winner 4); NaN passes with its gradient
                        best, k = zero, 4
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


def _pool_forward(x, relu, out, arg):  # pragma: no cover - compiled by numba
    """x [N, H, W, C] -> out [N, HP, WP, C]: each 2x2 window's maximum; arg: its position (0-3, row-major), as torch picks it.

    With `relu` the maximum goes through a ReLU too (position 4, no gradient, where it is <= 0).
    """
    n_samples, hp, wp, channels = out.shape
    zero = np.float32(0.0)
    for n in range(n_samples):
        for i in range(hp):
            r = 2 * i
            for j in range(wp):
                s = 2 * j
                for c in range(channels):
                    best, k = x[n, r, s, c], 0
                    v = x[n, r, s + 1, c]
                    if v > best or v != v:
                        best, k = v, 1
                    v = x[n, r + 1, s, c]
                    if v > best or v != v:
                        best, k = v, 2
                    v = x[n, r + 1, s + 1, c]
                    if v > best or v != v:
                        best, k = v, 3
                    if relu and best <= 0:  # as torch's ReLU: 0 and no gradient (winner 4); NaN passes with its gradient
                        best, k = zero, 4
                    out[n, i, j, c] = best
                    arg[n, i, j, c] = k


def _pool_gradient(g, arg, dx):  # pragma: no cover - compiled by numba
    """g [N, HP, WP, C] -> dx [N, H, W, C], written row by row: each window's gradient at its winner, 0 elsewhere.

    `g + 0` as torch's gradient (zeros, then added into): -0.0 lands as +0.0.
    """
    n_samples, hp, wp, channels = g.shape
    height, width = dx.shape[1], dx.shape[2]
    zero = np.float32(0.0)
    for n in range(n_samples):
        for r in range(height):
            i = r // 2
            for s in range(width):
                j = s // 2
                if i >= hp or j >= wp:  # the odd last row or column no window covers
                    for c in range(channels):
                        dx[n, r, s, c] = zero
                    continue
                position = 2 * (r - 2 * i) + s - 2 * j
                for c in range(channels):
                    dx[n, r, s, c] = g[n, i, j, c] + zero if arg[n, i, j, c] == position else zero


@functools.cache
def _kernels():
    import numba

    # reassociation lets the channel sums use vector registers; no 'nnan': NaN must still win the pool
    compile_ = numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
    return compile_(_pooled_forward), compile_(_input_gradient)


@functools.cache
def _pool_kernels():
    import numba

    compile_ = numba.njit(nogil=True, cache=True, error_model="numpy")  # no fast-math: bit for bit as torch's pool
    return compile_(_pool_forward), compile_(_pool_gradient)


# As torch operators (not a Python autograd function), so that dispatch-level tools see the fused passes as what
# they are: bench/maximize.py's roofline counts their bytes and FLOPs, torch's FLOP counter their FLOPs.
@torch.library.custom_op("hearsay::conv_pool_2x2", mutates_args=())
def conv_pool(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, relu: bool, channels_last: bool
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, H, W], w [4, C], b [C] -> (pooled maps [N, C, HP, WP], winner positions [N, C, HP, WP] stored alike).

    With `relu`, the pooled maps through a ReLU. On a CPU (float32) always
    stored channels-last, like the layers after it there; on CUDA
    (`fused_gpu`) in x's dtype, channels-last or NCHW as `channels_last` says.
    """
    forward, _ = _kernels()
    n, height, width = x.shape
    out = torch.empty(n, (height - 1) // 2, (width - 1) // 2, w.shape[1])
    arg = torch.empty(out.shape, dtype=torch.int8)
    forward(x.contiguous().numpy(), w.numpy(), b.numpy(), relu, out.numpy(), arg.numpy())
    return out.permute(0, 3, 1, 2), arg.permute(0, 3, 1, 2)


@torch.library.custom_op("hearsay::conv_pool_2x2_input_grad", mutates_args=())
def conv_pool_input_grad(grad: torch.Tensor, arg: torch.Tensor, w: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The gradient at the pooled maps [N, C, HP, WP] -> the gradient at the input [N, H, W], in w's dtype."""
    _, gradient = _kernels()
    dx = torch.empty(grad.shape[0], height, width)
    gradient(grad.permute(0, 2, 3, 1).contiguous().numpy(), arg.permute(0, 2, 3, 1).contiguous().numpy(), w.numpy(), dx.numpy())
    return dx


def _save(ctx, inputs, output) -> None:
    x, w = inputs[:2]
    ctx.save_for_backward(output[1], w)
    ctx.size = x.shape[1:]


def _backward(ctx, grad, _grad_arg):
    arg, w = ctx.saved_tensors
    return conv_pool_input_grad(grad, arg, w, *ctx.size), None, None, None, None


conv_pool.register_autograd(_backward, setup_context=_save)


@register_flop_formula(torch.ops.hearsay.conv_pool_2x2)
def _conv_pool_flops(x_shape, w_shape, b_shape, relu, channels_last, out_shape=None, **kwargs) -> int:
    n, channels, hp, wp = out_shape[0]
    return 2 * 4 * 4 * n * channels * hp * wp  # 4 taps for each of a window's 4 positions, multiply and add


@register_flop_formula(torch.ops.hearsay.conv_pool_2x2_input_grad)
def _conv_pool_input_grad_flops(grad_shape, arg_shape, w_shape, height, width, out_shape=None, **kwargs) -> int:
    return 2 * 4 * math.prod(grad_shape)  # the winner's 4 taps per pooled value


@torch.library.custom_op("hearsay::max_pool_2x2", mutates_args=())
def max_pool(x: torch.Tensor, relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, C, H, W] -> (pooled maps [N, C, HP, WP], winner positions [N, C, HP, WP]), both stored as x is.

    With `relu`, the pooled maps through a ReLU. On a CPU, float32 maps stored channels-last.
    """
    forward, _ = _pool_kernels()
    n, channels, height, width = x.shape
    out = torch.empty(n, height // 2, width // 2, channels)
    arg = torch.empty(out.shape, dtype=torch.int8)
    forward(x.permute(0, 2, 3, 1).numpy(), relu, out.numpy(), arg.numpy())
    return out.permute(0, 3, 1, 2), arg.permute(0, 3, 1, 2)


@torch.library.custom_op("hearsay::max_pool_2x2_grad", mutates_args=())
def max_pool_grad(grad: torch.Tensor, arg: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The gradient at the pooled maps [N, C, HP, WP] -> the gradient at the input [N, C, H, W], stored as the winners are."""
    _, gradient = _pool_kernels()
    n, channels = grad.shape[:2]
    dx = torch.empty(n, height, width, channels)
    gradient(grad.permute(0, 2, 3, 1).contiguous().numpy(), arg.permute(0, 2, 3, 1).contiguous().numpy(), dx.numpy())
    return dx.permute(0, 3, 1, 2)


# On CUDA the same operators run as Triton kernels (imported on first use: Triton is needed only there).
@conv_pool.register_kernel("cuda")
def _conv_pool_cuda(x, w, b, relu, channels_last):
    from . import fused_gpu

    with torch.cuda.device(x.device):  # Triton launches on the current device
        return fused_gpu.conv_pool(x, w, b, relu, channels_last)


@conv_pool_input_grad.register_kernel("cuda")
def _conv_pool_input_grad_cuda(grad, arg, w, height, width):
    from . import fused_gpu

    with torch.cuda.device(grad.device):
        return fused_gpu.conv_pool_input_grad(grad, arg, w, height, width)


@max_pool.register_kernel("cuda")
def _max_pool_cuda(x, relu):
    from . import fused_gpu

    with torch.cuda.device(x.device):
        return fused_gpu.max_pool(x, relu)


@max_pool_grad.register_kernel("cuda")
def _max_pool_grad_cuda(grad, arg, height, width):
    from . import fused_gpu

    with torch.cuda.device(grad.device):
        return fused_gpu.max_pool_grad(grad, arg, height, width)


def _triton_device(device: torch.device) -> bool:
    """Whether the Triton forms run on `device`: CUDA with Triton importable, compute capability 8.0 or newer."""
    return device.type == "cuda" and _triton_on(device.index)


@functools.cache
def _triton_on(index: int | None) -> bool:
    if importlib.util.find_spec("triton") is None or torch.cuda.get_device_capability(index)[0] < 8:
        return False
    try:
        from . import fused_gpu

        with torch.cuda.device(index):
            fused_gpu.self_check(torch.device("cuda", index))
    except Exception as exc:  # whatever stops the kernels there (compiler, driver, a wrong result): the torch ops run
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"the compiled 2x2 blocks do not run on cuda:{index} ({type(exc).__name__}: {reason}); "
                      "running the torch ops there instead", RuntimeWarning, stacklevel=2)
        return False
    return True


_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _triton_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype the Triton forms run `x` in (the autocast dtype under autocast); None where they do not run."""
    if x.dtype not in _TRITON_DTYPES or not _triton_device(x.device):
        return None
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def _save_pool(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[1])
    ctx.size = inputs[0].shape[2:]


def _pool_backward(ctx, grad, _grad_arg):
    (arg,) = ctx.saved_tensors
    return max_pool_grad(grad, arg, *ctx.size), None


max_pool.register_autograd(_pool_backward, setup_context=_save_pool)


class ConvPool(nn.Module):
    """`pool(conv(x))` for a one-input-channel 2x2 conv and a 2x2 pool; compiled and fused on a CPU in float32 with frozen weights.

    With `relu`, `relu(pool(conv(x)))`.
    """

    def __init__(self, conv: nn.Conv2d, pool: nn.MaxPool2d, relu: bool = False):
        super().__init__()
        self.conv, self.pool = conv, pool  # shared with the model it came from: its weights are read at every call
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.conv.weight, self.conv.bias
        fixed = x.dim() == 4 and not weight.requires_grad and (bias is None or not bias.requires_grad)
        on_cpu = (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
                  and not torch.is_autocast_enabled("cpu"))
        dtype = torch.float32 if on_cpu else _triton_dtype(x)
        if not fixed or dtype is None or (not torch.is_autocast_enabled(x.device.type) and weight.dtype != x.dtype):
            y = self.pool(self.conv(x))
            return torch.relu(y) if self.relu else y
        # [4, C]: the channels innermost, as the kernels loop
        w = weight.detach().reshape(weight.shape[0], 4).T.to(dtype).contiguous()
        b = bias.detach().to(dtype) if bias is not None else torch.zeros(weight.shape[0], dtype=dtype, device=x.device)
        # the pooled maps stored as the block's weights are (`maximize.frozen` sets the layout all layers run in)
        return conv_pool(x[:, 0].to(dtype), w, b.contiguous(), self.relu, weight.stride(1) == 1)[0]


class Pool(nn.Module):
    """A 2x2 max-pool (stride 2), with `relu` followed by a ReLU.

    Compiled on a CPU for float32 maps stored channels-last, on CUDA (Triton) for float maps in either layout.
    """

    def __init__(self, pool: nn.MaxPool2d, relu: bool = False):
        super().__init__()
        self.pool, self.relu = pool, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        on_cpu = x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and x.permute(0, 2, 3, 1).is_contiguous()
        if x.dim() != 4 or x.shape[2] < 2 or x.shape[3] < 2 or not (on_cpu or x.dtype == _triton_dtype(x)):
            y = self.pool(x)
            return torch.relu(y) if self.relu else y
        return max_pool(x, self.relu)[0]


class _SingleMapConvFunction(torch.autograd.Function):
    """A convolution into one map as a product per sample ([taps, C] x [C, H*W]: a map per tap), then the taps' shifted sums.

    One product per sample gives a sample the same numbers whatever the batch
    and the thread count (oneDNN's 1x1 convolution and one product over the
    whole batch did not). The input gradient is oneDNN's, which runs this
    shape well (2 ms at batch 32 against 11 for its forward).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: float, padding: tuple[int, int]) -> torch.Tensor:
        n, channels, height, width = x.shape
        kernel = tuple(weight.shape[2:])
        out_h, out_w = height + 2 * padding[0] - kernel[0] + 1, width + 2 * padding[1] - kernel[1] + 1
        taps = weight[0].reshape(channels, -1).T  # [kh * kw, C]
        columns = x.permute(0, 2, 3, 1).reshape(n, height * width, channels).transpose(1, 2)  # a view: x is channels-last
        maps = torch.bmm(taps.expand(n, *taps.shape), columns).view(n, -1, height, width)  # [N, taps, H, W]
        out = x.new_full((n, out_h, out_w), bias)
        for t, (rows, cols, src_rows, src_cols) in enumerate(_tap_windows(kernel, padding, (height, width), (out_h, out_w))):
            out[:, rows, cols] += maps[:, t, src_rows, src_cols]
        ctx.save_for_backward(x, weight)
        ctx.padding = list(padding)
        return out.unsqueeze(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        dx = torch.ops.aten.convolution_backward(grad.contiguous(), x, weight, None, [1, 1], ctx.padding, [1, 1],
                                                 False, [0, 0], 1, [True, False, False])[0]
        return dx, None, None, None


def _tap_windows(kernel: tuple[int, int], padding: tuple[int, int], size: tuple[int, int], out_size: tuple[int, int]):
    """Per tap (row-major), the output rows and columns it reaches and the input rows and columns they read."""
    for dy in range(kernel[0]):
        for dx in range(kernel[1]):
            oy, ox = dy - padding[0], dx - padding[1]  # output (i, j) reads input (i + oy, j + ox)
            r0, r1 = max(0, -oy), min(out_size[0], size[0] - oy)
            c0, c1 = max(0, -ox), min(out_size[1], size[1] - ox)
            yield slice(r0, r1), slice(c0, c1), slice(r0 + oy, r1 + oy), slice(c0 + ox, c1 + ox)


class SingleMapConv(nn.Module):
    """A Conv2d into one output map (stride 1, zero padding); on a CPU a matrix product per sample and shifted sums.

    oneDNN runs such a layer far below its arithmetic rate (the decoder
    prior's last layer, 16 maps into 1 with a 3x3 kernel: 6 GFLOP/s on one
    core, 11 ms of a 97 ms maximization step at batch 32). As a map per tap
    from one product per sample, then each tap's map shifted and summed (4 ms),
    it agrees with the convolution to float rounding; the input gradient is
    oneDNN's. The convolution itself runs wherever that
    form does not apply (another device, a dtype other than float32 or
    float64, autocast, weights that need gradients, a map not stored
    channels-last).
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.conv.weight, self.conv.bias
        if (x.device.type != "cpu" or x.dim() != 4 or x.dtype not in (torch.float32, torch.float64) or weight.dtype != x.dtype
                or torch.is_autocast_enabled("cpu") or weight.requires_grad or (bias is not None and bias.requires_grad)
                or not x.permute(0, 2, 3, 1).is_contiguous()):
            return self.conv(x)
        padding = tuple((k - 1) // 2 for k in weight.shape[2:]) if self.conv.padding == "same" else \
            (0, 0) if self.conv.padding == "valid" else _pair(self.conv.padding)
        return _SingleMapConvFunction.apply(x, weight.detach(), float(bias) if bias is not None else 0.0, padding)


def single_map_convs(module: nn.Module) -> nn.Module:
    """`module` itself when it holds no Conv2d into one map that `SingleMapConv` can run; else a twin with each run so.

    The twin shares every other layer and every parameter with `module`.
    """
    return SingleMapConv(module) if _is_single_map_conv(module) else with_children(module, single_map_convs)


def _is_single_map_conv(conv: nn.Module) -> bool:
    if type(conv) is not nn.Conv2d or conv.out_channels != 1 or conv.groups != 1 or conv.padding_mode != "zeros":
        return False
    same = conv.padding == "same" and all(k % 2 for k in _pair(conv.kernel_size))  # odd kernels: the same padding each side
    return _pair(conv.stride) == (1, 1) and _pair(conv.dilation) == (1, 1) and (same or conv.padding != "same")


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, tuple) else (v, v)


def _is_pool_2x2(pool: nn.Module) -> bool:
    return (type(pool) is nn.MaxPool2d and _pair(pool.kernel_size) == (2, 2) and _pair(pool.stride) == (2, 2)
            and _pair(pool.padding) == (0, 0) and _pair(pool.dilation) == (1, 1) and not pool.ceil_mode
            and not pool.return_indices)


def _fits(conv: nn.Module, pool: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and _is_pool_2x2(pool) and conv.in_channels == 1 and _pair(conv.kernel_size) == (2, 2)
            and _pair(conv.stride) == (1, 1) and _pair(conv.dilation) == (1, 1) and conv.padding in ((0, 0), "valid")
            and conv.padding_mode == "zeros")


class RewriteCache:
    """A model rewrite's results per model (weakly held: a rewrite never keeps its model alive) and per kept layer names."""

    def __init__(self, rewrite: Callable[[nn.Module, tuple[str, ...]], nn.Module]):
        self.rewrite = rewrite
        self.results: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, ...], nn.Module | None]]" = weakref.WeakKeyDictionary()

    def __call__(self, model: nn.Module, keep: tuple[str, ...]) -> nn.Module:
        cached = self.results.setdefault(model, {})
        if keep not in cached:
            rewritten = self.rewrite(model, keep)
            cached[keep] = None if rewritten is model else rewritten  # never a strong reference to the weak key
        return model if cached[keep] is None else cached[keep]


def fused_layers(model: nn.Module, keep: tuple[str, ...] = ()) -> nn.Module:
    """`model` with its one-input-channel 2x2 Conv2d -> 2x2 MaxPool2d pairs run as `ConvPool` and its other 2x2 pools as `Pool`.

    A ReLU right after such a pool (as `pool_before_relu` leaves them) runs in
    the same pass. Only modules not named in `keep` (read by an objective). Works on a traced
    copy (leaf modules shared); a model fx cannot trace, or with no such layer,
    is returned as it is. Cached per model and `keep`.
    """
    return _fused(model, keep)


def _fuse(model: nn.Module, keep: tuple[str, ...]) -> nn.Module:
    try:
        traced = torch.fx.symbolic_trace(model)  # a fresh graph also for a graph module: the caller's stays as it is
    except Exception:  # Python control flow on values: use the model as it is
        return model
    modules = dict(traced.named_modules())

    def swap(nodes: list[torch.fx.Node], name: str, layer: nn.Module) -> None:
        """Replace `nodes` (a chain, the last one's output used) with one call of `layer` on the first one's input."""
        traced.add_submodule(name, layer)
        with traced.graph.inserting_before(nodes[-1]):
            node = traced.graph.call_module(name, nodes[0].args)
        nodes[-1].replace_all_uses_with(node)
        for old in reversed(nodes):
            traced.graph.erase_node(old)
            erased.add(old)

    def module(node: torch.fx.Node) -> nn.Module | None:
        ok = node.op == "call_module" and node.target not in keep and len(node.args) == 1 and not node.kwargs
        return modules[node.target] if ok else None

    def only_user(node: torch.fx.Node) -> torch.fx.Node | None:
        users = list(node.users)
        return users[0] if len(users) == 1 and users[0].args == (node,) else None

    def is_relu(node: torch.fx.Node | None) -> bool:
        if node is None or node.kwargs:
            return False
        if node.op == "call_function":
            return node.target in (torch.relu, nn.functional.relu)
        return type(module(node)) is nn.ReLU

    erased: set[torch.fx.Node] = set()
    for node in list(traced.graph.nodes):
        if node in erased or node.op != "call_module" or module(node) is None:
            continue
        pool = only_user(node)
        if pool is not None and module(pool) is not None and _fits(module(node), module(pool)):
            relu = only_user(pool)
            chain, layer = [node, pool], ConvPool(module(node), module(pool), relu=is_relu(relu))
        elif _is_pool_2x2(module(node)):
            relu = only_user(node)
            chain, layer = [node], Pool(module(node), relu=is_relu(relu))
        else:
            continue
        swap(chain + [relu] * layer.relu, f"compiled_{'_'.join(n.name for n in chain)}", layer)
    if not erased:
        return model
    traced.graph.lint()
    traced.recompile()
    return traced


_fused = RewriteCache(_fuse)
