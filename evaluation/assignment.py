"""Which clips each listener hears, so that every test stimulus gets exactly N answers.

Only human answers count toward N (machine listeners answer everything, on the side).
A stimulus's load = answers given + in-flight assignments (handed out, unanswered,
unexpired). A listener gets test stimuli whose load is below N, least loaded first and,
within a load level, round-robin over conditions so each listener hears a balanced mix, plus
gold and trap trials at random positions. Answers are only accepted while the
stimulus has fewer than N answers (checked under a row lock, by evaluation.answers),
so expiry and re-issue can never over-collect. A visitor who has not answered yet
holds their clips for UNSTARTED_HOLD_MINUTES only (each answer extends the hold to the
experiment's timeout), so visits that never play anything cannot keep a study full;
"full" is never stored, it is decided again at each visit.

Audio fetches are counted here too (register_fetch): plays against the replay limit,
and when a clip was first served in full, which the answer writer checks.

Concurrency: handing out is one short transaction per listener that holds the experiment
(PostgreSQL: its row FOR NO KEY UPDATE, so listeners can still join and answer meanwhile)
while it reads every clip's load in one statement and inserts the trials. An answer counts
only through a conditional UPDATE of its stimulus row (answer_count < N), which waits for
that row's lock and re-reads it; a clip fetch is one conditional UPDATE of its trial. SQLite
has no row locks but serializes writers; each transaction starts with a write so it takes
the write lock up front, and "database is locked" is retried.
"""
from __future__ import annotations

import enum
import random
import time
from collections import defaultdict
from datetime import timedelta
from typing import Callable, TypeVar

from django.db import IntegrityError, OperationalError, connection, transaction
from django.utils import timezone

from evaluation.models import Assignment, Experiment, Participant, Stimulus
from evaluation.rows import Trial, fetch, trials_of
from hearsay.errors import HearsayError

T = TypeVar("T")
S = TypeVar("S")
RETRIES = 20
RETRYABLE = ("locked", "deadlock detected")
UNSTARTED_HOLD_MINUTES = 5


class StudyFull(HearsayError):
    """No test stimulus still needs answers: the listener is thanked, not given trials."""


def with_retries(fn: Callable[[], T]) -> T:
    """Run a transaction again while SQLite reports its database locked or PostgreSQL a deadlock."""
    for attempt in range(RETRIES):
        try:
            return fn()
        except OperationalError as exc:
            if not any(m in str(exc) for m in RETRYABLE) or attempt == RETRIES - 1:
                raise
            time.sleep(min(0.5, 0.01 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def take_write_lock(participant: Participant) -> None:
    """First statement of a transaction is a write: SQLite grants the write lock now, not mid-way."""
    Participant.objects.filter(pk=participant.pk).update(last_seen_at=timezone.now())


def _lock_for_handing_out(participant: Participant) -> None:
    """Hand out one listener's trials at a time per experiment, so loads are read and raised as one step.

    PostgreSQL: the experiment's row, FOR NO KEY UPDATE (listeners can still join and
    answer meanwhile), and the commit does not wait for the disk (synchronous_commit off,
    for this transaction only), so the lock is held for the statements alone. A hand-out
    lost in a crash within that moment costs nothing: the listener's next page hands out
    again. Answers are committed synchronously as always.
    SQLite: no row locks but one writer at a time, taken up front by a first write.
    """
    if connection.features.has_select_for_no_key_update:
        fetch("SELECT set_config('synchronous_commit', 'off', true) FROM evaluation_experiment WHERE id = %s FOR NO KEY UPDATE",
              [participant.experiment_id])
    else:
        take_write_lock(participant)


# Every stimulus of the experiment with its load (answers + live human reservations) and
# whether this worker already has it under another participant row, in one statement.
STIMULI_AND_LOADS = """
SELECT s.id, s.kind, s.condition, s.stimulus_id, s.word, s.answer_count, s.answer_count + COALESCE(f.inflight, 0),
       EXISTS (SELECT 1 FROM evaluation_assignment h JOIN evaluation_participant hp ON hp.id = h.participant_id
               WHERE h.stimulus_id = s.id AND hp.experiment_id = %(experiment)s AND hp.worker_id = %(worker)s AND hp.worker_id <> '')
FROM evaluation_stimulus s
LEFT JOIN (SELECT a.stimulus_id, COUNT(*) AS inflight
           FROM evaluation_assignment a JOIN evaluation_participant p ON p.id = a.participant_id
           WHERE p.experiment_id = %(experiment)s AND p.kind = %(human)s AND p.preview = FALSE
             AND a.answered = FALSE AND a.void = FALSE AND a.expires_at > %(now)s
           GROUP BY a.stimulus_id) f ON f.stimulus_id = s.id
WHERE s.experiment_id = %(experiment)s
"""


class _StimulusLoad:
    """A stimulus as handing out sees it: what it is, its answers, its load, and whether this worker has it already."""

    __slots__ = ("pk", "kind", "condition", "stimulus_id", "word", "answer_count", "load", "heard")

    def __init__(self, pk, kind, condition, stimulus_id, word, answer_count, load, heard):
        self.pk, self.kind, self.condition, self.stimulus_id = pk, kind, condition, stimulus_id
        self.word, self.answer_count, self.load, self.heard = word, answer_count, load, bool(heard)


def _clips(participant: Participant, now) -> list[_StimulusLoad]:
    params = {"experiment": participant.experiment_id, "worker": participant.worker_id, "human": Participant.Kind.HUMAN,
              "now": connection.ops.adapt_datetimefield_value(now)}
    return [_StimulusLoad(*row) for row in fetch(STIMULI_AND_LOADS, params)]


def pick_balanced(candidates: list[S], loads: dict[int, int], count: int, rng: random.Random) -> list[S]:
    """Least loaded first; among equally loaded stimuli (anything with .pk and .condition), round-robin over conditions (random order), random tie-break.

    Load comes first so the study fills evenly (an early stop leaves no clip short);
    within a load level each listener hears the conditions in equal measure.
    """
    by_condition: dict[str, list[S]] = defaultdict(list)
    for stim in candidates:
        by_condition[stim.condition].append(stim)
    queues = []
    for cond in sorted(by_condition):
        items = by_condition[cond]
        rng.shuffle(items)
        items.sort(key=lambda s: loads[s.pk])
        queues.append(items)
    rng.shuffle(queues)
    chosen: list[S] = []
    while len(chosen) < count and any(queues):
        level = min(loads[q[0].pk] for q in queues if q)
        for queue in queues:
            if len(chosen) == count:
                break
            if queue and loads[queue[0].pk] == level:
                chosen.append(queue.pop(0))
    return chosen


def _open_tests(participant: Participant, clips: list[_StimulusLoad]) -> list[_StimulusLoad]:
    """The test clips this participant may still be handed: not heard by them, and short of answers (any, in a preview)."""
    need = participant.experiment.ratings_per_stimulus
    return [c for c in clips if c.kind == Stimulus.Kind.TEST and (participant.preview or c.load < need) and not c.heard]


def is_full(participant: Participant) -> bool:
    """Whether handing out trials now would raise StudyFull; reads only (nothing is handed out or held)."""
    return not _open_tests(participant, _clips(participant, timezone.now()))


def _choose(participant: Participant, clips: list[_StimulusLoad], rng: random.Random) -> list[_StimulusLoad]:
    """Practice first, then the tests, gold and traps in random order; StudyFull when no test clip still needs answers."""
    experiment = participant.experiment
    by_kind: dict[str, list[_StimulusLoad]] = defaultdict(list)
    for clip in clips:
        by_kind[clip.kind].append(clip)
    candidates = _open_tests(participant, clips)
    tests = pick_balanced(candidates, {c.pk: c.load for c in candidates}, experiment.trials_per_listener, rng)
    if not tests:
        raise StudyFull("every clip of this study already has all the answers it needs")
    gold = by_kind[Stimulus.Kind.GOLD]
    rng.shuffle(gold)
    gold = sorted(gold, key=lambda c: c.answer_count)[: experiment.gold_per_listener]  # least answered, ties at random
    trap_pool = by_kind[Stimulus.Kind.TRAP]
    traps = rng.sample(trap_pool, min(experiment.traps_per_listener, len(trap_pool)))
    practice = sorted(by_kind[Stimulus.Kind.PRACTICE], key=lambda c: c.stimulus_id)[: experiment.practice_trials]
    main = tests + gold + traps
    rng.shuffle(main)
    return practice + main


def assign(participant: Participant, rng: random.Random | None = None) -> list[Trial]:
    """Hand out this participant's trials; a participant who already has them (another tab was first) gets those."""
    rng = rng or random.Random()
    experiment = participant.experiment

    def run() -> list[Trial]:
        with transaction.atomic():
            _lock_for_handing_out(participant)
            now = timezone.now()
            chosen = _choose(participant, _clips(participant, now), rng)
            # a visitor who never answers holds clips only briefly; the first answer extends the hold to the full timeout
            expires = now + timedelta(minutes=min(UNSTARTED_HOLD_MINUTES, experiment.assignment_timeout_minutes))
            made = Assignment.objects.bulk_create(
                Assignment(participant=participant, stimulus_id=clip.pk, position=i, expires_at=expires)
                for i, clip in enumerate(chosen)
            )
            return [Trial(a.token, False, False, 0, clip.kind, clip.word, clip.answer_count) for a, clip in zip(made, chosen)]

    try:
        return with_retries(run)
    except IntegrityError:  # the same participant's other tab handed out their trials meanwhile (unique positions)
        trials = trials_of(participant)
        if not trials:
            raise
        return trials


def next_assignment(participant: Participant) -> Assignment | None:
    """The first unanswered trial; a trial that expired while its stimulus filled up is skipped (voided)."""
    while True:
        pending = participant.assignments.filter(answered=False, void=False).select_related("stimulus", "stimulus__experiment").order_by("position").first()
        if pending is None:
            return None
        stim = pending.stimulus
        if stim.kind == Stimulus.Kind.TEST and stim.answer_count >= stim.experiment.ratings_per_stimulus:
            Assignment.objects.filter(pk=pending.pk, answered=False).update(void=True)
            continue
        return pending


def first_pending(trials: list[Trial], experiment: Experiment) -> Trial | None:
    """next_assignment over trials already read with the page (evaluation.rows): no query unless a trial is skipped."""
    for pending in trials:
        if pending.answered or pending.void:
            continue
        if pending.kind == Stimulus.Kind.TEST and pending.answer_count >= experiment.ratings_per_stimulus:
            Assignment.objects.filter(token=pending.token, answered=False).update(void=True)
            continue
        return pending
    return None


class Fetch(enum.Enum):
    """What one audio request is to the replay rule."""

    PLAY = "a new play (counted while the trial is unanswered)"
    CONTINUE = "the current play streaming on"
    REFUSED = "no plays left"


# PostgreSQL: this one statement's commit does not wait for the disk (synchronous_commit off
# for its own transaction). A play log lost in a crash within that moment only asks the
# listener to play the clip again; answers are committed synchronously as always.
NO_DISK_WAIT = "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS no_disk_wait\n"
# A range that begins where the current play's bytes stopped streams that play on.
CONTINUE_PLAY = """
UPDATE evaluation_assignment
SET play_served_to = CASE WHEN play_served_to > %(end)s THEN play_served_to ELSE %(end)s END,
    served_full_at = CASE WHEN %(full)s AND served_full_at IS NULL THEN %(now)s ELSE served_full_at END,
    clip_ms = CASE WHEN %(full)s AND served_full_at IS NULL THEN %(clip_ms)s ELSE clip_ms END
{nowait}WHERE id = %(id)s AND play_served_to >= 0 AND play_served_to < %(last)s AND %(start)s <= play_served_to + 1
"""
# Any other range is a play: counted (after the answer, plays no longer matter: nothing is
# counted nor refused), refused once the limit is reached.
NEW_PLAY = """
UPDATE evaluation_assignment
SET play_count = play_count + CASE WHEN answered OR void THEN 0 ELSE 1 END,
    play_served_to = %(served_to)s,
    first_played_at = CASE WHEN %(from_start)s AND first_played_at IS NULL THEN %(now)s ELSE first_played_at END,
    served_full_at = CASE WHEN %(full)s AND served_full_at IS NULL THEN %(now)s ELSE served_full_at END,
    clip_ms = CASE WHEN %(full)s AND served_full_at IS NULL THEN %(clip_ms)s ELSE clip_ms END
{nowait}WHERE id = %(id)s AND (answered OR void OR play_count < %(limit)s)
"""


def register_fetch(assignment_id: int, start: int, end: int, size: int, clip_ms: int, limit: int) -> Fetch:
    """Count plays and note a clip served in full, for bytes start..end (inclusive) of a size-byte clip.

    A range from byte 0 starts a play; a range that begins exactly where the current play's
    bytes stopped continues it; any other range (a seek, a replay of the middle) is a play
    too, so partial fetches cannot get round the replay limit. The first time one play
    has delivered every byte from 0 to the end is kept, with the clip's duration: the
    answer writer refuses answers sooner than that duration after the first play began.
    Each outcome is one conditional UPDATE of the trial's row, decided on the row as it is
    when the statement runs (no read before it, no lock held across statements).
    """
    params = {"id": assignment_id, "start": start, "end": end, "last": size - 1, "clip_ms": clip_ms, "limit": limit,
              "now": connection.ops.adapt_datetimefield_value(timezone.now())}
    nowait = NO_DISK_WAIT if connection.vendor == "postgresql" else ""

    def run() -> Fetch:
        with connection.cursor() as cursor:
            if start > 0:
                cursor.execute(CONTINUE_PLAY.format(nowait=nowait), {**params, "full": end >= size - 1})
                if cursor.rowcount:
                    return Fetch.CONTINUE
            served_to = end if start == 0 else -1
            cursor.execute(NEW_PLAY.format(nowait=nowait),
                           {**params, "served_to": served_to, "from_start": start == 0, "full": served_to >= size - 1})
            return Fetch.PLAY if cursor.rowcount else Fetch.REFUSED

    return with_retries(run)
