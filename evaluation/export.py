"""The long answer table: one row per answer, the contract between the survey and the analysis."""
from __future__ import annotations

import csv
import io
import math

import pandas as pd

from evaluation.models import Experiment, MturkAssignment, Participant, Response, Stimulus
from hearsay.answers import ANSWER_COLUMNS
from hearsay.csvsafe import safe_cell
from hearsay.errors import HearsayError



def _correct(experiment: Experiment, stimulus: Stimulus, answer: str, rating: int | None):
    if experiment.task == Experiment.Task.RATING:
        return None
    expected = stimulus.expected_answer or stimulus.word
    return answer == expected


def analysable_responses(experiment: Experiment):
    """Every answer except those of assignments MTurk rejected (the one rule for rejected work).

    A rejected assignment stays stored and flagged (MturkAssignment.status); only its own answers
    leave the analysis. On the batch route one assignment is one answer, so a worker's other
    assignments stay; on the survey route the assignment is the participant's whole session.
    """
    rejected = MturkAssignment.Status.REJECTED
    return (
        Response.objects.filter(stimulus__experiment=experiment)
        .exclude(mturk_assignment__status=rejected)
        .exclude(participant__source=Participant.Source.MTURK, participant__paid_state=rejected.lower(),
                 mturk_assignment__isnull=True)
    )


def rejected_answer_count(experiment: Experiment) -> int:
    return Response.objects.filter(stimulus__experiment=experiment).count() - analysable_responses(experiment).count()


def _pay_ok(response: Response) -> bool | None:
    """Batch answers: paid when MTurk approved their assignment; survey answers: the participant's verdict."""
    batch = getattr(response, "mturk_assignment", None)
    if batch is not None:
        return True if batch.status == MturkAssignment.Status.APPROVED else None
    return response.participant.pay_ok


def _answer_rows(experiment: Experiment):
    """Every analysable answer of `experiment` as a dict of the contract's columns, in answer order, read in chunks."""
    responses = (
        analysable_responses(experiment)
        .select_related("participant", "stimulus", "mturk_assignment")
        .order_by("answered_at", "pk")
    )
    identification = experiment.task == Experiment.Task.IDENTIFICATION
    for r in responses.iterator(chunk_size=2000):
        p, s = r.participant, r.stimulus
        yield {
            "listener": p.worker_id if p.source in ("mturk", "machine") and p.worker_id else f"p{p.pk}",
            "listener_kind": p.kind,
            "listener_source": p.source,
            "stimulus": s.stimulus_id,
            "stimulus_kind": s.kind,
            "pair_id": s.pair_id or "",
            "method": s.method,
            "init": s.init,
            "stage": s.stage,
            "condition": s.condition,
            "word": s.word,
            "answer": r.answer if identification else "",
            "correct": _correct(experiment, s, r.answer, r.rating),
            "rating": float(r.rating) if r.rating is not None else math.nan,
            "play_count": int(r.play_count),
            "listened_to_end": bool(r.listened_to_end),
            "response_ms": float(r.response_ms) if r.response_ms is not None else math.nan,
            "pay_ok": _pay_ok(r),
            "analyse_ok": p.analyse_ok,
            "analyse_reasons": "; ".join(str(x) for x in p.analyse_reasons or []),
            "answered_at": r.answered_at.isoformat(),
        }


def _answered(slug: str) -> Experiment:
    experiment = Experiment.objects.by_slug(slug)
    if not analysable_responses(experiment).exists():
        raise HearsayError(f"experiment {slug!r} has no answers yet")
    return experiment


def long_table(slug: str) -> pd.DataFrame:
    """Every answer of experiment `slug`, in answer order; raises HearsayError if there are none."""
    rows = list(_answer_rows(_answered(slug)))
    frame = pd.DataFrame(rows, columns=list(ANSWER_COLUMNS))
    frame["rating"] = frame["rating"].astype(float)
    frame["response_ms"] = frame["response_ms"].astype(float)
    frame["play_count"] = frame["play_count"].astype(int)
    frame["listened_to_end"] = frame["listened_to_end"].astype(bool)
    return frame


def _csv_cell(value):
    """A cell as pandas' to_csv writes it (missing values empty), behind a quote when a spreadsheet would run it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return safe_cell(value)


def long_table_csv_chunks(slug: str, rows_per_chunk: int = 1000):
    """The long table as the CSV researchers download, as an iterator of byte chunks.

    Byte for byte what ``safe_frame(long_table(slug)).to_csv(index=False)`` writes, but a study of any
    size is read from the database in chunks and sent as it is read, never held whole in memory.
    Raises HearsayError at once (before the first chunk) for an unknown or unanswered experiment.
    """
    experiment = _answered(slug)
    columns = list(ANSWER_COLUMNS)

    def chunks():
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for i, row in enumerate(_answer_rows(experiment), 1):
            writer.writerow([_csv_cell(row[c]) for c in columns])
            if i % rows_per_chunk == 0:
                yield buffer.getvalue().encode("utf-8")
                buffer.seek(0)
                buffer.truncate()
        if buffer.tell():
            yield buffer.getvalue().encode("utf-8")

    return chunks()


def long_table_csv(slug: str) -> bytes:
    """The long table as the CSV researchers download: cells a spreadsheet would run as formulas are neutralized."""
    return b"".join(long_table_csv_chunks(slug))


def experiment_info(slug: str) -> dict:
    """What the analysis needs besides the answers; raises HearsayError like long_table."""
    experiment = Experiment.objects.by_slug(slug)
    if not Response.objects.filter(stimulus__experiment=experiment).exists():
        raise HearsayError(f"experiment {slug!r} has no answers yet")
    return {
        "slug": experiment.slug,
        "task": experiment.task,
        "words": list(experiment.words),
        "ratings_per_stimulus": experiment.ratings_per_stimulus,
        "rejected_answers": rejected_answer_count(experiment),
    }
