"""The HIT lifecycle through the API: parameters and cost, create (resumable), status, sync, expire.

Every HIT and worker assignment is recorded (MturkHit, MturkAssignment) because HITs made
through the API never show up on the requester website; retries and syncs consult those rows
first, which is what makes each operation safe to run twice.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from django.db import transaction
from django.utils import timezone as dj_timezone
from tqdm import tqdm

from evaluation.flow import normalize_worker_id
from evaluation.models import Experiment, MturkAssignment, MturkHit, Participant, Stimulus
from evaluation.mturk.api import (
    FUNDS_PAGE,
    LIVE_WORKER_SITE,
    SANDBOX_WORKER_SITE,
    Api,
    describe,
    error_text,
    insufficient_funds,
    marketplace,
    may_have_happened,
    network_error,
    not_found,
    transient,
)
from hearsay.errors import HearsayError

# System qualification types, identical in sandbox and production.
PERCENT_APPROVED_QUALIFICATION = "000000000000000000L0"
LOCALE_QUALIFICATION = "00000000000000000071"

EXTERNAL_QUESTION_SCHEMA = (
    "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2006-07-14/ExternalQuestion.xsd"
)

_HIT_ID = re.compile(r"\b[0-9A-Z]{30}\b")

# ---------------------------------------------------------------- HIT parameters and cost


def parse_reward(text: str) -> Decimal:
    """Dollars with at most two decimals, as MTurk's CurrencyAmount wants them."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise HearsayError(f"reward {text!r} is not an amount in dollars (e.g. 0.50)") from None
    try:  # quantize refuses an amount with more digits than the decimal context holds (e.g. 1e400)
        cents = value.quantize(Decimal("0.01")) if value.is_finite() else None
    except InvalidOperation:
        cents = None
    if cents is None or value <= 0 or value != cents:
        raise HearsayError(f"reward {text!r} must be a positive amount with at most two decimals")
    return cents


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

def round_cents(amount: Decimal) -> Decimal:
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
    fee_each = max(Decimal("0.01"), round_cents(reward * rate))
    n = assignments_per_hit * hits
    return Cost(hits=hits, assignments=n, rewards=round_cents(reward * n), fees=round_cents(fee_each * n), fee_rate=rate)


# A batch's HITs are listed in memory before any is created; a mistyped count must be refused, not exhaust it.
MAX_HITS = 1_000_000
MAX_ASSIGNMENTS_PER_HIT = 1_000_000_000


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
        if not 1 <= self.hits <= MAX_HITS:
            raise HearsayError(f"a batch holds between 1 and {MAX_HITS:,} HITs, not {self.hits:,}")
        if not 1 <= self.assignments_per_hit <= MAX_ASSIGNMENTS_PER_HIT:
            raise HearsayError(f"assignments per HIT must lie between 1 and {MAX_ASSIGNMENTS_PER_HIT:,}")
        qualification_requirements(self.min_approval, self.locales)  # refuses an approval rate outside 0..100
        if not 1 <= self.duration_minutes <= 24 * 60 * 365:
            raise HearsayError("the assignment duration must lie between 1 minute and 365 days")
        if not 1 / 24 / 60 <= self.lifetime_days <= 365:
            raise HearsayError("the HIT lifetime must lie between one minute and 365 days")
        if not 0 <= self.auto_approve_days <= 30:
            raise HearsayError("the auto-approval delay must lie between 0 and 30 days")
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
    text = error_text(exc)
    if "alreadyexist" not in text.replace(" ", "").lower():
        return None
    match = _HIT_ID.search(exc.response.get("Error", {}).get("Message", ""))
    if match:
        return match.group(0)
    with Api("list_hits"):
        for page in client.get_paginator("list_hits").paginate(PaginationConfig={"PageSize": 100}):
            for hit in page.get("HITs", []):
                if hit.get("RequesterAnnotation") == token:
                    return hit["HITId"]
    return None


def _create_one(client, params: dict) -> dict:
    """create_hit; after a HitAlreadyExists refusal (a retry of a request that reached MTurk), the existing HIT."""
    from botocore.exceptions import ClientError

    try:
        return client.create_hit(**params)["HIT"]
    except ClientError as exc:
        hit_id = _existing_hit_id(client, exc, params["UniqueRequestToken"])
        if hit_id is None:
            raise
    return client.get_hit(HITId=hit_id)["HIT"]


def create_hits(client, experiment: Experiment, spec: HitSpec, live: bool, progress: bool = True) -> list[MturkHit]:
    """Create the missing HITs of `spec`, recording each one as soon as MTurk confirms it.

    A failure half way (throttling, the network, insufficient funds) stops the run with one line saying how many
    HITs exist and how many remain; every HIT made so far is recorded, so the same command finishes the job.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    spec.validate(experiment.slug)
    require_live(experiment)
    todo = pending_indices(experiment, spec, live)
    made: list[MturkHit] = []
    for index in tqdm(todo, desc="create HITs", unit="HIT", disable=not progress):
        params = spec.create_params(experiment.slug, index)
        try:
            hit = _create_one(client, params)
        except (ClientError, BotoCoreError, HearsayError) as exc:
            if isinstance(exc, BotoCoreError) and not network_error(exc):
                raise  # no credentials, a bad parameter: nothing to resume
            raise HearsayError(_creation_stopped(experiment, spec, live, index, exc, len(todo) - len(made))) from exc
        made.append(_record_hit(experiment, spec, index, params, hit, live))
    return made


def _creation_stopped(experiment, spec: HitSpec, live: bool, index: int, exc, remaining: int) -> str:
    exist = spec.hits - remaining
    text = (f"MTurk create_hit failed for HIT {index} of batch {spec.batch!r} in the {marketplace(live)}: {describe(exc)}; "
            f"{exist} of {spec.hits} HITs exist (all recorded), {remaining} remain")
    if insufficient_funds(exc):
        cost = hit_cost(spec.reward, spec.assignments_per_hit, remaining)
        text += f" (${cost.total} with fees): add funds at {FUNDS_PAGE}, then"
    elif may_have_happened(exc):
        text += f" (HIT {index} may have been made: rerun within 24 hours, while MTurk still knows its request token);"
    return text + f" rerun the same command to create {'them' if remaining > 1 else 'it'}"


def _record_hit(experiment, spec: HitSpec, index: int, params: dict, hit: dict, live: bool) -> MturkHit:
    record = {k: v for k, v in params.items() if k != "Question"} | {"ExternalURL": spec.url}
    try:  # a HIT found by its token (made by an earlier run) is recorded as MTurk has it, not as asked now
        reward = Decimal(str(hit.get("Reward", spec.reward)))
    except InvalidOperation:
        reward = spec.reward
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
        reward=reward,
        max_assignments=hit.get("MaxAssignments", spec.assignments_per_hit),
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


def recorded(experiment: Experiment, live: bool) -> tuple[int, int]:
    """(HITs, assignments) recorded for the experiment in one marketplace."""
    return (
        _hits(experiment, live).count(),
        MturkAssignment.objects.filter(experiment=experiment, sandbox=not live).count(),
    )


def _stopped(what: str, done: int, total: int, hit_id: str, exc, live: bool) -> HearsayError:
    return HearsayError(
        f"MTurk stopped answering ({describe(exc)}) at HIT {hit_id} in the {marketplace(live)}: {what} {done} of {total} "
        f"HITs; {total - done} remain: rerun the same command to finish"
    )


GONE = "Deleted"  # our HITStatus for a HIT that MTurk no longer knows (deleted, or never in this marketplace)


def hit_status(client, experiment: Experiment, live: bool) -> StatusReport:
    """Refresh every recorded HIT's counts from MTurk, plus the account balance.

    A HIT MTurk no longer knows is shown as Deleted and the others are still refreshed; throttling or the
    network stops the run with one line saying how far it got.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    hits = list(_hits(experiment, live))
    for n, hit in enumerate(hits):
        try:
            info = client.get_hit(HITId=hit.hit_id)["HIT"]
        except (ClientError, BotoCoreError) as exc:
            if transient(exc):
                raise _stopped("refreshed", n, len(hits), hit.hit_id, exc, live) from exc
            if not (isinstance(exc, ClientError) and not_found(exc)):
                raise HearsayError(f"MTurk get_hit {hit.hit_id} failed: {describe(exc)}") from exc
            hit.status, hit.available, hit.pending = GONE, 0, 0
            hit.save(update_fields=["status", "available", "pending"])
            continue
        hit.status = info.get("HITStatus", "")
        hit.available = info.get("NumberOfAssignmentsAvailable", 0)
        hit.pending = info.get("NumberOfAssignmentsPending", 0)
        hit.completed = info.get("NumberOfAssignmentsCompleted", 0)
        hit.expires_at = info.get("Expiration", hit.expires_at)
        hit.save(update_fields=["status", "available", "pending", "completed", "expires_at"])
    with Api("get_account_balance"):
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
    gone: list[str] = field(default_factory=list)


def _find_participant(experiment: Experiment, worker_id: str) -> Participant | None:
    """The experiment's one participant for this worker (IDs compared in MTurk's canonical form)."""
    try:
        canonical = normalize_worker_id(worker_id, Participant.Source.MTURK)
    except HearsayError:
        return None
    return Participant.objects.filter(experiment=experiment, source=Participant.Source.MTURK, worker_id=canonical).first()


def sync(client, experiment: Experiment, live: bool, progress: bool = True) -> SyncReport:
    """Pull every submitted/approved/rejected assignment of our API HITs and link it to its Participant.

    Batch HITs (requester website) are skipped: their results come from the results file.
    """
    report = SyncReport()
    hit_ids = list(_hits(experiment, live).values_list("hit_id", flat=True))
    hit_ids += [
        h
        for h in MturkAssignment.objects.filter(experiment=experiment, sandbox=not live, via_batch=False)
        .values_list("hit_id", flat=True)
        .distinct()
        if h not in hit_ids
    ]
    from botocore.exceptions import BotoCoreError, ClientError

    paginator = client.get_paginator("list_assignments_for_hit")
    for n, hit_id in enumerate(tqdm(hit_ids, desc="sync HITs", unit="HIT", disable=not progress)):
        try:
            pages = list(
                paginator.paginate(
                    HITId=hit_id,
                    AssignmentStatuses=[s.value for s in MturkAssignment.Status],
                    PaginationConfig={"PageSize": 100},
                )
            )
        except (ClientError, BotoCoreError) as exc:
            if transient(exc):
                raise _stopped(f"synced ({report.assignments} assignments stored)", n, len(hit_ids), hit_id, exc, live) from exc
            if isinstance(exc, ClientError) and not_found(exc):
                report.gone.append(hit_id)  # its assignments stay as last synced
                continue
            raise HearsayError(f"MTurk list_assignments_for_hit {hit_id} failed: {describe(exc)}") from exc
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
        row.participant = _find_participant(experiment, a["WorkerId"])
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


@dataclass
class ExpireReport:
    expired: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)  # expired before, or disposed
    gone: list[str] = field(default_factory=list)  # MTurk no longer knows them
    failed: list[str] = field(default_factory=list)


def _over(info: dict) -> bool:
    """A HIT that takes no new workers: expired, being reviewed or disposed."""
    expiry = info.get("Expiration")
    return info.get("HITStatus") in ("Reviewable", "Reviewing", "Disposed") or (
        expiry is not None and expiry <= dj_timezone.now()
    )


def expire(client, experiment: Experiment, live: bool) -> ExpireReport:
    """Stop every recorded HIT from taking new workers; workers already on it may still submit.

    MTurk refuses the call for a HIT it already expired (the same expiry twice) or no longer has: such a HIT is
    checked with get_hit and recorded as it is, and the others are still expired. Throttling or the network
    stops the run with one line saying how many remain; a rerun finishes.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    past = datetime(2015, 1, 1, tzinfo=UTC)
    report = ExpireReport()
    hits = list(_hits(experiment, live))
    for n, hit in enumerate(hits):
        try:
            try:
                client.update_expiration_for_hit(HITId=hit.hit_id, ExpireAt=past)
            except ClientError as exc:
                if transient(exc):
                    raise
                info = client.get_hit(HITId=hit.hit_id)["HIT"]
                if not _over(info):
                    report.failed.append(f"{hit.hit_id}: {describe(exc)}")
                    continue
                hit.status = info.get("HITStatus", hit.status)
                hit.expires_at = info.get("Expiration") or dj_timezone.now()
                hit.available = 0
                hit.save(update_fields=["status", "expires_at", "available"])
                report.already.append(hit.hit_id)
                continue
        except (ClientError, BotoCoreError) as exc:
            if transient(exc):
                done = len(report.expired) + len(report.already) + len(report.gone)
                raise _stopped("expired", done, len(hits), hit.hit_id, exc, live) from exc
            if isinstance(exc, ClientError) and not_found(exc):
                hit.status, hit.available = GONE, 0
                hit.save(update_fields=["status", "available"])
                report.gone.append(hit.hit_id)
                continue
            if not isinstance(exc, ClientError):
                raise  # no credentials and the like: nothing to resume
            report.failed.append(f"{hit.hit_id}: {describe(exc)}")
            continue
        hit.expires_at = dj_timezone.now()
        hit.available = 0
        hit.save(update_fields=["expires_at", "available"])
        report.expired.append(hit.hit_id)
    return report


def listeners_needed(experiment: Experiment) -> int:
    """Listeners that give every test clip its ratings_per_stimulus answers, at trials_per_listener each."""
    clips = experiment.stimuli.filter(kind=Stimulus.Kind.TEST).count()
    per = max(experiment.trials_per_listener, 1)
    return math.ceil(clips * experiment.ratings_per_stimulus / per)
