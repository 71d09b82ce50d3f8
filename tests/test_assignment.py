"""Assignment: N answers per stimulus from distinct listeners, balanced, recycled on expiry, safe under concurrency."""
from __future__ import annotations

import random
import re
import threading
from collections import Counter
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import connection
from django.db.models import Count
from django.test import Client
from django.utils import timezone

from evaluation import assignment as assigning
from evaluation.answers import Heard, store_answer
from evaluation.models import Assignment, Participant, Response, Stimulus
from tests.helpers.survey import Listener, let_clip_play, make_experiment


def answers_per_test_stimulus() -> dict[str, int]:
    return dict(Stimulus.objects.filter(kind="test").annotate(n=Count("responses")).values_list("stimulus_id", "n"))


@pytest.mark.django_db
def test_every_stimulus_gets_exactly_n_answers_from_distinct_listeners(media):
    make_experiment(ratings_per_stimulus=2, trials_per_listener=5)
    for _ in range(5):  # 5 listeners x 5 trials = 25 slots for 12 x 2 = 24 answers
        person = Listener("demo")
        person.start()
        person.finish()
    assert set(answers_per_test_stimulus().values()) == {2}
    pairs = Response.objects.filter(stimulus__kind="test").values_list("stimulus_id", "participant_id")
    assert len(set(pairs)) == len(pairs)
    late = Listener("demo")
    late.start()
    page = late.client.get("/s/demo/trial")
    assert page.status_code == 200 and b"This study is full" in page.content
    assert not late.participant.assignments.exists()
    again = late.client.get("/s/demo/trial", follow=True)  # a reload lands on the same polite page, no loop
    assert again.status_code == 200 and b"This study is full" in again.content


@pytest.mark.django_db
def test_listeners_get_the_least_answered_stimuli_first(media):
    make_experiment(ratings_per_stimulus=3, trials_per_listener=4)
    seen = []
    for _ in range(3):
        person = Listener("demo")
        person.start()
        person.current()  # trials handed out, not answered: in flight
        seen.append({a.stimulus_id for a in person.participant.assignments.filter(stimulus__kind="test")})
    assert all(len(s) == 4 for s in seen)
    assert len(seen[0] | seen[1] | seen[2]) == 12  # in-flight counts: three listeners share nothing


@pytest.mark.django_db
def test_machine_listeners_do_not_use_up_the_human_answers(media):
    experiment = make_experiment(ratings_per_stimulus=1, trials_per_listener=12)
    machine = Participant.objects.create(experiment=experiment, source="machine", kind="machine", worker_id="machine:asr")
    for position, stim in enumerate(experiment.stimuli.filter(kind="test")):
        slot = Assignment.objects.create(participant=machine, stimulus=stim, position=position, play_count=1)
        store_answer(slot, answer=stim.word, heard=Heard())
    person = Listener("demo")
    person.start()
    assert person.finish() == 1 + 12 + 1 + 1
    assert Response.objects.filter(participant=machine).count() == 12
    assert set(Stimulus.objects.filter(kind="test").values_list("answer_count", flat=True)) == {1}


def test_pick_balanced_alternates_conditions_least_loaded_first():
    stims = [SimpleNamespace(pk=i, condition=c) for i, c in enumerate(["a"] * 6 + ["b"] * 2 + ["c"] * 2)]
    loads = {s.pk: 0 for s in stims}
    loads[0] = 2
    chosen = assigning.pick_balanced(stims, loads, 6, random.Random(1))
    assert Counter(s.condition for s in chosen) == {"a": 2, "b": 2, "c": 2}
    assert 0 not in {s.pk for s in chosen}  # the most-answered "a" waits


@pytest.mark.django_db
def test_trial_order_is_random_per_listener_with_practice_first(media):
    make_experiment(ratings_per_stimulus=50, trials_per_listener=12, practice_trials=2, gold_per_listener=2, traps_per_listener=2)
    orders = []
    for _ in range(3):
        person = Listener("demo")
        person.start()
        person.current()
        trials = list(person.participant.assignments.order_by("position").select_related("stimulus"))
        assert [t.stimulus.kind for t in trials[:2]] == ["practice", "practice"]
        assert Counter(t.stimulus.kind for t in trials[2:]) == {"test": 12, "gold": 2, "trap": 2}
        orders.append([t.stimulus.stimulus_id for t in trials[2:]])
    assert len({tuple(o) for o in orders}) == 3


@pytest.mark.django_db
def test_abandoned_assignments_expire_and_are_handed_out_again(media):
    make_experiment(ratings_per_stimulus=1, trials_per_listener=12)
    quitter = Listener("demo")
    quitter.start()
    quitter.current()
    assert not Listener("demo").client.get("/s/demo/trial").status_code == 500
    Assignment.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    worker = Listener("demo")
    worker.start()
    assert worker.finish() == 1 + 12 + 1 + 1
    assert set(answers_per_test_stimulus().values()) == {1}
    # the quitter comes back: their stale test trials are skipped, never over-collected
    assert quitter.finish() == 3  # practice, gold, trap
    assert set(answers_per_test_stimulus().values()) == {1}
    assert quitter.participant.assignments.filter(void=True).count() == 12


@pytest.mark.django_db
def test_an_expired_trial_still_counts_when_its_stimulus_has_room(media):
    make_experiment(ratings_per_stimulus=2, trials_per_listener=3)
    person = Listener("demo")
    person.start()
    trial = person.current()
    Assignment.objects.update(expires_at=timezone.now() - timedelta(minutes=5))
    assert person.answer(trial).status_code == 303
    assert Assignment.objects.filter(participant=person.participant, answered=False, expires_at__gt=timezone.now()).exists()


def _run_listeners(count: int, acknowledged: list, errors: list, connect) -> None:
    barrier = threading.Barrier(count)

    def one(n: int) -> None:
        if connect:
            connect()
        try:
            person = Listener("demo", workerId=f"W{n}", assignmentId=f"A{n}", turkSubmitTo="https://www.mturk.com")
            person.start()
            barrier.wait(timeout=60)
            while (trial := person.current()) is not None:
                response = person.answer(trial)
                if response.status_code == 303:
                    acknowledged.append(trial.pk)
                elif response.status_code != 409:
                    errors.append(f"listener {n}: answer got {response.status_code}")
        except Exception as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(f"listener {n}: {exc!r}")
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)


@pytest.mark.django_db(transaction=True)
def test_many_listeners_at_once_never_over_collect_nor_lose_answers(media, real_database):
    make_experiment(ratings_per_stimulus=2, trials_per_listener=4, assignment_timeout_minutes=0)  # everything expires: maximal contention
    acknowledged: list[int] = []
    errors: list[str] = []
    _run_listeners(8, acknowledged, errors, real_database)
    assert errors == []
    counts = answers_per_test_stimulus()
    assert max(counts.values()) <= 2
    stored = set(Response.objects.values_list("assignment_id", flat=True))
    assert set(acknowledged) <= stored and len(acknowledged) == len(stored)
    assert Participant.objects.count() == 8
    # 8 listeners want 32 test trials but only 24 answers are needed: whoever comes late is told the study is full
    assert all(p.finished_at is not None or not p.assignments.exists() for p in Participant.objects.all())
    assert Participant.objects.filter(finished_at__isnull=False).exists()


def _at_once(count: int, connect, work) -> tuple[list, list[str]]:
    """work(n) in `count` threads released together, each on its own connection; (results, errors)."""
    barrier = threading.Barrier(count)
    results: list = []
    errors: list[str] = []

    def one(n: int) -> None:
        if connect:
            connect()
        try:
            barrier.wait(timeout=60)
            results.append(work(n))
        except Exception as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(f"thread {n}: {exc!r}")
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results, errors


@pytest.mark.django_db(transaction=True)
def test_one_listener_opening_the_trials_in_many_tabs_at_once_gets_one_set_of_trials(media, real_database):
    make_experiment(ratings_per_stimulus=3, trials_per_listener=4)
    person = Listener("demo")
    person.start()
    trial_url = person.client.get("/s/demo/instructions")["Location"]  # the flow's own link, carrying the participant
    shown, errors = _at_once(6, real_database, lambda n: Client().get(trial_url))
    assert errors == [] and [page.status_code for page in shown] == [200] * 6
    tokens = {re.search(rb'name="token" value="([^"]+)"', page.content).group(1) for page in shown}
    trials = person.participant.assignments.all()
    assert len(tokens) == 1 and trials.count() == 1 + 4 + 1 + 1  # practice, tests, gold, trap: handed out once
    assert trials.filter(token=tokens.pop().decode(), position=0).exists()


@pytest.mark.django_db(transaction=True)
def test_one_trial_answered_from_many_tabs_at_once_is_stored_and_counted_once(media, real_database):
    make_experiment(ratings_per_stimulus=3, trials_per_listener=4, practice_trials=0)
    person = Listener("demo")
    person.start()
    trial = person.current()
    person.client.get(f"/a/{trial.token}")
    let_clip_play(trial)
    cookies = person.client.cookies
    answer = {"token": trial.token, "answer": trial.stimulus.expected_answer or trial.stimulus.word, "ended": "on"}

    def post(n: int) -> int:
        tab = Client()
        tab.cookies = cookies
        return tab.post("/s/demo/answer", answer).status_code

    statuses, errors = _at_once(6, real_database, post)
    assert errors == [] and statuses == [303] * 6  # an identical repeat is acknowledged, not stored again
    assert Response.objects.filter(assignment_id=trial.pk).count() == 1
    assert Stimulus.objects.get(pk=trial.stimulus_id).answer_count == 1  # every human answer counts, the quota only for tests
