"""The maximization engine: paper settings, exact updates, batching, determinism and failure handling."""
from dataclasses import replace

import pytest
import torch
from torch import nn

from hearsay.errors import HearsayError
from generation.maximize import PRESETS, Settings, class_probability, maximize, total_variation, tv_value
from generation.nets import Autoencoder, PaperClassifier

SHAPE = (6, 4)


class Linear(nn.Module):
    """logits = W x + b on flattened features: gradients are known in closed form."""

    def __init__(self, n_classes: int = 3, shape=SHAPE, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(shape[0] * shape[1], n_classes)

    def forward(self, x):
        return self.fc(self.flat(x))


def trained_mlp(n_classes: int = 3, shape=SHAPE) -> nn.Module:
    """A tiny classifier fit to three separable random clusters (nontrivial, with dropout to switch off)."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.rand(n_classes, *shape, generator=gen)
    y = torch.arange(90) % n_classes
    x = (centers[y] + 0.05 * torch.randn(90, *shape, generator=gen)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1], 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, n_classes))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def test_paper_preset_reproduces_the_original_hyperparameters():
    clf, dec = PRESETS["paper"]["classifier"], PRESETS["paper"]["decoder"]
    for s in (clf, dec):
        assert (s.steps, s.step, s.objective, s.init_std) == (20, "rms", "probability", 0.1)
        assert (s.tv_weight, s.l2_weight, s.range_weight, s.clamp) == (0.0, 0.0, 0.0, False)
    assert clf.lr == 0.01 and dec.lr == 0.1
    assert PRESETS["hearsay"]["classifier"].clamp is True


@pytest.mark.parametrize("objective", ["logit", "probability"])
def test_rms_step_equals_the_hand_computed_update(objective):
    model = Linear()
    x0 = torch.rand(2, *SHAPE)
    targets = torch.tensor([2, 0])
    settings = Settings(steps=1, lr=0.01, objective=objective, clamp=False)
    res = maximize(model, targets, start=x0, settings=settings)
    W = model.fc.weight.detach()
    for i, t in enumerate(targets):
        if objective == "logit":
            g = W[t]
        else:
            p = torch.softmax(model(x0[i : i + 1]), dim=1)[0].detach()
            g = p[t] * (W[t] - p @ W)
        expected = x0[i].flatten() + 0.01 * g / g.pow(2).mean().sqrt()
        torch.testing.assert_close(res.features[i].flatten(), expected, rtol=1e-5, atol=1e-6)


def test_target_probability_rises_for_a_trained_model():
    model = trained_mlp()
    targets = torch.arange(12) % 3
    res = maximize(model, targets, settings=replace(PRESETS["paper"]["classifier"], lr=0.05), shape=SHAPE)
    assert model.training, "the caller's training mode is restored"
    start = res.start_prob_a[torch.arange(12), targets]
    end = res.prob_a[torch.arange(12), targets]
    assert (end > start).all()
    assert end.mean() > 0.9
    torch.testing.assert_close(res.trajectory[:, 0], start)
    torch.testing.assert_close(res.trajectory[:, -1], end)
    assert res.trajectory.shape == (12, 21)


def test_adam_step_also_climbs():
    model = trained_mlp()
    targets = torch.arange(6) % 3
    res = maximize(model, targets, settings=Settings(steps=20, lr=0.05, step="adam"), shape=SHAPE)
    assert (res.trajectory[:, -1] > res.trajectory[:, 0]).all()


def test_clamp_keeps_direct_inputs_in_range_and_paper_preset_does_not():
    model = Linear()
    targets = torch.zeros(4, dtype=torch.long)
    clamped = maximize(model, targets, settings=Settings(steps=10, lr=0.5, clamp=True), shape=SHAPE)
    assert clamped.features.min() >= 0 and clamped.features.max() <= 1
    assert clamped.start_features.min() >= 0
    free = maximize(model, targets, settings=replace(Settings(steps=10, lr=0.5), clamp=False), shape=SHAPE)
    assert free.features.min() < 0 or free.features.max() > 1


def test_decoder_outputs_stay_in_range_and_latents_move():
    torch.manual_seed(0)
    dec = Autoencoder(latent=8, input_shape=(18, 8))
    model = Linear(shape=(18, 8))
    targets = torch.tensor([0, 1, 2])
    res = maximize(model, targets, method="decoder", decoder=dec, settings=PRESETS["paper"]["decoder"])
    assert res.features.shape == (3, 18, 8) and res.latents.shape == (3, 8)
    assert res.features.min() >= 0 and res.features.max() <= 1
    assert not torch.equal(res.latents, res.start_latents)
    with torch.no_grad():
        torch.testing.assert_close(dec.decode(res.latents), res.features)
    start = torch.rand(3, 18, 8)
    from_test = maximize(model, targets, method="decoder", decoder=dec, start=start, settings=Settings(steps=0))
    with torch.no_grad():
        torch.testing.assert_close(from_test.start_features, dec(start), msg="a test start begins at the AE reconstruction")


def test_deterministic_for_a_seed_and_independent_of_batch_size():
    model = PaperClassifier(3)
    targets = torch.tensor([0, 1, 2, 1, 0])
    s = Settings(steps=3)
    one = maximize(model, targets, settings=s, seed=7, batch_size=5)
    again = maximize(model, targets, settings=s, seed=7, batch_size=5)
    split = maximize(model, targets, settings=s, seed=7, batch_size=2)
    other = maximize(model, targets, settings=s, seed=8, batch_size=5)
    assert torch.equal(one.features, again.features)
    torch.testing.assert_close(one.features, split.features, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one.trajectory, split.trajectory, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(one.start_features, other.start_features)
    tail = maximize(model, targets[3:], settings=s, seed=7, first_index=3)
    torch.testing.assert_close(tail.start_features, one.start_features[3:])


def test_mixed_targets_in_one_batch_each_pursue_their_own():
    model = trained_mlp()
    targets = torch.tensor([0, 1, 2, 2, 1, 0])
    res = maximize(model, targets, settings=Settings(steps=20, lr=0.05), shape=SHAPE, evaluator=trained_mlp())
    assert torch.equal(res.prob_a.argmax(1), targets)
    assert res.prob_b.shape == (6, 3) and res.start_prob_b.shape == (6, 3)
    alone = maximize(model, targets[2:3], settings=Settings(steps=20, lr=0.05), shape=SHAPE, first_index=2)
    torch.testing.assert_close(alone.features[0], res.features[2], rtol=1e-5, atol=1e-6)


def test_nan_or_inf_marks_only_that_sample_failed():
    model = Linear()
    start = torch.rand(3, *SHAPE)
    start[1, 2, 1] = float("nan")
    res = maximize(model, torch.tensor([0, 1, 2]), start=start, settings=Settings(steps=3))
    assert res.failed.tolist() == [False, True, False]
    assert torch.isfinite(res.features[[0, 2]]).all()

    class Explodes(nn.Module):
        """Finite at the start, infinite once the input grows past 0.6: failure mid-run."""

        def forward(self, x):
            m = x.flatten(1).mean(1, keepdim=True)
            return torch.cat([m, torch.where(m > 0.6, torch.full_like(m, float("inf")), -m)], dim=1)

    start = torch.full((2, *SHAPE), 0.5)
    start[1] = -2.0
    res = maximize(Explodes(), torch.tensor([0, 0]), start=start, settings=Settings(steps=20, lr=0.05, objective="logit", clamp=False))
    assert res.failed.tolist() == [True, False]


def test_neuron_objective_raises_the_chosen_units_of_a_named_layer():
    torch.manual_seed(0)
    model = PaperClassifier(3)
    acts = {}
    model.features[0].register_forward_hook(lambda m, i, o: acts.__setitem__("x", o))
    s = Settings(steps=5, lr=0.05, objective="neuron", layer="features.0", units=(3, 5))
    res = maximize(model, torch.zeros(2, dtype=torch.long), settings=s)
    with torch.no_grad():
        model.eval()
        model(res.start_features)
        before = acts["x"][:, [3, 5]].mean(dim=(1, 2, 3))
        model(res.features)
        after = acts["x"][:, [3, 5]].mean(dim=(1, 2, 3))
    assert (after > before).all()
    with pytest.raises(HearsayError, match="unknown layer 'nope'"):
        maximize(model, torch.zeros(1, dtype=torch.long), settings=replace(s, layer="nope"))
    with pytest.raises(HearsayError, match="out of range"):
        maximize(model, torch.zeros(1, dtype=torch.long), settings=replace(s, units=(8,)))


def test_total_variation_matches_a_hand_computation():
    x = torch.tensor([[[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]])  # T=3, N=2
    # time: |0.5-0|+|0.5-1|+|1-0.5|+|0-0.5| = 2 ; frequency: 1 + 0 + 1 = 2 ; / (3*2)
    assert tv_value(x).item() == pytest.approx(4 / 6)
    model = Linear()
    combined = class_probability(torch.tensor([0])) - 0.5 * total_variation()
    feats = torch.rand(1, *SHAPE)
    from generation.maximize import Context

    ctx = Context(feats, model(feats), {}, feats)
    expected = torch.softmax(model(feats), 1)[0, 0] - 0.5 * tv_value(feats)[0]
    torch.testing.assert_close(combined(ctx)[0], expected)


def test_bad_input_is_a_one_line_error():
    model = Linear()
    with pytest.raises(HearsayError, match="target class index 3 out of range"):
        maximize(model, torch.tensor([0, 3]), shape=SHAPE)
    with pytest.raises(HearsayError, match="needs a decoder"):
        maximize(model, torch.tensor([0]), method="decoder")
    with pytest.raises(HearsayError, match="unknown step rule"):
        maximize(model, torch.tensor([0]), settings=Settings(step="sgd"), shape=SHAPE)


def test_engine_takes_its_parts_as_objects_and_maximize_only_builds_them():
    """optimize(param, objective, step) with hand-built parts equals the preset front door, bit for bit."""
    from generation.maximize import InputParam, RMSStep, class_probability, optimize, parts

    model = PaperClassifier(3)
    targets = torch.tensor([0, 2, 1])
    settings = replace(PRESETS["paper"]["classifier"], steps=3)
    param, objective, step = parts(settings, "classifier")
    assert isinstance(param, InputParam) and not param.clamp and isinstance(step, RMSStep) and step.lr == 0.01
    by_hand = optimize(model, targets, InputParam(clamp=False), class_probability(), RMSStep(0.01), steps=3, seed=4)
    front = maximize(model, targets, settings=settings, seed=4)
    assert torch.equal(by_hand.features, front.features) and torch.equal(by_hand.trajectory, front.trajectory)


def test_a_new_prior_is_one_parameterization_subclass_and_nothing_else():
    """A generator-like prior (x = sigmoid(G z), no encoder) runs through the unchanged engine and by method name."""
    from generation.maximize import PARAMETERIZATIONS, AdamStep, Parameterization, class_logit, optimize

    class LinearGenerator(Parameterization):
        method = "test-linear-generator"

        def __init__(self, generator: nn.Linear, shape=SHAPE):
            self.generator, self.shape = generator, shape

        @classmethod
        def from_method(cls, settings, prior):
            return cls(prior)

        def noise_shape(self, feature_shape):
            return (self.generator.in_features,)

        def features(self):
            return torch.sigmoid(self.generator(self.parameter)).view(-1, *self.shape)

        def latents(self):
            return self.parameter

    torch.manual_seed(0)
    prior = LinearGenerator(nn.Linear(5, SHAPE[0] * SHAPE[1]), SHAPE)
    model = trained_mlp()
    targets = torch.tensor([0, 1, 2])
    res = optimize(model, targets, prior, class_logit(), AdamStep(0.1), steps=15, seed=2, shape=SHAPE)
    assert res.latents.shape == (3, 5) and res.features.shape == (3, *SHAPE)
    assert (res.trajectory[:, -1] > res.trajectory[:, 0]).all()
    assert prior.generator.weight.requires_grad, "the prior's own weights are restored after the run"
    with pytest.raises(HearsayError, match="cannot start from features"):
        optimize(model, targets, prior, class_logit(), AdamStep(0.1), steps=1, start=torch.rand(3, *SHAPE))
    try:
        by_name = maximize(model, targets, method="test-linear-generator", decoder=prior.generator,
                           settings=Settings(steps=15, lr=0.1, step="adam", objective="logit"), seed=2, shape=SHAPE)
        torch.testing.assert_close(by_name.features, res.features)
    finally:
        del PARAMETERIZATIONS["test-linear-generator"]


def test_pool_before_relu_gives_the_same_numbers_and_keeps_layers_objectives_read(monkeypatch):
    from generation import maximize
    from generation.maximize import pool_before_relu

    torch.manual_seed(0)
    model = PaperClassifier(4).eval()
    fast = pool_before_relu(model)
    assert fast is not model and dict(fast.named_modules())["features.0"] is model.features[0], "leaf modules are shared"
    x = torch.rand(9, 90, 80)
    x[:3, :, 40:] = 0.0  # flat regions: exact ties inside pooling windows
    x.requires_grad_(True)
    for net in (model, fast):
        net.zero_grad()
    ref = model(x)
    (g_ref,) = torch.autograd.grad(torch.softmax(ref, 1)[:, 1].sum(), x)
    out = fast(x)
    (g_out,) = torch.autograd.grad(torch.softmax(out, 1)[:, 1].sum(), x)
    assert torch.equal(ref, out) and torch.equal(g_ref, g_out)
    kept = pool_before_relu(model, ("features.1",))
    assert "features_1 = getattr(self.features, \"1\")(features_0)" in kept.code.replace("'", '"')
    plain = nn.Sequential(nn.Linear(2, 2))
    assert pool_before_relu(plain) is plain, "nothing to rewrite: the model itself"
    assert pool_before_relu(model, ("head",)) is model, "a container's hooks must fire: no rewrite"

    targets = torch.tensor([0, 1, 2, 3])
    s = Settings(steps=4, lr=0.05, clamp=False)
    from generation.maximize import optimize, parts

    # the engine with only this rewrite (the CPU's fused first block rounds differently: tests/test_fused.py)
    monkeypatch.setattr(maximize, "fused_layers", lambda net, keep: net)
    runs = [optimize(model, targets, *parts(s), steps=4, seed=3, rewrite=r) for r in (True, False)]
    assert torch.equal(runs[0].features, runs[1].features) and torch.equal(runs[0].prob_a, runs[1].prob_a)


def test_objectives_read_targets_from_the_engine_or_refuse_without_them():
    from generation.maximize import Context, class_logit

    logits = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    ctx = Context(torch.zeros(2, 1, 1), logits, {}, torch.zeros(2, 1, 1), torch.tensor([1, 0]))
    assert class_logit()(ctx).tolist() == [2.0, 3.0]
    with pytest.raises(HearsayError, match="needs target classes"):
        class_logit()(Context(torch.zeros(2, 1, 1), logits, {}, torch.zeros(2, 1, 1)))


def test_the_engine_arms_a_parameterization_with_each_batchs_targets_and_given_latents():
    """`start(x0, targets)` gets each batch's own targets; `start_latents` starts from given points, as they are."""
    from generation.maximize import PARAMETERIZATIONS, AdamStep, DecoderParam, InputParam, class_logit, optimize

    class Recording(InputParam):
        def __init__(self):
            super().__init__(clamp=False)
            self.seen: list[list[int]] = []

        def start(self, x0, targets=None):
            self.seen.append(targets.tolist())
            return super().start(x0, targets)

    assert PARAMETERIZATIONS["classifier"] is InputParam, "a subclass of a registered prior does not replace it"
    model = Linear()
    targets = torch.tensor([2, 0, 1, 1, 0])
    spy = Recording()
    res = optimize(model, targets, spy, class_logit(), AdamStep(0.1), steps=2, seed=1, shape=SHAPE, batch_size=2)
    assert spy.seen == [[2, 0], [1, 1], [0]]
    plain = optimize(model, targets, InputParam(clamp=False), class_logit(), AdamStep(0.1), steps=2, seed=1, shape=SHAPE, batch_size=2)
    assert torch.equal(res.features, plain.features), "the base ignores the targets"

    ae = Autoencoder(latent=8, input_shape=(90, 80))
    z0 = torch.randn(3, 8)
    given = optimize(PaperClassifier(3), torch.tensor([0, 1, 2]), DecoderParam(ae), class_logit(), AdamStep(0.1), steps=1, start_latents=z0)
    assert torch.equal(given.start_latents, z0) and given.waves is None
    with pytest.raises(HearsayError, match=r"start latents must be \[3, 8\]"):
        optimize(PaperClassifier(3), torch.tensor([0, 1, 2]), DecoderParam(ae), class_logit(), AdamStep(0.1), steps=1, start_latents=z0[:2])


def test_noise_starts_are_the_same_drawn_by_threads_prefetched_or_serially():
    from generation.maximize import NoiseStarts, noise

    serial = noise((6, 4), 0.1, seed=3, first_index=10, count=600)
    assert torch.equal(noise((6, 4), 0.1, seed=3, first_index=10, count=600, workers=3), serial)
    starts = NoiseStarts((6, 4), 0.1, seed=3, first_index=10, device=torch.device("cpu"))
    starts.pool = __import__("concurrent.futures").futures.ThreadPoolExecutor(1)  # the GPU path: the next chunk drawn ahead
    try:
        first = starts.get(0, 256)
        starts.prefetch(256, 600)
        assert (256, 600) in starts.pending
        second = starts.get(256, 600)
    finally:
        starts.close()
    assert torch.equal(torch.cat([first, second]), serial)


def test_verdicts_without_features_and_a_bf16_run_that_agrees_with_fp32():
    model = PaperClassifier(3)
    targets = torch.tensor([0, 1, 2, 1, 0, 2])
    s = Settings(steps=3)
    full = maximize(model, targets, settings=s, seed=7, evaluator=model)
    lean = maximize(model, targets, settings=s, seed=7, evaluator=model, keep_features=False)
    assert lean.features is None and lean.start_features is None
    torch.testing.assert_close(lean.prob_a, full.prob_a)
    torch.testing.assert_close(lean.prob_b, full.prob_b)
    half = maximize(model, targets, settings=s, seed=7, precision_mode="bf16")
    assert half.prob_a.dtype == torch.float32
    torch.testing.assert_close(half.prob_a, full.prob_a, atol=0.02, rtol=0)
    with pytest.raises(HearsayError, match="unknown precision 'fp8'"):
        maximize(model, targets, settings=s, precision_mode="fp8")


def test_seed004_objective_is_target_logit_minus_mean_of_others_minus_weighted_latent_norm():
    from generation.maximize import Context, build_objective, preset

    logits = torch.tensor([[2.0, -1.0, 5.0], [0.5, 0.5, 3.5]])
    z = torch.tensor([[1.0, 2.0], [0.0, -3.0]])
    ctx = Context(features=torch.zeros(2, 6, 4), logits=logits, activations={}, parameter=z, targets=torch.tensor([2, 0]))
    score = build_objective(preset("seed004", "decoder"))(ctx)
    # sample 0: 5 - (2 - 1)/2 - 0.01 * 5; sample 1: 0.5 - (0.5 + 3.5)/2 - 0.01 * 9
    torch.testing.assert_close(score, torch.tensor([5 - 0.5 - 0.05, 0.5 - 2.0 - 0.09]))
    assert preset("seed004", "cgan").objective == "logit_margin" and preset("seed004", "cgan").l2_weight == 0.01
    assert preset("seed004", "classifier").l2_weight == 0.0 and preset("seed004", "classifier").clamp
    res = maximize(trained_mlp(), torch.tensor([0, 1, 2]), settings=preset("seed004", "classifier"), seed=1, shape=SHAPE)
    assert (res.trajectory[:, -1] > res.trajectory[:, 0]).all()


def test_a_batch_shared_out_over_cores_gives_the_same_numbers_as_one_thread():
    """Each core runs its own share of a batch single-threaded: same features, verdicts and bf16 results as serially."""
    from generation.maximize import class_probability, core_workers, neuron, optimize, parts

    cpu = torch.device("cpu")
    assert core_workers(cpu, 64, class_probability(), cores=2) == 2
    assert core_workers(cpu, 12, class_probability(), cores=2) == 1, "below 8 samples per core: the batch as a whole"
    assert core_workers(cpu, 64, neuron("features.0"), cores=2) == 1, "layer hooks record into one dict: serial"
    with pytest.raises(HearsayError, match="cores must be >= 1"):
        core_workers(cpu, 64, class_probability(), cores=0)
    torch.manual_seed(0)
    model, ae = PaperClassifier(5), Autoencoder(latent=8)
    targets = torch.arange(40) % 5
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for method, prior, mode in (("classifier", None, "fp32"), ("decoder", ae, "fp32"), ("classifier", None, "bf16")):
            s = replace(PRESETS["hearsay"][method], steps=3)
            runs = [optimize(model, targets, *parts(s, method, prior), steps=3, seed=2, batch_size=32, cores=cores,
                             evaluator=model, precision_mode=mode) for cores in (1, 2)]
            for key in ("features", "latents", "trajectory", "prob_a", "prob_b", "start_prob_b", "failed"):
                a, b = getattr(runs[0], key), getattr(runs[1], key)
                assert (a is None and b is None) or torch.equal(a, b), (method, mode, key)
        assert torch.get_num_threads() == 2, "the caller's thread count is restored"
    finally:
        torch.set_num_threads(threads)


def test_batches_are_equal_in_size_so_no_small_tail_batch_runs():
    from generation.maximize import chunk_size

    assert chunk_size(10000, 4096) == 3334  # three batches of 3,334, not 4,096 + 4,096 + 1,808
    assert chunk_size(4096, 4096) == 4096
    assert chunk_size(50, 64, cores=2) == 25  # one batch, half on each core
    assert chunk_size(130, 64, cores=2) == 22  # three batches of 44, each split over two cores
    assert chunk_size(0, 64) == 1
