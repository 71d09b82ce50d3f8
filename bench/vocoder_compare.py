"""Griffin-Lim vs the neural vocoder on held-out real utterances, beside the originals as the ceiling.

    .venv/bin/python bench/vocoder_compare.py --corpus C --evaluator B.pt --vocoder V.pt [--n 200] [--device cpu]
        [--rating-set OUT] [--json FILE]

For each vocoder: classifier B's accuracy on features re-extracted from the vocoded
audio and pocketsphinx's accuracy on the audio itself (originals: B on the real
features, pocketsphinx on the real recordings; skipped, and said so, where
pocketsphinx is not installed), log-mel L1 and mel-cepstral distortion against the
real features (both vocoders scored by `generation.neural_vocoder.score`, on the
same path), and the real-time factor of one batched call (wall and per CPU second;
on CUDA the call returns host arrays, so the time includes the device's work).
`--json FILE` writes the figures. `--rating-set OUT` also writes a rating-task stimulus set
(each utterance as original, Griffin-Lim and neural, under opaque ids; load it with
`manage.py load_stimuli OUT/manifest.csv --task rating`) so listeners can judge naturalness.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generation import checkpoint  # noqa: E402
from hearsay import atomic  # noqa: E402
from generation.asr import Recognizer  # noqa: E402
from generation.corpus import read_corpus  # noqa: E402
from hearsay.errors import HearsayError  # noqa: E402
from generation.features import extract_files, read_wave  # noqa: E402
from generation.neural_vocoder import load_vocoder, score  # noqa: E402
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


def asr_or_none(words):
    """pocketsphinx over the given words, or None where it is not installed (a GPU image, say)."""
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        return None
    return Recognizer(words)


def compare(corpus_root, evaluator, vocoder, *, n: int = 0, seed: int = 0, device: str = "cpu", log=print
            ) -> tuple[dict, dict, list, dict[str, np.ndarray]]:
    """Figures for the originals, Griffin-Lim and the neural vocoder: ({name: figures}, the run's facts, the utterances, {name: waves})."""
    b = checkpoint.load(evaluator, device, kind="classifier")
    cfg = b.feature_config
    corpus = read_corpus(corpus_root)
    if corpus.classes != b.classes:
        raise HearsayError(f"{evaluator} knows other words than the corpus at {corpus.root}")
    vocoders = {"griffin-lim": GriffinLimVocoder(cfg, device=device), "neural": load_vocoder(str(vocoder), device, cfg)}
    utts = corpus.split("test")
    if n:
        keep = np.random.default_rng(seed).permutation(len(utts))[:n]
        utts = [utts[i] for i in sorted(keep)]
    labels = torch.tensor(corpus.labels(utts))
    feats = torch.from_numpy(extract_files([u.path for u in utts], cfg, device=device))
    recognizer = asr_or_none(corpus.classes)
    audio_s = len(utts) * (cfg.n_frames - 1) * cfg.hop_length / cfg.sample_rate

    def b_accuracy(x: torch.Tensor) -> float:
        with torch.no_grad():
            return float((b.model(x.to(device)).argmax(1).cpu() == labels).float().mean())

    def asr_accuracy(waves: np.ndarray, rate: int) -> float | None:
        return None if recognizer is None else float(np.mean([recognizer.recognize(w, rate) == u.word for w, u in zip(waves, utts)]))

    original_asr = None if recognizer is None else float(np.mean([recognizer.recognize(*read_wave(u.path)) == u.word for u in utts]))
    rows = {"original": {"b_accuracy": b_accuracy(feats), "asr_accuracy": original_asr, "feature_l1": 0.0, "mcd_db": 0.0}}
    waves_by = {}
    for name, voc in vocoders.items():
        voc(feats[:2])  # warm-up
        waves, wall, cpu = timed(lambda: voc(feats))
        waves_by[name] = waves
        again, l1, mcd = score(waves, feats, cfg, device)
        rows[name] = {"b_accuracy": b_accuracy(again), "asr_accuracy": asr_accuracy(waves, voc.sample_rate), "feature_l1": float(l1.mean()),
                      "mcd_db": float(mcd.mean()), "real_time_factor_wall": audio_s / wall, "real_time_factor_per_cpu_second": audio_s / max(cpu, 1e-9)}
        log(f"{name}: B {rows[name]['b_accuracy']:.3f}, MCD {rows[name]['mcd_db']:.2f} dB, {audio_s / wall:.1f}x real time")
    ckpt = vocoders["neural"].ckpt
    facts = {"corpus": str(corpus.root), "utterances": len(utts), "audio_seconds": audio_s, "device": str(device), "torch_threads": torch.get_num_threads(),
             "asr": "pocketsphinx" if recognizer is not None else "skipped: pocketsphinx is not installed here",
             "vocoder": str(vocoder), "vocoder_epochs_run": ckpt.train_config.get("epochs_run"), "vocoder_selected": ckpt.train_config.get("selected"),
             "vocoder_train_seconds": ckpt.metrics.get("train_seconds"), "vocoder_trained_on": ckpt.train_config.get("device"),
             "sample_rate": cfg.sample_rate}
    return rows, facts, utts, waves_by


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
    parser.add_argument("--json", type=Path, help="also write the figures here")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    try:
        rows, facts, utts, waves_by = compare(opts.corpus, opts.evaluator, opts.vocoder, n=opts.n, seed=opts.seed, device=opts.device, log=lambda message: None)
    except HearsayError as exc:
        sys.exit(str(exc))
    print(f"{facts['utterances']} held-out test utterances of {facts['corpus']} ({facts['audio_seconds']:.1f} s of audio), "
          f"device {opts.device}, {opts.threads} thread(s); ASR: {facts['asr']}")
    print(f"{'':<12} {'B acc':>6} {'ASR acc':>8} {'mel L1':>7} {'MCD dB':>7} {'RTF wall':>9} {'RTF/CPU s':>10}")
    for name, r in rows.items():
        asr = "—" if r["asr_accuracy"] is None else f"{r['asr_accuracy']:.3f}"
        speed = (f"{r['real_time_factor_wall']:8.1f}x {r['real_time_factor_per_cpu_second']:9.1f}x" if "real_time_factor_wall" in r
                 else f"{'(ceiling)':>9}")
        print(f"{name:<12} {r['b_accuracy']:6.3f} {asr:>8} {r['feature_l1']:7.4f} {r['mcd_db']:7.2f} {speed}")
    print(f"neural vocoder: {facts['vocoder']} ({facts['vocoder_epochs_run']} epochs, kept {facts['vocoder_selected']}, "
          f"{facts['vocoder_train_seconds']} s of training on {facts['vocoder_trained_on']})")
    if opts.json:
        atomic.write_text(opts.json, json.dumps({"figures": rows, **facts}, indent=2))
    if opts.rating_set:
        try:
            write_rating_set(opts.rating_set, utts, waves_by, facts["sample_rate"])
        except HearsayError as exc:
            sys.exit(str(exc))
        print(f"rating set: {opts.rating_set / 'manifest.csv'} ({3 * len(utts)} clips)")


if __name__ == "__main__":
    main()
