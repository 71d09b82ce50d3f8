"""Paying workers through the API: approve, reject (with the reasons), bonus, each safe to run twice."""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction
from tqdm import tqdm

from evaluation.models import Experiment, MturkAssignment, Participant
from evaluation.mturk.api import error_text
from evaluation.mturk.hits import round_cents

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
            report.failed.append(f"{row.assignment_id}: {error_text(exc)}")
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
        if row.participant_id and not row.via_batch:  # a batch worker's other assignments keep their own state
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
                BonusAmount=str(round_cents(Decimal(p.bonus_cents) / 100)),
                AssignmentId=row.assignment_id,
                Reason=reason,
                UniqueRequestToken=token,
            )
        except ClientError as exc:
            if "already" not in error_text(exc).lower():
                report.failed.append(f"{row.worker_id}: {error_text(exc)}")
                continue
            report.skipped.append(row.worker_id)
        else:
            report.done.append(row.worker_id)
        Participant.objects.filter(pk=p.pk).update(bonus_paid=True)
    return report
