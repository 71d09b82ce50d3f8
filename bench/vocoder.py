"""Vocoder speed and fidelity: real-time factor batched vs one clip at a time, and the round trip.

    .venv/bin/python bench/vocoder.py [--clips 64] [--device cpu] [--classifier var/models/A.pt --corpus var/corpus --n 500]

The round trip (classifier A's accuracy on features re-extracted from vocoded test
utterances vs on the originals) runs when the classifier and corpus exist.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hearsay.errors import HearsayError  # noqa: E402
from generation.features import PAPER, LogMel, prepare_waves  # noqa: E402
from generation.vocoder import GriffinLimVocoder, round_trip  # noqa: E402


def synthetic_features(n: int) -> torch.Tensor:
    """Features of word-like harmonic sweeps, so the timing covers realistic spectra."""
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(16000) / 16000
    waves = []
    for _ in range(n):
        f0 = 100 + 200 * torch.rand(1, generator=gen)
        env = torch.exp(-((t - 0.5) / (0.1 + 0.2 * torch.rand(1, generator=gen))) ** 2)
        wave = sum(torch.sin(2 * torch.pi * k * (f0 + 60 * t) * t) / k for k in range(1, 8)) * env
        waves.append((wave + 0.01 * torch.randn(len(t), generator=gen)).numpy())
    with torch.no_grad():
        return LogMel(PAPER)(prepare_waves(waves, 16000, PAPER))


def timed(fn) -> tuple[float, float]:
    """Wall and CPU seconds: CPU time stays meaningful on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()  # the vocoder returns numpy arrays, so device work has finished here
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--n-iter", type=int, default=60)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--classifier", default="var/models/A.pt")
    parser.add_argument("--corpus", default="var/corpus")
    parser.add_argument("--n", type=int, default=500, help="test utterances for the round trip (0 = all)")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    feats = synthetic_features(opts.clips).to(opts.device)
    audio_s = opts.clips * (PAPER.n_frames - 1) * PAPER.hop_length / PAPER.sample_rate
    batched = GriffinLimVocoder(PAPER, n_iter=opts.n_iter, device=opts.device, batch_size=opts.clips)
    single = GriffinLimVocoder(PAPER, n_iter=opts.n_iter, device=opts.device, batch_size=1)
    batched(feats[:2])  # warm-up
    t_batched = timed(lambda: batched(feats))
    t_single = timed(lambda: [single(feats[i : i + 1]) for i in range(len(feats))])
    print(f"device {opts.device}, {opts.threads} thread(s), Griffin-Lim {opts.n_iter} iterations, {opts.clips} clips ({audio_s:.1f} s of audio)")
    print(f"{'':>14} {'wall s':>8} {'cpu s':>8} {'clips/s':>8} {'real-time factor (wall)':>24}")
    for name, (wall, cpu) in (("batched", t_batched), ("one at a time", t_single)):
        print(f"{name:>14} {wall:8.2f} {cpu:8.2f} {opts.clips / wall:8.1f} {audio_s / wall:23.1f}x  (per CPU second: {audio_s / cpu:.1f}x)")
    print(f"batched speed-up: {t_single[0] / t_batched[0]:.2f}x wall")

    if Path(opts.classifier).is_file() and Path(opts.corpus).is_dir():
        try:
            start = time.perf_counter()
            rt = round_trip(opts.classifier, opts.corpus, n=opts.n or None, device=opts.device, progress=True)
        except HearsayError as exc:
            sys.exit(f"round trip: {exc}")
        print(f"round trip on {rt['n']} test utterances ({time.perf_counter() - start:.0f} s): "
              f"A accuracy original {rt['original_accuracy']:.3f}, vocoded {rt['vocoded_accuracy']:.3f}, "
              f"same prediction {rt['agreement']:.3f}, "
              f"mean |feature difference| {rt['mean_abs_feature_difference']:.4f}")
    else:
        print(f"round trip skipped: needs {opts.classifier} and {opts.corpus}")


if __name__ == "__main__":
    main()
