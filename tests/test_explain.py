"""`manage.py explain` on a tiny corpus with a known answer: "beep" is a tone in one mel band (BAND)."""
import csv
import json

import numpy as np
import pytest
import torch
from django.core.management import CommandError, call_command

from evaluation.stimuli import read_manifest
from generation import checkpoint
from generation.explain import regions as R
from generation.explain.attribution import METHODS, AttributionSettings, Explainer, lime_mask, lrp_unsupported
from generation.features import extract_files
from generation.corpus import read_corpus

from tests.helpers.explain import BAND, CFG, make_corpus, train_classifier

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    corpus = make_corpus(root / "corpus")
    return {"root": root, "corpus": corpus, "paper": train_classifier(root / "paper.pt", corpus, "paper", steps=100),
            "conv": train_classifier(root / "conv.pt", corpus, "conv", steps=60)}


def _beep_features(setup):
    data = read_corpus(setup["corpus"])
    beep = [u for u in data.split("test") if u.word == "beep"]
    return torch.from_numpy(extract_files([u.path for u in beep], CFG))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "grad_cam"])
def test_attributions_of_a_band_classifier_fall_on_the_band(setup, method):
    """Chance is 3 of 16 bands (0.19); every pixel-level method must put most positive relevance on BAND +-1."""
    ckpt = checkpoint.load(setup["paper"])
    x = _beep_features(setup)
    assert (ckpt.model(x).argmax(1) == 0).all(), "the fixture classifier must recognise every beep"
    rel = Explainer(ckpt.model, AttributionSettings(lime_samples=200)).attribute(method, x, torch.zeros(len(x), dtype=torch.long)).numpy()
    assert rel.shape == tuple(x.shape) and np.isfinite(rel).all()
    pos = np.clip(rel, 0, None)
    share = pos[:, :, BAND - 1 : BAND + 2].sum(axis=(1, 2)) / pos.sum(axis=(1, 2))
    assert share.min() > 0.4, share


def test_grad_cam_is_upsampled_to_the_input_and_lrp_names_missing_rules(setup):
    conv = checkpoint.load(setup["conv"])
    x = _beep_features(setup)
    cam = Explainer(conv.model).attribute("grad_cam", x, torch.zeros(len(x), dtype=torch.long))
    assert cam.shape == x.shape and (cam >= 0).all()
    assert torch.allclose(cam[:, :, 0], cam[:, :, -1]), "the conv net's Grad-CAM has time resolution only"
    assert lrp_unsupported(conv.model) == ["AdaptiveAvgPool1d", "BatchNorm1d", "Conv1d", "functional residual addition"]
    assert lrp_unsupported(checkpoint.load(setup["paper"]).model) == []


def test_random_controls_have_exactly_the_area_of_the_regions():
    rng = np.random.default_rng(0)
    shape = (36, 16)
    for _ in range(50):
        rects = [R.Rect(int(a), int(a) + int(h), int(b), int(b) + int(w)) for a, h, b, w in
                 zip(rng.integers(0, 30, 3), rng.integers(1, 7, 3), rng.integers(0, 12, 3), rng.integers(1, 5, 3))]
        mask = R.mask_of(rects, shape)
        control = R.random_control(mask, rng)
        assert control.sum() == mask.sum() and control.shape == shape
    assert not R.random_control(np.zeros(shape, bool), rng).any()


def test_regions_are_rectangles_around_the_relevant_bins():
    rel = np.zeros((36, 16))
    rel[10:20, 8:10] = 1.0 + np.random.default_rng(0).random((10, 2))
    rel[30:33, 0:3] = -5.0  # negative evidence is never a region
    rects = R.extract(rel, R.RegionParams(90.0, 4, 2))
    assert rects == [R.Rect(10, 20, 8, 10)]
    assert R.extract(np.zeros((36, 16)), R.RegionParams(90.0, 4, 2)) == []


def test_lime_cells_tile_the_input():
    mask = lime_mask((36, 16), (10, 8))
    assert mask.shape == (36, 16) and mask.unique().numel() == 80


def _explain(setup, out, *extra, arch="paper"):
    args = ["--classifier", str(setup[arch]), "--corpus", str(setup["corpus"]), "--out", str(out), "--n", "6",
            "--tune-n", "0", "--percentiles", "97", "--min-cluster-sizes", "4", "--min-samples", "2",
            "--lime-samples", "60", "--ig-steps", "8", "--device", "cpu", *extra]
    call_command("explain", *args, verbosity=0)


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def explained(setup):
    out = setup["root"] / "explained"
    _explain(setup, out, "--methods", "integrated_gradients,occlusion,lrp")
    return out


def test_regions_of_beeps_lie_on_the_band_and_matter_more_than_random(explained):
    for method in ("integrated_gradients", "occlusion"):
        rows = _csv(explained / "regions" / f"{method}.csv")
        beeps = {r["source_file"] for r in rows if r["source_file"].startswith("beep/")}
        assert len(beeps) == 3
        for clip in beeps:
            assert any(int(r["mel_start"]) <= BAND < int(r["mel_end"]) for r in rows if r["source_file"] == clip), (method, clip)
    table = {r["method"]: r for r in _csv(explained / "faithfulness.csv")}
    ig = table["integrated_gradients"]
    assert float(ig["mean_drop_regions"]) > float(ig["mean_drop_random"])
    per_clip = [r for r in _csv(explained / "per_clip.csv") if r["method"] == "integrated_gradients" and r["word"] == "beep"]
    assert all(float(r["drop_regions"]) > float(r["drop_random_mean"]) for r in per_clip)


def test_manifest_pairs_each_region_with_an_equal_area_control_and_loads(explained):
    rows = _csv(explained / "manifest.csv")
    loaded = read_manifest(explained / "manifest.csv")
    assert len(loaded) == len(rows)
    originals = [r for r in rows if r["stage"] == "original"]
    assert len(originals) == 6 and all(r["method"] == "natural" and r["init"] == "none" for r in originals)
    expl = [r for r in rows if r["stage"] == "after"]
    assert {r["method"] for r in expl} == {"integrated_gradients", "occlusion", "lrp"}
    assert {r["strategy"] for r in expl} == {"identification", "reconstruction"}
    by_key = {}
    for r in expl:
        by_key.setdefault((r["method"], r["strategy"], r["source_file"]), {})[r["control"]] = r
    for pair in by_key.values():
        assert set(pair) == {"region", "random"}
        assert pair["region"]["region_area"] == pair["random"]["region_area"] and int(pair["region"]["region_area"]) > 0
        assert pair["region"]["pair_id"] == pair["random"]["pair_id"]
    pair_ids = {r["pair_id"] for r in originals}
    assert {r["pair_id"] for r in expl} <= pair_ids
    for r in rows:
        assert r["word"] not in r["file"] and r["method"] not in r["file"]
    run = json.loads((explained / "run.json").read_text())
    assert run["complete"] and run["lrp"] == "supported" and len(run["identity"]["classifier_sha256"]) == 64
    assert run["versions"]["captum"].startswith("0.9")
    for name in ("faithfulness", "integrated_gradients_regions", "lrp_regions"):
        assert (explained / "figures" / f"{name}.png").stat().st_size > 0 and (explained / "figures" / f"{name}.pdf").is_file()


def test_rerun_resumes_and_redoes_only_a_method_whose_audio_went_missing(setup, explained, capsys):
    occl = next(r for r in _csv(explained / "manifest.csv") if r["method"] == "occlusion")
    kept = explained / "methods" / "integrated_gradients.json"
    mtime = kept.stat().st_mtime_ns
    (explained / occl["file"]).unlink()
    call_command("explain", "--classifier", str(setup["paper"]), "--corpus", str(setup["corpus"]), "--out", str(explained),
                 "--n", "6", "--tune-n", "0", "--percentiles", "97", "--min-cluster-sizes", "4", "--min-samples", "2",
                 "--lime-samples", "60", "--ig-steps", "8", "--device", "cpu", "--methods", "integrated_gradients,occlusion,lrp")
    out = capsys.readouterr().out
    assert "1 method(s) computed, 2 resumed" in out
    assert (explained / occl["file"]).is_file() and kept.stat().st_mtime_ns == mtime


def test_conv_architecture_skips_lrp_with_the_reason_and_searches_regions(setup, tmp_path):
    out = tmp_path / "conv"
    call_command("explain", "--classifier", str(setup["conv"]), "--corpus", str(setup["corpus"]), "--out", str(out),
                 "--n", "4", "--tune-n", "4", "--percentiles", "97,90", "--min-cluster-sizes", "4,8", "--min-samples", "2",
                 "--methods", "saliency,lrp", "--audio", "identification", "--device", "cpu", verbosity=0)
    run = json.loads((out / "run.json").read_text())
    assert "Conv1d" in run["skipped"]["lrp"]
    tuning = _csv(out / "tuning" / "saliency.csv")
    assert len(tuning) == 4 and {float(r["percentile"]) for r in tuning} == {97.0, 90.0}
    assert {r["method"] for r in _csv(out / "faithfulness.csv")} == {"saliency"}


@pytest.mark.parametrize("change, message", [
    ({"--methods": "saliency,shap"}, "unknown attribution method 'shap'"),
    ({"--percentiles": "95,abc"}, "--percentiles must be a comma-separated list"),
    ({"--percentiles": "100"}, "bad region search value"),
    ({"--n": "0"}, "n must be at least 1"),
    ({"--audio": "vocode"}, "unknown audio strategy 'vocode'"),
    ({"--classifier": "missing.pt"}, "checkpoint not found"),
    ({"--corpus": "nowhere"}, "does not exist"),
])
def test_bad_options_fail_with_one_line(setup, tmp_path, change, message):
    opts = {"--classifier": str(setup["paper"]), "--corpus": str(setup["corpus"]), "--out": str(tmp_path / "o"),
            "--methods": "saliency", "--device": "cpu", "--tune-n": "0", **change}
    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        call_command("explain", *[x for kv in opts.items() for x in kv], verbosity=0)


def test_other_settings_on_a_finished_folder_are_refused(setup, explained):
    with pytest.raises(CommandError, match="other settings"):
        _explain(setup, explained, "--methods", "saliency")


# ----------------------------------------------------------------------------- importance masks


@pytest.fixture(scope="module")
def masked(setup):
    out = setup["root"] / "masks"
    call_command("importance_masks", "--classifier", str(setup["paper"]), "--corpus", str(setup["corpus"]), "--out", str(out),
                 "--n", "6", "--steps", "120", "--batch-size", "4", "--animations", "2", "--device", "cpu", verbosity=0)
    return out


def test_importance_masks_of_beeps_keep_only_the_band_and_keep_the_decision(masked):
    rows = _csv(masked / "masks.csv")
    assert len(rows) == 6 and all(r["verified"] == "True" and r["pred_a"] == r["word"] for r in rows)
    binary = np.concatenate([np.load(p)["binary"] for p in sorted((masked / "masks").glob("batch_*.npz"))])
    for row, mask in zip(rows, binary):
        if row["word"] == "beep":
            assert 0 < mask.sum() and set(np.argwhere(mask)[:, 1]) <= {BAND - 1, BAND, BAND + 1}, np.argwhere(mask)
            assert float(row["kept_share"]) == pytest.approx(mask.mean(), abs=1e-6) and float(row["kept_share"]) < 0.05


def test_importance_mask_audio_comes_with_equal_size_controls_and_loads(masked):
    rows = _csv(masked / "manifest.csv")
    read_manifest(masked / "manifest.csv")
    after = [r for r in rows if r["stage"] == "after"]
    assert after and {r["method"] for r in after} == {"importance_mask"}
    pairs = {}
    for r in after:
        pairs.setdefault((r["strategy"], r["source_file"]), {})[r["control"]] = r["region_area"]
    assert all(set(p) == {"region", "random"} and p["region"] == p["random"] for p in pairs.values())
    assert (masked / "figures" / "mask_000.gif").read_bytes()[:6] == b"GIF89a"
    assert (masked / "figures" / "muting.png").stat().st_size > 0


def test_mask_optimization_is_verified_after_binarization():
    """When the relaxed mask binarizes to a mask that loses the decision, the threshold drops until one keeps it."""
    from generation.explain.masks import MaskSettings, optimize_masks

    class HalfTheEnergy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):  # class 0 while the input keeps more than half of a 6 x 4 input of 0.5
            s = self.scale * (x.flatten(1).sum(dim=1) - 6.0)
            return torch.stack([s, torch.zeros_like(s)], dim=1)

    x = torch.full((2, 6, 4), 0.5)
    res = optimize_masks(HalfTheEnergy(), x, torch.zeros(2, dtype=torch.long), MaskSettings(steps=100, sparsity=1000.0))
    assert (res.soft < 0.05).all(), "the penalty drives the relaxed mask to zero, which alone would lose the decision"
    assert res.binary.all() and res.keeps_decision.all() and (res.threshold == 0).all()


# ----------------------------------------------------------------------------- layer visualization


def test_visualize_learns_inputs_that_excite_the_units_and_finds_the_clips_that_do(setup, tmp_path):
    out = tmp_path / "vis"
    call_command("visualize", "--classifier", str(setup["paper"]), "--out", str(out), "--layer", "features.8,logits",
                 "--units", "0", "--tv", "0,0.05", "--steps", "24", "--frames", "4", "--corpus", str(setup["corpus"]),
                 "--top", "3", "--device", "cpu", verbosity=0)
    learned = _csv(out / "learned.csv")
    assert [(r["layer"], float(r["tv"])) for r in learned] == [("features.8", 0.0), ("features.8", 0.05), ("logits", 0.0), ("logits", 0.05)]
    for r in learned:
        assert float(r["activation"]) > float(r["activation_start"]), r
        assert (out / r["file"]).is_file()
    tops = _csv(out / "top_examples.csv")
    logit_tops = [r for r in tops if r["layer"] == "logits"]
    assert [r["source_file"].split("/")[0] for r in logit_tops] == ["beep"] * 3, "unit 0 of the logits is 'beep'"
    acts = [float(r["activation"]) for r in logit_tops]
    assert acts == sorted(acts, reverse=True)
    for name in ("learning_tv0.gif", "learning_tv0.05.gif"):
        assert (out / "figures" / name).read_bytes()[:6] == b"GIF89a"
    assert (out / "figures" / "grid.png").is_file() and (out / "figures" / "grid.pdf").is_file()


def test_default_layers_run_from_the_first_convolution_to_the_logits(setup):
    from generation.explain.layers import default_layers

    assert default_layers(checkpoint.load(setup["paper"]).model) == ["features.0", "features.4", "features.8", "head.1", "head.4", "head.7", "logits"]
    conv = default_layers(checkpoint.load(setup["conv"]).model)
    assert conv[0] == "features.0" and conv[-1] == "logits" and not any("skip" in n for n in conv)


@pytest.mark.parametrize("args, message", [
    (["--layer", "nowhere"], "unknown layer 'nowhere'"),
    (["--layer", "logits", "--units", "5"], "unit 5 out of range"),
    (["--tv", "x"], "--tv must be a comma-separated list"),
])
def test_visualize_bad_options_fail_with_one_line(setup, tmp_path, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("visualize", "--classifier", str(setup["paper"]), "--out", str(tmp_path / "v"), "--device", "cpu", *args, verbosity=0)


# ----------------------------------------------------------------------------- veracity


@pytest.fixture(scope="module")
def veracity_spec(setup):
    out = setup["root"] / "veracity"
    call_command("veracity", "--classifier", str(setup["paper"]), "--corpus", str(setup["corpus"]), "--out", str(out),
                 "--attack", "spec", "--n", "4", "--steps", "60", "--lime-samples", "60", "--k", "1,3", "--device", "cpu", verbosity=0)
    return out


def test_spec_attack_succeeds_within_its_bound_and_the_veracity_table_is_complete(veracity_spec):
    attacks = _csv(veracity_spec / "attacks.csv")
    assert len(attacks) == 4 and all(r["success"] == "True" and r["target"] != r["pred_a"] for r in attacks)
    with np.load(veracity_spec / "attack.npz") as saved:
        assert saved["adversarial"].shape == (4, *CFG.shape)
    rows = {r["segmentation"]: r for r in _csv(veracity_spec / "veracity.csv")}
    assert set(rows) == {"time", "time_frequency"}
    for r in rows.values():
        assert r["adversarial_clips"] == "4"
        for key in ("lime_top1", "lime_top3", "largest_top1", "largest_top3", "lime_positive", "largest_positive"):
            assert 0.0 <= float(r[key]) <= 1.0
    run = json.loads((veracity_spec / "run.json").read_text())
    assert run["complete"] and run["identity"]["epsilon"] == 0.1 and run["attack_success"] == 1.0
    assert (veracity_spec / "figures" / "veracity.png").is_file()


def test_a_drawn_pattern_that_flips_the_label_is_where_the_explanations_point(veracity_spec):
    horses = {r["method"]: r for r in _csv(veracity_spec / "horses.csv")}
    assert set(horses) == {"saliency", "integrated_gradients", "occlusion", "lime"}
    for method in ("saliency", "integrated_gradients", "occlusion"):
        h = horses[method]
        assert float(h["pointing_game"]) == 1.0, h
        assert float(h["relevance_share_on_pattern"]) > 5 * float(h["pattern_area_share"]), h


def test_restoring_every_segment_undoes_the_attack_and_the_largest_perturbation_is_found():
    from generation.explain.veracity import flips_back, perturbation_ranking, segment_map

    segments = segment_map((36, 16), "time_frequency", 6, 4)
    assert segments.max() == 23 and (np.bincount(segments.ravel()) == 24).all()
    assert (segment_map((36, 16), "time", 6, 4)[:, 0] == segment_map((36, 16), "time", 6, 4)[:, -1]).all()
    clean = torch.zeros(36, 16)
    adv = clean.clone()
    adv[segments == 5] = 0.3
    adv[segments == 17] = 0.1
    assert list(perturbation_ranking(adv, clean, segments)[:2]) == [5, 17]

    def probs(x):  # class 1 whenever cell 5 is perturbed
        on = (x[:, torch.from_numpy(segments == 5)].mean(1) > 0.2).float()
        return torch.stack([1 - on, on], dim=1)

    assert flips_back(probs, adv, clean, segments, [5], target=1)
    assert not flips_back(probs, adv, clean, segments, [17], target=1)
    assert flips_back(probs, adv, clean, segments, list(range(24)), target=1)


def test_wave_attack_goes_through_the_feature_pipeline_and_reports_snr(setup):
    from generation.explain.veracity import attack
    from generation.features import LogMel

    ckpt = checkpoint.load(setup["paper"])
    data = read_corpus(setup["corpus"])
    hush = [u for u in data.split("test") if u.word == "hush"][:2]
    from generation.explain.common import load_clips

    clips = load_clips(ckpt, hush, torch.device("cpu"))
    waves = clips.waves(CFG)
    res = attack(ckpt.model, clips.features, waves, torch.zeros(2, dtype=torch.long), "wave", CFG, epsilon=0.05, steps=80, lr=0.005)
    assert res.success.all() and (res.waves - waves).abs().max() <= 0.05 + 1e-6
    assert torch.allclose(res.adversarial, LogMel(CFG)(res.waves), atol=1e-5)
    assert (res.snr_db > 10).all()


def test_veracity_bad_options_fail_with_one_line(setup, tmp_path):
    with pytest.raises(CommandError, match="--k must be comma-separated"):
        call_command("veracity", "--classifier", str(setup["paper"]), "--corpus", str(setup["corpus"]), "--out", str(tmp_path / "v"),
                     "--k", "a", verbosity=0)
    with pytest.raises(CommandError, match="unknown attribution method"):
        call_command("veracity", "--classifier", str(setup["paper"]), "--corpus", str(setup["corpus"]), "--out", str(tmp_path / "v"),
                     "--horse-methods", "magic", verbosity=0)


@pytest.mark.django_db
def test_explanation_manifest_loads_into_an_experiment_with_its_conditions(explained, settings, tmp_path):
    from evaluation.models import Stimulus

    settings.MEDIA_ROOT = str(tmp_path / "media")
    call_command("load_stimuli", str(explained / "manifest.csv"), "--experiment", "explain1", "--create", verbosity=0)
    test = Stimulus.objects.filter(experiment__slug="explain1", kind="test")
    rows = _csv(explained / "manifest.csv")
    assert test.count() == sum(r["stage"] == "after" for r in rows)
    s = test.get(stimulus_id=next(r["stimulus_id"] for r in rows if r["control"] == "random"))
    assert s.condition.startswith("explain-") and s.condition.endswith("-random") and s.provenance["control"] == "random"


def test_importance_masks_rerun_keeps_finished_batches_and_rewrites_the_same_manifest(setup, masked):
    batch = masked / "masks" / "batch_000000.npz"
    mtime = batch.stat().st_mtime_ns
    before = (masked / "manifest.csv").read_bytes()
    (masked / "masks" / "batch_000004.npz").unlink()
    call_command("importance_masks", "--classifier", str(setup["paper"]), "--corpus", str(setup["corpus"]), "--out", str(masked),
                 "--n", "6", "--steps", "120", "--batch-size", "4", "--animations", "2", "--device", "cpu", verbosity=0)
    assert batch.stat().st_mtime_ns == mtime and (masked / "masks" / "batch_000004.npz").is_file()
    assert (masked / "manifest.csv").read_bytes() == before
