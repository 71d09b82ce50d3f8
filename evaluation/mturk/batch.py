"""The requester website's batch route: export a batch (CSV, layout, the researcher's key) and import its results.

Workers' pages load each clip from this app under an opaque name (evaluation.batch_audio), so a
batch URL lives as long as the batch, never expires, and names no bucket, key or stimulus. The key
from opaque name to stimulus id stays with the researcher (batch_key.csv) and in the database.
Results are read by hearsay.mturk_results, the same reader `analyze --mturk-csv` uses.
"""
from __future__ import annotations

import csv
import io
import json
import random
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone as dj_timezone

from evaluation.answers import Heard, slot_for, store_answer
from evaluation.models import (
    Assignment,
    Experiment,
    MturkAssignment,
    MturkBatch,
    MturkBatchClip,
    Participant,
    Response,
    Stimulus,
)
from hearsay import atomic
from hearsay.answers import NONE_LABEL, RATING_SCALE
from hearsay.csvsafe import safe_row
from hearsay.errors import HearsayError
from hearsay.mturk_results import (
    BATCH_KEY,
    IDENTIFICATION_FIELD,
    PLAY_COUNT_FIELD,
    PLAYED_TO_END_FIELD,
    RATING_FIELD,
    Answer,
    Invalid,
    ResultRow,
    batch_key_bytes,
    interpret,
    later_status,
    read_results,
)
from hearsay.provenance import bytes_sha256, library_versions

BATCH_CSV = "batch.csv"
BATCH_LAYOUT = "layout.html"
BATCH_RECORD = "batch.json"
AUDIO_SUFFIX = ".wav"
_LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")


def answer_field(experiment: Experiment) -> str:
    return RATING_FIELD if experiment.task == Experiment.Task.RATING else IDENTIFICATION_FIELD


def _words_in(text: str, words: Iterable[str]) -> set[str]:
    tokens = set(re.split(r"[^a-z0-9]+", text.lower()))
    return {w for w in words if w.lower() in tokens}


def batch_layout(experiment: Experiment, anchors: list[str]) -> str:
    """The HTML layout pasted into a requester-website project; ${...} are the batch CSV's columns."""
    rating = experiment.task == Experiment.Task.RATING
    if rating:
        categories = [r.text for r in RATING_SCALE]
        anchor_rows = [{"label": r.text, "url": url} for r, url in zip(RATING_SCALE, anchors)]
    else:
        categories = list(experiment.words) + [NONE_LABEL]
        anchor_rows = []
    return render_to_string(
        "evaluation/mturk_layout.html",
        {
            "rating": rating,
            "field": answer_field(experiment),
            "categories_json": json.dumps(categories),
            "anchors": anchor_rows,
            "scale": RATING_SCALE,
            "none_label": NONE_LABEL,
            "play_count_field": PLAY_COUNT_FIELD,
            "played_to_end_field": PLAYED_TO_END_FIELD,
            "replay_limit": experiment.replay_limit,
            "instructions": experiment.instructions,
        },
    )


def batch_clips(experiment: Experiment, label: str) -> list[MturkBatchClip]:
    """The batch's clips (test and gold, not practice or traps), each under its opaque name; reruns keep the names."""
    if not _LABEL.fullmatch(label):
        raise HearsayError(f"batch label {label!r} must be 1-64 letters, digits, '.', '_' or '-'")
    stimuli = list(experiment.stimuli.exclude(kind__in=[Stimulus.Kind.PRACTICE, Stimulus.Kind.TRAP]).order_by("pk"))
    if not stimuli:
        raise HearsayError(f"experiment {experiment.slug!r} has no stimuli to export")
    with transaction.atomic():
        batch, _ = MturkBatch.objects.get_or_create(experiment=experiment, label=label)
        known = {c.stimulus_id: c for c in batch.clips.select_related("stimulus")}
        for s in stimuli:
            if s.pk not in known:
                known[s.pk] = MturkBatchClip.objects.create(batch=batch, stimulus=s, name=secrets.token_hex(16) + AUDIO_SUFFIX)
    return [known[s.pk] for s in stimuli]


def batch_key_from_database() -> dict[str, str]:
    """Every batch clip's opaque audio name -> stimulus id, for reading a results file without its key file.
    Names are 128 random bits, unique across experiments, so one map serves every batch."""
    return dict(MturkBatchClip.objects.values_list("name", "stimulus__stimulus_id"))


def batch_audio_url(base_url: str, name: str) -> str:
    return base_url.rstrip("/") + reverse("evaluation:batch_audio", args=[name])


@dataclass(frozen=True)
class BatchFiles:
    csv: Path
    layout: Path
    key: Path
    record: Path
    rows: int


def _check_same_batch(record: Path, slug: str, label: str) -> None:
    """A folder may be exported into again for the same experiment and batch label only: another batch's key
    (which audio name is which clip) would be overwritten."""
    if not record.exists():
        return
    try:
        earlier = json.loads(record.read_text(encoding="utf-8"))
        found = (str(earlier["experiment"]), str(earlier["batch"]))
    except (OSError, ValueError, TypeError, KeyError):
        raise HearsayError(f"{record} exists but is no batch record of this tool; export into another folder") from None
    if found != (slug, label):
        raise HearsayError(f"{record.parent} holds batch {found[1]!r} of experiment {found[0]!r}; "
                           f"export batch {label!r} of {slug!r} into another folder")


def export_batch(
    experiment: Experiment, out_dir: Path, base_url: str, anchors: list[str] | None = None, seed: int = 0,
    label: str = "main",
) -> BatchFiles:
    """One CSV row per clip (one HIT each), shuffled; URLs point at this app's batch audio under opaque names."""
    parts = urlsplit(base_url)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise HearsayError(f"base URL {base_url!r} must be an absolute https:// URL of this site (MTurk pages load only HTTPS media)")
    anchors = list(anchors or [])
    rating = experiment.task == Experiment.Task.RATING
    if anchors and not rating:
        raise HearsayError("anchor clips belong to the rating task; this experiment is identification")
    if anchors and len(anchors) != len(RATING_SCALE):
        raise HearsayError(f"give {len(RATING_SCALE)} anchor URLs, Excellent first, Bad last (got {len(anchors)})")
    for url in anchors:
        if urlsplit(url).scheme != "https":
            raise HearsayError(f"anchor URL {url!r} must be https://")
    if not rating and _words_in(base_url, experiment.words):
        raise HearsayError(f"the base URL {base_url} names a word of the experiment; workers would see it in every clip's URL")
    clips = batch_clips(experiment, label)
    random.Random(seed).shuffle(clips)
    header = ["experiment", "class_label", "audio_url"] if rating else ["audio_url"]
    rows = [header]
    for clip in clips:
        url = batch_audio_url(base_url, clip.name)
        rows.append([experiment.slug, clip.stimulus.word, url] if rating else [url])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(safe_row(r) for r in rows)
    csv_bytes = buf.getvalue().encode("utf-8")
    key_bytes = batch_key_bytes(sorted((c.name, c.stimulus.stimulus_id) for c in clips))
    layout_bytes = batch_layout(experiment, anchors).encode("utf-8")
    record = {
        "experiment": experiment.slug,
        "task": experiment.task,
        "batch": label,
        "created": dj_timezone.now().isoformat(),
        "base_url": base_url,
        "seed": seed,
        "rows": len(clips),
        "anchors": anchors,
        "answer_field": answer_field(experiment),
        "sha256": {BATCH_CSV: bytes_sha256(csv_bytes), BATCH_LAYOUT: bytes_sha256(layout_bytes), BATCH_KEY: bytes_sha256(key_bytes)},
        "versions": library_versions(("django", "botocore")),
    }
    out_dir = Path(out_dir)
    paths = BatchFiles(out_dir / BATCH_CSV, out_dir / BATCH_LAYOUT, out_dir / BATCH_KEY, out_dir / BATCH_RECORD, len(clips))
    _check_same_batch(paths.record, experiment.slug, label)
    atomic.write_bytes(paths.csv, csv_bytes)
    atomic.write_bytes(paths.layout, layout_bytes)
    atomic.write_bytes(paths.key, key_bytes)
    atomic.write_bytes(paths.record, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
    return paths


# ---------------------------------------------------------------- importing the results file


@dataclass
class ImportReport:
    rows: int = 0
    imported: int = 0
    already: int = 0
    rejected: int = 0
    invalid: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    participants_created: int = 0


def _resolver(experiment: Experiment):
    names = dict(
        MturkBatchClip.objects.filter(batch__experiment=experiment).values_list("name", "stimulus__stimulus_id")
    )
    # clips exported before batches had opaque names of their own went by their storage name
    for s in experiment.stimuli.only("stimulus_id", "audio"):
        names.setdefault(Path(s.audio.name).name, s.stimulus_id)

    def resolve(row: ResultRow) -> str | None:
        return names.get(row.audio_name)

    return resolve


def import_results(experiment: Experiment, path: Path, strict: bool = False) -> ImportReport:
    """Store a requester-website results file: every assignment recorded (rejected and unreadable ones flagged),
    each readable answer stored once. Batch results come from the live site, so there is no sandbox switch;
    importing the same file again changes only assignment states, and only forward (an older download imported
    after a newer one leaves an approval or rejection as it is)."""
    results = read_results(path)
    task = results.task()
    if task != experiment.task:
        raise HearsayError(f"{path} holds {task} answers; experiment {experiment.slug!r} is a {experiment.task} experiment")
    reading = interpret(results, task, list(experiment.words), _resolver(experiment), experiment=experiment.slug)
    if strict and reading.invalid:
        raise HearsayError(f"{path}: {reading.summary()}; nothing imported. First: {reading.invalid[0].describe()}")
    stimuli = {s.stimulus_id: s for s in experiment.stimuli.all()}
    report = ImportReport(rows=len(results.rows), invalid=[i.describe() for i in reading.invalid])
    with transaction.atomic():
        for item in [*reading.answers, *reading.invalid]:
            row = item.row
            existing = MturkAssignment.objects.filter(sandbox=False, assignment_id=row.assignment_id).first()
            if existing is not None:
                if existing.experiment_id != experiment.pk:
                    raise HearsayError(f"{path}:{row.line}: assignment {row.assignment_id} belongs to another experiment")
                status = later_status(existing.status, row.status)  # an older download never undoes a decision
                if existing.status != status:
                    existing.status = status
                    existing.save(update_fields=["status", "synced_at"])
                report.already += 1
                continue
            record = MturkAssignment(
                experiment=experiment, sandbox=False, hit_id=row.hit_id, assignment_id=row.assignment_id,
                worker_id=row.worker_id, status=row.status, via_batch=True, submitted_at=row.submitted,
            )
            if isinstance(item, Invalid):
                record.invalid_reason = f"line {row.line}: {item.reason}"
                record.save()
                continue
            participant, created = Participant.objects.get_or_create(  # the reader gave the ID in canonical form
                experiment=experiment, source=Participant.Source.MTURK, worker_id=row.worker_id,
                defaults={"step": Participant.Step.DONE, "finished_at": row.submitted},
            )
            record.participant = participant
            report.participants_created += created
            stimulus = stimuli[item.key]
            if Assignment.objects.filter(participant=participant, stimulus=stimulus).exists():
                record.invalid_reason = f"line {row.line}: {row.worker_id} answered this clip before"
                record.save()
                report.duplicates.append(f"{row.worker_id} answered the same clip again in {row.assignment_id}")
                continue
            record.response = _store_response(participant, stimulus, item)
            record.save()
            report.imported += 1
            report.rejected += row.status == MturkAssignment.Status.REJECTED
    return report


def _store_response(participant: Participant, stimulus: Stimulus, a: Answer) -> Response:
    """Through the one answer writer: the work was done and paid for on the requester site, so it counts
    even past the clip's N, and the site's play log stands in for ours."""
    heard = Heard(play_count=a.play_count, listened_to_end=a.played_to_end, presented_at=a.row.accepted,
                  answered_at=a.row.submitted)
    stored = store_answer(slot_for(participant, stimulus), answer=a.answer, rating=a.rating, heard=heard,
                          enforce_quota=False)
    if a.row.submitted is not None:
        Participant.objects.filter(pk=participant.pk, finished_at__lt=a.row.submitted).update(finished_at=a.row.submitted)
    return stored.response
