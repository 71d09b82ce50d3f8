"""Seed 004's priors on one GPU in about four minutes: the neural vocoder against Griffin-Lim, and the conditional mel GAN.

    bench/gpu_priors.sh OUT                          # on the lent device (bench/gpu_priors.sh says what to carry)
    bench/gpu_priors.sh OUT --quick --device cpu     # dry run of every step (the test suite runs it on a tiny corpus)

The device has neither eSpeak NG nor Django, so it reads a corpus and classifier B
made here (`bench/gpu_priors.sh --prepare`: .gpu/corpus and .gpu/B.pt) and calls the
training functions directly. Each step has its own wall budget, and OUT/summary.json
is rewritten after every step, so a run cut short still reports what it finished:

1. `train_vocoder` for --vocoder-seconds (the trainer's time budget: it stops after
   the epoch that reaches it; the epoch with the lowest validation MCD is kept);
2. bench/vocoder_compare's figures on the held-out test clips: B's accuracy on
   re-extracted features, log-mel L1, MCD, real-time factor on the device, for the
   originals, Griffin-Lim and the vocoder (pocketsphinx when installed, else skipped);
3. `train_gan --conditional` for --gan-seconds: B's accuracy on its samples of each
   word, the FID in B's penultimate layer beside the real-vs-real floor.

OUT gets summary.json, V.pt, V.metrics.json (the vocoder's per-epoch history),
C.metrics.json, C.samples.png (at most 8 files, none in subfolders).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.vocoder_compare import compare  # noqa: E402
from generation import checkpoint  # noqa: E402
from generation.corpus import read_corpus  # noqa: E402
from generation.gan import GanSettings, train_gan  # noqa: E402
from generation.neural_vocoder import TrainSettings, train_vocoder  # noqa: E402
from generation.train import resolve_device  # noqa: E402
from hearsay import atomic  # noqa: E402
from hearsay.errors import HearsayError  # noqa: E402

# On an H100 a reconstruction epoch took about 0.45 s and an adversarial one 2.7 s (batch 16, 32-frame crops, dim 128):
# 100 reconstruction epochs leave most of a 130 s budget to the adversarial phase, which the validation curve then judges.
GPU_VOCODER = TrainSettings(epochs=100_000, batch_size=32, segment_frames=64, adversarial_after=100, adversarial_ramp=5,
                            dim=192, hidden=576, layers=8)
QUICK_VOCODER = TrainSettings(epochs=2, batch_size=8, segment_frames=8, adversarial_after=1, adversarial_ramp=1, dim=16, hidden=32, layers=1)
GPU_GAN = GanSettings(conditional=True, epochs=100_000, batch_size=64, width=32)
QUICK_GAN = GanSettings(conditional=True, epochs=2, batch_size=8, latent=8, width=4)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class EveryFewSeconds:
    """An `on_epoch` callback printing one progress line at most every `interval` seconds (and on the first epoch)."""

    def __init__(self, name: str, keys: tuple[str, ...], interval: float = 5.0):
        self.name, self.keys, self.interval, self.last = name, keys, interval, -float("inf")

    def __call__(self, record: dict) -> None:
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            shown = ", ".join(f"{k} {record[k]:.4g}" if isinstance(record[k], float) else f"{k} {record[k]}" for k in self.keys if k in record)
            say(f"{self.name} epoch {record['epoch']}: {shown}")


def curve(history: list[dict]) -> dict:
    """The validation curve in a few numbers: best of each phase, the last epoch, seconds per epoch of each phase."""
    out: dict = {"epochs": len(history)}
    seconds_before = {h["epoch"] + 1: h["seconds"] for h in history}  # training seconds spent before each epoch began
    for phase, adversarial in (("reconstruction", False), ("adversarial", True)):
        rows = [h for h in history if h["adversarial"] == adversarial]
        if rows:
            best = min(rows, key=lambda h: h["val_mcd_db"])
            spent = rows[-1]["seconds"] - seconds_before.get(rows[0]["epoch"], 0.0)
            out[phase] = {"epochs": len(rows), "best_epoch": best["epoch"], "best_val_mcd_db": best["val_mcd_db"],
                          "best_val_feature_l1": best["val_feature_l1"], "last_val_mcd_db": rows[-1]["val_mcd_db"], "seconds_per_epoch": spent / len(rows)}
    if history:
        out["last"] = {k: history[-1][k] for k in ("epoch", "val_mcd_db", "val_feature_l1", "lr", "seconds")}
    return out


def vocoder_step(opts, device: torch.device, work: Path) -> dict:
    settings = QUICK_VOCODER if opts.quick else GPU_VOCODER
    changes = {"max_seconds": opts.vocoder_seconds}
    if opts.adversarial_after is not None:
        changes["adversarial_after"] = opts.adversarial_after
    settings = TrainSettings(**{**settings.__dict__, **changes})
    say(f"1/3 neural vocoder: {opts.vocoder_seconds:g} s budget, {settings}")
    v = train_vocoder(opts.corpus, work / "V.pt", settings=settings, device=device, progress=False,
                      on_epoch=EveryFewSeconds("vocoder", ("adversarial_share", "train_mel_l1", "val_feature_l1", "val_mcd_db", "best_epoch", "seconds")))
    for name in ("V.pt", "V.metrics.json"):
        shutil.copy(work / name, opts.out / name)
    m = v.metrics
    say(f"vocoder: kept {v.train_config['selected']}; test MCD {m['test_mcd_db']:.2f} dB (Griffin-Lim {m['test_griffin_lim_mcd_db']:.2f} dB), "
        f"feature L1 {m['test_feature_l1']:.4f} (Griffin-Lim {m['test_griffin_lim_feature_l1']:.4f})")
    return {"settings": settings.__dict__, "selected": v.train_config["selected"], "stopped_by": v.train_config["stopped_by"],
            "train_seconds": m["train_seconds"],
            **{k: m[k] for k in ("best_epoch", "best_val_mcd_db", "test_feature_l1", "test_mcd_db", "test_griffin_lim_feature_l1", "test_griffin_lim_mcd_db")},
            "validation_curve": curve(m["history"])}


def comparison_step(opts, device: torch.device, work: Path) -> dict:
    say("2/3 comparison on the held-out test clips")
    rows, facts, _, _ = compare(opts.corpus, opts.evaluator, opts.out / "V.pt", n=8 if opts.quick else 0, device=str(device), log=say)
    return {"figures": rows, **facts}


def gan_step(opts, device: torch.device, work: Path) -> dict:
    settings = GanSettings(**{**(QUICK_GAN if opts.quick else GPU_GAN).__dict__, "max_seconds": opts.gan_seconds})
    say(f"3/3 conditional mel GAN: {opts.gan_seconds:g} s budget, {settings}")
    c = train_gan(opts.corpus, work / "C.pt", settings=settings, evaluator=opts.evaluator, device=device, cache_dir=work / "cache",
                  progress=False, on_epoch=EveryFewSeconds("gan", ("critic_loss", "generator_loss", "seconds")))
    for name in ("C.metrics.json", "C.samples.png"):
        shutil.copy(work / name, opts.out / name)
    m = c.metrics
    say(f"cGAN: {c.train_config['epochs_run']} epochs; B recognizes {m['b_accuracy']:.1%} of its samples as their word "
        f"(chance {1 / len(c.classes):.1%}); FID(B) {m['fid_b']:.1f} (real vs real {m['fid_b_real_vs_real']:.1f})")
    return {"settings": settings.__dict__, "epochs_run": c.train_config["epochs_run"], "train_seconds": m["train_seconds"], "chance": 1 / len(c.classes),
            **{k: m.get(k) for k in ("b_accuracy", "fid_b", "fid_b_real_vs_real", "b_predicted_words", "b_prediction_entropy_bits")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for summary.json and the files that come back")
    parser.add_argument("--corpus", default=".gpu/corpus")
    parser.add_argument("--evaluator", default=".gpu/B.pt", help="classifier B, trained here on the same corpus")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--vocoder-seconds", type=float, default=130.0)
    parser.add_argument("--gan-seconds", type=float, default=70.0, help="0 skips the GAN")
    parser.add_argument("--adversarial-after", type=int, help=f"vocoder epochs before the discriminators join (default {GPU_VOCODER.adversarial_after})")
    parser.add_argument("--quick", action="store_true", help="tiny models and a few epochs: a dry run of every step")
    opts = parser.parse_args()

    started = time.perf_counter()
    try:
        device = resolve_device(opts.device)
        classes = checkpoint.load(opts.evaluator, "cpu", kind="classifier").classes
        if read_corpus(opts.corpus).classes != classes:
            raise HearsayError(f"{opts.evaluator} knows other words than the corpus at {opts.corpus}")
    except HearsayError as exc:
        sys.exit(f"gpu_priors: {exc}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes throughout
        torch.set_float32_matmul_precision("high")  # TF32 matmuls (convolutions use it by default): more steps in the budget
    opts.out.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm")  # checkpoints are saved every epoch: keep them in memory, copy only the results to OUT
    work = Path(tempfile.mkdtemp(prefix="gpu-priors-", dir=shm if shm.is_dir() else None))
    summary: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__, "quick": opts.quick,
        "corpus": opts.corpus, "evaluator": opts.evaluator, "budgets_seconds": {"vocoder": opts.vocoder_seconds, "gan": opts.gan_seconds},
        "tf32": device.type == "cuda",
    }
    say(f"device {summary['device']}, torch {torch.__version__}, work folder {work}")
    steps = [("vocoder", vocoder_step), ("comparison", comparison_step)] + ([("gan", gan_step)] if opts.gan_seconds > 0 else [])
    failed = []
    try:
        for name, step in steps:
            if name == "comparison" and "vocoder" in failed:
                summary[name] = {"skipped": "no vocoder was trained"}
                continue
            t0 = time.perf_counter()
            try:  # each step reports on its own: a failure in one never costs the others' figures
                summary[name] = {**step(opts, device, work), "wall_seconds": round(time.perf_counter() - t0, 1)}
            except HearsayError as exc:
                failed.append(name)
                summary[name] = {"error": str(exc)}
                say(f"gpu_priors: {name}: {exc}")
            except Exception as exc:
                failed.append(name)
                summary[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
                traceback.print_exc()
            summary["wall_seconds"] = round(time.perf_counter() - started, 1)
            atomic.write_text(opts.out / "summary.json", json.dumps(summary, indent=2, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"done in {time.perf_counter() - started:.0f} s; {opts.out / 'summary.json'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
