"""Griffin-Lim vs the neural vocoder on held-out real utterances, beside the originals as the ceiling.

    .venv/bin/python bench/vocoder_compare.py --corpus C --evaluator B.pt --vocoder V.pt [--n 200] [--device cpu]
        [--rating-set OUT]

For each vocoder: classifier B's accuracy on features re-extracted from the vocoded
audio and pocketsphinx's accuracy on the audio itself (originals: B on the real
features, pocketsphinx on the real recordings), log-mel L1 and mel-cepstral
distortion against the real features, and the real-time factor of one batched call
(wall and per CPU second). `--rating-set OUT` also writes a rating-task stimulus set
(each utterance as original, Griffin-Lim and neural, under opaque ids; load it with
`manage.py load_stimuli OUT/manifest.csv --task rating`) so listeners can judge naturalness.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generation import checkpoint  # noqa: E402
from generation.asr import Recognizer  # noqa: E402
from generation.corpus import read_corpus  # noqa: E402
from hearsay.errors import HearsayError  # noqa: E402
from generation.features import LogMel, extract_files, prepare_waves, read_wave  # noqa: E402
from generation.neural_vocoder import load_vocoder, mel_cepstral_distortion  # noqa: E402
from generation.vocoder import GriffinLimVocoder, finish, write_wav  # noqa: E402


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def write_rating_set(out: Path, utts, waves: dict[str, np.ndarray], rate: int) -> None:
    """Originals (loudness-matched) and both vocoders' versions of every utterance, one pair id per utterance."""
    from generation.stimuli import COLUMNS, stimulus_id, write_manifest

    if out.exists() and any(out.iterdir()):
        raise HearsayError(f"--rating-set {out} exists and is not empty")
    (out / "wav").mkdir(parents=True, exist_ok=True)
    words = sorted({u.word for u in utts})
    rows = []
    for i, u in enumerate(utts):
        pair = stimulus_id("vocoder-rating", u.relpath, "pair", avoid=words)
        original, orig_rate = read_wave(u.path)
        versions = {"natural": (finish(torch.from_numpy(original)[None], orig_rate)[0].numpy(), orig_rate)}
        versions.update({name: (w[i], rate) for name, w in waves.items()})
        for method, (wave, sr) in versions.items():
            sid = stimulus_id("vocoder-rating", u.relpath, method, avoid=words + list(versions))
            write_wav(out / "wav" / f"{sid}.wav", wave, sr)
            rows.append({c: "" for c in COLUMNS} | {
                # a vocoded real utterance is a "before" stage (real features, not maximized), as in the paper set
                "stimulus_id": sid, "file": f"wav/{sid}.wav", "word": u.word, "method": method,
                "init": "none" if method == "natural" else "test", "stage": "original" if method == "natural" else "before", "pair_id": pair,
                "condition": "original" if method == "natural" else f"vocoder-{method}", "source_file": u.relpath, "speaker": u.speaker,
                "status": "original" if method == "natural" else "vocoded",
            })
    write_manifest(out / "manifest.csv", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--evaluator", required=True, help="classifier B checkpoint")
    parser.add_argument("--vocoder", required=True, help="neural vocoder checkpoint (manage.py train_vocoder)")
    parser.add_argument("--n", type=int, default=0, help="random held-out test utterances (0 = all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rating-set", type=Path, help="also write a rating-task stimulus set here")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    try:
        b = checkpoint.load(opts.evaluator, opts.device, kind="classifier")
        cfg = b.feature_config
        corpus = read_corpus(opts.corpus)
        if corpus.classes != b.classes:
            raise HearsayError(f"{opts.evaluator} knows other words than the corpus at {corpus.root}")
        vocoders = {"griffin-lim": GriffinLimVocoder(cfg, device=opts.device), "neural": load_vocoder(opts.vocoder, opts.device, cfg)}
    except HearsayError as exc:
        sys.exit(str(exc))
    utts = corpus.split("test")
    if opts.n:
        keep = np.random.default_rng(opts.seed).permutation(len(utts))[: opts.n]
        utts = [utts[i] for i in sorted(keep)]
    labels = torch.tensor(corpus.labels(utts))
    feats = torch.from_numpy(extract_files([u.path for u in utts], cfg, device=opts.device))
    recognizer = Recognizer(corpus.classes)
    logmel = LogMel(cfg).to(opts.device)
    audio_s = len(utts) * (cfg.n_frames - 1) * cfg.hop_length / cfg.sample_rate

    with torch.no_grad():
        b_orig = float((b.model(feats.to(opts.device)).argmax(1).cpu() == labels).float().mean())
    asr_orig = np.mean([recognizer.recognize(*read_wave(u.path)) == u.word for u in utts])
    print(f"{len(utts)} held-out test utterances of {corpus.root} ({audio_s:.1f} s of audio), device {opts.device}, {opts.threads} thread(s)")
    print(f"{'':<12} {'B acc':>6} {'ASR acc':>8} {'mel L1':>7} {'MCD dB':>7} {'RTF wall':>9} {'RTF/CPU s':>10}")
    print(f"{'original':<12} {b_orig:6.3f} {asr_orig:8.3f} {0:7.4f} {0:7.2f} {'(ceiling)':>9}")
    waves_by = {}
    for name, vocoder in vocoders.items():
        vocoder(feats[:2])  # warm-up
        waves, wall, cpu = timed(lambda: vocoder(feats))
        waves_by[name] = waves
        with torch.no_grad():
            again = logmel(prepare_waves(list(waves), vocoder.sample_rate, cfg, opts.device)).cpu()
            b_acc = float((b.model(again.to(opts.device)).argmax(1).cpu() == labels).float().mean())
        asr = np.mean([recognizer.recognize(w, vocoder.sample_rate) == u.word for w, u in zip(waves, utts)])
        l1 = float((again - feats).abs().mean())
        mcd = float(mel_cepstral_distortion(feats, again, cfg).mean())
        print(f"{name:<12} {b_acc:6.3f} {asr:8.3f} {l1:7.4f} {mcd:7.2f} {audio_s / wall:8.1f}x {audio_s / cpu:9.1f}x")
    print(f"neural vocoder: {opts.vocoder} ({vocoders['neural'].ckpt.train_config.get('epochs_run')} epochs, "
          f"{vocoders['neural'].ckpt.metrics.get('train_seconds')} s of training on {vocoders['neural'].ckpt.train_config.get('device')})")
    if opts.rating_set:
        try:
            write_rating_set(opts.rating_set, utts, waves_by, cfg.sample_rate)
        except HearsayError as exc:
            sys.exit(str(exc))
        print(f"rating set: {opts.rating_set / 'manifest.csv'} ({3 * len(utts)} clips)")


if __name__ == "__main__":
    main()
