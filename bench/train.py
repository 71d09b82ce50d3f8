"""Seconds per training epoch for each classifier architecture and the autoencoder, side by side.

    .venv/bin/python bench/train.py --data var/corpus [--epochs 2] [--models conv,paper,autoencoder] [--device cpu] [--threads 1]

Features come from the disk cache (filled first, not timed); an epoch is one pass
over the training split plus the validation pass, as in `manage.py train_*`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from generation import cache  # noqa: E402
from generation.corpus import read_corpus  # noqa: E402
from generation.features import PAPER  # noqa: E402
from generation.train import resolve_device, train_autoencoder, train_classifier  # noqa: E402


def seconds_per_epoch(train, data: Path, epochs: int, device: str, **kwargs) -> float:
    """Median time between epoch ends (the first epoch is timed from the call, minus feature loading)."""
    marks: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(data, Path(tmp) / "m.pt", epochs=epochs, seed=1, device=device, progress=False,
              on_epoch=lambda record: marks.append(time.perf_counter()), **kwargs)
    laps = [b - a for a, b in zip([start, *marks], marks)]
    return statistics.median(laps[1:] if len(laps) > 1 else laps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="var/corpus")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", default="conv,paper,autoencoder", help="comma-separated subset to time")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    corpus = read_corpus(args.data)
    for split in ("train", "validation", "test"):
        cache.features_for(corpus.split(split), PAPER, device)
    n = len(corpus.split("train"))
    print(f"corpus {corpus.root}: {len(corpus.classes)} words, {n} training clips; device {device}, {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    jobs = {
        "conv": ("classifier --arch conv", train_classifier, {"arch": "conv"}),
        "paper": ("classifier --arch paper", train_classifier, {"arch": "paper"}),
        "autoencoder": ("autoencoder (latent 256)", train_autoencoder, {}),
    }
    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in jobs]
    if unknown or not chosen:
        parser.error(f"--models takes a comma-separated subset of {', '.join(jobs)}")
    rows = [(jobs[m][0], seconds_per_epoch(jobs[m][1], corpus.root, args.epochs, device, **jobs[m][2])) for m in chosen]
    fastest = min(s for _, s in rows)
    print(f"{'model':28s} {'s/epoch':>8s} {'clips/s':>9s} {'vs fastest':>10s}")
    for name, secs in rows:
        print(f"{name:28s} {secs:8.2f} {n / secs:9.0f} {secs / fastest:9.1f}x")


if __name__ == "__main__":
    main()
