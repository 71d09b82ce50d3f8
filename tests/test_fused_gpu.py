"""The paper classifier's 2x2 blocks as Triton kernels (CUDA), checked here through Triton's interpreter on CPU tensors."""
import re

import pytest
import torch
from torch import nn

pytest.importorskip("triton")
from generation import fused_gpu  # noqa: E402


def _conv(channels: int, bias: bool = True) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(1, channels, 2, bias=bias).requires_grad_(False)


def _taps(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    w = conv.weight.reshape(conv.out_channels, 4).T.contiguous()
    b = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    return w, b


@pytest.mark.parametrize("relu, channels_last", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("channels, bias, shape", [(8, True, (18, 16)), (3, False, (7, 10)), (16, True, (6, 5))])
def test_fused_block_kernels_agree_with_the_torch_ops_in_values_and_input_gradient(channels, bias, shape, relu,
                                                                                    channels_last):
    conv, pool = _conv(channels, bias), nn.MaxPool2d(2)
    x = torch.rand(3, 1, *shape, requires_grad=True)
    y = pool(conv(x))
    y = torch.relu(y) if relu else y
    w, b = _taps(conv)
    out, arg = fused_gpu.conv_pool(x.detach()[:, 0], w, b, relu, channels_last)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    assert out.shape == arg.shape == y.shape and arg.dtype == torch.int8
    assert out.is_contiguous(memory_format=memory) and arg.stride() == out.stride()
    torch.testing.assert_close(out, y, rtol=1e-6, atol=1e-6)
    if relu:
        assert ((arg == 4) == (y <= 0)).all() and (arg == 4).any()  # clipped values pass no gradient
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    dx_fused = fused_gpu.conv_pool_input_grad(g, arg, w, *shape)
    torch.testing.assert_close(dx_fused, dx[:, 0], rtol=1e-5, atol=1e-6)


def test_fused_block_kernels_read_any_strides_and_tie_and_nan_as_torchs_pool():
    conv, pool = _conv(8), nn.MaxPool2d(2)
    x = torch.zeros(2, 1, 9, 12)  # every window a tie: conv = bias exactly, in any summation order
    x[1, 0, 4, 4] = float("nan")
    x.requires_grad_(True)
    y = pool(conv(x))
    w, b = _taps(conv)
    wide = torch.zeros(2, 9, 24)
    wide[:, :, ::2] = x.detach()[:, 0]  # the same maps read through a column stride of 2
    out, arg = fused_gpu.conv_pool(wide[:, :, ::2], w, b, False)
    assert torch.equal(out.isnan(), y.isnan()) and out.isnan().any()
    torch.testing.assert_close(out.nan_to_num(), y.nan_to_num(), rtol=0, atol=1e-6)
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    stored_channels_last = g.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    dx_fused = fused_gpu.conv_pool_input_grad(stored_channels_last, arg, w, 9, 12)
    torch.testing.assert_close(dx_fused[0], dx[0, 0], rtol=1e-6, atol=1e-7)  # the same (first) winner in every tied window


def test_fused_block_kernels_store_in_the_inputs_dtype_under_bf16():
    conv = _conv(8)
    x = torch.rand(2, 1, 10, 9)
    w, b = _taps(conv)
    out, arg = fused_gpu.conv_pool(x[:, 0].bfloat16(), w.bfloat16(), b.bfloat16(), True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the torch ops give under autocast
        y = torch.relu(nn.MaxPool2d(2)(conv(x)))
    assert out.dtype == y.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), y.float(), rtol=0.01, atol=0.01)
    dx = fused_gpu.conv_pool_input_grad(torch.ones_like(out), arg, w.bfloat16(), 10, 9)
    assert dx.dtype == torch.bfloat16 and dx.shape == (2, 10, 9)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape, dtype", [((3, 16, 11, 10), torch.float32), ((2, 5, 6, 7), torch.float32),
                                          ((4, 1, 5, 9), torch.float32), ((2, 4, 7, 6), torch.bfloat16)])
def test_pool_kernels_give_torch_pools_values_and_gradients_bit_for_bit(shape, dtype, channels_last, relu):
    x = torch.randn(*shape).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x[0, 0, :2, :2] = 1.0  # a tied window: the first position wins
    x[0, -1, -2:, -2:] = 0.0  # a window whose maximum is 0: the ReLU passes no gradient
    x[-1, -1, -2:, -2:] = float("nan")  # NaN wins (and a ReLU passes it on, with its gradient)
    x.requires_grad_(True)
    y = torch.relu(nn.functional.max_pool2d(x, 2)) if relu else nn.functional.max_pool2d(x, 2)
    out, arg = fused_gpu.max_pool(x.detach(), relu)
    assert out.dtype == dtype and out.stride() == arg.stride() == y.stride()  # stored as the input is
    assert torch.equal(out.isnan(), y.isnan()) and torch.equal(out.nan_to_num(), y.nan_to_num())
    g = torch.randn(y.shape).to(dtype)
    g[0, 0, 0, 0] = -0.0  # torch adds into zeros: -0.0 lands as +0.0
    (dx,) = torch.autograd.grad(y, x, g)
    dx_fast = fused_gpu.max_pool_grad(g, arg, *shape[2:])
    assert dx_fast.stride() == dx.stride()
    assert torch.equal(dx_fast, dx) and torch.equal(dx_fast.signbit(), dx.signbit())
    assert dx_fast[:, :, 2 * (shape[2] // 2):].abs().sum() == 0  # an odd last row no window covers


FP32_BLOCK = {"x": "fp32", "w": "fp32", "b": "fp32", "out": "fp32", "arg": "i8"}
BF16_BLOCK = {"x": "bf16", "w": "bf16", "b": "bf16", "out": "bf16", "arg": "i8"}
PAPER_BLOCK = {"C": 8, "H": 90, "W": 80, "HP": 44, "WP": 39}  # the paper net's first block and its second pool
PAPER_POOL = {"C": 16, "H": 43, "W": 38, "HP": 21, "WP": 19}


@pytest.mark.parametrize("kernel, pointers, constants", [
    ("conv_pool", FP32_BLOCK, {"C": 8, "HP": 44, "WP": 39, "RELU": True}),
    ("conv_pool", BF16_BLOCK, {"C": 8, "HP": 44, "WP": 39, "RELU": False}),
    ("conv_pool_grad", {"g": "bf16", "arg": "i8", "w": "bf16", "dx": "bf16"}, PAPER_BLOCK),
    ("pool", {"x": "fp32", "out": "fp32", "arg": "i8"}, {"C": 16, "HP": 21, "WP": 19, "CHANNELS_LAST": False, "RELU": True}),
    ("pool", {"x": "bf16", "out": "bf16", "arg": "i8"}, {"C": 16, "HP": 21, "WP": 19, "CHANNELS_LAST": True, "RELU": True}),
    ("pool_grad", {"g": "fp32", "arg": "i8", "dx": "fp32"}, {**PAPER_POOL, "CHANNELS_LAST": False}),
    ("pool_grad", {"g": "bf16", "arg": "i8", "dx": "bf16"}, {**PAPER_POOL, "CHANNELS_LAST": True}),
])
def test_kernels_compile_for_an_h100_and_an_a100(kernel, pointers, constants):
    """The interpreter runs Python; this is the real compiler, down to the GPU binary (no GPU needed to compile)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = fused_gpu._kernels(False)[kernel]
    constants = {**constants, "BLOCK": fused_gpu.BLOCK}
    signature = {name: "constexpr" if name in constants else f"*{pointers[name]}" if name in pointers else "i64"
                 for name in fn.arg_names}
    for capability in (90, 80):
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constants),
                                  target=GPUTarget("cuda", capability, 32))
        assert compiled.asm["cubin"] and f".target sm_{capability}" in compiled.asm["ptx"]
        # map sizes are compile-time constants: the index arithmetic has no integer division (tens of instructions each)
        assert not re.search(r"\b(div|rem)\.[su](32|64)\b", compiled.asm["ptx"])


def test_on_a_triton_device_the_layers_run_the_kernels_in_the_autocast_dtype_and_torchs_ops_elsewhere(monkeypatch):
    """ConvPool and Pool as they run on a CUDA device with Triton, the CPU standing in for it."""
    from generation import fused

    monkeypatch.setattr(fused, "_triton_device", lambda device: True)
    calls = []
    for name, form in (("conv_pool", fused_gpu.conv_pool), ("max_pool", fused_gpu.max_pool)):
        monkeypatch.setattr(fused, name, lambda *a, name=name, form=form: calls.append((name, a)) or form(*a))
    conv, pool = _conv(8), nn.MaxPool2d(2)
    x = torch.rand(2, 1, 10, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fused.ConvPool(conv, pool, relu=True)(x)
        ref = torch.relu(pool(conv(x)))
    [(name, (x_run, w, b, relu, channels_last))] = calls
    assert name == "conv_pool" and relu and x_run.dtype == w.dtype == b.dtype == y.dtype == torch.bfloat16
    assert not channels_last  # stored as the block's weights are
    calls.clear()
    conv.to(memory_format=torch.channels_last)
    assert fused.ConvPool(conv, pool)(x).is_contiguous(memory_format=torch.channels_last) and calls[0][1][4]
    conv.to(memory_format=torch.contiguous_format)
    assert w.shape == (4, 8) and x_run.shape == (2, 10, 9)
    torch.testing.assert_close(y.float(), ref.float(), rtol=0.01, atol=0.01)

    maps = torch.randn(2, 4, 6, 7)  # stored NCHW, as the classifier runs on CUDA (a CPU's compiled pool wants channels-last)
    calls.clear()
    assert torch.equal(fused.Pool(pool, relu=True)(maps), torch.relu(pool(maps))) and calls[0][0] == "max_pool"
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fused.Pool(pool)(maps), pool(maps))  # a float32 map under bf16 autocast: the torch op
    assert torch.equal(fused.ConvPool(conv.double(), pool)(x.double()), pool(conv(x.double())))  # float64: the torch ops
    conv.float().weight.requires_grad_(True)  # training: the weights' gradient needs the torch ops
    assert torch.equal(fused.ConvPool(conv, pool)(x.contiguous()), pool(conv(x)))
    assert not calls


def test_the_self_check_passes_on_right_kernels_and_names_a_wrong_one(monkeypatch):
    fused_gpu.self_check(torch.device("cpu"))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # as the engine may first call it
        fused_gpu.self_check(torch.device("cpu"))
    right = fused_gpu.max_pool
    monkeypatch.setattr(fused_gpu, "max_pool", lambda x, relu: (lambda out, arg: (out + 1e-3, arg))(*right(x, relu)))
    with pytest.raises(ValueError, match="^pool disagree"):
        fused_gpu.self_check(torch.device("cpu"))


def test_a_device_whose_kernels_fail_the_self_check_runs_the_torch_ops_with_a_warning(monkeypatch):
    from generation import fused

    import contextlib

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())  # no CUDA device here to switch to

    def broken(device):
        raise RuntimeError("PTX .version 9.1 does not support .target sm_90a\nmore detail")

    monkeypatch.setattr(fused_gpu, "self_check", broken)
    with pytest.warns(RuntimeWarning, match=r"cuda:0 \(RuntimeError: PTX .version 9.1 .*\); running the torch ops"):
        assert fused._triton_on.__wrapped__(0) is False
    monkeypatch.setattr(fused_gpu, "self_check", lambda device: None)
    assert fused._triton_on.__wrapped__(0) is True
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))  # older than Triton supports
    assert fused._triton_on.__wrapped__(0) is False


def test_the_self_check_compares_against_float32_convolutions_even_where_tf32_is_on(monkeypatch):
    """A caller in TF32 mode (`precision("tf32")`) must not fail the check: TF32 convolutions differ by about 1e-3."""
    seen = []
    run = fused_gpu.conv_pool
    monkeypatch.setattr(fused_gpu, "conv_pool", lambda *a: seen.append(torch.backends.cudnn.allow_tf32) or run(*a))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    fused_gpu.self_check(torch.device("cpu"))
    assert seen == [False] and torch.backends.cudnn.allow_tf32  # off for the check, restored after


def test_the_kernels_registered_for_cuda_take_each_operators_arguments_and_run_the_triton_forms(monkeypatch):
    """What the dispatcher calls on CUDA, called here on CPU tensors (the interpreter) with the operators' own arguments."""
    import contextlib
    import inspect

    from generation import fused

    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())  # no CUDA device here to switch to
    registered = {"conv_pool_2x2": fused._conv_pool_cuda, "conv_pool_2x2_input_grad": fused._conv_pool_input_grad_cuda,
                  "max_pool_2x2": fused._max_pool_cuda, "max_pool_2x2_grad": fused._max_pool_grad_cuda}
    for op, kernel in registered.items():
        schema = getattr(torch.ops.hearsay, op).default._schema
        assert list(inspect.signature(kernel).parameters) == [a.name for a in schema.arguments], op
    conv = _conv(8)
    w, b = _taps(conv)
    x = torch.rand(2, 10, 9)
    out, arg = fused._conv_pool_cuda(x, w, b, True, False)
    assert torch.equal(out, fused_gpu.conv_pool(x, w, b, True)[0])
    dx = fused._conv_pool_input_grad_cuda(torch.ones_like(out), arg, w, 10, 9)
    assert torch.equal(dx, fused_gpu.conv_pool_input_grad(torch.ones_like(out), arg, w, 10, 9))
    pooled, winners = fused._max_pool_cuda(out, True)
    assert torch.equal(pooled, torch.relu(nn.functional.max_pool2d(out, 2)))
    assert fused._max_pool_grad_cuda(torch.ones_like(pooled), winners, *out.shape[2:]).shape == out.shape
