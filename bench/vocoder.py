"""Vocoder speed against the FFT bound, its peer and today's reference, plus agreement and the round trip.

    .venv/bin/python bench/vocoder.py [--clips 16] [--threads 2] [--n-iter 60] [--device cpu]
                                      [--classifier var/models/A.pt --corpus var/corpus --n 500]

Printed, all measured in this run on the same word-like clips (best of
interleaved repeats: other load on a shared machine only ever slows a run):

* the FFT-only ceiling: the bare real FFTs a Griffin-Lim run cannot avoid
  (one inverse and one forward per iteration, plus the last inverse) on the
  same frames, with nothing else, the faster of the whole batch at once and
  the groups of clips Griffin-Lim runs together on a CPU (`cpu_group`: the
  groups fit the cache, and the FFTs alone run faster that way too); and the
  STFT/iSTFT ceiling: the same FFTs with the framing work alone (windows,
  overlap-add, envelope, reflect padding), no phase update: the faster of
  Hearsay's `Stft.project` loop (what each Griffin-Lim iteration runs) and
  torch.stft/istft;
* Hearsay's vocoder batched (mel inversion, Griffin-Lim, loudness finish) as
  real-time factor and as a fraction of both ceilings; one clip at a time;
* today's reference (dense NNLS + torchaudio.functional.griffinlim) and
  librosa.griffinlim on the same magnitudes, as peers;
* agreement with the reference: mean |difference| of re-extracted features and
  the largest sample difference (see bench/reference.py for why samples alone
  are not the measure).

The round trip (classifier A's accuracy on features re-extracted from vocoded
test utterances vs on the originals) runs when the classifier and corpus exist.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reference import feature_difference, reference_vocode, word_like_features  # noqa: E402
from hearsay.errors import HearsayError  # noqa: E402
from generation.features import PAPER  # noqa: E402
from generation.vocoder import GriffinLimVocoder, Stft, cpu_group, griffin_lim, round_trip  # noqa: E402


REFERENCE = "today's reference"
FFT_WHOLE = "FFTs only, whole batch"
FFT_GROUPS = "FFTs only, in groups"
STFT_OURS = "STFT/iSTFT (Stft.project)"
STFT_TORCH = "STFT/iSTFT (torch)"


def best_times(fns: dict, repeats: int, sync) -> dict[str, float]:
    """Best wall seconds of each function over interleaved rounds."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16, help="clips in the batch")
    parser.add_argument("--n-iter", type=int, default=60)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop", type=int, default=4, help="clips vocoded one at a time (0 skips)")
    parser.add_argument("--no-peers", action="store_true", help="skip today's reference and librosa")
    parser.add_argument("--classifier", default="var/models/A.pt")
    parser.add_argument("--corpus", default="var/corpus")
    parser.add_argument("--n", type=int, default=500, help="test utterances for the round trip (0 = all)")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cfg = PAPER
    length = (cfg.n_frames - 1) * cfg.hop_length
    feats = word_like_features(opts.clips).to(device)
    audio_s = opts.clips * length / cfg.sample_rate
    vocoder = GriffinLimVocoder(cfg, n_iter=opts.n_iter, device=device, batch_size=opts.clips)
    single = GriffinLimVocoder(cfg, n_iter=opts.n_iter, device=device, batch_size=1)
    magnitude = vocoder.mel_to_linear(feats)
    frames = torch.randn(opts.clips, cfg.n_frames, cfg.n_fft, device=device)
    stft = Stft(cfg.n_fft, cfg.hop_length, cfg.win_length, device)
    window = torch.hann_window(cfg.win_length, device=device)
    wave = torch.randn(opts.clips, length, device=device)

    # On a CPU Griffin-Lim runs groups of clips through all iterations (cache-sized); the ceilings get the same chance.
    group = cpu_group(cfg.n_frames, cfg.n_fft // 2 + 1, 4) if device.type == "cpu" else opts.clips
    groups = [slice(i, i + group) for i in range(0, opts.clips, group)]

    def fft_only(parts: list[slice]) -> None:
        for part in parts:
            spectrum = torch.fft.rfft(frames[part])
            for _ in range(opts.n_iter):
                spectrum = torch.fft.rfft(torch.fft.irfft(spectrum, n=cfg.n_fft))
            torch.fft.irfft(spectrum, n=cfg.n_fft)

    def stft_ours() -> None:
        for part in groups:
            spectrum = stft.forward(wave[part])
            padded = stft.buffer(spectrum, length)
            for _ in range(opts.n_iter):
                spectrum = stft.project(spectrum, length, padded)
            stft.inverse(spectrum, length)

    def stft_torch() -> None:
        x = wave
        for _ in range(opts.n_iter):
            spec = torch.stft(x, cfg.n_fft, cfg.hop_length, cfg.win_length, window, center=True, return_complex=True)
            x = torch.istft(spec, cfg.n_fft, cfg.hop_length, cfg.win_length, window, length=length)

    out: dict[str, np.ndarray] = {}
    fns = {
        FFT_WHOLE: lambda: fft_only([slice(None)]),
        FFT_GROUPS: lambda: fft_only(groups),
        STFT_OURS: stft_ours,
        STFT_TORCH: stft_torch,
        "griffin-lim only": lambda: griffin_lim(magnitude, stft, opts.n_iter, vocoder.momentum, length),
        "vocoder, batched": lambda: out.__setitem__("ours", vocoder(feats)),
    }
    if opts.loop:
        fns["vocoder, one at a time"] = lambda: [single(feats[i : i + 1]) for i in range(opts.loop)]
    if not opts.no_peers:
        import librosa

        mags = magnitude.transpose(1, 2).cpu().numpy()
        fns[REFERENCE] = lambda: out.__setitem__("reference", reference_vocode(feats.cpu(), cfg, n_iter=opts.n_iter))
        fns["librosa.griffinlim"] = lambda: librosa.griffinlim(
            mags, n_iter=opts.n_iter, hop_length=cfg.hop_length, win_length=cfg.win_length, n_fft=cfg.n_fft,
            center=True, length=length, pad_mode="reflect", momentum=vocoder.momentum, init=None)
    vocoder(feats[:1])  # warm-up
    with torch.no_grad():
        times = best_times(fns, opts.repeats, sync)
    if opts.loop:
        times["vocoder, one at a time"] *= opts.clips / opts.loop
    ceiling = min(times[FFT_WHOLE], times[FFT_GROUPS])
    stft_ceiling = min(times[STFT_OURS], times[STFT_TORCH])
    print(f"device {device}, {torch.get_num_threads()} thread(s), Griffin-Lim {opts.n_iter} iterations, "
          f"{opts.clips} clips ({audio_s:.1f} s of audio), best of {opts.repeats}")
    print(f"ceilings: FFT-only = the bare FFTs alone ({2 * opts.n_iter + 1} per clip and one to start), the faster of "
          f"the whole batch and groups of {group} clips (as Griffin-Lim runs them); STFT/iSTFT = those FFTs with the "
          f"framing work alone (the faster of the two STFT/iSTFT rows)")
    print(f"{'':>26} {'wall s':>8} {'x real time':>12} {'of FFT-only':>12} {'of STFT/iSTFT':>14}")
    for name, seconds in times.items():
        print(f"{name:>26} {seconds:8.3f} {audio_s / seconds:11.1f}x {ceiling / seconds:11.0%} {stft_ceiling / seconds:13.0%}")
    ours = times["vocoder, batched"]
    print(f"Hearsay vocoder batched: {audio_s / ours:.1f}x real time (target >= 50x), {ceiling / ours:.0%} of the FFT-only "
          f"ceiling (target >= 50%), {stft_ceiling / ours:.0%} of the STFT/iSTFT ceiling")
    if "reference" in out:
        diff = feature_difference(out["ours"], out["reference"], cfg)
        jitter = reference_vocode(feats.cpu() * (1 + 1e-6 * torch.randn(feats.shape, generator=torch.Generator().manual_seed(1))),
                                  cfg, n_iter=opts.n_iter)
        print(f"agreement with today's reference: mean |re-extracted feature difference| {diff:.5f} (tolerance 0.002; "
              f"today's own output moves {feature_difference(jitter, out['reference'], cfg):.5f} when its input changes by 1e-6), "
              f"largest sample difference {np.abs(out['ours'] - out['reference']).max():.4f} "
              f"(today's under that 1e-6 change: {np.abs(jitter - out['reference']).max():.4f}); "
              f"{times[REFERENCE] / ours:.1f}x faster than it, {times['librosa.griffinlim'] / ours:.1f}x faster than librosa")

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
