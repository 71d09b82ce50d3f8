"""Mechanical Turk: HITs through the API (ExternalQuestion) and the requester website's batch route.

Everything that touches MTurk takes a boto3 client as its first argument, so tests hand in a
client wrapped in botocore's Stubber and the real API model checks every call. The command
gets its client from `make_client`, which defaults to the sandbox: real money needs `live=True`.

Every HIT and worker assignment is recorded (MturkHit, MturkAssignment) because HITs made
through the API never show up on the requester website; retries, syncs and payments consult
those rows first, which is what makes each operation safe to run twice.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import urljoin, urlsplit
from xml.sax.saxutils import escape

from django.db import transaction
from django.db.models import F
from django.template.loader import render_to_string
from django.utils import timezone as dj_timezone
from tqdm import tqdm

from evaluation.models import (
    Assignment,
    Experiment,
    MturkAssignment,
    MturkHit,
    Participant,
    Response,
    Stimulus,
)
from hearsay.errors import HearsayError
from hearsay import atomic

SANDBOX_ENDPOINT = "https://mturk-requester-sandbox.us-east-1.amazonaws.com"
LIVE_ENDPOINT = "https://mturk-requester.us-east-1.amazonaws.com"
SANDBOX_WORKER_SITE = "https://workersandbox.mturk.com"
LIVE_WORKER_SITE = "https://worker.mturk.com"

# System qualification types, identical in sandbox and production.
PERCENT_APPROVED_QUALIFICATION = "000000000000000000L0"
LOCALE_QUALIFICATION = "00000000000000000071"

EXTERNAL_QUESTION_SCHEMA = (
    "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2006-07-14/ExternalQuestion.xsd"
)

# The paper's rating question, best first; the score is what the analysis averages (Bad=0 ... Excellent=4).
RATING_OPTIONS: tuple[tuple[int, str, str], ...] = (
    (4, "Excellent", "Completely clear speech"),
    (3, "Good", "Mostly clear speech"),
    (2, "Fair", "Equally clear and unclear speech"),
    (1, "Poor", "Mostly unclear speech"),
    (0, "Bad", "Completely unclear speech"),
)
RATING_FIELD = "audio-naturalness"
IDENTIFICATION_FIELD = "heard-word"
NONE_LABEL = "None of these / can't tell"
NONE_ANSWER = "none"

BATCH_CSV = "batch.csv"
BATCH_LAYOUT = "layout.html"
BATCH_RECORD = "batch.json"

_HIT_ID = re.compile(r"\b[0-9A-Z]{30}\b")


def rating_label(name: str, meaning: str) -> str:
    return f"{name} - {meaning}"


def make_client(live: bool):
    """A boto3 MTurk client on the sandbox unless `live`; credentials come from boto3's usual chain."""
    import boto3

    return boto3.client(
        "mturk", region_name="us-east-1", endpoint_url=LIVE_ENDPOINT if live else SANDBOX_ENDPOINT
    )


def environment(live: bool) -> str:
    if live:
        return "LIVE MTurk marketplace: real workers, real money"
    return "MTurk SANDBOX: no money moves; test as a worker on " + SANDBOX_WORKER_SITE


class _Api:
    """Turns botocore failures into one-line HearsayErrors naming the operation that failed."""

    def __init__(self, action: str):
        self.action = action

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        from botocore.exceptions import BotoCoreError, ClientError

        if exc is None:
            return False
        if isinstance(exc, ClientError):
            raise HearsayError(f"MTurk {self.action} failed: {_error_text(exc)}") from exc
        if isinstance(exc, BotoCoreError):
            raise HearsayError(f"MTurk {self.action} failed: {exc}") from exc
        return False


def _error_text(exc) -> str:
    err = exc.response.get("Error", {})
    turk = exc.response.get("TurkErrorCode", "")
    return " ".join(p for p in (err.get("Code", ""), turk, err.get("Message", "")) if p)


def get_experiment(slug: str) -> Experiment:
    try:
        return Experiment.objects.get(slug=slug)
    except Experiment.DoesNotExist:
        raise HearsayError(f"no experiment with slug {slug!r}") from None


# ---------------------------------------------------------------- HIT parameters and cost


def parse_reward(text: str) -> Decimal:
    """Dollars with at most two decimals, as MTurk's CurrencyAmount wants them."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise HearsayError(f"reward {text!r} is not an amount in dollars (e.g. 0.50)") from None
    if not value.is_finite() or value <= 0 or value != value.quantize(Decimal("0.01")):
        raise HearsayError(f"reward {text!r} must be a positive amount with at most two decimals")
    return value.quantize(Decimal("0.01"))


def parse_locales(text: str) -> tuple[str, ...]:
    codes = tuple(c.strip().upper() for c in text.split(",") if c.strip())
    bad = [c for c in codes if not re.fullmatch(r"[A-Z]{2}", c)]
    if bad:
        raise HearsayError(f"locale {bad[0]!r} is not a two-letter ISO 3166 country code")
    return codes


def check_survey_url(url: str, slug: str) -> str:
    """MTurk frames only HTTPS pages, and a URL of another experiment would collect into the wrong one."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc:
        raise HearsayError(f"survey URL {url!r} must be an absolute https:// URL (MTurk frames only HTTPS)")
    if not parts.path.endswith(f"/s/{slug}/"):
        raise HearsayError(f"survey URL {url!r} does not point at experiment {slug!r} (expected a path ending /s/{slug}/)")
    return url


def external_question(url: str, frame_height: int = 0) -> str:
    """The ExternalQuestion document; height 0 lets MTurk size the frame to the window."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<ExternalQuestion xmlns="{EXTERNAL_QUESTION_SCHEMA}">'
        f"<ExternalURL>{escape(url)}</ExternalURL>"
        f"<FrameHeight>{int(frame_height)}</FrameHeight>"
        "</ExternalQuestion>"
    )


def qualification_requirements(min_approval: int | None, locales: Iterable[str]) -> list[dict]:
    reqs: list[dict] = []
    if min_approval is not None:
        if not 0 <= min_approval <= 100:
            raise HearsayError(f"minimum approval rate {min_approval} must lie in 0..100")
        reqs.append(
            {
                "QualificationTypeId": PERCENT_APPROVED_QUALIFICATION,
                "Comparator": "GreaterThanOrEqualTo",
                "IntegerValues": [int(min_approval)],
                "ActionsGuarded": "Accept",
            }
        )
    locales = list(locales)
    if locales:
        reqs.append(
            {
                "QualificationTypeId": LOCALE_QUALIFICATION,
                "Comparator": "In",
                "LocaleValues": [{"Country": c} for c in locales],
                "ActionsGuarded": "Accept",
            }
        )
    return reqs


def request_token(slug: str, batch: str, index: int) -> str:
    """Same (experiment, batch, index) -> same token, so MTurk refuses a second copy of a HIT."""
    digest = hashlib.sha256(f"hearsay-hit\x00{slug}\x00{batch}\x00{index}".encode()).hexdigest()
    return f"hs-{digest[:60]}"


def bonus_token(slug: str, worker_id: str, assignment_id: str, cents: int) -> str:
    digest = hashlib.sha256(f"hearsay-bonus\x00{slug}\x00{worker_id}\x00{assignment_id}\x00{cents}".encode()).hexdigest()
    return f"hb-{digest[:60]}"


def _cents(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Cost:
    """What a batch of HITs takes from the account, MTurk's commission included."""

    hits: int
    assignments: int
    rewards: Decimal
    fees: Decimal
    fee_rate: Decimal

    @property
    def total(self) -> Decimal:
        return self.rewards + self.fees

    def describe(self) -> str:
        return (
            f"{self.hits} HITs x {self.assignments // max(self.hits, 1)} assignments = {self.assignments} assignments; "
            f"rewards ${self.rewards}, MTurk fee ({self.fee_rate * 100:.0f}%, at least $0.01 each) ${self.fees}, "
            f"total ${self.total}"
        )


def hit_cost(reward: Decimal, assignments_per_hit: int, hits: int) -> Cost:
    """MTurk charges 20% per assignment (min $0.01), and 20% more on HITs with 10 or more assignments."""
    rate = Decimal("0.40") if assignments_per_hit >= 10 else Decimal("0.20")
    fee_each = max(Decimal("0.01"), _cents(reward * rate))
    n = assignments_per_hit * hits
    return Cost(hits=hits, assignments=n, rewards=_cents(reward * n), fees=_cents(fee_each * n), fee_rate=rate)


def bonus_cost(cents: Iterable[int]) -> tuple[Decimal, Decimal]:
    """Bonuses carry the 20% commission too (min $0.01 each); returns (bonuses, fees)."""
    amounts = [Decimal(c) / 100 for c in cents]
    fees = sum((max(Decimal("0.01"), _cents(a * Decimal("0.20"))) for a in amounts), Decimal("0"))
    return _cents(sum(amounts, Decimal("0"))), _cents(fees)


@dataclass(frozen=True)
class HitSpec:
    url: str
    hits: int
    assignments_per_hit: int
    reward: Decimal
    title: str
    description: str
    keywords: str
    duration_minutes: int = 30
    lifetime_days: float = 7
    auto_approve_days: float = 3
    min_approval: int | None = 98
    locales: tuple[str, ...] = ("US", "GB")
    batch: str = "main"

    def validate(self, slug: str) -> None:
        check_survey_url(self.url, slug)
        if self.hits < 1:
            raise HearsayError("--hits must be at least 1")
        if not 1 <= self.assignments_per_hit <= 1_000_000_000:
            raise HearsayError("--assignments-per-hit must be at least 1")
        if not 1 <= self.duration_minutes <= 24 * 60 * 365:
            raise HearsayError("--duration-minutes must lie between 1 minute and 365 days")
        if not 1 / 24 / 60 <= self.lifetime_days <= 365:
            raise HearsayError("--lifetime-days must lie between one minute and 365 days")
        if not 0 <= self.auto_approve_days <= 30:
            raise HearsayError("--auto-approve-days must lie between 0 and 30")
        if not self.title.strip() or not self.description.strip():
            raise HearsayError("a HIT needs a title and a description")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", self.batch):
            raise HearsayError(f"batch label {self.batch!r} must be 1-64 letters, digits, '.', '_' or '-'")

    def create_params(self, slug: str, index: int) -> dict:
        token = request_token(slug, self.batch, index)
        return {
            "MaxAssignments": self.assignments_per_hit,
            "AutoApprovalDelayInSeconds": int(self.auto_approve_days * 86400),
            "LifetimeInSeconds": int(self.lifetime_days * 86400),
            "AssignmentDurationInSeconds": int(self.duration_minutes * 60),
            "Reward": str(self.reward),
            "Title": self.title,
            "Keywords": self.keywords,
            "Description": self.description,
            "Question": external_question(self.url),
            "RequesterAnnotation": token,
            "QualificationRequirements": qualification_requirements(self.min_approval, self.locales),
            "UniqueRequestToken": token,
        }


def require_live(experiment: Experiment) -> None:
    """Workers sent to a draft or closed experiment would be turned away after accepting the HIT."""
    if experiment.status != Experiment.Status.LIVE:
        raise HearsayError(f"experiment {experiment.slug!r} is {experiment.status}; set it live before posting HITs")
    if not experiment.stimuli.filter(kind=Stimulus.Kind.TEST).exists():
        raise HearsayError(f"experiment {experiment.slug!r} has no test stimuli; load them before posting HITs")


def pending_indices(experiment: Experiment, spec: HitSpec, live: bool) -> list[int]:
    """HIT indices of this batch not yet recorded: a rerun creates only what is missing."""
    done = set(
        MturkHit.objects.filter(experiment=experiment, sandbox=not live, batch=spec.batch).values_list("index", flat=True)
    )
    return [i for i in range(spec.hits) if i not in done]


def _existing_hit_id(client, exc, token: str) -> str | None:
    """After a HitAlreadyExists refusal, find the HIT: its id is in the message, or its annotation is our token."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return None
    text = _error_text(exc)
    if "alreadyexist" not in text.replace(" ", "").lower():
        return None
    match = _HIT_ID.search(exc.response.get("Error", {}).get("Message", ""))
    if match:
        return match.group(0)
    with _Api("list_hits"):
        for page in client.get_paginator("list_hits").paginate(PaginationConfig={"PageSize": 100}):
            for hit in page.get("HITs", []):
                if hit.get("RequesterAnnotation") == token:
                    return hit["HITId"]
    return None


def create_hits(client, experiment: Experiment, spec: HitSpec, live: bool, progress: bool = True) -> list[MturkHit]:
    """Create the missing HITs of `spec`, recording each one as soon as MTurk confirms it."""
    from botocore.exceptions import ClientError

    spec.validate(experiment.slug)
    require_live(experiment)
    made: list[MturkHit] = []
    for index in tqdm(pending_indices(experiment, spec, live), desc="create HITs", unit="HIT", disable=not progress):
        params = spec.create_params(experiment.slug, index)
        try:
            hit = client.create_hit(**params)["HIT"]
        except ClientError as exc:
            hit_id = _existing_hit_id(client, exc, params["UniqueRequestToken"])
            if hit_id is None:
                raise HearsayError(f"MTurk create_hit failed for HIT {index} of batch {spec.batch!r}: {_error_text(exc)}") from exc
            with _Api("get_hit"):
                hit = client.get_hit(HITId=hit_id)["HIT"]
        made.append(_record_hit(experiment, spec, index, params, hit, live))
    return made


def _record_hit(experiment, spec: HitSpec, index: int, params: dict, hit: dict, live: bool) -> MturkHit:
    record = {k: v for k, v in params.items() if k != "Question"} | {"ExternalURL": spec.url}
    return MturkHit.objects.create(
        experiment=experiment,
        sandbox=not live,
        hit_id=hit["HITId"],
        hit_type_id=hit.get("HITTypeId", ""),
        batch=spec.batch,
        index=index,
        request_token=params["UniqueRequestToken"],
        url=spec.url,
        title=spec.title,
        reward=spec.reward,
        max_assignments=spec.assignments_per_hit,
        parameters=record,
        expires_at=hit.get("Expiration"),
        status=hit.get("HITStatus", ""),
        available=hit.get("NumberOfAssignmentsAvailable", 0),
        pending=hit.get("NumberOfAssignmentsPending", 0),
        completed=hit.get("NumberOfAssignmentsCompleted", 0),
    )


def preview_url(hit: MturkHit) -> str:
    site = SANDBOX_WORKER_SITE if hit.sandbox else LIVE_WORKER_SITE
    return f"{site}/projects/{hit.hit_type_id}/tasks" if hit.hit_type_id else site


# ---------------------------------------------------------------- status, sync, expire


@dataclass
class StatusReport:
    hits: list[MturkHit]
    available: int
    pending: int
    completed: int
    balance: str
    on_hold: str
    participants: Counter = field(default_factory=Counter)


def _hits(experiment: Experiment, live: bool):
    return MturkHit.objects.filter(experiment=experiment, sandbox=not live)


def hit_status(client, experiment: Experiment, live: bool) -> StatusReport:
    """Refresh every recorded HIT's counts from MTurk, plus the account balance."""
    hits = list(_hits(experiment, live))
    for hit in hits:
        with _Api(f"get_hit {hit.hit_id}"):
            info = client.get_hit(HITId=hit.hit_id)["HIT"]
        hit.status = info.get("HITStatus", "")
        hit.available = info.get("NumberOfAssignmentsAvailable", 0)
        hit.pending = info.get("NumberOfAssignmentsPending", 0)
        hit.completed = info.get("NumberOfAssignmentsCompleted", 0)
        hit.expires_at = info.get("Expiration", hit.expires_at)
        hit.save(update_fields=["status", "available", "pending", "completed", "expires_at"])
    with _Api("get_account_balance"):
        balance = client.get_account_balance()
    counts: Counter = Counter()
    for p in Participant.objects.filter(experiment=experiment, source=Participant.Source.MTURK):
        counts["participants"] += 1
        counts["finished"] += p.finished_at is not None
        counts[{True: "fit to pay", False: "not fit to pay", None: "no pay verdict"}[p.pay_ok]] += 1
        if p.paid_state:
            counts[p.paid_state.lower()] += 1
    return StatusReport(
        hits=hits,
        available=sum(h.available for h in hits),
        pending=sum(h.pending for h in hits),
        completed=sum(h.completed for h in hits),
        balance=balance.get("AvailableBalance", "?"),
        on_hold=balance.get("OnHoldBalance", "0.00"),
        participants=counts,
    )


@dataclass
class SyncReport:
    assignments: int = 0
    new: int = 0
    linked: int = 0
    unmatched: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)


def _find_participant(experiment: Experiment, worker_id: str, assignment_id: str) -> Participant | None:
    qs = Participant.objects.filter(experiment=experiment, worker_id=worker_id)
    exact = qs.filter(assignment_id=assignment_id).first()
    if exact is not None:
        return exact
    mturk = list(qs.filter(source=Participant.Source.MTURK, assignment_id=""))
    return mturk[0] if len(mturk) == 1 else None


def sync(client, experiment: Experiment, live: bool, progress: bool = True) -> SyncReport:
    """Pull every submitted/approved/rejected assignment of our HITs and link it to its Participant."""
    report = SyncReport()
    hit_ids = list(_hits(experiment, live).values_list("hit_id", flat=True))
    hit_ids += [
        h
        for h in MturkAssignment.objects.filter(experiment=experiment, sandbox=not live)
        .values_list("hit_id", flat=True)
        .distinct()
        if h not in hit_ids
    ]
    paginator = client.get_paginator("list_assignments_for_hit")
    for hit_id in tqdm(hit_ids, desc="sync HITs", unit="HIT", disable=not progress):
        with _Api(f"list_assignments_for_hit {hit_id}"):
            pages = list(
                paginator.paginate(
                    HITId=hit_id,
                    AssignmentStatuses=[s.value for s in MturkAssignment.Status],
                    PaginationConfig={"PageSize": 100},
                )
            )
        for page in pages:
            for a in page.get("Assignments", []):
                _store_assignment(experiment, live, a, report)
    return report


@transaction.atomic
def _store_assignment(experiment: Experiment, live: bool, a: dict, report: SyncReport) -> None:
    report.assignments += 1
    report.statuses[a["AssignmentStatus"]] += 1
    row, created = MturkAssignment.objects.select_for_update().get_or_create(
        sandbox=not live,
        assignment_id=a["AssignmentId"],
        defaults={
            "experiment": experiment,
            "hit_id": a["HITId"],
            "worker_id": a["WorkerId"],
            "status": a["AssignmentStatus"],
            "submitted_at": a.get("SubmitTime"),
        },
    )
    report.new += created
    row.status = a["AssignmentStatus"]
    if row.participant_id is None:
        row.participant = _find_participant(experiment, a["WorkerId"], a["AssignmentId"])
    row.save()
    if row.participant_id is None:
        report.unmatched.append(f"{a['WorkerId']}/{a['AssignmentId']}")
        return
    report.linked += 1
    p = row.participant
    changed = []
    if not p.assignment_id:
        p.assignment_id, p.hit_id = a["AssignmentId"], a["HITId"]
        changed += ["assignment_id", "hit_id"]
    if p.paid_state != row.status.lower():
        p.paid_state = row.status.lower()
        changed.append("paid_state")
    if changed:
        p.save(update_fields=changed)


def expire(client, experiment: Experiment, live: bool) -> list[str]:
    """Stop every recorded HIT from taking new workers; workers already on it may still submit."""
    past = datetime(2015, 1, 1, tzinfo=UTC)
    expired = []
    for hit in _hits(experiment, live):
        with _Api(f"update_expiration_for_hit {hit.hit_id}"):
            client.update_expiration_for_hit(HITId=hit.hit_id, ExpireAt=past)
        hit.expires_at = dj_timezone.now()
        hit.available = 0
        hit.save(update_fields=["expires_at", "available"])
        expired.append(hit.hit_id)
    return expired


# ---------------------------------------------------------------- approve, reject, bonus


@dataclass
class PayReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _submitted(experiment: Experiment, live: bool, pay_ok: bool):
    return (
        MturkAssignment.objects.filter(
            experiment=experiment,
            sandbox=not live,
            status=MturkAssignment.Status.SUBMITTED,
            participant__pay_ok=pay_ok,
        )
        .select_related("participant")
        .order_by("assignment_id")
    )


def approvals_due(experiment: Experiment, live: bool) -> list[MturkAssignment]:
    return list(_submitted(experiment, live, True))


def rejections_due(experiment: Experiment, live: bool) -> list[MturkAssignment]:
    return list(_submitted(experiment, live, False))


def rejection_feedback(participant: Participant) -> str:
    """The reasons the worker will read; MTurk caps feedback at 1024 characters."""
    reasons = [str(r).strip() for r in participant.pay_reasons or [] if str(r).strip()]
    return "; ".join(reasons)[:1024]


def _settle(client, row: MturkAssignment, call: Callable[[], object], target: str, report: PayReport) -> None:
    """Make one approve/reject call; if MTurk refuses, ask it for the assignment's actual state."""
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as exc:
        try:
            actual = client.get_assignment(AssignmentId=row.assignment_id)["Assignment"]["AssignmentStatus"]
        except ClientError:
            actual = None
        if actual != target:
            report.failed.append(f"{row.assignment_id}: {_error_text(exc)}")
            if actual:
                _mark(row, actual)
            return
        report.skipped.append(row.assignment_id)
    else:
        report.done.append(row.assignment_id)
    _mark(row, target)


def _mark(row: MturkAssignment, status: str) -> None:
    with transaction.atomic():
        row.status = status
        row.save(update_fields=["status", "synced_at"])
        if row.participant_id:
            Participant.objects.filter(pk=row.participant_id).update(paid_state=status.lower())


def approve(client, experiment: Experiment, live: bool, progress: bool = True) -> PayReport:
    """Approve every submitted assignment whose participant was judged fit to pay."""
    report = PayReport()
    for row in tqdm(approvals_due(experiment, live), desc="approve", unit="assignment", disable=not progress):
        _settle(
            client,
            row,
            lambda: client.approve_assignment(AssignmentId=row.assignment_id, RequesterFeedback="Thank you for listening."),
            MturkAssignment.Status.APPROVED,
            report,
        )
    return report


def reject(client, experiment: Experiment, live: bool, progress: bool = True) -> PayReport:
    """Reject submitted assignments judged unfit to pay, telling the worker why; none without a reason."""
    report = PayReport()
    for row in tqdm(rejections_due(experiment, live), desc="reject", unit="assignment", disable=not progress):
        feedback = rejection_feedback(row.participant)
        if not feedback:
            report.failed.append(f"{row.assignment_id}: participant {row.participant_id} has no pay_reasons; not rejected")
            continue
        _settle(
            client,
            row,
            lambda: client.reject_assignment(AssignmentId=row.assignment_id, RequesterFeedback=feedback),
            MturkAssignment.Status.REJECTED,
            report,
        )
    return report


def bonuses_due(experiment: Experiment, live: bool) -> list[tuple[Participant, MturkAssignment]]:
    """Unpaid bonuses, each to be paid on the participant's latest approved assignment."""
    due = []
    for p in Participant.objects.filter(experiment=experiment, bonus_cents__gt=0, bonus_paid=False).order_by("pk"):
        row = (
            MturkAssignment.objects.filter(participant=p, sandbox=not live, status=MturkAssignment.Status.APPROVED)
            .order_by("-submitted_at", "-pk")
            .first()
        )
        if row is not None:
            due.append((p, row))
    return due


def bonus(client, experiment: Experiment, live: bool, reason: str, progress: bool = True) -> PayReport:
    """Pay each due bonus once: bonus_paid locally, and a UniqueRequestToken in case the reply was lost."""
    from botocore.exceptions import ClientError

    report = PayReport()
    for p, row in tqdm(bonuses_due(experiment, live), desc="bonus", unit="worker", disable=not progress):
        token = bonus_token(experiment.slug, row.worker_id, row.assignment_id, p.bonus_cents)
        try:
            client.send_bonus(
                WorkerId=row.worker_id,
                BonusAmount=str(_cents(Decimal(p.bonus_cents) / 100)),
                AssignmentId=row.assignment_id,
                Reason=reason,
                UniqueRequestToken=token,
            )
        except ClientError as exc:
            if "already" not in _error_text(exc).lower():
                report.failed.append(f"{row.worker_id}: {_error_text(exc)}")
                continue
            report.skipped.append(row.worker_id)
        else:
            report.done.append(row.worker_id)
        Participant.objects.filter(pk=p.pk).update(bonus_paid=True)
    return report


# ---------------------------------------------------------------- the requester website's batch route


def _words_in(text: str, words: Iterable[str]) -> set[str]:
    tokens = set(re.split(r"[^a-z0-9]+", text.lower()))
    return {w for w in words if w.lower() in tokens}


def _public_url(base_url: str, stimulus: Stimulus) -> str:
    return urljoin(base_url.rstrip("/") + "/", stimulus.audio.url.lstrip("/"))




def batch_layout(experiment: Experiment, anchors: list[str]) -> str:
    """The HTML layout pasted into a requester-website project; ${...} are the batch CSV's columns."""
    rating = experiment.task == Experiment.Task.RATING
    if rating:
        categories = [rating_label(name, meaning) for _, name, meaning in RATING_OPTIONS]
        anchor_rows = [
            {"label": rating_label(name, meaning), "url": url} for (_, name, meaning), url in zip(RATING_OPTIONS, anchors)
        ]
    else:
        categories = list(experiment.words) + [NONE_LABEL]
        anchor_rows = []
    return render_to_string(
        "evaluation/mturk_layout.html",
        {
            "rating": rating,
            "field": RATING_FIELD if rating else IDENTIFICATION_FIELD,
            "categories_json": json.dumps(categories),
            "anchors": anchor_rows,
            "replay_limit": experiment.replay_limit,
            "instructions": experiment.instructions,
        },
    )


@dataclass(frozen=True)
class BatchFiles:
    csv: Path
    layout: Path
    record: Path
    rows: int


def export_batch(
    experiment: Experiment, out_dir: Path, base_url: str, anchors: list[str] | None = None, seed: int = 0
) -> BatchFiles:
    """One CSV row per clip (one HIT each), in shuffled order; for identification no cell names a word."""
    parts = urlsplit(base_url)
    if parts.scheme != "https" or not parts.netloc:
        raise HearsayError(f"base URL {base_url!r} must be an absolute https:// URL (MTurk pages load only HTTPS media)")
    anchors = list(anchors or [])
    rating = experiment.task == Experiment.Task.RATING
    if anchors and not rating:
        raise HearsayError("anchor clips belong to the rating task; this experiment is identification")
    if anchors and len(anchors) != len(RATING_OPTIONS):
        raise HearsayError(f"give {len(RATING_OPTIONS)} anchor URLs, Excellent first, Bad last (got {len(anchors)})")
    for url in anchors:
        if urlsplit(url).scheme != "https":
            raise HearsayError(f"anchor URL {url!r} must be https://")
    stimuli = list(
        experiment.stimuli.exclude(kind=Stimulus.Kind.PRACTICE).exclude(kind=Stimulus.Kind.TRAP).order_by("pk")
    )
    if not stimuli:
        raise HearsayError(f"experiment {experiment.slug!r} has no stimuli to export")
    random.Random(seed).shuffle(stimuli)
    header = ["experiment", "class_label", "audio_url"] if rating else ["audio_url"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for s in stimuli:
        url = _public_url(base_url, s)
        if not rating and _words_in(url, experiment.words):
            raise HearsayError(
                f"the audio URL of stimulus {s.stimulus_id} names a word ({url}); reload the stimuli under opaque names"
            )
        writer.writerow([experiment.slug, s.word, url] if rating else [url])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_bytes = buf.getvalue().encode("utf-8")
    layout_bytes = batch_layout(experiment, anchors).encode("utf-8")
    record = {
        "experiment": experiment.slug,
        "task": experiment.task,
        "created": dj_timezone.now().isoformat(),
        "base_url": base_url,
        "seed": seed,
        "rows": len(stimuli),
        "anchors": anchors,
        "answer_field": RATING_FIELD if rating else IDENTIFICATION_FIELD,
        "sha256": {
            BATCH_CSV: hashlib.sha256(csv_bytes).hexdigest(),
            BATCH_LAYOUT: hashlib.sha256(layout_bytes).hexdigest(),
        },
        "versions": _versions(),
    }
    paths = BatchFiles(out_dir / BATCH_CSV, out_dir / BATCH_LAYOUT, out_dir / BATCH_RECORD, len(stimuli))
    atomic.write_bytes(paths.csv, csv_bytes)
    atomic.write_bytes(paths.layout, layout_bytes)
    atomic.write_bytes(paths.record, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
    return paths


def _versions() -> dict[str, str]:
    import platform

    import botocore
    import django

    return {"python": platform.python_version(), "django": django.get_version(), "botocore": botocore.__version__}


_TZ_ABBREVIATIONS = {"UTC": 0, "GMT": 0, "PST": -8, "PDT": -7, "EST": -5, "EDT": -4, "CST": -6, "CDT": -5, "MST": -7, "MDT": -6}


def parse_mturk_time(text: str) -> datetime | None:
    """MTurk's CSV writes times like 'Tue Mar 05 10:20:30 PST 2019'; ISO 8601 is accepted too."""
    text = (text or "").strip()
    if not text:
        return None
    parts = text.split()
    if len(parts) == 6 and parts[4] in _TZ_ABBREVIATIONS:
        naive = datetime.strptime(" ".join(parts[:4] + parts[5:]), "%a %b %d %H:%M:%S %Y")
        return naive.replace(tzinfo=timezone(timedelta(hours=_TZ_ABBREVIATIONS[parts[4]])))
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise HearsayError(f"unreadable MTurk time {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _answer_value(row: dict, name: str) -> str:
    """The answer in any of the CSV shapes MTurk produces: .label (crowd-classifier), bare, or one .<option> flag."""
    for key in (f"Answer.{name}.label", f"Answer.{name}"):
        if row.get(key, "").strip():
            return row[key].strip()
    prefix = f"Answer.{name}."
    chosen = [k[len(prefix) :] for k, v in row.items() if k and k.startswith(prefix) and str(v).strip().lower() == "true"]
    return chosen[0] if len(chosen) == 1 else ""


def _answer_columns(fieldnames: list[str], name: str) -> bool:
    return any(f == f"Answer.{name}" or f.startswith(f"Answer.{name}.") for f in fieldnames)


def parse_rating(label: str) -> int:
    head = label.split(" - ")[0].strip().lower()
    for score, name, _ in RATING_OPTIONS:
        if head == name.lower():
            return score
    raise HearsayError(f"{label!r} is not one of the five rating options")


def parse_identification(label: str, words: list[str]) -> str:
    lowered = label.strip().lower()
    if lowered in {NONE_LABEL.lower(), NONE_ANSWER}:
        return NONE_ANSWER
    for w in words:
        if lowered == w.lower():
            return w
    raise HearsayError(f"{label!r} is not a word of this experiment")


@dataclass(frozen=True)
class _ResultRow:
    line: int
    hit_id: str
    assignment_id: str
    worker_id: str
    status: str
    accepted: datetime | None
    submitted: datetime | None
    stimulus: Stimulus
    answer: str
    rating: int | None
    play_count: int
    played_to_end: bool


@dataclass
class ImportReport:
    rows: int = 0
    imported: int = 0
    already: int = 0
    duplicates: list[str] = field(default_factory=list)
    participants_created: int = 0


REQUIRED_RESULT_COLUMNS = ("HITId", "AssignmentId", "WorkerId", "AssignmentStatus", "SubmitTime", "Input.audio_url")


def _read_results(experiment: Experiment, path: Path) -> list[_ResultRow]:
    """Parse and check the whole file before anything is written: one bad row stops the import."""
    rating = experiment.task == Experiment.Task.RATING
    field_name = RATING_FIELD if rating else IDENTIFICATION_FIELD
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise HearsayError(f"cannot read results CSV {path}: {exc}") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        fieldnames = reader.fieldnames or []
        missing = [c for c in REQUIRED_RESULT_COLUMNS if c not in fieldnames]
        if missing:
            raise HearsayError(f"{path}: not an MTurk results CSV, missing column(s) {', '.join(missing)}")
        if not _answer_columns(fieldnames, field_name):
            raise HearsayError(f"{path}: no Answer.{field_name} column; was this batch made for a {experiment.task} experiment?")
        raw_rows = list(reader)
    except csv.Error as exc:
        raise HearsayError(f"{path}: malformed CSV: {exc}") from None
    by_name = {Path(s.audio.name).name: s for s in experiment.stimuli.all()}
    rows, seen = [], set()
    for line, raw in enumerate(raw_rows, start=2):
        if None in raw or any(v is None for v in raw.values()):
            raise HearsayError(f"{path}, line {line}: wrong number of fields")
        where = f"{path}, line {line}"
        ids = {c: raw[c].strip() for c in ("HITId", "AssignmentId", "WorkerId", "AssignmentStatus")}
        if not all(ids.values()):
            raise HearsayError(f"{where}: empty HITId, AssignmentId, WorkerId or AssignmentStatus")
        if ids["AssignmentStatus"] not in MturkAssignment.Status.values:
            raise HearsayError(f"{where}: unknown AssignmentStatus {ids['AssignmentStatus']!r}")
        if ids["AssignmentId"] in seen:
            raise HearsayError(f"{where}: AssignmentId {ids['AssignmentId']} appears twice")
        seen.add(ids["AssignmentId"])
        if raw.get("Input.experiment", experiment.slug).strip() != experiment.slug:
            raise HearsayError(f"{where}: row belongs to experiment {raw['Input.experiment']!r}, not {experiment.slug!r}")
        stimulus = by_name.get(Path(urlsplit(raw["Input.audio_url"].strip()).path).name)
        if stimulus is None:
            raise HearsayError(f"{where}: audio URL {raw['Input.audio_url']!r} is not a stimulus of {experiment.slug!r}")
        label = _answer_value(raw, field_name)
        if not label:
            raise HearsayError(f"{where}: no answer in Answer.{field_name}")
        try:
            if rating:
                answer, score = "", parse_rating(label)
            else:
                answer, score = parse_identification(label, list(experiment.words)), None
            plays = int(raw.get("Answer.play-count", "") or 0)
        except (HearsayError, ValueError) as exc:
            raise HearsayError(f"{where}: {exc}") from None
        rows.append(
            _ResultRow(
                line=line,
                hit_id=ids["HITId"],
                assignment_id=ids["AssignmentId"],
                worker_id=ids["WorkerId"],
                status=ids["AssignmentStatus"],
                accepted=parse_mturk_time(raw.get("AcceptTime", "")),
                submitted=parse_mturk_time(raw["SubmitTime"]),
                stimulus=stimulus,
                answer=answer,
                rating=score,
                play_count=max(plays, 0),
                played_to_end=raw.get("Answer.played-to-end", "").strip().lower() == "true",
            )
        )
    return rows


def import_results(experiment: Experiment, path: Path, live: bool) -> ImportReport:
    """Read a requester-website results CSV into Participants (one per worker) and Responses, in one transaction."""
    rows = _read_results(experiment, path)
    report = ImportReport(rows=len(rows))
    with transaction.atomic():
        for r in rows:
            existing = MturkAssignment.objects.filter(sandbox=not live, assignment_id=r.assignment_id).first()
            if existing is not None:
                if existing.experiment_id != experiment.pk:
                    raise HearsayError(f"{path}, line {r.line}: assignment {r.assignment_id} belongs to another experiment")
                if existing.status != r.status:
                    existing.status = r.status
                    existing.save(update_fields=["status", "synced_at"])
                report.already += 1
                continue
            participant, created = Participant.objects.get_or_create(
                experiment=experiment,
                source=Participant.Source.MTURK,
                worker_id=r.worker_id,
                defaults={"step": "done", "finished_at": r.submitted},
            )
            report.participants_created += created
            MturkAssignment.objects.create(
                experiment=experiment,
                participant=participant,
                sandbox=not live,
                hit_id=r.hit_id,
                assignment_id=r.assignment_id,
                worker_id=r.worker_id,
                status=r.status,
                via_batch=True,
                submitted_at=r.submitted,
            )
            if Assignment.objects.filter(participant=participant, stimulus=r.stimulus).exists():
                report.duplicates.append(f"{r.worker_id} answered the same clip again in {r.assignment_id}")
                continue
            _store_response(participant, r)
            report.imported += 1
    return report


def _store_response(participant: Participant, r: _ResultRow) -> None:
    last = Assignment.objects.filter(participant=participant).order_by("-position").values_list("position", flat=True).first()
    slot = Assignment.objects.create(
        participant=participant,
        stimulus=r.stimulus,
        position=0 if last is None else last + 1,
        play_count=r.play_count,
        played_to_end=r.played_to_end,
        answered=True,
    )
    response = Response.objects.create(
        assignment=slot,
        participant=participant,
        stimulus=r.stimulus,
        answer=r.answer,
        rating=r.rating,
        play_count=r.play_count,
        listened_to_end=r.played_to_end,
        presented_at=r.accepted,
    )
    if r.submitted is not None:
        Response.objects.filter(pk=response.pk).update(answered_at=r.submitted)
        Participant.objects.filter(pk=participant.pk, finished_at__lt=r.submitted).update(finished_at=r.submitted)
    Stimulus.objects.filter(pk=r.stimulus.pk).update(answer_count=F("answer_count") + 1)


def listeners_needed(experiment: Experiment) -> int:
    """Listeners that give every test clip its ratings_per_stimulus answers, at trials_per_listener each."""
    clips = experiment.stimuli.filter(kind=Stimulus.Kind.TEST).count()
    per = max(experiment.trials_per_listener, 1)
    return math.ceil(clips * experiment.ratings_per_stimulus / per)
