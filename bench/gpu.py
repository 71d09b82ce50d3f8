"""The GPU figures in one run: maximization (fp32, TF32, bf16 autocast), Griffin-Lim, the objective experiment.

Run through bench/gpu.sh on a lent device (budgeted to finish in under 5 minutes on one H100); with
--quick and --device cpu it exercises every step in seconds, which the test
suite does. Nothing is downloaded: step 1 trains tiny paper-architecture
models (classifiers A and B, the autoencoder) on random features for a few
Adam steps; speed does not depend on what the weights learned.

Printed:
0. the compiled 2x2 blocks (`generation.fused`: Triton kernels on CUDA)
   against the torch ops on the device, in fp32 and bf16: whether the compiled
   form ran, the largest difference in values and input gradients, and whether
   the input gradients are nonzero at the same positions (the same winners);
1. maximization samples/s for the classifier-only and decoder methods
   (paper preset, 20 RMS steps) in fp32, with TF32 matmuls/convolutions (CUDA
   only) and under bf16 autocast, with the agreement of each against fp32:
   share of samples whose arg-max class is the same, and the largest
   |difference| of A's target probability; in bf16 also with the
   classifier's 2x2 blocks as torch ops (the engine before the Triton forms);
2. Griffin-Lim (60 iterations) real-time factor on the device;
3. the paper's objective experiment (35 words x N noise starts x 2 methods):
   the real `run_objective` on as many words as fit `--objective-budget`
   seconds, timed, and the full 35-word wall time extrapolated from it (the
   output says whether it was measured or extrapolated).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from generation import checkpoint, fused, maximize  # noqa: E402
from generation.checkpoint import Checkpoint  # noqa: E402
from generation.corpus import SPEECH_COMMANDS_WORDS  # noqa: E402
from generation.features import PAPER  # noqa: E402
from generation.maximize import PRECISIONS, PRESETS, default_batch_size, optimize, parts  # noqa: E402
from generation.nets import Autoencoder, PaperClassifier  # noqa: E402
from generation.objective import run_objective  # noqa: E402
from generation.vocoder import GriffinLimVocoder  # noqa: E402

WORDS = list(SPEECH_COMMANDS_WORDS)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_tiny(out: Path, device: torch.device, steps: int) -> dict[str, Path]:
    """A few Adam steps per model on random features, saved as real checkpoints (step 1)."""
    gen = torch.Generator().manual_seed(0)
    feats = torch.rand(256, *PAPER.shape, generator=gen).to(device)
    labels = (torch.arange(256) % len(WORDS)).to(device)
    paths = {}
    for name, seed in (("A", 1), ("B", 2)):
        torch.manual_seed(seed)
        model = PaperClassifier(len(WORDS)).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(feats), labels).backward()
            opt.step()
        paths[name] = out / f"{name}.pt"
        checkpoint.save(paths[name], Checkpoint(kind="classifier", arch="paper", arch_kwargs={"n_classes": len(WORDS)},
                                                model=model, feature_config=PAPER, classes=WORDS))
    torch.manual_seed(3)
    ae = Autoencoder().to(device)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy(ae(feats[:32]), feats[:32]).backward()
        opt.step()
    paths["AE"] = out / "AE.pt"
    checkpoint.save(paths["AE"], Checkpoint(kind="autoencoder", arch="paper-ae", arch_kwargs={"latent": ae.latent},
                                            model=ae, feature_config=PAPER, classes=WORDS))
    return paths


def compiled_blocks(device: torch.device, batch: int) -> list[dict]:
    """The compiled 2x2 blocks against the torch ops on this device (step 0): the paper net's shapes, fp32 and bf16."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(1, 8, 2).to(device).requires_grad_(False)
    pool = torch.nn.MaxPool2d(2)
    x = torch.rand(batch, 1, *PAPER.shape, generator=gen).to(device)
    maps = torch.randn(batch, 16, 43, 38, generator=gen).to(device)
    for mode in ("fp32", "bf16"):
        with maximize.precision(mode, device):  # as the engine runs: fp32 without TF32 (torch's default allows it), bf16 autocast
            for name, fast, slow, inp in (("conv_pool_relu", fused.ConvPool(conv, pool, relu=True),
                                           lambda t: torch.relu(pool(conv(t))), x),
                                          ("pool_relu", fused.Pool(pool, relu=True), lambda t: torch.relu(pool(t)),
                                           maps.bfloat16() if mode == "bf16" else maps)):
                a, b = inp.clone().requires_grad_(True), inp.clone().requires_grad_(True)
                y_fast, y = fast(a), slow(b)
                g = torch.randn(y.shape, generator=gen).to(device, y.dtype)
                (da,), (db,) = torch.autograd.grad(y_fast, a, g), torch.autograd.grad(y, b, g)
                rows.append({"layer": name, "precision": mode, "batch": batch,
                             "compiled": "hearsay" in y_fast.grad_fn.name(),  # else the layer fell back to the torch ops
                             "max_value_difference": float((y_fast.detach().float() - y.detach().float()).abs().max()),
                             "max_gradient_difference": float((da.float() - db.float()).abs().max()),
                             "same_gradient_support": bool(torch.equal(da != 0, db != 0))})
                print(json.dumps({"compiled_blocks": rows[-1]}), flush=True)
    return rows


@contextlib.contextmanager
def classifier_as_torch_ops():
    """The engine with the classifier's 2x2 blocks run as torch ops (the engine before the compiled forms on CUDA)."""
    saved = maximize.fused_layers
    maximize.fused_layers = lambda net, keep: net
    try:
        yield
    finally:
        maximize.fused_layers = saved


def maximization(models: dict, device: torch.device, n: int, batches: dict[str, int]) -> list[dict]:
    rows = []
    a = models["A"].model
    for method in ("classifier", "decoder"):
        batch = batches[method]
        settings = PRESETS["paper"][method]
        targets = torch.arange(n) % len(WORDS)
        results = {}
        cases = [(mode, "engine") for mode in (("fp32", "tf32", "bf16") if device.type == "cuda" else ("fp32", "bf16"))]
        for mode, forms in cases + [("bf16", "classifier_torch_ops")]:
            def run(count: int):
                param, objective, step = parts(settings, method, models["AE"].model if method == "decoder" else None)
                with classifier_as_torch_ops() if forms == "classifier_torch_ops" else contextlib.nullcontext():
                    return optimize(a, targets[:count], param, objective, step, steps=settings.steps, seed=5,
                                    device=device, batch_size=batch, precision_mode=mode)
            run(min(n, 64))  # warm-up (CUDA context, kernels, allocator)
            sync(device)
            t0 = time.perf_counter()
            res = run(n)
            sync(device)
            seconds = time.perf_counter() - t0
            row = {"method": method, "precision": mode, "forms": forms, "samples": n, "seconds": round(seconds, 3),
                   "samples_per_s": round(n / seconds, 1)}
            if forms == "engine":
                results[mode] = {"result": res, "seconds": seconds}
            else:  # how many times faster the engine ran than these forms, in the same precision
                row["engine_speedup"] = round(seconds / results[mode]["seconds"], 2)
            if mode != "fp32":
                ref = results["fp32"]["result"]
                row["same_argmax_as_fp32"] = round(float((res.prob_a.argmax(1) == ref.prob_a.argmax(1)).float().mean()), 4)
                rows_t = torch.arange(n)
                row["max_target_prob_diff"] = round(float((res.prob_a[rows_t, targets] - ref.prob_a[rows_t, targets]).abs().max()), 4)
            rows.append(row)
            print(json.dumps({"maximization": row}), flush=True)
    return rows


def vocoding(device: torch.device, clips: int) -> dict:
    from bench.reference import feature_difference, reference_vocode, word_like_features

    vocoder = GriffinLimVocoder(PAPER, device=device, batch_size=clips)
    feats = word_like_features(clips).to(device)
    vocoder(feats[:2])
    sync(device)
    t0 = time.perf_counter()
    waves = vocoder(feats)
    seconds = time.perf_counter() - t0
    audio = waves.shape[0] * waves.shape[1] / vocoder.sample_rate
    row = {"clips": clips, "n_iter": vocoder.n_iter, "seconds": round(seconds, 3), "real_time_factor": round(audio / seconds, 1)}
    # The device path is a separate implementation from the CPU's compiled one: check it against the reference here.
    few = min(clips, 8)
    row["agreement_clips"] = few
    row["mean_feature_difference_vs_reference"] = round(feature_difference(waves[:few], reference_vocode(feats[:few].cpu())), 5)
    row["tolerance"] = 0.002
    print(json.dumps({"griffin_lim": row}), flush=True)
    return row


def objective(paths: dict, device: torch.device, out: Path, n: int, batch: int | None, budget: float, mode: str) -> dict:
    """The real experiment on as many words as fit the budget; the 35-word wall time extrapolated from them.

    Per method: one word first (its loop time sizes the next call), then k more
    words in one call. The classifier method may use half the budget; the
    decoder method whatever is left. Loop seconds per word come from
    `run_objective`'s own timing of its maximization loop; the rest of a call's
    wall time (loading models, writing heatmaps) is counted once per method.
    """
    rows = {}
    left = budget
    for method, share in (("classifier", 0.5), ("decoder", 1.0)):
        def call(words: list[str], tag: str):
            folder = out / f"objective-{method}-{tag}"
            shutil.rmtree(folder, ignore_errors=True)  # a timing run, never a resume of an earlier one's classes
            sync(device)
            t0 = time.perf_counter()
            run = run_objective(paths["A"], paths["B"], paths["AE"], folder, n=n, words=words,
                                methods=[method], device=device, batch_size=batch, progress=False, precision_mode=mode)
            sync(device)
            return time.perf_counter() - t0, run.seconds
        started = time.perf_counter()
        wall1, loop1 = call(WORDS[:1], "probe")
        k = max(1, min(len(WORDS) - 1, int((left * share - wall1) / max(loop1, 1e-3))))
        wall, loop = call(WORDS[1 : 1 + k], "rest")
        left -= time.perf_counter() - started
        per_word = (loop1 + loop) / (1 + k)
        overhead = wall - loop
        rows[method] = {"words_run": 1 + k, "loop_seconds_per_word": round(per_word, 3), "overhead_seconds": round(overhead, 2),
                        "full_seconds": round(overhead + per_word * len(WORDS), 1),
                        "measured_seconds": round(wall1 + wall, 1)}
    measured = all(r["words_run"] == len(WORDS) for r in rows.values())
    row = {"n_per_word": n, "batch": batch or default_batch_size(device), "words": len(WORDS), "methods": rows, "precision": mode,
           "full_experiment_seconds": round(sum(r["full_seconds"] for r in rows.values()), 1), "measured": measured,
           "note": "measured in full" if measured else "extrapolated from the words run (same n and batch for every word)"}
    print(json.dumps({"objective": row}), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks every step in seconds (for CPU and tests)")
    ap.add_argument("--out", default=None, help="folder for checkpoints and results (default: a temporary folder)")
    ap.add_argument("--objective-budget", type=float, default=None, help="seconds for the objective experiment's measured part")
    ap.add_argument("--objective-precision", choices=PRECISIONS, default=None,
                    help="the objective experiment's precision (default: bf16 on CUDA, whose agreement step 1 prints; fp32 on a CPU)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here; use --device cpu (with --quick for a dry run)")
    # Decoder batches stay near 4,000: its activations take about 5 MB a sample with their gradients in fp32.
    sizes = dict(train=1, n=16, batch={"classifier": 16, "decoder": 8}, clips=2, objective_n=8, objective_batch=8, budget=2.0,
             blocks_batch=2) \
        if args.quick else \
        dict(train=50, n=8192, batch={"classifier": 8192, "decoder": 4096}, clips=256, objective_n=10000, objective_batch=None,
             budget=200.0, blocks_batch=256)
    mode = args.objective_precision or ("bf16" if device.type == "cuda" else "fp32")
    budget = args.objective_budget if args.objective_budget is not None else sizes["budget"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(json.dumps({"device": name, "torch": torch.__version__, "quick": args.quick}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        paths = train_tiny(out, device, sizes["train"])
        print(json.dumps({"trained_tiny_models_seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        models = {k: checkpoint.load(p, device) for k, p in paths.items()}
        summary = {
            "device": name,
            "compiled_blocks": compiled_blocks(device, sizes["blocks_batch"]),
            "maximization": maximization(models, device, sizes["n"], sizes["batch"]),
            "griffin_lim": vocoding(device, sizes["clips"]),
            "objective": objective(paths, device, out, sizes["objective_n"], sizes["objective_batch"], budget, mode),
        }
        (out / "gpu_summary.json").write_text(json.dumps(summary, indent=2))
        print(f"summary written to {out / 'gpu_summary.json'}" if args.out else "done")


if __name__ == "__main__":
    main()
