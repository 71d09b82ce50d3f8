"""Nearest upsampling + same-padded convolution run as one transposed convolution (`generation.upsampling`)."""
import pytest
import torch
from torch import nn

from generation.gan import MelGenerator, WaveGenerator
from generation.maximize import PRESETS, optimize, parts
from generation.nets import Autoencoder, PaperClassifier
from generation.upsampling import transposed_upsampling


def _frozen(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)


@pytest.mark.parametrize("conv, scale, shape", [
    (nn.Conv2d(3, 4, 3, padding=1), (2, 2), (5, 7)),
    (nn.Conv2d(3, 4, 3, padding=1), (3, 2), (4, 6)),
    (nn.Conv2d(3, 4, (5, 3), padding=(2, 1)), (1, 3), (6, 5)),
    (nn.Conv2d(3, 4, 3, padding="same", bias=False), 2.0, (3, 4)),
    (nn.Conv1d(3, 4, 25, padding=12), 4, (9,)),
    (nn.Conv1d(3, 4, 1), 3, (5,)),
])
def test_pair_and_transposed_form_agree_in_values_and_input_gradients(conv, scale, shape):
    """Exact in arithmetic: in float64 the two forms agree to the last bits, outputs and input gradients alike."""
    torch.manual_seed(0)
    pair = _frozen(nn.Sequential(nn.Upsample(scale_factor=scale), conv, nn.Tanh())).double()
    twin = transposed_upsampling(pair)
    assert twin is not pair and not any(isinstance(m, (nn.Upsample, nn.Conv1d, nn.Conv2d)) for m in twin)
    x = torch.randn(2, 3, *shape, dtype=torch.float64, requires_grad=True)
    y, y_twin = pair(x), twin(x)
    assert y.shape == y_twin.shape
    torch.testing.assert_close(y_twin, y, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    (dx_twin,) = torch.autograd.grad(y_twin, x, g)
    torch.testing.assert_close(dx_twin, dx, rtol=0, atol=1e-12)


@pytest.mark.parametrize("net, arg", [
    (Autoencoder(latent=8, input_shape=(36, 16)), torch.randn(3, 8)),
    (MelGenerator(latent=8, shape=(36, 16), width=4), torch.randn(3, 8)),
    (WaveGenerator(latent=8, width=2), torch.randn(2, 8)),
])
def test_priors_get_a_faster_twin_that_shares_every_other_layer_and_leaves_the_original_alone(net, arg):
    net = _frozen(net)
    before = repr(net)
    twin = transposed_upsampling(net)
    assert repr(net) == before  # the original network is untouched
    assert not any(isinstance(m, nn.Upsample) for m in twin.modules())
    assert any(isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d)) for m in twin.modules())
    assert twin.expand is net.expand  # untouched layers (and their parameters) are shared, not copied
    run = (lambda m: m.decode(arg)) if isinstance(net, Autoencoder) else (lambda m: m(arg))
    torch.testing.assert_close(run(twin), run(net), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layers", [
    [nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(2, 2, 3, padding=1)],
    [nn.Upsample(size=(8, 8)), nn.Conv2d(2, 2, 3, padding=1)],
    [nn.Upsample(scale_factor=1.5), nn.Conv2d(2, 2, 3, padding=1)],
    [nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 3, padding=0)],
    [nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 3, padding=1, stride=2)],
    [nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 3, padding=2, dilation=2)],
    [nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 3, padding=1, groups=2)],
    [nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")],
    [nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 2, padding="same")],
    [nn.Upsample(scale_factor=2), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1)],
    [nn.Conv2d(2, 2, 3, padding=1), nn.Upsample(scale_factor=2)],
])
def test_anything_else_is_left_as_it_is(layers):
    seq = nn.Sequential(*layers)
    assert transposed_upsampling(seq) is seq


def test_maximization_runs_the_transposed_form_and_agrees_with_the_decoder_as_written(monkeypatch):
    torch.manual_seed(0)
    clf, ae = PaperClassifier(3, input_shape=(36, 16)), Autoencoder(latent=8, input_shape=(36, 16))
    calls = []
    transposed = nn.functional.conv_transpose2d
    monkeypatch.setattr(nn.functional, "conv_transpose2d", lambda *a, **k: calls.append(1) or transposed(*a, **k))

    def run(rewrite: bool):
        param, objective, step = parts(PRESETS["paper"]["decoder"], "decoder", ae)
        return optimize(clf, torch.arange(6) % 3, param, objective, step, steps=3, seed=1, batch_size=6, rewrite=rewrite, cores=1)

    written = run(False)
    assert not calls
    fast = run(True)
    assert calls
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in ae.modules())  # the caller's prior is not changed
    torch.testing.assert_close(fast.features, written.features, rtol=0, atol=1e-4)
    torch.testing.assert_close(fast.prob_a, written.prob_a, rtol=0, atol=1e-4)
