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

Concurrency: on PostgreSQL the experiment row (for handing out) is locked with SELECT ...
FOR UPDATE, and an answer counts only through a conditional UPDATE of its stimulus row
(answer_count < N), which waits for that row's lock and re-reads it. SQLite has no row locks
but serializes writers; each transaction starts with a write so it takes the
write lock up front, and "database is locked" is retried.
"""
from __future__ import annotations

import enum
import random
import time
from collections import defaultdict
from datetime import timedelta
from typing import Callable, TypeVar

from django.db import OperationalError, transaction
from django.db.models import Count, Q
from django.utils import timezone

from evaluation.models import Assignment, Experiment, Participant, Stimulus
from hearsay.errors import HearsayError

T = TypeVar("T")
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


def _tests_and_loads(experiment: Experiment, now) -> tuple[list[Stimulus], dict[int, int]]:
    """The experiment's test stimuli and each one's load, in one query (it runs under the experiment's lock)."""
    inflight = Count(
        "assignments",
        filter=Q(assignments__answered=False, assignments__void=False, assignments__expires_at__gt=now, assignments__participant__kind="human",
                 assignments__participant__preview=False),
    )
    tests = list(experiment.stimuli.filter(kind=Stimulus.Kind.TEST).annotate(inflight=inflight))
    return tests, {s.pk: s.answer_count + s.inflight for s in tests}


def pick_balanced(candidates: list[Stimulus], loads: dict[int, int], count: int, rng: random.Random) -> list[Stimulus]:
    """Least loaded first; among equally loaded stimuli, round-robin over conditions (random order), random tie-break.

    Load comes first so the study fills evenly (an early stop leaves no clip short);
    within a load level each listener hears the conditions in equal measure.
    """
    by_condition: dict[str, list[Stimulus]] = defaultdict(list)
    for stim in candidates:
        by_condition[stim.condition].append(stim)
    queues = []
    for cond in sorted(by_condition):
        items = by_condition[cond]
        rng.shuffle(items)
        items.sort(key=lambda s: loads[s.pk])
        queues.append(items)
    rng.shuffle(queues)
    chosen: list[Stimulus] = []
    while len(chosen) < count and any(queues):
        level = min(loads[q[0].pk] for q in queues if q)
        for queue in queues:
            if len(chosen) == count:
                break
            if queue and loads[queue[0].pk] == level:
                chosen.append(queue.pop(0))
    return chosen


def assign(participant: Participant, rng: random.Random | None = None) -> list[Assignment]:
    """Hand out this participant's trials (once); later calls return the existing ones."""
    rng = rng or random.Random()
    existing = list(participant.assignments.select_related("stimulus").order_by("position"))
    if existing:  # the common case (every trial page): no lock needed
        return existing

    def run() -> list[Assignment]:
        with transaction.atomic():
            take_write_lock(participant)
            experiment = Experiment.objects.select_for_update().get(pk=participant.experiment_id)
            existing = list(participant.assignments.select_related("stimulus").order_by("position"))
            if existing:
                return existing
            now = timezone.now()
            test_stimuli, loads = _tests_and_loads(experiment, now)
            heard = set(
                Assignment.objects.filter(participant__experiment=experiment, participant__worker_id=participant.worker_id)
                .exclude(participant__worker_id="")
                .values_list("stimulus_id", flat=True)
            )
            candidates = [
                s for s in test_stimuli
                if (participant.preview or loads[s.pk] < experiment.ratings_per_stimulus) and s.pk not in heard
            ]
            tests = pick_balanced(candidates, loads, experiment.trials_per_listener, rng)
            if not tests:
                raise StudyFull("every clip of this study already has all the answers it needs")
            gold = list(experiment.stimuli.filter(kind=Stimulus.Kind.GOLD).order_by("answer_count", "?")[: experiment.gold_per_listener])
            trap_pool = list(experiment.stimuli.filter(kind=Stimulus.Kind.TRAP))
            traps = rng.sample(trap_pool, min(experiment.traps_per_listener, len(trap_pool)))
            practice = list(experiment.stimuli.filter(kind=Stimulus.Kind.PRACTICE).order_by("stimulus_id")[: experiment.practice_trials])
            main = tests + gold + traps
            rng.shuffle(main)
            # a visitor who never answers holds clips only briefly; the first answer extends the hold to the full timeout
            expires = now + timedelta(minutes=min(UNSTARTED_HOLD_MINUTES, experiment.assignment_timeout_minutes))
            Assignment.objects.bulk_create(
                Assignment(participant=participant, stimulus=stim, position=i, expires_at=expires)
                for i, stim in enumerate(practice + main)
            )
            return list(participant.assignments.select_related("stimulus").order_by("position"))

    return with_retries(run)


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


def first_pending(trials: list[Assignment], experiment: Experiment) -> Assignment | None:
    """next_assignment over trials already loaded (with their stimuli) by assign: the trial page's one query less."""
    for pending in trials:
        if pending.answered or pending.void:
            continue
        stim = pending.stimulus
        if stim.kind == Stimulus.Kind.TEST and stim.answer_count >= experiment.ratings_per_stimulus:
            Assignment.objects.filter(pk=pending.pk, answered=False).update(void=True)
            continue
        return pending
    return None


class Fetch(enum.Enum):
    """What one audio request is to the replay rule."""

    PLAY = "a new play (counted)"
    CONTINUE = "the current play streaming on"
    REFUSED = "no plays left"


def register_fetch(assignment: Assignment, start: int, end: int, size: int, clip_ms: int, limit: int) -> Fetch:
    """Count plays and note a clip served in full, for bytes start..end (inclusive) of a size-byte clip.

    A range from byte 0 starts a play; a range that begins exactly where the current play's
    bytes stopped continues it; any other range (a seek, a replay of the middle) is a play
    too, so partial fetches cannot get round the replay limit. The first time one play
    has delivered every byte from 0 to the end is kept, with the clip's duration: the
    answer writer refuses answers sooner than that duration after the first play began.
    """

    def run() -> Fetch:
        with transaction.atomic():
            locked = Assignment.objects.select_for_update().get(pk=assignment.pk)
            now = timezone.now()
            continues = start > 0 and 0 <= locked.play_served_to < size - 1 and start <= locked.play_served_to + 1
            if continues:
                locked.play_served_to = max(locked.play_served_to, end)
                kind = Fetch.CONTINUE
            else:
                if locked.answered or locked.void:
                    kind = Fetch.CONTINUE  # after the answer, plays no longer matter; nothing is counted
                elif locked.play_count >= limit:
                    return Fetch.REFUSED
                else:
                    locked.play_count += 1
                    kind = Fetch.PLAY
                locked.play_served_to = end if start == 0 else -1
                if start == 0 and locked.first_played_at is None:
                    locked.first_played_at = now
            if locked.play_served_to >= size - 1 and locked.served_full_at is None:
                locked.served_full_at, locked.clip_ms = now, clip_ms
            locked.save(update_fields=["play_count", "play_served_to", "first_played_at", "served_full_at", "clip_ms"])
            return kind

    return with_retries(run)
