"""Migration 0004 on a database made before it: duplicate workers set apart, 'full' participants back on their trials."""
from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("evaluation", "0003_stimuli_plural")]
AFTER = [("evaluation", "0004_participant_flow_and_listening")]


@pytest.mark.django_db(transaction=True)
def test_old_duplicates_are_set_apart_before_the_one_participant_per_worker_constraint():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    apps = executor.loader.project_state(BEFORE).apps
    Experiment = apps.get_model("evaluation", "Experiment")
    Participant = apps.get_model("evaluation", "Participant")
    experiment = Experiment.objects.create(slug="old")
    first = Participant.objects.create(experiment=experiment, source="mturk", worker_id="AW1", token="t1", step="done")
    second = Participant.objects.create(experiment=experiment, source="mturk", worker_id="AW1", token="t2", step="full")
    web = [Participant.objects.create(experiment=experiment, token=f"w{n}") for n in range(2)]  # no worker ID: never duplicates

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(AFTER)
    apps = executor.loader.project_state(AFTER).apps
    Participant = apps.get_model("evaluation", "Participant")
    kept, apart = Participant.objects.get(pk=first.pk), Participant.objects.get(pk=second.pk)
    assert kept.worker_id == "AW1" and kept.analyse_ok is None
    assert apart.worker_id == f"AW1~duplicate-{second.pk}" and apart.analyse_ok is False and apart.step == "trials"
    assert "second entry of worker AW1" in apart.analyse_reasons[0]
    assert Participant.objects.filter(pk__in=[w.pk for w in web], worker_id="").count() == 2

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
