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

A web answer is three statements in one transaction, each deciding one thing on the rows as
they are when it runs: the trial is marked answered only if it still is unanswered and not
voided (the same statement extends the listener's other holds), the answer is inserted, and
the clip's count rises only while it is below N (its row lock is taken last, so listeners
answering the same clip wait for each other only from there to the commit). What they read
before (the listening log, the clip's count) only ever grows, so a check that passed on
that read still holds; a check that failed refuses the answer without writing anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from evaluation.assignment import with_retries
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
        existing = Assignment.objects.select_related("participant__experiment", "stimulus").filter(participant=participant, stimulus=stimulus).first()
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


# Marks the trial answered if it still is unanswered and not voided, and extends every
# other unanswered trial of the listener's to the full timeout (an active listener keeps
# their slots). RETURNING tells whether the trial was among the rows, and its play count then.
MARK_ANSWERED = """
UPDATE evaluation_assignment
SET answered = (id = %(trial)s),
    played_to_end = CASE WHEN id = %(trial)s THEN %(listened)s ELSE played_to_end END,
    play_count = CASE WHEN id = %(trial)s THEN COALESCE(%(plays)s, play_count) ELSE play_count END,
    expires_at = %(expires)s
WHERE participant_id = %(participant)s AND answered = FALSE AND (id <> %(trial)s OR void = FALSE)
RETURNING id, play_count
"""
INSERT_RESPONSE = """
INSERT INTO evaluation_response
    (assignment_id, participant_id, stimulus_id, answer, rating, play_count, listened_to_end, response_ms, presented_at, answered_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
RETURNING id
"""
COUNT_ANSWER = "UPDATE evaluation_stimulus SET answer_count = answer_count + 1 WHERE id = %s"
COUNT_ANSWER_UNDER_N = COUNT_ANSWER + " AND answer_count < %s"


def _answered_before(assignment: Assignment, answer: str, rating: int | None) -> Stored:
    """The outcome for a trial that is answered or voided already: the stored answer for an identical repeat, else Conflict."""
    state = Assignment.objects.filter(pk=assignment.pk).values("answered", "void").first()
    if state is None or not state["answered"]:
        raise Conflict("this clip is no longer needed; please continue with the next one")
    previous = Response.objects.filter(assignment_id=assignment.pk).first()
    if previous is None or (previous.answer == answer and previous.rating == rating):
        return Stored(previous, False)
    raise Conflict("this clip was already answered differently; answers cannot be changed")


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

    `assignment` comes with its participant (and the participant's experiment) and its
    stimulus, as read by the caller. `heard` is None when this app served the clip (its
    audio log decides), else what the route that played it reports. `enforce_quota=False`
    keeps human answers to clips that already have their N (batch results: the work was
    done and paid for; it is still counted). An identical repeat returns the stored answer
    with created=False. Raises InvalidAnswer for an option the experiment does not offer and
    Conflict for a different answer to an answered trial, a voided trial, a clip not yet
    heard to the end, or a full clip.
    """
    participant, stimulus = assignment.participant, assignment.stimulus
    experiment = participant.experiment
    answer, rating = validate(experiment, answer, rating)
    if assignment.answered or assignment.void:
        return _answered_before(assignment, answer, rating)
    now = timezone.now()
    if heard is None:
        gap = listening_gap_ms(assignment, now)
        if gap is None:
            raise Conflict("please listen to the whole clip before answering")
        if gap > 0:
            raise Conflict(f"please listen to the whole clip before answering ({gap / 1000:.1f} s of it had not played yet)")
        plays, listened, presented_at, answered_at = None, True, assignment.created, now
    else:
        plays, listened, presented_at, answered_at = heard.play_count, heard.listened_to_end, heard.presented_at, heard.answered_at or now
    counted = participant.kind == Participant.Kind.HUMAN and not participant.preview  # machines and previews never use up the N
    n = experiment.ratings_per_stimulus
    quota = enforce_quota and counted and stimulus.kind == Stimulus.Kind.TEST
    if quota and stimulus.answer_count >= n:  # already full when read: no need to write anything
        raise Conflict(FULL)
    adapt = connection.ops.adapt_datetimefield_value
    marking = {"trial": assignment.pk, "participant": participant.pk, "listened": listened, "plays": plays,
               "expires": adapt(now + timedelta(minutes=experiment.assignment_timeout_minutes))}

    def run() -> Stored:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(MARK_ANSWERED, marking)
            play_count = next((count for pk, count in cursor.fetchall() if pk == assignment.pk), None)
            if play_count is None:  # answered (another tab, a double click) or voided since the caller read it
                return _answered_before(assignment, answer, rating)
            if participant.preview:
                return Stored(None, True)
            response = Response(assignment_id=assignment.pk, participant_id=participant.pk, stimulus_id=stimulus.pk, answer=answer,
                                rating=rating, play_count=play_count, listened_to_end=listened, response_ms=response_ms,
                                presented_at=presented_at, answered_at=answered_at)
            cursor.execute(INSERT_RESPONSE, [response.assignment_id, response.participant_id, response.stimulus_id, answer, rating,
                                             play_count, listened, response_ms, adapt(presented_at), adapt(answered_at)])
            response.pk = cursor.fetchone()[0]
            response._state.adding, response._state.db = False, connection.alias
            if counted:  # under quota, the decision: under the row lock this UPDATE takes, re-read after any wait
                cursor.execute(*((COUNT_ANSWER_UNDER_N, [stimulus.pk, n]) if quota else (COUNT_ANSWER, [stimulus.pk])))
                if not cursor.rowcount:
                    raise Conflict(FULL)  # rolls back this answer's writes
            return Stored(response, True)

    return with_retries(run)


def skip_if_unhearable(assignment: Assignment) -> bool:
    """Void a web trial whose plays are used up without the clip ever being served in full (a connection that broke off
    mid-clip on the last play): no answer to it can be accepted, so without this the listener could never go on. One
    conditional UPDATE, decided on the row as it is now; True when the trial is skipped, by this call or by an earlier
    one (the page resends an answer whose reply was lost: it is told the same skip, not a refusal). The clip goes back
    to the pool."""
    limit = assignment.participant.experiment.replay_limit
    return bool(Assignment.objects.filter(pk=assignment.pk, answered=False, served_full_at__isnull=True,
                                          play_count__gte=limit).update(void=True))
