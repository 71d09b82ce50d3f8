"""The listener's path, apart from HTTP: enter -> consent -> instructions -> headphone screen -> trials -> done.

Views only turn requests into these calls and their results into pages. A participant is
one row per (experiment, platform, worker id): the platform's ID is normalized first
(NFKC, no whitespace or invisible characters, the platform's case) and the row is
fetched or created under the database's unique constraint, so the same worker in several
tabs, or with a changed case or a zero-width character, is still one participant and
cannot start again once finished.

Inside MTurk's cross-origin frame browsers may refuse every cookie, so the participant
also travels as a signed token (`carry_token`) in the URLs of their own pages; see
config.middleware for how forms carrying it stay protected against cross-site requests.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping

from django.core import signing
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac

from evaluation import assignment as assigning
from evaluation.audio import HEADPHONE_PASS, HEADPHONE_TRIALS
from evaluation.models import Experiment, Participant, Stimulus
from evaluation.rows import Trial
from hearsay.errors import HearsayError
from hearsay.worker_ids import MAX_PLATFORM_ID_LENGTH, InvalidWorkerId, canonical_worker_id

Step = Participant.Step
PREVIEW_ASSIGNMENT = "ASSIGNMENT_ID_NOT_AVAILABLE"
CARRY_SALT = "hearsay.participant"
CSRF_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class InvalidLink(HearsayError):
    """The study link's parameters are malformed (NUL bytes, an impossible worker ID, a foreign submit host)."""


class AlreadyTakenPart(HearsayError):
    """This worker already finished the experiment (or was screened out of it); each person takes it once.

    `participant` is their finished row: the page says how their earlier visit ended and what to do on the platform.
    `same_assignment` is true when an MTurk worker opened the link of the very assignment they finished (MTurk's page
    reloaded), which they still have to submit.
    """

    def __init__(self, message: str, participant: Participant | None = None, same_assignment: bool = False):
        super().__init__(message)
        self.participant = participant
        self.same_assignment = same_assignment


@dataclass(frozen=True)
class Link:
    """What a study link says about who opens it."""

    source: str = Participant.Source.WEB
    worker_id: str = ""
    assignment_id: str = ""
    hit_id: str = ""
    study_id: str = ""
    session_id: str = ""
    turk_submit_to: str = ""

    @property
    def is_mturk_preview(self) -> bool:
        return self.assignment_id == PREVIEW_ASSIGNMENT


def _param(query: Mapping[str, str], name: str) -> str:
    value = query.get(name) or ""
    if "\x00" in value:
        raise InvalidLink(f"the link's {name} contains a NUL byte")
    value = value.strip()
    if len(value) > MAX_PLATFORM_ID_LENGTH:
        raise InvalidLink(f"the link's {name} is longer than {MAX_PLATFORM_ID_LENGTH} characters")
    return value


def normalize_worker_id(raw: str, source: str) -> str:
    """The platform's canonical form of a worker ID (hearsay.worker_ids); an impossible one makes the link invalid."""
    try:
        return canonical_worker_id(raw, source)
    except InvalidWorkerId as exc:
        raise InvalidLink(str(exc)) from None


def parse_link(query: Mapping[str, str], submit_hosts: tuple[str, ...]) -> Link:
    """The link's platform parameters: MTurk (workerId, assignmentId, hitId, turkSubmitTo) or Prolific (PROLIFIC_PID, STUDY_ID, SESSION_ID)."""
    values = {name: _param(query, name) for name in
              ("workerId", "assignmentId", "hitId", "turkSubmitTo", "PROLIFIC_PID", "STUDY_ID", "SESSION_ID")}
    submit_to = values["turkSubmitTo"].rstrip("/")
    if submit_to and submit_to not in submit_hosts:
        raise InvalidLink("the link's turkSubmitTo is not a Mechanical Turk address")
    common = {"assignment_id": values["assignmentId"], "hit_id": values["hitId"], "turk_submit_to": submit_to,
              "study_id": values["STUDY_ID"], "session_id": values["SESSION_ID"]}
    if values["assignmentId"] == PREVIEW_ASSIGNMENT:
        return Link(**common)
    if values["workerId"]:
        source = Participant.Source.MTURK
        return Link(source=source, worker_id=normalize_worker_id(values["workerId"], source), **common)
    if values["PROLIFIC_PID"]:
        source = Participant.Source.PROLIFIC
        return Link(source=source, worker_id=normalize_worker_id(values["PROLIFIC_PID"], source), **common)
    return Link(**common)


def enter(experiment: Experiment, link: Link, current: Participant | None, preview: bool = False) -> Participant:
    """The participant this visit belongs to: the worker's one row, the visitor's current one, or a new one.

    `current` is who the browser already is (session or carried token). Staff (`preview`)
    get a preview participant whose answers are never stored or counted.
    """
    if preview:
        if current is not None and current.preview:
            return current
        return Participant.objects.create(experiment=experiment, preview=True, pay_ok=False, pay_reasons=["staff preview"],
                                          analyse_ok=False, analyse_reasons=["staff preview"])
    if not link.worker_id:
        if current is not None and not current.preview:
            return current
        return Participant.objects.create(experiment=experiment, source=link.source)
    participant = assigning.with_retries(lambda: _worker_row(experiment, link))
    if participant.finished_at is not None:
        raise AlreadyTakenPart("you already completed this study, and each person can take it only once", participant,
                               same_assignment(link, participant))
    if link.source == Participant.Source.MTURK and link.assignment_id and link.assignment_id != participant.assignment_id:
        # the worker returned the HIT and accepted another assignment of it: submit to the new one
        participant.assignment_id = link.assignment_id
        participant.turk_submit_to = link.turk_submit_to or participant.turk_submit_to
        participant.save(update_fields=["assignment_id", "turk_submit_to"])
    return participant


def same_assignment(link: Link, participant: Participant) -> bool:
    """The link is the MTurk assignment this participant took part in (MTurk's page reloads it), not another one."""
    return link.source == Participant.Source.MTURK and bool(link.assignment_id) and link.assignment_id == participant.assignment_id


def finished_before(experiment: Experiment, link: Link) -> Participant | None:
    """The link's worker, if they already finished or were screened out of the experiment (read only, creates nothing)."""
    if not link.worker_id:
        return None
    return Participant.objects.filter(experiment=experiment, source=link.source, worker_id=link.worker_id,
                                      finished_at__isnull=False).select_related("experiment").first()


def _worker_row(experiment: Experiment, link: Link) -> Participant:
    defaults = {"assignment_id": link.assignment_id, "hit_id": link.hit_id, "study_id": link.study_id,
                "session_id": link.session_id, "turk_submit_to": link.turk_submit_to}
    try:
        with transaction.atomic():
            return Participant.objects.get_or_create(
                experiment=experiment, source=link.source, worker_id=link.worker_id, defaults=defaults)[0]
    except IntegrityError:  # another tab created it between our look and our insert
        return Participant.objects.get(experiment=experiment, source=link.source, worker_id=link.worker_id)


def steps(participant: Participant) -> list[str]:
    """The pages this participant goes through, in order."""
    middle = [Step.HEADPHONES] if participant.experiment.headphone_check else []
    return [Step.CONSENT, Step.INSTRUCTIONS, *middle, Step.TRIALS, Step.DONE]


def _advance(participant: Participant, after: str, *fields: str) -> None:
    order = steps(participant)
    participant.step = order[order.index(after) + 1]
    participant.save(update_fields=["step", *fields])


def consent(participant: Participant) -> None:
    participant.consented_at = timezone.now()
    _advance(participant, Step.CONSENT, "consented_at")


def finish_instructions(participant: Participant) -> None:
    _advance(participant, Step.INSTRUCTIONS)


def headphone_key(participant: Participant, rng: random.Random | None = None) -> list[int]:
    """Per trial of the screen, which of the three tones is the quiet one (drawn once per participant)."""
    if not participant.headphone_key:
        rng = rng or random.Random()
        participant.headphone_key = [rng.randrange(3) for _ in range(HEADPHONE_TRIALS)]
        participant.save(update_fields=["headphone_key"])
    return participant.headphone_key


def screen_headphones(participant: Participant, answers: list[int]) -> bool:
    """Score the antiphase screen; a pass moves on to the trials, a failure ends the study for this listener."""
    score = sum(a == k for a, k in zip(answers, headphone_key(participant)))
    participant.headphone_score = score
    if score >= HEADPHONE_PASS:
        _advance(participant, Step.HEADPHONES, "headphone_score")
        return True
    participant.step = Step.SCREENED
    participant.finished_at = timezone.now()
    participant.analyse_ok = False
    participant.analyse_reasons = list(participant.analyse_reasons) + [f"failed headphone screen ({score}/{HEADPHONE_TRIALS})"]
    participant.save(update_fields=["step", "finished_at", "headphone_score", "analyse_ok", "analyse_reasons"])
    return False


@dataclass(frozen=True)
class Progress:
    current: Trial
    done: int
    total: int
    practice_total: int

    @property
    def is_practice(self) -> bool:
        return self.current.kind == Stimulus.Kind.PRACTICE

    @property
    def practice_over(self) -> bool:
        return not self.is_practice and self.practice_total > 0 and self.done == self.practice_total


def next_trial(participant: Participant, trials: list[Trial]) -> Progress | None:
    """The trial to show now, given the participant's trials as read with the page (handed out here on the first visit); None when all are answered (the participant is finished).

    Raises assignment.StudyFull when no clip still needs answers. Nothing about that is
    stored: the next visit decides again from the answers and live reservations of that moment.
    """
    trials = trials or assigning.assign(participant)
    current = assigning.first_pending(trials, participant.experiment)
    if current is None:
        finish(participant)
        return None
    live = [t for t in trials if not t.void or t.answered]
    practice_total = sum(1 for t in trials if t.kind == Stimulus.Kind.PRACTICE)
    return Progress(current=current, done=sum(1 for t in live if t.answered), total=len(live), practice_total=practice_total)


def study_full(participant: Participant) -> bool:
    """Whether handing out trials now would find no test clip that still needs answers (assignment's own rule), without
    handing out or storing anything: shown before consent, so nobody spends minutes on a study they cannot take."""
    return assigning.is_full(participant)


def screened_out_code(participant: Participant) -> str:
    """The code a screened-out Prolific listener is sent back with ('' when the study has none: they return instead)."""
    if participant.source != Participant.Source.PROLIFIC:
        return ""
    return (participant.experiment.screened_out_code or "").strip()


def finish(participant: Participant) -> None:
    Participant.objects.filter(pk=participant.pk, finished_at__isnull=True).update(finished_at=timezone.now(), step=Step.DONE)
    participant.refresh_from_db()


def completion_code(participant: Participant) -> str:
    """The experiment's code (Prolific's, one per study) or a code unique to this participant."""
    return participant.experiment.completion_code or f"HS-{participant.token[:10].upper()}"


def carry_token(participant: Participant) -> str:
    """The participant, signed, for URLs inside frames where the session cookie is refused."""
    return signing.Signer(salt=CARRY_SALT).sign(participant.token)


def carried_participant_token(value: str | None) -> str | None:
    """The participant token inside a carried value, None when it is missing or its signature is wrong."""
    if not value or "\x00" in value or len(value) > 256:
        return None
    try:
        return signing.Signer(salt=CARRY_SALT).unsign(value)
    except signing.BadSignature:
        return None


def csrf_secret_for(participant_token: str) -> str:
    """A CSRF secret bound to one participant, for requests that carry no CSRF cookie (see config.middleware)."""
    digest = salted_hmac("hearsay.csrf", participant_token, algorithm="sha256").digest()
    return "".join(CSRF_ALPHABET[b % len(CSRF_ALPHABET)] for b in digest)
