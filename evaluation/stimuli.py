"""Loading a generation manifest (manifest.csv + wav files) into an experiment.

Everything is validated before anything is written; rows and files are then
written in one transaction, and files already copied are removed if it fails,
so a bad manifest loads nothing. Loading the same manifest again is a no-op:
a stimulus is known by its id and the checksum of its file.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from tqdm import tqdm
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from evaluation import clean_audio, traps
from evaluation.models import Experiment, Response, Stimulus
from hearsay import manifest as manifest_contract
from hearsay.answers import RATING_LABELS
from hearsay.errors import HearsayError

MAX_CLIP_SECONDS = 30.0
TRAPS_SEED = 0


@dataclass
class Row:
    stimulus_id: str
    path: Path
    data: bytes
    sha256: str
    word: str
    method: str
    init: str
    stage: str
    pair_id: str
    condition: str
    kind: str
    provenance: dict


@dataclass
class LoadReport:
    experiment: str
    created: bool = False
    added: dict = field(default_factory=dict)  # kind -> count
    unchanged: int = 0

    def summary(self) -> str:
        added = ", ".join(f"{n} {kind}" for kind, n in sorted(self.added.items()) if n) or "nothing new"
        return f"experiment {self.experiment}: added {added}; {self.unchanged} already loaded"


def _read_audio(path: Path, where: str) -> bytes:
    """The file's bytes, once it is known to be audio of a sensible length.

    Any format libsndfile decodes is taken (wav in all its variants, WAVE_FORMAT_EXTENSIBLE, RF64 and W64
    included, FLAC, Ogg, AIFF...), whatever the file's extension: every clip is decoded and stored again as
    bare wav (`clean_audio`), so the format a researcher's tool chose never reaches a listener.
    """
    if not path.is_file():
        raise HearsayError(f"{where}: audio file {path} does not exist")
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HearsayError(f"{where}: {path} is not a readable audio file ({reason})") from None
    if info.frames == 0:
        raise HearsayError(f"{where}: {path} holds no samples")
    if info.duration > MAX_CLIP_SECONDS:
        raise HearsayError(f"{where}: {path} lasts {info.duration:.1f} s, longer than {MAX_CLIP_SECONDS:.0f} s")
    return path.read_bytes()


def read_manifest(manifest: str | Path) -> list[Row]:
    """Parse and validate every row (columns, values, files) without touching the database."""
    parsed = manifest_contract.read_manifest(manifest)
    rows = []
    folder = parsed.folder.resolve()
    for entry in tqdm(parsed.rows, desc="checking clips", unit="clip", disable=None):
        where = f"{parsed.path}:{entry.line}"
        path = parsed.folder.joinpath(*entry.parts)
        try:
            target = path.resolve()
        except (OSError, RuntimeError) as exc:  # a link loop
            raise HearsayError(f"{where}: file {entry.file!r} cannot be followed ({exc})") from None
        if not target.is_relative_to(folder):  # a link (a set unpacked from someone's zip) must not reach past the set
            raise HearsayError(f"{where}: file {entry.file!r} is a link to {target}, outside the manifest's folder: "
                               "copy that file into the folder")
        data = _read_audio(path, where)
        provenance = dict(entry.provenance, manifest_file=entry.file)
        rows.append(
            Row(
                stimulus_id=entry.stimulus_id, path=path, data=data, sha256=hashlib.sha256(data).hexdigest(),
                word=entry.word, method=entry.method, init=entry.init, stage=entry.stage, pair_id=entry.pair_id,
                condition=entry.condition, kind=entry.kind, provenance=provenance,
            )
        )
    return rows


def _corpus_stimulus_id(relpath: str) -> str:
    """ "corpus:word/file.wav", or, when longer than an id may be, its start and a hash of the whole (distinct, stable)."""
    sid = f"corpus:{relpath}"
    if len(sid) <= manifest_contract.MAX_ID_LENGTH:
        return sid
    digest = hashlib.sha256(relpath.encode()).hexdigest()[:16]
    return f"{sid[: manifest_contract.MAX_ID_LENGTH - len(digest) - 1]}~{digest}"


def corpus_gold_rows(root: str | Path, words: list[str], per_word: int) -> list[Row]:
    """Clean natural utterances of the experiment's words from a Speech Commands-layout folder (test split first)."""
    from generation.corpus import nfc, read_corpus

    corpus = read_corpus(root)
    absent = [word for word in words if nfc(word) not in corpus.classes]  # the corpus names its words in NFC
    if absent:
        more = ", ..." if len(corpus.classes) > 10 else ""
        raise HearsayError(f"no gold clips of manifest word(s) {', '.join(repr(w) for w in absent)}: the corpus at {corpus.root} "
                           f"has no such word folder (its words: {', '.join(corpus.classes[:10])}{more})")
    order = {"test": 0, "validation": 1, "train": 2}
    rows = []
    for word in words:
        spelled = nfc(word)
        pool = sorted((u for u in corpus.utterances if u.word == spelled), key=lambda u: (order[u.split], u.relpath))
        for utt in pool[:per_word]:
            data = _read_audio(utt.path, f"corpus {corpus.root}")
            rows.append(
                Row(
                    stimulus_id=_corpus_stimulus_id(utt.relpath), path=utt.path, data=data, sha256=hashlib.sha256(data).hexdigest(),
                    word=word, method="natural", init="none", stage="original", pair_id="", condition="gold-corpus",
                    kind="gold", provenance={"corpus_root": str(corpus.root), "source_file": utt.relpath, "speaker": utt.speaker, "split": utt.split},
                )
            )
    return rows


def _opaque_name() -> str:
    return f"stimuli/{secrets.token_hex(16)}.wav"


def load_manifest(
    manifest: str | Path,
    slug: str,
    *,
    create: bool = False,
    task: str | None = None,
    words: list[str] | None = None,
    ratings_per_stimulus: int | None = None,
    title: str | None = None,
    gold_from_corpus: str | Path | None = None,
    gold_per_word: int = 1,
) -> LoadReport:
    """Validate `manifest` fully, then add its stimuli (plus traps, practice and anchors) to experiment `slug`."""
    rows = read_manifest(manifest)
    manifest_words = sorted({r.word for r in rows})
    experiment = Experiment.objects.filter(slug=slug).first()
    if experiment is None and not create:
        raise HearsayError(f"no experiment named {slug!r}; create it while loading")
    if experiment is not None and task and task != experiment.task:
        raise HearsayError(f"experiment {slug!r} exists with task {experiment.task}, not {task}")
    if task and task not in Experiment.Task.values:
        raise HearsayError(f"unknown task {task!r}: choose identification or rating")
    if ratings_per_stimulus is not None and ratings_per_stimulus < 1:
        raise HearsayError("ratings per stimulus must be at least 1")
    word_list = list(words) if words else (list(experiment.words) if experiment and experiment.words else manifest_words)
    if len(set(word_list)) != len(word_list):
        raise HearsayError("the word list names a word twice")
    if (experiment is not None and words and list(experiment.words) != word_list
            and Response.objects.filter(stimulus__experiment=experiment).exists()):
        raise HearsayError(f"experiment {slug!r} has answers: its word list ({', '.join(experiment.words)}) is what they "
                           "were given from and cannot change; load without --words, or into a new experiment")
    unknown = sorted(set(manifest_words) - set(word_list))
    if unknown:
        raise HearsayError(f"manifest word(s) not in the experiment's word list: {', '.join(unknown)}")
    if gold_from_corpus:
        rows += corpus_gold_rows(gold_from_corpus, manifest_words, gold_per_word)

    if experiment is not None:
        known = {s.stimulus_id: s for s in experiment.stimuli.all()}
        for row in rows:
            old = known.get(row.stimulus_id)
            if old is not None and old.sha256 != row.sha256:
                raise HearsayError(f"stimulus {row.stimulus_id!r} is already loaded with different audio ({row.path} changed)")
            if old is not None and old.word != row.word:
                raise HearsayError(f"stimulus {row.stimulus_id!r} is already loaded with word {old.word!r}, not {row.word!r}")
            for name in ("condition", "method", "init", "stage", "pair_id", "kind"):
                if old is not None and getattr(old, name) != getattr(row, name):
                    raise HearsayError(f"stimulus {row.stimulus_id!r} is already loaded with {name} {getattr(old, name)!r}, "
                                       f"not {getattr(row, name)!r}: give a changed clip a new stimulus_id")
    else:
        known = {}

    new_rows = [r for r in rows if r.stimulus_id not in known]
    report = LoadReport(experiment=slug, created=experiment is None, unchanged=len(rows) - len(new_rows))
    task_name = task or (experiment.task if experiment else Experiment.Task.IDENTIFICATION)
    need_qc = experiment is None or not experiment.stimuli.filter(kind__in=["trap", "practice"]).exists()
    synthesized = []
    anchors = []
    if need_qc:
        practice_count = experiment.practice_trials if experiment else Experiment._meta.get_field("practice_trials").default
        synthesized = traps.trap_clips(task_name, manifest_words, seed=TRAPS_SEED, max_seconds=clean_audio.longest_test_seconds(rows)) + traps.practice_clips(
            task_name, manifest_words, max(practice_count, 1), seed=TRAPS_SEED
        )
        if task_name == Experiment.Task.RATING:
            anchors = traps.anchor_clips(manifest_words[0], seed=TRAPS_SEED)

    stored = clean_audio.for_load(new_rows, synthesized, anchors, traps.RATE)  # bare wav, one rate, check lengths = test lengths
    saved: list[str] = []
    try:
        with transaction.atomic():
            if experiment is None:
                experiment = Experiment.objects.create(
                    slug=slug, task=task_name, words=word_list, title=title or slug,
                    ratings_per_stimulus=ratings_per_stimulus or Experiment._meta.get_field("ratings_per_stimulus").default,
                )
            else:
                changed = False
                if words and list(experiment.words) != word_list:
                    experiment.words, changed = word_list, True
                if ratings_per_stimulus is not None and experiment.ratings_per_stimulus != ratings_per_stimulus:
                    experiment.ratings_per_stimulus, changed = ratings_per_stimulus, True
                if title and experiment.title != title:
                    experiment.title, changed = title, True
                if changed:
                    experiment.save()
            for row in tqdm(new_rows, desc="loading clips", unit="clip", disable=None):
                name = default_storage.save(_opaque_name(), ContentFile(stored[row.stimulus_id]))
                saved.append(name)
                Stimulus.objects.create(
                    experiment=experiment, stimulus_id=row.stimulus_id, audio=name, word=row.word, method=row.method,
                    init=row.init, stage=row.stage, condition=row.condition, pair_id=row.pair_id, kind=row.kind,
                    expected_answer=row.word if row.kind == "gold" else "", sha256=row.sha256, provenance=row.provenance,
                )
                report.added[row.kind] = report.added.get(row.kind, 0) + 1
            for clip in synthesized:
                data = stored[clip.stimulus_id]
                name = default_storage.save(_opaque_name(), ContentFile(data))
                saved.append(name)
                Stimulus.objects.create(
                    experiment=experiment, stimulus_id=clip.stimulus_id, audio=name, word=clip.word, method="espeak",
                    init="none", stage="original", condition=clip.kind, kind=clip.kind, expected_answer=clip.expected_answer,
                    sha256=hashlib.sha256(data).hexdigest(), provenance={"text": clip.text, "synthesizer": "espeak-ng", "seed": TRAPS_SEED},
                )
                report.added[clip.kind] = report.added.get(clip.kind, 0) + 1
            if anchors:
                entries = []
                for value, samples in anchors:
                    name = default_storage.save(_opaque_name(), ContentFile(stored[clean_audio.anchor_key(value)]))
                    saved.append(name)
                    entries.append({"value": value, "label": RATING_LABELS[value], "audio": name, "word": manifest_words[0]})
                experiment.anchors = entries
                experiment.save(update_fields=["anchors"])
    except BaseException:
        for name in saved:
            default_storage.delete(name)
        raise
    return report
