"""GPU forms of the paper classifier's 2x2 blocks as Triton kernels: the same passes `generation.fused` runs on a CPU.

On an H100 (bench/gpu_sweep.py's profile, batch 8,192, fp32) the paper
classifier's maximization spent 18 % of the GPU time in max-pool gradients,
12 % in the first block's one-input-channel convolution (a legacy cuDNN kernel)
and most of 43 % in convolution input gradients, with 17 % more converting
layouts for cuDNN: the first block's 8 maps of 89x79 per sample were written,
read, zeroed and scattered into several times per step. Here the first block
(2x2 convolution of one map into C, 2x2 max-pool, the ReLU after it) writes
only the pooled maps and a one-byte winner per value, and its gradient goes
from the pooled maps straight to the input; the later 2x2 pools (with their
ReLU) keep a one-byte winner and write their gradient once, in order.

The kernels compute in float32 and store in the input's dtype (bf16 under
autocast, as the torch ops would); ties go to the first position in row-major
order and NaN wins, as in torch's pools. Any strides: maps stored NCHW or
channels-last. On CPU tensors they run through Triton's interpreter (slowly:
that is how the test suite checks them on a machine without a GPU).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

BLOCK = 512


def _conv_pool_kernel(x, w, b, out, arg, sxn, sxh, sxw, son, soc, soh, sow,
                      C: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr, RELU: tl.constexpr, BLOCK: tl.constexpr):
    """Per pooled position (i, j) of sample n: the 3x3 input patch once, then for each map its 4 conv values' maximum."""
    n = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = e < HP * WP
    i = e // WP
    j = e % WP
    p = x + n * sxn + 2 * i * sxh + 2 * j * sxw
    x00 = tl.load(p, mask=mask).to(tl.float32)
    x01 = tl.load(p + sxw, mask=mask).to(tl.float32)
    x02 = tl.load(p + 2 * sxw, mask=mask).to(tl.float32)
    x10 = tl.load(p + sxh, mask=mask).to(tl.float32)
    x11 = tl.load(p + sxh + sxw, mask=mask).to(tl.float32)
    x12 = tl.load(p + sxh + 2 * sxw, mask=mask).to(tl.float32)
    x20 = tl.load(p + 2 * sxh, mask=mask).to(tl.float32)
    x21 = tl.load(p + 2 * sxh + sxw, mask=mask).to(tl.float32)
    x22 = tl.load(p + 2 * sxh + 2 * sxw, mask=mask).to(tl.float32)
    o = n * son + i * soh + j * sow
    for c in tl.static_range(C):
        w00 = tl.load(w + c).to(tl.float32)
        w01 = tl.load(w + C + c).to(tl.float32)
        w10 = tl.load(w + 2 * C + c).to(tl.float32)
        w11 = tl.load(w + 3 * C + c).to(tl.float32)
        bc = tl.load(b + c).to(tl.float32)
        best = bc + w00 * x00 + w01 * x01 + w10 * x10 + w11 * x11
        k = tl.full([BLOCK], 0, tl.int8)
        v = bc + w00 * x01 + w01 * x02 + w10 * x11 + w11 * x12
        take = (v > best) | (v != v)  # the first maximum in row-major order; NaN wins
        best = tl.where(take, v, best)
        k = tl.where(take, 1, k)
        v = bc + w00 * x10 + w01 * x11 + w10 * x20 + w11 * x21
        take = (v > best) | (v != v)
        best = tl.where(take, v, best)
        k = tl.where(take, 2, k)
        v = bc + w00 * x11 + w01 * x12 + w10 * x21 + w11 * x22
        take = (v > best) | (v != v)
        best = tl.where(take, v, best)
        k = tl.where(take, 3, k)
        if RELU:  # 0 and no gradient (winner 4) at <= 0; NaN passes with its gradient
            off = best <= 0
            best = tl.where(off, 0.0, best)
            k = tl.where(off, 4, k)
        tl.store(out + o + c * soc, best.to(out.dtype.element_ty), mask=mask)
        tl.store(arg + o + c * soc, k.to(tl.int8), mask=mask)


def _conv_pool_grad_kernel(g, arg, w, dx, sgn, sgc, sgh, sgw, san, sac, sah, saw,
                           C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr,
                           BLOCK: tl.constexpr):
    """Per input pixel (r, s) of sample n: the sum over the 4 conv positions it feeds and the C maps, where that position won."""
    n = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = e < H * W
    r = e // W
    s = e % W
    acc = tl.full([BLOCK], 0.0, tl.float32)
    for a in tl.static_range(2):
        for f in tl.static_range(2):
            p = r - a  # the conv position whose tap (a, f) reads this pixel
            q = s - f
            i = tl.maximum(p, 0) // 2
            j = tl.maximum(q, 0) // 2
            here = mask & (p >= 0) & (q >= 0) & (i < HP) & (j < WP)  # a conv position some window covers
            position = 2 * (p - 2 * i) + (q - 2 * j)
            for c in tl.static_range(C):
                won = tl.load(arg + n * san + c * sac + i * sah + j * saw, mask=here, other=-1) == position
                gv = tl.load(g + n * sgn + c * sgc + i * sgh + j * sgw, mask=here & won, other=0.0).to(tl.float32)
                acc += gv * tl.load(w + (2 * a + f) * C + c).to(tl.float32)
    tl.store(dx + n * (H * W) + e, acc.to(dx.dtype.element_ty), mask=mask)


def _pool_kernel(x, out, arg, sxn, sxc, sxh, sxw, son, soc, soh, sow,
                 C: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr, CHANNELS_LAST: tl.constexpr, RELU: tl.constexpr,
                 BLOCK: tl.constexpr):
    """Per pooled value of sample n, in the pooled maps' memory order: its 2x2 window's maximum and which position won."""
    n = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = e < C * HP * WP
    if CHANNELS_LAST:
        c = e % C
        j = (e // C) % WP
        i = e // (C * WP)
    else:
        j = e % WP
        i = (e // WP) % HP
        c = e // (WP * HP)
    p = x + n * sxn + c * sxc + 2 * i * sxh + 2 * j * sxw
    best = tl.load(p, mask=mask).to(tl.float32)  # exact for every float dtype; compared as floats
    k = tl.full([BLOCK], 0, tl.int8)
    v = tl.load(p + sxw, mask=mask).to(tl.float32)
    take = (v > best) | (v != v)
    best = tl.where(take, v, best)
    k = tl.where(take, 1, k)
    v = tl.load(p + sxh, mask=mask).to(tl.float32)
    take = (v > best) | (v != v)
    best = tl.where(take, v, best)
    k = tl.where(take, 2, k)
    v = tl.load(p + sxh + sxw, mask=mask).to(tl.float32)
    take = (v > best) | (v != v)
    best = tl.where(take, v, best)
    k = tl.where(take, 3, k)
    if RELU:
        off = best <= 0
        best = tl.where(off, 0.0, best)
        k = tl.where(off, 4, k)
    o = n * son + c * soc + i * soh + j * sow
    tl.store(out + o, best.to(out.dtype.element_ty), mask=mask)
    tl.store(arg + o, k.to(tl.int8), mask=mask)


def _pool_grad_kernel(g, arg, dx, sgn, sgc, sgh, sgw, san, sac, sah, saw, sdn, sdc, sdh, sdw,
                      C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr,
                      CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    """Per full-resolution value of sample n, in its memory order: its window's gradient where it won, else 0; written once."""
    n = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = e < C * H * W
    if CHANNELS_LAST:
        c = e % C
        s = (e // C) % W
        r = e // (C * W)
    else:
        s = e % W
        r = (e // W) % H
        c = e // (W * H)
    i = r // 2
    j = s // 2
    here = mask & (i < HP) & (j < WP)  # the odd last row or column no window covers gets 0
    won = tl.load(arg + n * san + c * sac + i * sah + j * saw, mask=here, other=-1) == 2 * (r - 2 * i) + (s - 2 * j)
    gv = tl.load(g + n * sgn + c * sgc + i * sgh + j * sgw, mask=here & won, other=0.0).to(tl.float32)
    tl.store(dx + n * sdn + c * sdc + r * sdh + s * sdw, tl.where(won, gv + 0.0, 0.0).to(dx.dtype.element_ty), mask=mask)


@functools.cache
def _kernels(interpret: bool) -> dict:
    """The kernels compiled for the GPU, or (`interpret`) run by Triton's interpreter on CPU tensors."""
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction as compile_
    else:
        compile_ = triton.jit
    kernels = {"conv_pool": _conv_pool_kernel, "conv_pool_grad": _conv_pool_grad_kernel, "pool": _pool_kernel,
               "pool_grad": _pool_grad_kernel}
    return {name: compile_(fn) for name, fn in kernels.items()}


def _launch(kernel, samples: int, per_sample: int, *args, **constants) -> None:
    """A program per block of one sample's values: the sample from the grid's first axis, so no index is divided by the batch.

    The second axis holds at most 65,535 blocks: a larger map per sample gets larger blocks.
    """
    block = max(BLOCK, triton.next_power_of_2(-(-per_sample // 65535)))
    kernel[(samples, -(-per_sample // block))](*args, **constants, BLOCK=block)


def _is_channels_last(t: torch.Tensor) -> bool:
    """Whether a 4-d map is stored channels-last (for one map either layout is the same memory: say NCHW)."""
    return t.shape[1] > 1 and t.stride(1) == 1


def conv_pool(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, relu: bool, channels_last: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, H, W], w [4, C] (taps w00 w01 w10 w11), b [C] -> (pooled maps [N, C, HP, WP] in x's dtype, winners [N, C, HP, WP]).

    Both stored channels-last or NCHW, as `channels_last` says.
    """
    n, height, width = x.shape
    channels = w.shape[1]
    memory = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(n, channels, (height - 1) // 2, (width - 1) // 2, dtype=x.dtype, device=x.device, memory_format=memory)
    arg = torch.empty(out.shape, dtype=torch.int8, device=x.device, memory_format=memory)
    hp, wp = out.shape[2:]
    if out.numel():
        _launch(_kernels(x.device.type == "cpu")["conv_pool"], n, hp * wp,
                x, w.contiguous(), b.contiguous(), out, arg, *x.stride(), *out.stride(), C=channels, HP=hp, WP=wp, RELU=relu)
    return out, arg


def conv_pool_input_grad(g: torch.Tensor, arg: torch.Tensor, w: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The gradient at the pooled maps [N, C, HP, WP] -> the gradient at the input [N, H, W], in w's dtype."""
    dx = torch.empty(g.shape[0], height, width, dtype=w.dtype, device=g.device)
    if dx.numel():
        _launch(_kernels(g.device.type == "cpu")["conv_pool_grad"], g.shape[0], height * width,
                g, arg, w.contiguous(), dx, *g.stride(), *arg.stride(), C=w.shape[1], H=height, W=width, HP=g.shape[2],
                WP=g.shape[3])
    return dx


def max_pool(x: torch.Tensor, relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, C, H, W] -> (pooled maps [N, C, H/2, W/2] stored as x is, winners [N, C, H/2, W/2] stored alike)."""
    n, channels, height, width = x.shape
    last = _is_channels_last(x)
    memory = torch.channels_last if last else torch.contiguous_format
    out = torch.empty(n, channels, height // 2, width // 2, dtype=x.dtype, device=x.device, memory_format=memory)
    arg = torch.empty(out.shape, dtype=torch.int8, device=x.device, memory_format=memory)
    if out.numel():
        _launch(_kernels(x.device.type == "cpu")["pool"], n, out[0].numel(),
                x, out, arg, *x.stride(), *out.stride(), C=channels, HP=out.shape[2], WP=out.shape[3], CHANNELS_LAST=last,
                RELU=relu)
    return out, arg


def max_pool_grad(g: torch.Tensor, arg: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The gradient at the pooled maps [N, C, HP, WP] -> the gradient at the input [N, C, H, W], stored as the winners are."""
    n, channels = g.shape[:2]
    last = _is_channels_last(arg)
    memory = torch.channels_last if last else torch.contiguous_format
    dx = torch.empty(n, channels, height, width, dtype=g.dtype, device=g.device, memory_format=memory)
    if dx.numel():
        _launch(_kernels(g.device.type == "cpu")["pool_grad"], n, dx[0].numel(),
                g, arg, dx, *g.stride(), *arg.stride(), *dx.stride(), C=channels, H=height, W=width, HP=g.shape[2],
                WP=g.shape[3], CHANNELS_LAST=last)
    return dx


def self_check(device: torch.device) -> None:
    """Compile and run every kernel on `device` once on tiny maps and check them against the torch ops; raise if any differs.

    Run once per device before the engine relies on the kernels, so that a
    toolchain or driver that cannot build them (or builds them wrong) shows up
    as a refusal to use them rather than as a failure in the middle of a run.
    """
    gen = torch.Generator().manual_seed(0)
    # whatever the caller runs under (autocast, TF32, no_grad, inference mode), the references are float32 torch ops
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            checks = _checks(device, gen)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    wrong = [name for name, ok in checks.items() if not ok]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} disagree with the torch ops on {device}")


def _checks(device: torch.device, gen: torch.Generator) -> dict[str, bool]:
    """Each kernel's agreement with the torch ops on tiny maps."""
    x = torch.rand(2, 1, 7, 9, generator=gen).to(device)
    weight = torch.randn(3, 1, 2, 2, generator=gen).to(device)
    taps = weight.reshape(3, 4).T.contiguous()
    bias = torch.randn(3, generator=gen).to(device)
    maps = torch.randn(2, 3, 5, 6, generator=gen).to(device)
    xs, ms = x.clone().requires_grad_(True), maps.clone().requires_grad_(True)
    y = torch.relu(torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(xs, weight, bias), 2))
    z = torch.relu(torch.nn.functional.max_pool2d(ms, 2))
    (dx,), (dm,) = torch.autograd.grad(y, xs, torch.ones_like(y)), torch.autograd.grad(z, ms, torch.ones_like(z))
    out, arg = conv_pool(x[:, 0], taps, bias, True)
    pooled, winners = max_pool(maps, True)
    return {
        "conv_pool": torch.allclose(out, y, rtol=1e-5, atol=1e-5),
        "conv_pool_grad": torch.allclose(conv_pool_input_grad(torch.ones_like(out), arg, taps, 7, 9), dx[:, 0],
                                         rtol=1e-5, atol=1e-5),
        "pool": torch.equal(pooled, z),
        "pool_grad": torch.equal(max_pool_grad(torch.ones_like(pooled), winners, 5, 6), dm),
    }
