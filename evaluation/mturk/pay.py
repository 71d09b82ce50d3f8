"""Paying workers through the API: approve, reject (with the reasons), bonus, each safe to run twice."""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction
from tqdm import tqdm

from evaluation.models import Experiment, MturkAssignment, Participant
from evaluation.mturk.api import FUNDS_PAGE, describe, error_text, insufficient_funds, may_have_happened, network_error, transient
from evaluation.mturk.hits import round_cents
from hearsay.errors import HearsayError

def bonus_token(slug: str, worker_id: str, assignment_id: str, cents: int) -> str:
    digest = hashlib.sha256(f"hearsay-bonus\x00{slug}\x00{worker_id}\x00{assignment_id}\x00{cents}".encode()).hexdigest()
    return f"hb-{digest[:60]}"


def bonus_cost(cents: Iterable[int]) -> tuple[Decimal, Decimal]:
    """Bonuses carry the 20% commission too (min $0.01 each); returns (bonuses, fees)."""
    amounts = [Decimal(c) / 100 for c in cents]
    fees = sum((max(Decimal("0.01"), round_cents(a * Decimal("0.20"))) for a in amounts), Decimal("0"))
    return round_cents(sum(amounts, Decimal("0"))), round_cents(fees)


@dataclass
class PayReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    due: int = 0  # how many this run set out to settle
    stopped: str = ""  # why the run stopped early (throttling, the network, funds); empty if it went through
    remaining: list[str] = field(default_factory=list)  # not yet settled when it stopped: a rerun does them
    unsure: str = ""  # a call that may have gone through though no answer came back


class _Stop(Exception):
    """Throttling, an unreachable MTurk or an empty account: every further call would fail the same way."""

    def __init__(self, exc: BaseException):
        super().__init__(describe(exc))


def _stops_the_run(exc: BaseException) -> bool:
    from botocore.exceptions import BotoCoreError

    if isinstance(exc, BotoCoreError) and not network_error(exc):
        raise exc  # no credentials and the like: not a failure of this one call
    return transient(exc) or insufficient_funds(exc)


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
    """Make one approve/reject call; if MTurk refuses, ask it for the assignment's actual state.

    Throttling or the network raises _Stop: the assignment stays Submitted here, and a rerun finds it
    settled (the refusal of a second approval is read through get_assignment) or settles it.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        call()
    except (ClientError, BotoCoreError) as exc:
        if _stops_the_run(exc):
            raise _Stop(exc) from exc
        try:
            actual = client.get_assignment(AssignmentId=row.assignment_id)["Assignment"]["AssignmentStatus"]
        except (ClientError, BotoCoreError) as again:
            if _stops_the_run(again):
                raise _Stop(again) from again
            actual = None
        if actual != target:
            report.failed.append(f"{row.assignment_id}: {error_text(exc)}"
                                 + (f" (it is {actual} on MTurk; recorded so)" if actual else ""))
            if actual:
                _mark(row, actual)
            return
        report.skipped.append(row.assignment_id)
    else:
        report.done.append(row.assignment_id)
    _mark(row, target)


def _settle_all(client, rows: list[MturkAssignment], call, target: str, report: PayReport, desc: str, progress: bool,
                before=None) -> PayReport:
    report.due = len(rows)
    for n, row in enumerate(tqdm(rows, desc=desc, unit="assignment", disable=not progress)):
        if before is not None and not before(row, report):
            continue
        try:
            _settle(client, row, lambda: call(row), target, report)
        except _Stop as stop:
            report.stopped = f"assignment {row.assignment_id}: {stop}"
            report.remaining = [r.assignment_id for r in rows[n:]]
            break
    return report


def _mark(row: MturkAssignment, status: str) -> None:
    with transaction.atomic():
        row.status = status
        row.save(update_fields=["status", "synced_at"])
        if row.participant_id and not row.via_batch:  # a batch worker's other assignments keep their own state
            Participant.objects.filter(pk=row.participant_id).update(paid_state=status.lower())


def approve(client, experiment: Experiment, live: bool, progress: bool = True) -> PayReport:
    """Approve every submitted assignment whose participant was judged fit to pay."""
    return _settle_all(
        client,
        approvals_due(experiment, live),
        lambda row: client.approve_assignment(AssignmentId=row.assignment_id, RequesterFeedback="Thank you for listening."),
        MturkAssignment.Status.APPROVED,
        PayReport(),
        "approve",
        progress,
    )


def reject(client, experiment: Experiment, live: bool, progress: bool = True) -> PayReport:
    """Reject submitted assignments judged unfit to pay, telling the worker why; none without a reason."""

    def has_reason(row, report):
        if not rejection_feedback(row.participant):
            report.failed.append(f"{row.assignment_id}: participant {row.participant_id} has no pay_reasons; not rejected")
            return False
        return True

    return _settle_all(
        client,
        rejections_due(experiment, live),
        lambda row: client.reject_assignment(AssignmentId=row.assignment_id, RequesterFeedback=rejection_feedback(row.participant)),
        MturkAssignment.Status.REJECTED,
        PayReport(),
        "reject",
        progress,
        before=has_reason,
    )


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


def check_bonus_reason(reason: str) -> str:
    """MTurk requires a reason the worker reads; an empty one would be refused for every worker, one by one."""
    reason = (reason or "").strip()
    if not reason:
        raise HearsayError("a bonus needs a reason the worker will read (MTurk refuses an empty one)")
    if len(reason) > 4096:
        raise HearsayError(f"the bonus reason is {len(reason)} characters; keep it under 4096")
    return reason


def _bonus_paid_already(client, row: MturkAssignment, amount: str) -> bool | None:
    """After a call that may have gone through: does MTurk list this bonus? None if it cannot be asked."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        for page in client.get_paginator("list_bonus_payments").paginate(
            AssignmentId=row.assignment_id, PaginationConfig={"PageSize": 100}
        ):
            for paid in page.get("BonusPayments", []):
                if paid.get("WorkerId") == row.worker_id and Decimal(str(paid.get("BonusAmount", "0"))) == Decimal(amount):
                    return True
    except (ClientError, BotoCoreError):
        return None
    return False


def bonus(client, experiment: Experiment, live: bool, reason: str, progress: bool = True) -> PayReport:
    """Pay each due bonus once: bonus_paid locally, and a UniqueRequestToken in case the reply was lost.

    Throttling, the network or an empty account stops the run (every further call would fail the same way);
    a bonus whose call may have gone through is looked up with ListBonusPayments before the run stops.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    reason = check_bonus_reason(reason)
    report = PayReport()
    due = bonuses_due(experiment, live)
    report.due = len(due)
    for n, (p, row) in enumerate(tqdm(due, desc="bonus", unit="worker", disable=not progress)):
        token = bonus_token(experiment.slug, row.worker_id, row.assignment_id, p.bonus_cents)
        amount = str(round_cents(Decimal(p.bonus_cents) / 100))
        try:
            client.send_bonus(
                WorkerId=row.worker_id,
                BonusAmount=amount,
                AssignmentId=row.assignment_id,
                Reason=reason,
                UniqueRequestToken=token,
            )
        except (ClientError, BotoCoreError) as exc:
            if _stops_the_run(exc):
                report.stopped = f"worker {row.worker_id}: {describe(exc)}"
                rest = due[n:]
                if may_have_happened(exc):
                    paid = _bonus_paid_already(client, row, amount)
                    if paid:
                        Participant.objects.filter(pk=p.pk).update(bonus_paid=True)
                        report.done.append(row.worker_id)
                        rest = due[n + 1:]
                    elif paid is None:
                        report.unsure = (f"the ${amount} bonus to {row.worker_id} may have been paid: rerun within 24 hours, "
                                         f"while MTurk still knows its request token")
                report.remaining = [w.worker_id for _, w in rest]
                if insufficient_funds(exc):
                    money, fees = bonus_cost(q.bonus_cents for q, _ in rest)
                    report.stopped += f" (the unpaid bonuses need ${money + fees} with fees: add funds at {FUNDS_PAGE})"
                break
            if "already" not in error_text(exc).lower():
                report.failed.append(f"{row.worker_id}: {error_text(exc)}")
                continue
            report.skipped.append(row.worker_id)
        else:
            report.done.append(row.worker_id)
        Participant.objects.filter(pk=p.pk).update(bonus_paid=True)
    return report
