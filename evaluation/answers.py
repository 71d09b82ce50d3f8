"""The one writer of answers: web listeners, machine listeners and batch results all store through `store_answer`.

It checks the answer against the experiment's options, decides whether the clip was
heard to the end, and keeps each test clip's quota of N human answers under row locks:

* web answers (``heard=None``): this app served the audio, so its own log decides.
  An answer is refused until the clip was served in full within one play and the
  clip's duration has passed since the first play began (``LISTEN_TOLERANCE_MS`` of
  slack for timers), so a page that skips the audio cannot answer early;
* machine listeners and batch results (``heard=Heard(...)``): the audio was heard
  elsewhere (a model read the whole file; MTurk's page played it), and what that
  route reports is stored as given.

Staff previews store no Response at all: the trial is only marked done so the flow moves on.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F, Max
from django.utils import timezone

from evaluation.assignment import take_write_lock, with_retries
from evaluation.models import Assignment, Experiment, Participant, Response, Stimulus
from hearsay.answers import NONE_ANSWER, RATING_MAX, RATING_MIN
from hearsay.errors import HearsayError

RATINGS = range(RATING_MIN, RATING_MAX + 1)
FULL = "this clip already has all the answers it needs; please continue with the next one"
LISTEN_TOLERANCE_MS = 250


class Conflict(HearsayError):
    """The answer contradicts what is stored or observed (answered differently, not heard yet, clip full)."""


class InvalidAnswer(HearsayError):
    """The answer is not one of the experiment's options."""


@dataclass(frozen=True)
class Heard:
    """How a clip was heard when this app did not serve it: reported by the route that played it."""

    play_count: int = 1
    listened_to_end: bool = True
    presented_at: datetime | None = None
    answered_at: datetime | None = None


@dataclass(frozen=True)
class Stored:
    """The stored answer (None for a staff preview) and whether this call stored it (False: an identical repeat)."""

    response: Response | None
    created: bool


def validate(experiment: Experiment, answer: str, rating: int | None) -> tuple[str, int | None]:
    """(answer, rating) as stored for this experiment's task; InvalidAnswer for anything it does not offer."""
    if experiment.task == Experiment.Task.IDENTIFICATION:
        if answer not in set(experiment.words) | {NONE_ANSWER}:
            raise InvalidAnswer(f"{answer!r} is not one of this experiment's answers")
        return answer, None
    if rating not in RATINGS:
        raise InvalidAnswer("a rating from 0 (Bad) to 4 (Excellent) is required")
    return "", int(rating)


def slot_for(participant: Participant, stimulus: Stimulus) -> Assignment:
    """The participant's trial for this clip, made at the end of their list when there is none yet.

    For routes that answer clips nobody handed out through evaluation.assignment: machine
    listeners, and results of batches run on the requester site.
    """
    with transaction.atomic():
        existing = Assignment.objects.filter(participant=participant, stimulus=stimulus).first()
        if existing is not None:
            return existing
        last = participant.assignments.aggregate(m=Max("position"))["m"]
        return Assignment.objects.create(participant=participant, stimulus=stimulus, position=0 if last is None else last + 1)


def listening_gap_ms(assignment: Assignment, now: datetime) -> int | None:
    """Milliseconds still to wait before this clip can have been heard to the end; None when it never was served in full."""
    if assignment.served_full_at is None or assignment.first_played_at is None:
        return None
    heard_by = assignment.first_played_at + timedelta(milliseconds=(assignment.clip_ms or 0) - LISTEN_TOLERANCE_MS)
    return max(0, int((heard_by - now).total_seconds() * 1000))


def store_answer(
    assignment: Assignment,
    *,
    answer: str = "",
    rating: int | None = None,
    response_ms: int | None = None,
    heard: Heard | None = None,
    enforce_quota: bool = True,
) -> Stored:
    """Store one answer to `assignment` exactly once.

    `heard` is None when this app served the clip (its audio log decides), else what the
    route that played it reports. `enforce_quota=False` keeps human answers to clips that
    already have their N (batch results: the work was done and paid for; it is still counted).
    An identical repeat returns the stored answer with created=False.
    Raises InvalidAnswer for an option the experiment does not offer and Conflict for a
    different answer to an answered trial, a clip not yet heard to the end, or a full clip.
    """
    answer, rating = validate(assignment.participant.experiment, answer, rating)

    def run() -> Stored:
        with transaction.atomic():
            take_write_lock(assignment.participant)
            # of=("self",): lock only the trial, never the joined rows (assignment.assign locks the
            # experiment); the stimulus row is locked last, by the quota's conditional increment, so
            # listeners answering the same clip wait for each other only from there to the commit
            locked = (
                Assignment.objects.select_for_update(of=("self",))
                .select_related("participant", "stimulus__experiment").get(pk=assignment.pk)
            )
            stimulus, participant = locked.stimulus, locked.participant
            if locked.answered:
                previous = Response.objects.filter(assignment=locked).first()
                if previous is None or (previous.answer == answer and previous.rating == rating):
                    return Stored(previous, False)
                raise Conflict("this clip was already answered differently; answers cannot be changed")
            if locked.void:
                raise Conflict("this clip is no longer needed; please continue with the next one")
            now = timezone.now()
            if heard is None:
                gap = listening_gap_ms(locked, now)
                if gap is None:
                    raise Conflict("please listen to the whole clip before answering")
                if gap > 0:
                    raise Conflict(f"please listen to the whole clip before answering ({gap / 1000:.1f} s of it had not played yet)")
                play_count, listened, presented_at, answered_at = locked.play_count, True, locked.created, None
            else:
                play_count, listened, presented_at, answered_at = heard.play_count, heard.listened_to_end, heard.presented_at, heard.answered_at
            counted = participant.kind == Participant.Kind.HUMAN and not participant.preview  # machines and previews never use up the N
            n = stimulus.experiment.ratings_per_stimulus
            quota = enforce_quota and counted and stimulus.kind == Stimulus.Kind.TEST
            if quota and stimulus.answer_count >= n:  # already full when read: no need to write anything
                raise Conflict(FULL)
            Assignment.objects.filter(pk=locked.pk).update(answered=True, played_to_end=listened, play_count=play_count)
            # an active listener keeps their remaining slots
            Assignment.objects.filter(participant=participant, answered=False).update(
                expires_at=now + timedelta(minutes=stimulus.experiment.assignment_timeout_minutes)
            )
            if participant.preview:
                return Stored(None, True)
            response = Response.objects.create(
                assignment=locked, participant=participant, stimulus=stimulus, answer=answer, rating=rating,
                play_count=play_count, listened_to_end=listened, response_ms=response_ms, presented_at=presented_at,
            )
            if answered_at is not None:
                Response.objects.filter(pk=response.pk).update(answered_at=answered_at)
            if counted:
                counter = Stimulus.objects.filter(pk=stimulus.pk)
                if quota:  # the decision: under the row lock this UPDATE takes, re-read after any wait (no over-collection)
                    counter = counter.filter(answer_count__lt=n)
                if not counter.update(answer_count=F("answer_count") + 1):
                    raise Conflict(FULL)  # rolls back this answer's writes
            return Stored(response, True)

    return with_retries(run)
