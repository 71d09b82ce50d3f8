"""Which clips each listener hears, so that every test stimulus gets exactly N answers.

Only human answers count toward N (machine listeners answer everything, on the side).
A stimulus's load = answers given + in-flight assignments (handed out, unanswered,
unexpired). A listener gets test stimuli whose load is below N, least loaded first and,
within a load level, round-robin over conditions so each listener hears a balanced mix, plus
gold and trap trials at random positions. Answers are only accepted while the
stimulus has fewer than N answers (checked under a row lock), so expiry and
re-issue can never over-collect.

Concurrency: on PostgreSQL the experiment row (for handing out) and the stimulus
row (for answering) are locked with SELECT ... FOR UPDATE. SQLite has no row locks
but serializes writers; each transaction starts with a write so it takes the
write lock up front, and "database is locked" is retried.
"""
from __future__ import annotations

import random
import time
from collections import defaultdict
from datetime import timedelta
from typing import Callable, TypeVar

from django.db import OperationalError, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from evaluation.models import Assignment, Experiment, Participant, Response, Stimulus
from hearsay.errors import HearsayError

T = TypeVar("T")
RETRIES = 20
RETRYABLE = ("locked", "deadlock detected")


class StudyFull(HearsayError):
    """No test stimulus still needs answers: the listener is thanked, not given trials."""


class Conflict(HearsayError):
    """The request contradicts what is already stored (answered differently, stimulus full)."""


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


def _take_write_lock(participant: Participant) -> None:
    """First statement of a transaction is a write: SQLite grants the write lock now, not mid-way."""
    Participant.objects.filter(pk=participant.pk).update(last_seen_at=timezone.now())


def _loads(experiment: Experiment, now) -> dict[int, int]:
    inflight = Count(
        "assignments",
        filter=Q(assignments__answered=False, assignments__void=False, assignments__expires_at__gt=now, assignments__participant__kind="human"),
    )
    rows = experiment.stimuli.filter(kind=Stimulus.Kind.TEST).annotate(inflight=inflight).values_list("pk", "answer_count", "inflight")
    return {pk: answers + inflight for pk, answers, inflight in rows}


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
            _take_write_lock(participant)
            experiment = Experiment.objects.select_for_update().get(pk=participant.experiment_id)
            existing = list(participant.assignments.select_related("stimulus").order_by("position"))
            if existing:
                return existing
            now = timezone.now()
            loads = _loads(experiment, now)
            heard = set(
                Assignment.objects.filter(participant__experiment=experiment, participant__worker_id=participant.worker_id)
                .exclude(participant__worker_id="")
                .values_list("stimulus_id", flat=True)
            )
            candidates = [
                s for s in experiment.stimuli.filter(kind=Stimulus.Kind.TEST)
                if loads[s.pk] < experiment.ratings_per_stimulus and s.pk not in heard
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
            expires = now + timedelta(minutes=experiment.assignment_timeout_minutes)
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


def record_answer(
    assignment: Assignment, *, answer: str = "", rating: int | None = None, response_ms: int | None = None, ended: bool = True
) -> tuple[Response, bool]:
    """Save one answer exactly once. Returns (response, created); an identical repeat returns the stored one.

    Raises Conflict for a different answer to an answered trial, for a trial whose
    audio was never fetched, and for a test stimulus that already has its N answers.
    """

    def run() -> tuple[Response, bool]:
        with transaction.atomic():
            _take_write_lock(assignment.participant)
            # of=("self",): lock only these rows, never the joined experiment (assign() locks that one)
            locked = Assignment.objects.select_for_update(of=("self",)).select_related("stimulus", "participant").get(pk=assignment.pk)
            stimulus = Stimulus.objects.select_for_update(of=("self",)).select_related("experiment").get(pk=locked.stimulus_id)
            if locked.answered:
                previous = Response.objects.get(assignment=locked)
                if previous.answer == answer and previous.rating == rating:
                    return previous, False
                raise Conflict("this clip was already answered differently; answers cannot be changed")
            if locked.void:
                raise Conflict("this clip is no longer needed; please continue with the next one")
            if locked.play_count == 0:
                raise Conflict("please listen to the clip before answering")
            n = stimulus.experiment.ratings_per_stimulus
            human = locked.participant.kind == Participant.Kind.HUMAN  # machine listeners never use up the N human answers
            if human and stimulus.kind == Stimulus.Kind.TEST and stimulus.answer_count >= n:
                Assignment.objects.filter(pk=locked.pk).update(void=True)
                raise Conflict("this clip already has all the answers it needs; please continue with the next one")
            now = timezone.now()
            response = Response.objects.create(
                assignment=locked, participant=locked.participant, stimulus=stimulus, answer=answer, rating=rating,
                play_count=locked.play_count, listened_to_end=bool(ended), response_ms=response_ms, presented_at=locked.created,
            )
            Assignment.objects.filter(pk=locked.pk).update(answered=True, played_to_end=bool(ended))
            if human:
                Stimulus.objects.filter(pk=stimulus.pk).update(answer_count=F("answer_count") + 1)
            # an active listener keeps their remaining slots
            Assignment.objects.filter(participant=locked.participant, answered=False).update(
                expires_at=now + timedelta(minutes=stimulus.experiment.assignment_timeout_minutes)
            )
            return response, True

    return with_retries(run)


def count_play(assignment: Assignment, limit: int) -> bool:
    """Count a fetch from byte 0 as one play; False once the replay limit is used up."""

    def run() -> bool:
        with transaction.atomic():
            return bool(
                Assignment.objects.filter(pk=assignment.pk, play_count__lt=limit, answered=False, void=False).update(play_count=F("play_count") + 1)
            )

    return with_retries(run)
