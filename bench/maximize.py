"""How much faster is the batched maximization engine than one sample at a time?

Runs the paper classifier (random weights: speed does not depend on training)
with the paper preset's 20 RMS steps, once batched and once as a loop of
single-sample calls of the same engine, and prints samples per second side by
side with their ratio. Also prints the Griffin-Lim vocoder's real-time factor
for a batch of clips.

    .venv/bin/python bench/maximize.py [--threads 2] [--batch 512] [--loop 16] [--decoder-batch 64] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from generation.features import FeatureConfig  # noqa: E402
from generation.maximize import PRESETS, maximize  # noqa: E402
from generation.nets import Autoencoder, PaperClassifier  # noqa: E402


def rate(fn, samples: int, device: torch.device) -> float:
    """Samples per second of one call of `fn(samples)`, after a one-sample warm-up call."""
    fn(1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(samples)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return samples / (time.perf_counter() - t0)


def step_flops(clf: torch.nn.Module, dec: torch.nn.Module | None, cfg: FeatureConfig, n_classes: int, device: torch.device) -> float:
    """Floating-point operations of one maximization step for one sample, counted by torch itself.

    The ceiling on any batching speed-up: once a batch runs near the machine's peak rate,
    no reordering of the same arithmetic makes it faster.
    """
    from torch.utils.flop_counter import FlopCounterMode

    clf = clf.to(device).eval().requires_grad_(False)
    if dec is None:
        x = torch.rand(1, cfg.n_frames, cfg.n_mels, device=device, requires_grad=True)
        make = lambda: x  # noqa: E731
    else:
        dec = dec.to(device).eval().requires_grad_(False)
        x = torch.randn(1, dec.latent, device=device, requires_grad=True)
        make = lambda: dec.decode(x)  # noqa: E731
    with FlopCounterMode(display=False) as counter:
        clf(make())[0, n_classes - 1].backward()
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=512, help="samples in the batched classifier-method run")
    ap.add_argument("--loop", type=int, default=16, help="samples in the one-at-a-time classifier-method loop")
    ap.add_argument("--decoder-batch", type=int, default=64, help="samples in the batched decoder-method run (0 skips the decoder)")
    ap.add_argument("--decoder-loop", type=int, default=4, help="samples in the one-at-a-time decoder-method loop")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved timing rounds; the best of each is printed")
    ap.add_argument("--classes", type=int, default=35)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vocoder-clips", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = FeatureConfig()
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, paper classifier, {args.classes} classes, 20 steps", flush=True)

    runs = [("classifier", args.batch, args.loop)] + ([("decoder", args.decoder_batch, args.decoder_loop)] if args.decoder_batch else [])
    for method, batch, loop in runs:
        settings = PRESETS["paper"][method]
        clf = PaperClassifier(args.classes)
        dec = Autoencoder() if method == "decoder" else None
        targets = torch.arange(batch) % args.classes

        def batched(n: int) -> None:
            maximize(clf, targets[:n], method=method, decoder=dec, settings=settings, device=device, batch_size=batch)

        def one_by_one(n: int) -> None:
            for i in range(n):
                maximize(clf, targets[i : i + 1], method=method, decoder=dec, settings=settings, device=device, first_index=i)

        fast = slow = 0.0
        for _ in range(args.repeats):  # interleaved, best of each: other load on a shared machine only ever slows a run down
            fast = max(fast, rate(batched, batch, device))
            slow = max(slow, rate(one_by_one, loop, device))
        print(f"{method:>10}: batched (batch {batch}) {fast:9.1f} samples/s | one at a time {slow:7.1f} samples/s | ratio {fast / slow:6.1f}x", flush=True)
        work = step_flops(clf, dec, cfg, args.classes, device) * settings.steps
        print(f"{'':>10}  {work / 1e6:.0f} MFLOP per sample (forward + input gradient, {settings.steps} steps): "
              f"batched runs at {fast * work / 1e9:.1f} GFLOP/s, one at a time at {slow * work / 1e9:.1f} GFLOP/s; "
              f"a 50x ratio would need {50 * slow * work / 1e9:.0f} GFLOP/s", flush=True)

    try:
        from generation.vocoder import GriffinLimVocoder, real_time_factor
    except ImportError:
        print("vocoder: generation.vocoder.GriffinLimVocoder is not available; real-time factor skipped")
        return
    vocoder = GriffinLimVocoder(cfg, device=device)
    feats = torch.rand(args.vocoder_clips, cfg.n_frames, cfg.n_mels)
    vocoder(feats[:1])
    speed = real_time_factor(vocoder, feats)
    print(f"   vocoder: Griffin-Lim ({vocoder.n_iter} iterations), batch {args.vocoder_clips}: {speed:.2f} s of audio per s of compute "
          f"(compute/audio = {1 / speed:.3f})")

if __name__ == "__main__":
    main()
