"""The paper's perceptual stimulus set, written so a listening test can use it blind.

Per word and per condition (1 classifier/noise, 2 classifier/test, 3 decoder/noise,
4 decoder/test) `per_class` samples are maximized toward the word with classifier
A. As in the paper, a sample is retried until A's top class is the word, but
attempts are counted and capped: the slots of a (word, condition) unit run in
one batch, in rounds of 1, 1, 2, 4, ... attempts up to `max_attempts`; the first
attempt A agrees with is kept, and if none does the last finite one is kept and
marked ``unconverged``. Retries of
noise starts draw new noise; retries of test starts take the next test
utterance of the word (the same start would give the same result). Samples that
hit NaN/inf are never vocoded.

Output folder: ``wav/<id>.wav``, ``features/<id>.npy`` (what was vocoded),
``manifest.csv`` and ``run.json``. Ids are opaque hex so no name reveals the
word, condition or stage. Work is journalled one unit at a time, so an
interrupted run resumes where it stopped and gives the same result.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from hearsay import atomic
from hearsay.errors import HearsayError
from hearsay.manifest import MANIFEST_COLUMNS as COLUMNS
from hearsay.manifest import MANIFEST_NAME, PAPER_CONDITIONS, REVEALING_WORDS, write_manifest
from hearsay.provenance import file_sha256, library_versions
from hearsay.runs import RunFolder

from . import checkpoint, workers
from .corpus import Corpus, Utterance, read_corpus
from .features import extract_files, read_wave
from .maximize import Result, derive_seed, maximize
from .maximize import preset as preset_settings
from .vocoder import GriffinLimVocoder, Vocoder, finish, write_wav

JOURNAL = "manifest.journal.jsonl"
DESIGNS = ("paper",)
CONDITIONS = PAPER_CONDITIONS


@dataclass
class Summary:
    out: Path
    clips: int
    units_run: int
    units_resumed: int
    unconverged: int
    failed: int
    counts: dict[str, int] = field(default_factory=dict)


MIN_SPELLED = 3  # the shortest word an opaque id must not contain


def stimulus_id(key: str, *parts: object, avoid: Sequence[str] = ()) -> str:
    """Opaque 16-hex id, deterministic for the run; re-drawn on the rare chance it spells a word (e.g. "bed").

    Words of one or two characters are not avoided: they spell nothing in 16 hex digits, and a corpus of letters or
    digits ("a".."f", "0".."9") would leave almost no id to draw.
    """
    spelled = [w.lower() for w in avoid if len(w) >= MIN_SPELLED]
    for salt in range(1000):
        sid = hashlib.sha256(":".join(map(str, (key, *parts, salt))).encode()).hexdigest()[:16]
        if not any(w in sid for w in spelled):
            return sid
    raise HearsayError("could not draw an opaque stimulus id that spells no word")


def _save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32))
    atomic.write_bytes(path, buf.getvalue())


def write_clip(out: Path, sid: str, wave: np.ndarray, rate: int, features: torch.Tensor) -> None:
    """One stimulus: `wav/<id>.wav` and the features it was made from, `features/<id>.npy`."""
    write_wav(out / "wav" / f"{sid}.wav", wave, rate)
    _save_npy(out / "features" / f"{sid}.npy", features.numpy())


def _files_present(out: Path, rows: list[dict[str, Any]]) -> bool:
    """A journalled unit whose files were deleted since is redone (same seed, same files)."""
    return all((out / r["file"]).is_file() and (out / "features" / f"{r['stimulus_id']}.npy").is_file() for r in rows if r["file"])


def open_stimulus_folder(out: Path, identity: dict[str, Any], record: dict[str, Any]) -> RunFolder:
    """The run folder of a stimulus set (refused if it holds another run), with `wav/` and `features/` and no stale temporaries."""
    folder = RunFolder(out, identity, what="stimulus set")
    resumed_run = folder.open()
    for sub in ("wav", "features"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for stale in (out / sub).glob(".*.tmp"):
            stale.unlink()
    if not resumed_run:
        folder.write_record(record)
    return folder


def run_journalled(folder: RunFolder, out: Path, units: Sequence[str], run_unit: Callable[[str], list[dict[str, Any]]], *,
                   desc: str, progress: bool, pool: ProcessPoolExecutor | None = None) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Run every unit not yet journalled with its files present, one journal line each: ({unit: rows}, units run now).

    With `pool` (see `generation.workers`) `run_unit` runs in its worker processes, and each
    unit is journalled as soon as it finishes, in whatever order that is.
    """
    from tqdm import tqdm

    journal = folder.journal(JOURNAL)
    done = {unit: entry["rows"] for unit, entry in journal.read().items() if _files_present(out, entry["rows"])}
    todo = [unit for unit in units if unit not in done]
    finished = workers.run(pool, run_unit, [(unit,) for unit in todo]) if pool is not None else (((unit,), run_unit(unit)) for unit in todo)
    with tqdm(total=len(units), initial=len(units) - len(todo), desc=desc, unit="unit", disable=not progress) as bar:
        for (unit,), rows in finished:
            journal.append(unit, {"rows": rows})
            done[unit] = rows
            bar.update()
    return done, len(todo)


@dataclass
class Pick:
    """The attempt kept for one slot: its sample index, ``converged``/``unconverged``/``failed``, attempts counted."""

    index: int
    status: str
    attempts: int


def maximize_with_retries(run_attempts: Callable[[int, int], Result], target: int, per_class: int, max_attempts: int
                          ) -> tuple[Result, list[Pick]]:
    """The paper's retries for one unit: attempts in rounds (`attempt_rounds`) until A agrees in every slot.

    `run_attempts(first, stop)` maximizes samples [first, stop); attempt j of slot i
    is sample j * per_class + i. A slot keeps its first attempt A agrees with, else
    its last finite one (unconverged), else its last (failed, never voiced).
    """
    parts = []
    for lo, hi in attempt_rounds(max_attempts):
        parts.append(run_attempts(lo * per_class, hi * per_class))
        agree = torch.cat([(p.prob_a.argmax(1) == target) & ~p.failed for p in parts])
        if bool(agree.view(-1, per_class).any(dim=0).all()):
            break
    res = Result(**{f: None if getattr(parts[0], f) is None else torch.cat([getattr(p, f) for p in parts]) for f in Result.__dataclass_fields__})
    computed = len(agree) // per_class
    picks = []
    for slot in range(per_class):
        tries = [j * per_class + slot for j in range(computed)]
        good = [k for k in tries if bool(agree[k])]
        finite = [k for k in tries if not bool(res.failed[k])]
        if good:
            picks.append(Pick(good[0], "converged", tries.index(good[0]) + 1))
        else:
            picks.append(Pick(finite[-1], "unconverged", computed) if finite else Pick(tries[-1], "failed", computed))
    return res, picks


@dataclass
class _Models:
    a: checkpoint.Checkpoint
    b: checkpoint.Checkpoint
    ae: checkpoint.Checkpoint


def _load_models(classifier, evaluator, decoder, device) -> _Models:
    a = checkpoint.load(classifier, device=device, kind="classifier")
    b = checkpoint.load(evaluator, device=device, kind="classifier")
    ae = checkpoint.load(decoder, device=device, kind="autoencoder")
    checkpoint.require_compatible(a, b, ae)
    return _Models(a, b, ae)


def _choose_words(words: Sequence[str] | None, models: _Models, corpus: Corpus) -> list[str]:
    if corpus.classes != models.a.classes:
        extra = sorted(set(corpus.classes) ^ set(models.a.classes))
        detail = f" (differs in: {', '.join(extra[:5])})" if extra else " (same words, other order)"
        raise HearsayError(f"the corpus at {corpus.root} has other words than {Path(models.a.path).name} was trained on{detail}")
    chosen = list(dict.fromkeys(w.strip() for w in words if w.strip())) if words else list(models.a.classes)
    if not chosen:
        raise HearsayError("no words given")
    for w in chosen:
        models.a.class_index(w)
    tested = {u.word for u in corpus.split("test")}
    missing = [w for w in chosen if w not in tested]
    if missing:
        raise HearsayError(f"no test utterances of {missing[0]!r} in {corpus.root}: conditions 2 and 4 start from them")
    return chosen


def _test_starts(utts: list[Utterance], count: int, seed: int) -> list[Utterance]:
    """`count` test utterances in a seeded order, cycling when the word has fewer."""
    order = np.random.default_rng(seed).permutation(len(utts))
    return [utts[int(order[k % len(utts)])] for k in range(count)]


def _probs(model: torch.nn.Module, feats: torch.Tensor, device) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(feats.to(device)), dim=1).cpu()


def generate_stimuli(
    classifier: str | Path,
    evaluator: str | Path,
    decoder: str | Path,
    corpus: str | Path,
    out: str | Path,
    *,
    design: str = "paper",
    per_class: int = 3,
    max_attempts: int = 20,
    seed: int = 0,
    device: str = "auto",
    words: Sequence[str] | None = None,
    preset: str = "paper",
    vocoder: Vocoder | None = None,
    progress: bool = False,
    jobs: int = 1,
) -> Summary:
    """Write the paper's perceptual stimulus set to `out`, resuming a previous run with the same arguments.

    `jobs` > 1 on a CPU runs the (word, condition) units in that many worker processes of one
    thread each (`generation.workers`), with the default Griffin-Lim vocoder (a given `vocoder`
    runs in this process).
    """
    from .train import resolve_device

    if design not in DESIGNS:
        raise HearsayError(f"unknown design {design!r}; choose from {', '.join(DESIGNS)}")
    if per_class < 1:
        raise HearsayError(f"samples per class must be at least 1, got {per_class}")
    if max_attempts < 1:
        raise HearsayError(f"the attempts per sample must be at least 1, got {max_attempts}")
    workers.check_jobs(jobs)
    dev = resolve_device(device)
    parallel = jobs > 1 and vocoder is None and dev.type == "cpu"
    settings = {c.method: preset_settings(preset, c.method) for c in CONDITIONS}
    models = _load_models(classifier, evaluator, decoder, dev)
    data = read_corpus(corpus)
    chosen = _choose_words(words, models, data)
    cfg = models.a.feature_config
    vocoder = vocoder or GriffinLimVocoder(cfg, device=dev)
    voc_config = vocoder.config() if hasattr(vocoder, "config") else {"vocoder": type(vocoder).__name__, "sample_rate": vocoder.sample_rate}

    identity = {
        "design": design,
        "per_class": per_class,
        "max_attempts": max_attempts,
        "seed": seed,
        "words": chosen,
        "preset": preset,
        "settings": {m: s.to_dict() for m, s in settings.items()},
        "classifier_sha256": models.a.sha256,
        "evaluator_sha256": models.b.sha256,
        "decoder_sha256": models.ae.sha256,
        "corpus_fingerprint": data.fingerprint(),
        "feature_config": cfg.to_dict(),
        "vocoder": voc_config,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    out = Path(out)
    manifest_path = out / MANIFEST_NAME
    record = {
        "key": key,
        "paths": {"classifier": str(classifier), "evaluator": str(evaluator), "decoder": str(decoder), "corpus": str(data.root)},
        "device": str(dev),
        "versions": library_versions(),
        "columns": list(COLUMNS),
        "conditions": [c.__dict__ for c in CONDITIONS],
        "complete": False,
    }
    folder = open_stimulus_folder(out, identity, record)
    started = time.time()
    avoid = list(models.a.classes) + list(REVEALING_WORDS)
    tests = {w: [u for u in data.split("test") if u.word == w] for w in chosen}
    by_unit = {f"{w}|{c.name}": (w, c) for w in chosen for c in CONDITIONS}

    units = _Units(by_unit, tests, settings, per_class, max_attempts, seed, key, avoid, out)
    if parallel:
        with workers.pool(min(jobs, len(by_unit)), _start_unit_worker, (str(classifier), str(evaluator), str(decoder), units)) as pool:
            done, ran = run_journalled(folder, out, list(by_unit), _unit_in_worker, desc="stimuli", progress=progress, pool=pool)
    else:
        done, ran = run_journalled(folder, out, list(by_unit), lambda unit: units.run(unit, models, vocoder, dev), desc="stimuli", progress=progress)
    all_rows = [r for unit in by_unit for r in done[unit]]
    kept = [r for r in all_rows if r["status"] != "failed"]
    write_manifest(manifest_path, kept)
    counts: dict[str, int] = {}
    for r in kept:
        label = f"{r['condition']}/{r['stage']}"
        counts[label] = counts.get(label, 0) + 1
    failed = [r for r in all_rows if r["status"] == "failed" and r["stage"] == "after"]
    unconverged = sum(r["status"] == "unconverged" and r["stage"] == "after" for r in kept)
    record.update(
        complete=True,
        manifest_sha256=file_sha256(manifest_path),
        clips=len(kept),
        counts=counts,
        unconverged=unconverged,
        failed=[{k: r[k] for k in ("word", "condition", "stage", "attempts")} for r in failed],
        seconds_last_run=round(time.time() - started, 1),
    )
    folder.write_record(record)
    return Summary(out, len(kept), ran, len(by_unit) - ran, unconverged, len(failed), counts)


@dataclass(frozen=True)
class _Units:
    """The (word, condition) units of one stimulus set, runnable here or in a worker process."""

    by_unit: dict[str, tuple[str, Any]]
    tests: dict[str, list[Utterance]]
    settings: dict[str, Any]
    per_class: int
    max_attempts: int
    seed: int
    key: str
    avoid: list[str]
    out: Path

    def run(self, unit: str, models: "_Models", vocoder: Vocoder, dev: torch.device) -> list[dict[str, Any]]:
        word, cond = self.by_unit[unit]
        return _run_unit(word, cond, self.tests[word], models, self.settings[cond.method], self.per_class, self.max_attempts,
                         self.seed, self.key, self.avoid, vocoder, dev, self.out)


def _start_unit_worker(classifier: str, evaluator: str, decoder: str, units: _Units) -> tuple:
    dev = torch.device("cpu")
    models = _load_models(classifier, evaluator, decoder, dev)
    return units, models, GriffinLimVocoder(models.a.feature_config, device=dev), dev


def _unit_in_worker(unit: str) -> list[dict[str, Any]]:
    units, models, vocoder, dev = workers.state()
    return units.run(unit, models, vocoder, dev)


def attempt_rounds(max_attempts: int) -> list[tuple[int, int]]:
    """Attempt ranges [lo, hi) of doubling size: most samples converge at once, so later rounds are rarely run."""
    rounds, lo = [], 0
    while lo < max_attempts:
        hi = min(max_attempts, max(1, 2 * lo))
        rounds.append((lo, hi))
        lo = hi
    return rounds


def _run_unit(word, cond, test_utts, models, settings, per_class, max_attempts, seed, key, avoid, vocoder, dev, out) -> list[dict]:
    """Maximize one (word, condition), all slots batched, in rounds of attempts until A agrees; write one sample per slot."""
    target = models.a.class_index(word)
    n = per_class * max_attempts  # attempt j of slot i is sample j * per_class + i (its noise index, its test start)
    unit_seed = derive_seed(seed, "perceptual", word, cond.name)
    starts, start_feats = None, None
    if cond.init == "test":
        starts = _test_starts(test_utts, n, unit_seed)
        unique = list(dict.fromkeys(u.path for u in starts))
        feats = extract_files(unique, models.a.feature_config, device=dev)
        where = {p: i for i, p in enumerate(unique)}
        start_feats = torch.from_numpy(feats[[where[u.path] for u in starts]])
    res, picks = maximize_with_retries(lambda a, b: maximize(
        models.a.model, torch.full((b - a,), target, dtype=torch.long), method=cond.method,
        decoder=models.ae.model if cond.method == "decoder" else None,
        start=None if start_feats is None else start_feats[a:b], settings=settings, seed=unit_seed, first_index=a,
        evaluator=models.b.model, device=dev, shape=models.a.feature_config.shape,
    ), target, per_class, max_attempts)
    classes = models.a.classes
    base = {
        "word": word, "condition": cond.name, "seed": unit_seed,
        "classifier_sha256": models.a.sha256, "evaluator_sha256": models.b.sha256,
    }
    rows: list[dict[str, Any]] = []
    clips: list[tuple[str, torch.Tensor]] = []
    originals: list[tuple[str, Utterance, torch.Tensor]] = []
    for slot, pick in enumerate(picks):
        k, status, attempts = pick.index, pick.status, pick.attempts
        utt = starts[k] if starts else None
        pair = stimulus_id(key, word, cond.name, slot, "pair", avoid=avoid) if cond.paired else ""
        common = {
            **base, "pair_id": pair, "attempts": attempts, "status": status,
            "source_file": utt.relpath if utt else "", "speaker": utt.speaker if utt else "",
            "decoder_sha256": models.ae.sha256 if cond.method == "decoder" else "",
        }
        stages = [("after", res.features[k], res.prob_a[k], res.prob_b[k], float(res.trajectory[k, -1]))]
        if cond.paired:
            stages.insert(0, ("before", res.start_features[k], res.start_prob_a[k], res.start_prob_b[k], float(res.trajectory[k, 0])))
        for stage, feat, pa, pb, traj in stages:
            sid = stimulus_id(key, word, cond.name, slot, stage, avoid=avoid)
            row = {
                **common, "stimulus_id": sid, "method": cond.method, "init": cond.init, "stage": stage,
                "pred_a": classes[int(pa.argmax())], "prob_a": round(float(pa[target]), 6),
                "pred_b": classes[int(pb.argmax())], "prob_b": round(float(pb[target]), 6),
                "target_prob_a": round(traj, 6), "file": "",
            }
            if status != "failed" and bool(torch.isfinite(feat).all()):
                row["file"] = f"wav/{sid}.wav"
                clips.append((sid, feat))
            rows.append(row)
        if cond.init == "test" and cond.method == "decoder" and status != "failed":
            sid = stimulus_id(key, word, cond.name, slot, "original", avoid=avoid)
            originals.append((sid, utt, start_feats[k]))
            rows.append({
                **common, "stimulus_id": sid, "file": f"wav/{sid}.wav", "method": "natural", "init": "none",
                "stage": "original", "condition": "original", "attempts": "", "status": "original", "decoder_sha256": "",
            })
    _write_clips(clips, originals, rows, models, target, vocoder, dev, out)
    return rows


def _write_clips(clips, originals, rows, models, target, vocoder, dev, out: Path) -> None:
    """Vocode the unit's clips in one batch; originals keep their own audio, only loudness-matched."""
    if clips:
        waves = vocoder(torch.stack([f for _, f in clips]))
        for (sid, feat), wave in zip(clips, waves):
            write_clip(out, sid, wave, vocoder.sample_rate, feat)
    if originals:
        feats = torch.stack([f for _, _, f in originals])
        pa, pb = _probs(models.a.model, feats, dev), _probs(models.b.model, feats, dev)
        by_id = {r["stimulus_id"]: r for r in rows}
        classes = models.a.classes
        for i, (sid, utt, feat) in enumerate(originals):
            wave, rate = read_wave(utt.path)
            tuned = finish(torch.from_numpy(wave)[None], rate, getattr(vocoder, "target_rms_db", -23.0), getattr(vocoder, "fade_ms", 10.0))
            write_clip(out, sid, tuned[0].numpy(), rate, feat)
            by_id[sid].update(
                pred_a=classes[int(pa[i].argmax())], prob_a=round(float(pa[i, target]), 6),
                pred_b=classes[int(pb[i].argmax())], prob_b=round(float(pb[i, target]), 6),
                target_prob_a=round(float(pa[i, target]), 6),
            )
