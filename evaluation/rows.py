"""Hand-written reads for the listener's hot path: every trial page, clip and answer reads here.

The ORM builds a query's SQL anew on every call; on these requests that cost more CPU
than the rest of the request together (a select_related over four tables: about ten times
the CPU of the same SQL written out). So each request of an answer cycle reads what it
needs in one or two statements written here. A read that makes model instances selects
every concrete column of each model (an instance read here is whole, never completed
later by a hidden query) and passes each value through Django's own converters (JSON,
SQLite's datetimes and booleans), so the instances are what the ORM would have built; the
trial page and the clip read only the columns they use, into small records. The writes
that decide quotas and plays live with their rules, in evaluation.answers and
evaluation.assignment.
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


@dataclass(frozen=True)
class Clip:
    """What serving a trial's clip needs: the trial's row, who it was handed to, whether its study still serves it, the stored file."""

    assignment_id: int
    participant_token: str
    preview: bool
    slug: str
    status: str
    replay_limit: int
    audio: str


TRIAL_COLUMNS = "a.token, a.answered, a.void, a.play_count, s.kind, s.word, s.answer_count"


@lru_cache(maxsize=64)
def _converters(model: type[Model], db) -> tuple:
    """(position, column, converters) for each of the model's columns that a backend returns in another form than the field's.

    Per connection (a thread's own), since converters may be methods of its backend."""
    out = []
    for i, field in enumerate(model._meta.concrete_fields):
        column = field.get_col(model._meta.db_table)
        converters = db.ops.get_db_converters(column) + field.get_db_converters(db)
        if converters:
            out.append((i, column, tuple(converters)))
    return tuple(out)


@lru_cache(maxsize=64)
def _columns(model: type[Model], alias: str, vendor: str) -> str:
    quote = connection.ops.quote_name  # backends quote names their own way: hence the vendor in the cache key
    return ", ".join(f"{alias}.{quote(f.column)}" for f in model._meta.concrete_fields)


def columns(model: type[Model], alias: str) -> str:
    """Every concrete column of `model` under the table alias `alias`, in field order, for a SELECT list."""
    return _columns(model, alias, connection.vendor)


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

    The trials are a second, narrow statement: joined to the participant's row they would
    repeat it on every row, and as one UNION ALL PostgreSQL took longer to plan than the two
    statements take to run.
    """
    rows = fetch(f"SELECT {columns(Participant, 'p')}, {columns(Experiment, 'e')} "
                 "FROM evaluation_participant p JOIN evaluation_experiment e ON e.id = p.experiment_id "
                 "WHERE p.token = %s AND e.slug = %s", [token, slug])
    if not rows:
        return None
    participant, at = instance(Participant, rows[0], 0)
    participant.experiment, _ = instance(Experiment, rows[0], at)
    return participant, trials_of(participant) if with_trials else []


def trials_of(participant: Participant) -> list[Trial]:
    """The participant's trials in order."""
    rows = fetch(f"SELECT {TRIAL_COLUMNS} FROM evaluation_assignment a JOIN evaluation_stimulus s ON s.id = a.stimulus_id "
                  "WHERE a.participant_id = %s ORDER BY a.position", [participant.pk])
    return [Trial(*row) for row in rows]


def trial_by_token(token: str, participant_token: str, slug: str) -> Assignment | None:
    """The trial with this audio token if it is this participant's in the study at `slug`, with its participant (and the
    participant's experiment) and its stimulus: an answer form's trial, checked against who is answering in the same statement."""
    sql = (f"SELECT {columns(Assignment, 'a')}, {columns(Participant, 'p')}, {columns(Experiment, 'e')}, {columns(Stimulus, 's')} "
           "FROM evaluation_assignment a JOIN evaluation_participant p ON p.id = a.participant_id "
           "JOIN evaluation_experiment e ON e.id = p.experiment_id JOIN evaluation_stimulus s ON s.id = a.stimulus_id "
           "WHERE a.token = %s AND p.token = %s AND e.slug = %s")
    rows = fetch(sql, [token, participant_token, slug])
    if not rows:
        return None
    trial, at = instance(Assignment, rows[0], 0)
    participant, at = instance(Participant, rows[0], at)
    participant.experiment, at = instance(Experiment, rows[0], at)
    trial.participant = participant
    trial.stimulus, _ = instance(Stimulus, rows[0], at)
    return trial


def clip_by_token(token: str) -> Clip | None:
    """The clip behind a trial's audio token, in one narrow statement."""
    rows = fetch("SELECT a.id, p.token, p.preview, e.slug, e.status, e.replay_limit, s.audio "
                 "FROM evaluation_assignment a JOIN evaluation_participant p ON p.id = a.participant_id "
                 "JOIN evaluation_experiment e ON e.id = p.experiment_id JOIN evaluation_stimulus s ON s.id = a.stimulus_id "
                 "WHERE a.token = %s", [token])
    return Clip(*rows[0]) if rows else None
