"""Hand-written reads for the listener's hot path: every trial page, clip and answer reads here.

The ORM builds a query's SQL anew on every call; on these requests that cost more CPU
than the rest of the request together (about 2 ms per select_related query against
0.2 ms for the same SQL written out). So each request of an answer cycle reads what it
needs in one statement written here: every concrete column of each model it reads (a
model instance read here is whole, never completed later by a hidden query), each value
passed through Django's own converters (JSON, SQLite's datetimes and booleans), so the
instances are exactly what the ORM would have built. The writes that decide quotas and
plays live with their rules, in evaluation.answers and evaluation.assignment.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Model

from evaluation.models import Assignment, Experiment, Participant, Stimulus


@dataclass(frozen=True)
class Trial:
    """One of a listener's trials as the trial page needs it: its audio token, its state and its stimulus's kind, word and answers."""

    token: str
    answered: bool
    void: bool
    play_count: int
    kind: str
    word: str
    answer_count: int


TRIAL_COLUMNS = "a.token, a.answered, a.void, a.play_count, s.kind, s.word, s.answer_count"


@lru_cache(maxsize=64)
def _converters(model: type[Model], db) -> tuple:
    """(position, column, converters) for each of the model's columns that a backend returns in another form than the field's."""
    out = []
    for i, field in enumerate(model._meta.concrete_fields):
        column = field.get_col(model._meta.db_table)
        converters = db.ops.get_db_converters(column) + field.get_db_converters(db)
        if converters:
            out.append((i, column, tuple(converters)))
    return tuple(out)


def columns(model: type[Model], alias: str) -> str:
    """Every concrete column of `model` under the table alias `alias`, in field order, for a SELECT list."""
    quote = connection.ops.quote_name
    return ", ".join(f"{alias}.{quote(f.column)}" for f in model._meta.concrete_fields)


def instance(model: type[Model], row, start: int) -> tuple[Model, int]:
    """The model instance made of row[start:], read with columns(model, ...), and where the next model's columns start."""
    end = start + len(model._meta.concrete_fields)
    values = list(row[start:end])
    db = connections[DEFAULT_DB_ALIAS]
    for i, column, converters in _converters(model, db):
        for convert in converters:
            values[i] = convert(values[i], column, db)
    return model.from_db(db.alias, None, values), end


def fetch(sql: str, params) -> list[tuple]:
    """Every row of one hand-written statement."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def participant_at(slug: str, token: str, with_trials: bool) -> tuple[Participant, list[Trial]] | None:
    """The participant with this token in the study at `slug` (its experiment attached), and, when asked, its trials in order.

    One statement either way: with the trials, one row per trial (or one row of NULLs for a
    participant who has none yet), the participant and experiment read from the first.
    """
    sql = (f"SELECT {columns(Participant, 'p')}, {columns(Experiment, 'e')}"
           f"{', ' + TRIAL_COLUMNS if with_trials else ''} "
           "FROM evaluation_participant p JOIN evaluation_experiment e ON e.id = p.experiment_id ")
    if with_trials:
        sql += ("LEFT JOIN evaluation_assignment a ON a.participant_id = p.id "
                "LEFT JOIN evaluation_stimulus s ON s.id = a.stimulus_id ")
    sql += "WHERE p.token = %s AND e.slug = %s"
    sql += " ORDER BY a.position" if with_trials else ""
    rows = fetch(sql, [token, slug])
    if not rows:
        return None
    participant, at = instance(Participant, rows[0], 0)
    participant.experiment, at = instance(Experiment, rows[0], at)
    trials = [Trial(*row[at:]) for row in rows if row[at] is not None] if with_trials else []
    return participant, trials


def trials_of(participant: Participant) -> list[Trial]:
    """The participant's trials in order."""
    rows = fetch(f"SELECT {TRIAL_COLUMNS} FROM evaluation_assignment a JOIN evaluation_stimulus s ON s.id = a.stimulus_id "
                  "WHERE a.participant_id = %s ORDER BY a.position", [participant.pk])
    return [Trial(*row) for row in rows]


def trial_by_token(token: str, participant_token: str | None = None, slug: str | None = None) -> Assignment | None:
    """The trial with this audio token, with its participant (and the participant's experiment) and its stimulus.

    With `participant_token` and `slug`, only that participant's trial in that study: an
    answer form's trial, checked against who is answering in the same statement.
    """
    sql = (f"SELECT {columns(Assignment, 'a')}, {columns(Participant, 'p')}, {columns(Experiment, 'e')}, {columns(Stimulus, 's')} "
           "FROM evaluation_assignment a JOIN evaluation_participant p ON p.id = a.participant_id "
           "JOIN evaluation_experiment e ON e.id = p.experiment_id JOIN evaluation_stimulus s ON s.id = a.stimulus_id "
           "WHERE a.token = %s")
    params = [token]
    if participant_token is not None:
        sql += " AND p.token = %s AND e.slug = %s"
        params += [participant_token, slug]
    rows = fetch(sql, params)
    if not rows:
        return None
    trial, at = instance(Assignment, rows[0], 0)
    participant, at = instance(Participant, rows[0], at)
    participant.experiment, at = instance(Experiment, rows[0], at)
    trial.participant = participant
    trial.stimulus, _ = instance(Stimulus, rows[0], at)
    return trial
