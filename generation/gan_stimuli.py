"""Stimuli maximized through a GAN prior: extra conditions for the listening test, and the seed's "enhancer".

For every word, `per_class` samples of the generator (for a conditional one, samples
of that word) are pushed toward the word for classifier A through the generator,
retried as in the paper design (rounds of attempts up to `max_attempts`, the first
attempt A agrees with kept, else the last finite one marked ``unconverged``). The
retries, the journal and the files are the paper set's own (`generation.stimuli`).
Each slot gives a before/after pair: "before" is the generator's own sample, so
for a conditional generator the pair is the enhancer's input and output.
Mel generators are voiced by the chosen vocoder; a wave generator's own audio is
written as it is (loudness-matched like every stimulus). Failed (NaN/inf) samples
are never turned into audio.

The folder has the same layout and manifest columns as `generate`'s paper set
(``condition`` = ``<method>-noise``, ``decoder_sha256`` = the generator's hash),
so `load_stimuli` can add it to the same experiment. ``enhancer.csv`` reports,
per word, how often classifier B and pocketsphinx recognize the word before and
after maximization. One journal line per word makes an interrupted run resume.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from hearsay.errors import HearsayError
from hearsay.manifest import MANIFEST_NAME, write_manifest
from hearsay.provenance import file_sha256, library_versions

from . import checkpoint, gan
from . import maximize as engine
from .objective import write_csv
from .stimuli import COLUMNS, maximize_with_retries, open_stimulus_folder, run_journalled, stimulus_id, write_clip
from .vocoder import GriffinLimVocoder, Vocoder, finish


@dataclass
class GanSummary:
    out: Path
    clips: int
    words_run: int
    words_resumed: int
    unconverged: int
    failed: int
    enhancer: list[dict[str, Any]]
    asr_skipped: str = ""  # why pocketsphinx did not listen (its dictionary lacks a word), or ""


def generate_gan_stimuli(
    classifier: str | Path,
    evaluator: str | Path,
    generator: str | Path,
    out: str | Path,
    *,
    method: str,
    per_class: int = 3,
    max_attempts: int = 20,
    seed: int = 0,
    device: str = "auto",
    words: Sequence[str] | None = None,
    preset: str = "paper",
    vocoder: Vocoder | None = None,
    asr: bool = True,
    progress: bool = False,
) -> GanSummary:
    """Write (or resume) the GAN-prior stimulus set for `method` into `out`; see module doc."""
    from .train import resolve_device

    if per_class < 1 or max_attempts < 1:
        raise HearsayError("per_class and max_attempts must be at least 1")
    dev = resolve_device(device)
    a = checkpoint.load(classifier, dev, kind="classifier")
    b = checkpoint.load(evaluator, dev, kind="classifier")
    checkpoint.require_compatible(a, b)
    g = gan.load_generators({method: generator}, a, dev)[method]
    chosen = list(dict.fromkeys(w.strip() for w in words if w.strip())) if words else list(a.classes)
    if not chosen:
        raise HearsayError("no words given")
    targets = {w: a.class_index(w) for w in chosen}
    settings = engine.preset(preset, method)
    cfg = a.feature_config
    wave_domain = g.arch == "wave"
    if not wave_domain:
        vocoder = vocoder or GriffinLimVocoder(cfg, device=dev)
    voc_config = {"vocoder": "generator"} if wave_domain else (vocoder.config() if hasattr(vocoder, "config") else {"vocoder": type(vocoder).__name__})
    identity = {
        "design": f"gan-prior/{method}", "method": method, "per_class": per_class, "max_attempts": max_attempts, "seed": seed,
        "words": chosen, "preset": preset, "settings": settings.to_dict(), "classifier_sha256": a.sha256,
        "evaluator_sha256": b.sha256, "generator_sha256": g.sha256, "feature_config": cfg.to_dict(), "vocoder": voc_config,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    out = Path(out)
    record: dict[str, Any] = {"key": key, "columns": list(COLUMNS), "complete": False, "device": str(dev),
                              "paths": {"classifier": str(classifier), "evaluator": str(evaluator), "generator": str(generator)},
                              "versions": library_versions()}
    folder = open_stimulus_folder(out, identity, record)

    recognizer = None
    asr_skipped = ""
    if asr:
        from .asr import Recognizer

        try:
            recognizer = Recognizer(list(a.classes))
        except HearsayError as exc:  # words pocketsphinx cannot say (digits, other languages): B still judges every clip
            asr_skipped = f"pocketsphinx not used: {exc}"
    record["asr"] = asr_skipped or ("pocketsphinx" if asr else "not asked for")
    avoid = list(a.classes) + [method, "gan", "noise", "before", "after"]
    started = time.time()
    done, ran = run_journalled(
        folder, out, chosen,
        lambda word: _run_word(word, targets[word], method, a, b, g, settings, per_class, max_attempts, seed, key, avoid, vocoder, recognizer, dev, out),
        desc=f"stimuli ({method})", progress=progress)

    all_rows = [r for w in chosen for r in done[w]]
    kept = [r for r in all_rows if r["status"] != "failed"]
    write_manifest(out / MANIFEST_NAME, [{k: r.get(k, "") for k in COLUMNS} for r in kept])
    enhancer = _enhancer_table(chosen, kept)
    write_csv(out / "enhancer.csv", list(enhancer[0]), [list(r.values()) for r in enhancer])
    failed = sum(r["status"] == "failed" and r["stage"] == "after" for r in all_rows)
    unconverged = sum(r["status"] == "unconverged" and r["stage"] == "after" for r in kept)
    record.update(complete=True, clips=len(kept), unconverged=unconverged, failed=failed, enhancer=enhancer,
                  manifest_sha256=file_sha256(out / MANIFEST_NAME), seconds_last_run=round(time.time() - started, 1))
    folder.write_record(record)
    return GanSummary(out, len(kept), ran, len(chosen) - ran, unconverged, failed, enhancer, asr_skipped)


def _run_word(word, target, method, a, b, g, settings, per_class, max_attempts, seed, key, avoid, vocoder, recognizer, dev, out) -> list[dict]:
    unit_seed = engine.derive_seed(seed, "gan-prior", method, word)
    res, picks = maximize_with_retries(
        lambda lo, hi: engine.maximize(a.model, torch.full((hi - lo,), target, dtype=torch.long), method=method, decoder=g.model,
                                       settings=settings, seed=unit_seed, first_index=lo, evaluator=b.model, device=dev),
        target, per_class, max_attempts)
    classes = a.classes
    rows, clips = [], []
    for slot, pick in enumerate(picks):
        k, status = pick.index, pick.status
        pair = stimulus_id(key, word, slot, "pair", avoid=avoid)
        stages = (("before", res.start_features[k], res.start_prob_a[k], res.start_prob_b[k], res.start_waves),
                  ("after", res.features[k], res.prob_a[k], res.prob_b[k], res.waves))
        for stage, feat, pa, pb, audio in stages:
            sid = stimulus_id(key, word, slot, stage, avoid=avoid)
            row = {
                "stimulus_id": sid, "file": "", "word": word, "method": method, "init": "noise", "stage": stage, "pair_id": pair,
                "condition": f"{method}-noise", "source_file": "", "speaker": "", "seed": unit_seed,
                "attempts": pick.attempts,
                "pred_a": classes[int(pa.argmax())], "prob_a": round(float(pa[target]), 6),
                "pred_b": classes[int(pb.argmax())], "prob_b": round(float(pb[target]), 6),
                "target_prob_a": round(float(pa[target]), 6), "classifier_sha256": a.sha256, "evaluator_sha256": b.sha256,
                "decoder_sha256": g.sha256, "status": status,
            }
            if status != "failed" and bool(torch.isfinite(feat).all()):
                row["file"] = f"wav/{sid}.wav"
                clips.append((row, feat, None if audio is None else audio[k]))
            rows.append(row)
    _write(clips, vocoder, recognizer, a.feature_config.sample_rate, out)
    return rows


def _write(clips, vocoder, recognizer, rate: int, out: Path) -> None:
    """Voice mel samples in one batch (a wave generator's audio is used as it is), write, and let pocketsphinx listen."""
    if not clips:
        return
    if clips[0][2] is None:
        waves = vocoder(torch.stack([f for _, f, _ in clips]))
        rate = vocoder.sample_rate
    else:
        waves = finish(torch.stack([w for _, _, w in clips]), rate).numpy()
    for (row, feat, _), wave in zip(clips, waves):
        write_clip(out, row["stimulus_id"], wave, rate, feat)
        row["pred_asr"] = recognizer.recognize(wave, rate) if recognizer is not None else ""


def _enhancer_table(words: list[str], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per word, then ALL (pooled, told apart by `pooled`: a word may be named "ALL"): share of clips B and
    pocketsphinx recognize as the word, before and after."""
    table = []
    groups = [(word, False, [r for r in rows if r["word"] == word]) for word in words]
    for word, pooled, mine in [*groups, ("ALL", True, rows)]:
        entry: dict[str, Any] = {"word": word, "pooled": "true" if pooled else "false"}
        for stage in ("before", "after"):
            staged = [r for r in mine if r["stage"] == stage]
            entry[f"n_{stage}"] = len(staged)
            entry[f"b_{stage}"] = round(sum(r["pred_b"] == r["word"] for r in staged) / len(staged), 4) if staged else ""
            heard = [r for r in staged if r.get("pred_asr")]
            entry[f"asr_{stage}"] = round(sum(r["pred_asr"] == r["word"] for r in heard) / len(heard), 4) if heard else ""
        table.append(entry)
    return table
