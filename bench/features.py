"""Feature extraction speed: batched torch (`extract_files`) vs per-clip librosa, side by side.

    .venv/bin/python bench/features.py --data var/corpus [--clips 200] [--device cpu] [--threads 1]

Also prints how far the two disagree (max and mean absolute difference on [0, 1]).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from generation.corpus import read_corpus  # noqa: E402
from generation.features import PAPER, extract_files, librosa_features  # noqa: E402
from generation.train import resolve_device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="var/corpus")
    parser.add_argument("--clips", type=int, default=200, help="clips to extract (evenly spread over the corpus)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    utts = read_corpus(args.data).utterances
    step = max(1, len(utts) // args.clips)
    paths = [u.path for u in utts[::step][: args.clips]]
    extract_files(paths[:8], PAPER, device)

    start = time.perf_counter()
    ours = extract_files(paths, PAPER, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_torch = time.perf_counter() - start

    start = time.perf_counter()
    ref = np.stack([librosa_features(p, PAPER) for p in paths])
    t_librosa = time.perf_counter() - start

    diff = np.abs(ours - ref)
    print(f"{len(paths)} clips from {args.data}; device {device}, {args.threads} thread(s); file reading included; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'method':32s} {'clips/s':>9s} {'speed-up':>9s}")
    print(f"{'torch batched (extract_files)':32s} {len(paths) / t_torch:9.1f} {t_librosa / t_torch:8.1f}x")
    print(f"{'librosa per clip':32s} {len(paths) / t_librosa:9.1f} {1.0:8.1f}x")
    print(f"abs difference on [0, 1]: max {diff.max():.4f}, mean {diff.mean():.5f}")


if __name__ == "__main__":
    main()
