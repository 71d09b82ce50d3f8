"""CPU forms of layers oneDNN runs poorly: the paper classifier's 2x2 blocks as compiled passes, a convolution into one map."""
import pytest
import torch
from torch import nn

from generation import fused as fused_module
from generation.fused import ConvPool, Pool, SingleMapConv, fused_layers, single_map_convs
from generation.maximize import PRESETS, optimize, parts, pool_before_relu
from generation.nets import PaperClassifier


def _pair(channels=8, bias=True):
    torch.manual_seed(0)
    return nn.Conv2d(1, channels, 2, bias=bias).requires_grad_(False), nn.MaxPool2d(2)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("channels, bias, shape", [(8, True, (90, 80)), (3, False, (7, 10)), (16, True, (6, 5))])
def test_fused_block_agrees_with_the_torch_ops_in_values_and_input_gradient(channels, bias, shape, relu):
    conv, pool = _pair(channels, bias)
    fused = ConvPool(conv, pool, relu=relu)
    x = torch.rand(5, 1, *shape, requires_grad=True)
    y, y_fused = pool(conv(x)), fused(x)
    if relu:
        assert (y <= 0).any() and (y > 0).any()
        y = torch.relu(y)
    assert y_fused.shape == y.shape
    torch.testing.assert_close(y_fused, y, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    (dx_fused,) = torch.autograd.grad(y_fused, x, g)
    torch.testing.assert_close(dx_fused, dx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("relu", [False, True])
def test_ties_go_to_the_first_position_and_nan_wins_as_in_torch(relu):
    conv, pool = _pair()
    fused = ConvPool(conv, pool, relu=relu)
    x = torch.zeros(2, 1, 9, 9, requires_grad=True)  # every window a tie: conv = bias exactly, in any summation order
    with torch.no_grad():
        x[1, 0, 4, 4] = float("nan")
    y, y_fused = pool(conv(x)), fused(x)
    y = torch.relu(y) if relu else y  # some biases are negative: those maps are 0 with no gradient
    assert torch.equal(torch.isnan(y_fused), torch.isnan(y)) and torch.isnan(y_fused).any()
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    (dx_fused,) = torch.autograd.grad(y_fused, x, g)
    assert torch.allclose(dx_fused[0], dx[0], rtol=1e-6, atol=1e-7)  # the same winner in every tied window


def test_torch_ops_run_wherever_the_compiled_pass_does_not_apply(monkeypatch):
    conv, pool = _pair()
    fused = ConvPool(conv, pool)
    x = torch.rand(2, 1, 8, 8)
    monkeypatch.setattr(fused_module, "conv_pool", lambda *a: pytest.fail("compiled pass used"))
    conv.double()
    assert torch.equal(fused(x.double()), pool(conv(x.double())))
    assert torch.equal(ConvPool(conv, pool, relu=True)(x.double()), torch.relu(pool(conv(x.double()))))
    conv.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fused(x), pool(conv(x)))
    assert torch.equal(fused(x[0]), pool(conv(x[0])))  # one unbatched map
    conv.weight.requires_grad_(True)  # training: gradients for the weights need the torch ops
    assert torch.equal(fused(x), pool(conv(x)))


def test_the_paper_classifier_gets_the_fused_block_and_the_callers_model_stays_as_it_is():
    torch.manual_seed(0)
    model = PaperClassifier(4, input_shape=(18, 16)).eval().requires_grad_(False)
    fast = pool_before_relu(model)
    code = fast.code
    fused = fused_layers(fast)
    assert fast.code == code  # the cached rewrite is not changed
    assert sum(isinstance(m, ConvPool) for m in fused.modules()) == 1  # only the one-channel block
    assert sum(isinstance(m, Pool) for m in fused.modules()) == 2  # the later blocks' pools
    assert all(m.relu for m in fused.modules() if isinstance(m, (ConvPool, Pool)))  # each with the ReLU after it
    relus = [n.target for n in fused.graph.nodes if n.op == "call_module" and isinstance(fused.get_submodule(n.target), nn.ReLU)]
    assert relus == ["head.2", "head.5", "head.8"]  # the dense layers' ReLUs stay
    assert fused_layers(fast) is fused  # cached
    kept = fused_layers(fast, keep=("features.0", "features.6"))  # layers an objective reads keep their outputs
    # the first pool without its convolution still runs compiled; the pool read stays as it is, and so does the ReLU
    # before it (pool_before_relu left it in front of the kept pool)
    assert [(m.pool, m.relu) for m in kept.modules() if isinstance(m, Pool)] == [(model.features[2], True), (model.features[10], True)]
    assert not any(isinstance(m, ConvPool) for m in kept.modules())
    x = torch.rand(3, 18, 16)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-6)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(3))  # a 3x3 kernel and pool: no compiled pass for them
    assert fused_layers(plain) is plain


def test_maximization_on_a_cpu_runs_the_fused_block_and_agrees_with_the_network_as_written(monkeypatch):
    torch.manual_seed(0)
    clf = PaperClassifier(3, input_shape=(18, 16))
    calls = []
    for name in ("conv_pool", "max_pool"):
        monkeypatch.setattr(fused_module, name, lambda *a, op=getattr(fused_module, name), name=name: calls.append(name) or op(*a))

    def run(rewrite: bool):
        param, objective, step = parts(PRESETS["paper"]["classifier"], "classifier")
        return optimize(clf, torch.arange(6) % 3, param, objective, step, steps=2, seed=1, batch_size=6, rewrite=rewrite,
                        cores=1, shape=(18, 16))

    written = run(False)
    assert not calls
    fused = run(True)
    assert {"conv_pool", "max_pool"} <= set(calls)
    torch.testing.assert_close(fused.features, written.features, rtol=0, atol=1e-4)
    torch.testing.assert_close(fused.prob_a, written.prob_a, rtol=0, atol=1e-5)


def _channels_last(*shape):
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(3, 16, 43, 38), (2, 5, 6, 7), (1, 32, 2, 2), (4, 1, 5, 9)])
def test_compiled_pool_gives_torch_pools_values_and_gradients_bit_for_bit(shape, relu):
    pool = nn.MaxPool2d(2)
    x = _channels_last(*shape)
    x[0, 0, :2, :2] = 1.0  # a tied window: the first position wins
    x[0, -1, -2:, -2:] = 0.0  # a window whose maximum is 0: the ReLU passes no gradient
    x[-1, -1, -2:, -2:] = float("nan")  # NaN wins (and a ReLU passes it on, with its gradient)
    x.requires_grad_(True)
    y, y_fast = (torch.relu(pool(x)) if relu else pool(x)), Pool(pool, relu=relu)(x)
    assert y_fast.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y_fast.isnan(), y.isnan()) and torch.equal(y_fast.nan_to_num(), y.nan_to_num())
    g = _channels_last(*y.shape)
    g[0, 0, 0, 0] = -0.0  # torch adds into zeros: -0.0 lands as +0.0
    (dx,) = torch.autograd.grad(y, x, g)
    (dx_fast,) = torch.autograd.grad(y_fast, x, g)
    assert torch.equal(dx_fast, dx) and torch.equal(dx_fast.signbit(), dx.signbit())
    assert dx_fast[:, :, 2 * (shape[2] // 2):].abs().sum() == 0  # an odd last row no window covers
    passed = g if not relu else torch.where(y > 0, g, 0) + torch.where(y.isnan(), g, 0)  # a ReLU passes > 0 and NaN
    torch.testing.assert_close(dx_fast.double().sum(), passed.double().sum())  # each passed gradient value lands once


def test_torch_pool_runs_wherever_the_compiled_pool_does_not_apply(monkeypatch):
    pool = nn.MaxPool2d(2)
    fast = Pool(pool)
    monkeypatch.setattr(fused_module, "max_pool", lambda *a: pytest.fail("compiled pass used"))
    x = _channels_last(2, 4, 6, 6)
    for other in (x.contiguous(), x.double(), x[0], x.bfloat16()):  # stored NCHW, float64, unbatched, bf16
        assert torch.equal(fast(other), pool(other))
        assert torch.equal(Pool(pool, relu=True)(other), torch.relu(pool(other)))
    with pytest.raises(RuntimeError, match="too small"):  # a map of one row: torch's own error
        fast(x[:, :, :1])


@pytest.mark.parametrize("kernel, padding, shape", [(3, 1, (2, 16, 9, 8)), ((3, 5), (0, 2), (3, 4, 7, 9)),
                                                    (3, "same", (1, 3, 5, 5)), (2, "valid", (2, 5, 4, 6)), (1, 0, (2, 3, 4, 4))])
def test_single_map_conv_equals_the_convolution_in_values_and_input_gradient(kernel, padding, shape):
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], 1, kernel, padding=padding).double().requires_grad_(False)
    x = torch.randn(*shape, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y, y_fast = conv(x), SingleMapConv(conv)(x)
    assert y_fast.shape == y.shape
    torch.testing.assert_close(y_fast, y, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    (dx_fast,) = torch.autograd.grad(y_fast, x, g)
    torch.testing.assert_close(dx_fast, dx, rtol=0, atol=1e-12)


def test_single_map_conv_runs_the_convolution_wherever_its_form_does_not_apply(monkeypatch):
    monkeypatch.setattr(fused_module._SingleMapConvFunction, "apply", lambda *a: pytest.fail("matrix-product form used"))
    conv = nn.Conv2d(4, 1, 3, padding=1).requires_grad_(False)
    fast = SingleMapConv(conv)
    x = _channels_last(2, 4, 6, 6)
    assert torch.equal(fast(x.contiguous()), conv(x.contiguous()))  # stored NCHW
    assert torch.equal(fast(x[0]), conv(x[0]))  # one unbatched map
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fast(x), conv(x))
    conv.weight.requires_grad_(True)  # training: the weights' gradient needs the convolution
    assert torch.equal(fast(x), conv(x))


def test_single_map_convs_swaps_only_convolutions_into_one_map_and_shares_the_rest():
    from generation.nets import Autoencoder

    model = Autoencoder()
    twin = single_map_convs(model)
    assert twin is not model and isinstance(twin.decoder[-1], SingleMapConv) and twin.decoder[-1].conv is model.decoder[-1]
    assert isinstance(model.decoder[-1], nn.Conv2d)  # the caller's model stays as it is
    assert twin.decoder[0] is model.decoder[0] and twin.expand is model.expand
    assert sum(isinstance(m, SingleMapConv) for m in twin.modules()) == 1  # the encoder's first conv has one input map, not output
    strided = nn.Sequential(nn.Conv2d(4, 1, 3, stride=2), nn.Conv2d(4, 1, 2, padding="same"), nn.Conv2d(4, 1, 3, dilation=2))
    assert single_map_convs(strided) is strided  # a stride, an even kernel padded "same", a dilation: left alone
