"""Field audit of `manage.py mturk` under the failures the real MTurk gives: throttling, a dropped network, MTurk's
RequestError replies, paging, the sandbox/live split. Every call still goes through a real boto3 client whose
Stubber checks it against botocore's MTurk model; a network failure is raised by a before-call hook for one call."""
from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
from botocore.validate import validate_parameters
from django.core.management import CommandError, call_command

from evaluation import mturk
from evaluation.models import Experiment, MturkAssignment, MturkHit, Participant
from tests.helpers.mturk import HIT_A, HIT_B, NOW, SLUG, URL, assignment, hit, pilot_experiment, posted, stubbed_mturk

pytestmark = pytest.mark.django_db

THROTTLED = ("ThrottlingException", "Rate exceeded", 400)
NO_FUNDS = ("RequestError", "This Requester has insufficient funds in their account to complete this transaction. "
            "Please visit https://requester.mturk.com/account to purchase Prepaid HITs. (1700000000000)", 400)
HIT_C = "3CQN9REUTFGXCRWFZUG9LHQ0J01Y6Z"


@pytest.fixture
def experiment(media):
    return pilot_experiment()


@pytest.fixture
def stub(monkeypatch):
    yield from stubbed_mturk(monkeypatch)


def hit_id(i: int) -> str:
    return f"3H{i:028d}"


def create_params(index: int, reward: str = "0.50") -> dict:
    token = mturk.request_token(SLUG, "main", index)
    return {
        "MaxAssignments": 3, "AutoApprovalDelayInSeconds": 3 * 86400, "LifetimeInSeconds": 7 * 86400,
        "AssignmentDurationInSeconds": 30 * 60, "Reward": reward,
        "Title": "Listen to short recordings and say which word you hear",
        "Keywords": "audio, listening, speech, words, headphones",
        "Description": "Listen to 20 short recordings with headphones and answer one question about each.",
        "Question": mturk.hits.external_question(URL), "RequesterAnnotation": token,
        "QualificationRequirements": mturk.hits.qualification_requirements(98, ("US", "GB")),
        "UniqueRequestToken": token,
    }


def create(n: int, *extra, reward: str = "0.50") -> str:
    out = io.StringIO()
    call_command("mturk", "create-hits", "--experiment", SLUG, "--url", URL, "--hits", str(n), "--assignments-per-hit", "3",
                 "--reward", reward, "--yes", *extra, stdout=out)
    return out.getvalue()


def run(*args) -> str:
    out = io.StringIO()
    call_command("mturk", *args, "--experiment", SLUG, stdout=out)
    return out.getvalue()


def fail_call(stub, operation: str, exc: Exception, nth: int = 1) -> None:
    """Raise `exc` instead of the nth call of `operation`, as a dropped network does once botocore has used up its
    retries; the call's parameters are still checked against the model, and every other call goes on to the Stubber."""
    seen = {"n": 0}

    def hook(params, model, **kwargs):
        seen["n"] += 1
        if seen["n"] == nth:
            validate_parameters(params, model.input_shape)
            raise exc

    stub.client.meta.events.register(f"provide-client-params.mturk.{operation}", hook, unique_id=f"fail-{operation}")


def no_network():
    return EndpointConnectionError(endpoint_url=mturk.SANDBOX_ENDPOINT)


def timed_out():
    return ReadTimeoutError(endpoint_url=mturk.SANDBOX_ENDPOINT)


# ---------------------------------------------------------------- create-hits


def test_throttled_half_way_through_50_hits_says_what_exists_and_a_rerun_finishes(experiment, stub):
    """It said only 'create_hit failed for HIT 17': not that 17 exist and 33 remain, nor that a rerun finishes."""
    for i in range(17):
        stub.add_response("create_hit", {"HIT": hit(hit_id(i))}, create_params(i))
    stub.add_client_error("create_hit", *THROTTLED, expected_params=create_params(17))
    with pytest.raises(CommandError, match=r"HIT 17 .*SANDBOX.*17 of 50 HITs exist.*33 remain.*rerun the same command") as err:
        create(50)
    assert "\n" not in str(err.value)
    assert MturkHit.objects.count() == 17
    for i in range(17, 50):
        stub.add_response("create_hit", {"HIT": hit(hit_id(i))}, create_params(i))
    assert "Created 33 HITs" in create(50)
    assert sorted(MturkHit.objects.values_list("index", flat=True)) == list(range(50))
    assert MturkHit.objects.values("hit_id").distinct().count() == 50


def test_network_error_creating_says_what_remains_and_the_rerun_never_doubles(experiment, stub):
    """A read timeout left 'MTurk call failed: Read timeout' with no count; the HIT it may have made must not be made twice."""
    for i in range(3):
        stub.add_response("create_hit", {"HIT": hit(hit_id(i))}, create_params(i))
    fail_call(stub, "CreateHIT", timed_out(), nth=4)
    with pytest.raises(CommandError, match=r"3 of 5 HITs exist.*2 remain.*HIT 3 may have been made: rerun within 24 hours"):
        create(5)
    # the timed-out request did reach MTurk: the rerun's request with the same token is refused as a duplicate
    stub.add_client_error("create_hit", "RequestError", f"The HIT with ID {hit_id(3)} already exists. (1700000000000)", 400,
                          expected_params=create_params(3),
                          modeled_fields={"TurkErrorCode": "AWS.MechanicalTurk.HitAlreadyExists"})
    stub.add_response("get_hit", {"HIT": hit(hit_id(3))}, {"HITId": hit_id(3)})
    stub.add_response("create_hit", {"HIT": hit(hit_id(4))}, create_params(4))
    create(5)
    assert sorted(MturkHit.objects.values_list("hit_id", flat=True)) == [hit_id(i) for i in range(5)]


def test_endpoint_unreachable_creating_is_one_line_with_the_count(experiment, stub):
    """EndpointConnectionError escaped as 'MTurk call failed: Could not connect...' without what was done."""
    stub.add_response("create_hit", {"HIT": hit(hit_id(0))}, create_params(0))
    fail_call(stub, "CreateHIT", no_network(), nth=2)
    with pytest.raises(CommandError, match=r"Could not connect.*1 of 3 HITs exist.*2 remain.*rerun"):
        create(3)


def test_insufficient_funds_says_how_much_the_remaining_hits_need(experiment, stub):
    """MTurk's insufficient-funds refusal ended the run without saying what exists, what remains or what it costs."""
    stub.add_response("create_hit", {"HIT": hit(hit_id(0))}, create_params(0))
    stub.add_client_error("create_hit", *NO_FUNDS, expected_params=create_params(1))
    with pytest.raises(CommandError, match=r"1 of 4 HITs exist.*3 remain \(\$5\.40 with fees\): add funds at https://requester"):
        create(4)
    assert MturkHit.objects.count() == 1


def test_a_hit_found_by_its_token_is_recorded_as_mturk_has_it(experiment, stub):
    """A rerun with another --reward adopted the earlier HIT (MTurk's token) but recorded the new reward: DB and MTurk disagreed."""
    stub.add_client_error("create_hit", "RequestError", f"The HIT with ID {HIT_A} already exists.", 400,
                          expected_params=create_params(0, "0.60"),
                          modeled_fields={"TurkErrorCode": "AWS.MechanicalTurk.HitAlreadyExists"})
    stub.add_response("get_hit", {"HIT": hit(HIT_A)}, {"HITId": HIT_A})  # MTurk has it at 0.50
    create(1, reward="0.60")
    assert MturkHit.objects.get().reward == Decimal("0.50")


# ---------------------------------------------------------------- approve, reject


def many_submitted(experiment, n: int) -> list[str]:
    """n finished participants judged fit to pay, each with a Submitted assignment (as after `mturk sync`)."""
    posted(experiment, HIT_A)
    ids = [f"A{i:04d}" for i in range(n)]
    people = Participant.objects.bulk_create(
        Participant(experiment=experiment, source="mturk", worker_id=f"W{i:04d}", assignment_id=a, hit_id=HIT_A,
                    step="done", finished_at=NOW, pay_ok=True, bonus_cents=25)
        for i, a in enumerate(ids))
    MturkAssignment.objects.bulk_create(
        MturkAssignment(experiment=experiment, participant=p, hit_id=HIT_A, assignment_id=p.assignment_id,
                        worker_id=p.worker_id, status="Submitted", submitted_at=NOW) for p in people)
    return ids


def approve_params(aid: str) -> dict:
    return {"AssignmentId": aid, "RequesterFeedback": "Thank you for listening."}


def test_throttled_half_way_through_200_approvals_stops_says_what_remains_and_a_rerun_finishes(experiment, stub):
    """Throttled at #57 it went on calling MTurk for every remaining assignment (get_assignment after each refusal)."""
    ids = many_submitted(experiment, 200)
    for aid in ids[:56]:
        stub.add_response("approve_assignment", {}, approve_params(aid))
    stub.add_client_error("approve_assignment", *THROTTLED, expected_params=approve_params(ids[56]))
    with pytest.raises(CommandError, match=r"Approved 56 of 200 in the SANDBOX.*ThrottlingException.*144 remain: "
                                           r"rerun `manage.py mturk approve --experiment pilot` to finish") as err:
        run("approve")
    assert "\n" not in str(err.value)
    assert MturkAssignment.objects.filter(status="Approved").count() == 56
    for aid in ids[56:]:
        stub.add_response("approve_assignment", {}, approve_params(aid))
    assert "Approved: 144" in run("approve")
    assert MturkAssignment.objects.filter(status="Approved").count() == 200


def test_network_error_approving_says_what_remains_and_the_rerun_approves_nothing_twice(experiment, stub):
    """A timeout escaped as 'MTurk call failed' without counts; the approval it may have made is found, not repeated."""
    ids = many_submitted(experiment, 5)
    stub.add_response("approve_assignment", {}, approve_params(ids[0]))
    fail_call(stub, "ApproveAssignment", timed_out(), nth=2)
    with pytest.raises(CommandError, match=r"Approved 1 of 5 .*Read timeout.*4 remain"):
        run("approve")
    # it went through: MTurk refuses approving it again, and get_assignment shows it approved
    stub.add_client_error("approve_assignment", "RequestError",
                          "This operation can be called with a status of: Submitted (1700000000000)", 400,
                          expected_params=approve_params(ids[1]),
                          modeled_fields={"TurkErrorCode": "AWS.MechanicalTurk.InvalidAssignmentState"})
    stub.add_response("get_assignment", {"Assignment": assignment(ids[1], "W0001", "Approved")}, {"AssignmentId": ids[1]})
    for aid in ids[2:]:
        stub.add_response("approve_assignment", {}, approve_params(aid))
    assert "Approved: 3; already approved on MTurk: 1" in run("approve")
    assert MturkAssignment.objects.filter(status="Approved").count() == 5


def test_unreachable_mturk_while_rejecting_stops_with_the_count(experiment, stub):
    """EndpointConnectionError during reject escaped without saying what was rejected and what remains."""
    ids = many_submitted(experiment, 3)
    Participant.objects.update(pay_ok=False, pay_reasons=["answered every trap clip wrong"])
    fail_call(stub, "RejectAssignment", no_network(), nth=1)
    with pytest.raises(CommandError, match=r"Rejected 0 of 3 .*Could not connect.*3 remain"):
        run("reject", "--yes")
    assert set(MturkAssignment.objects.values_list("status", flat=True)) == {"Submitted"}
    assert len(ids) == 3


# ---------------------------------------------------------------- bonus


def approved_with_bonus(experiment, n: int) -> list[str]:
    ids = many_submitted(experiment, n)
    MturkAssignment.objects.update(status="Approved")
    return ids


def bonus_params(i: int, reason: str = "Thank you for your careful listening.") -> dict:
    worker, aid = f"W{i:04d}", f"A{i:04d}"
    return {"WorkerId": worker, "BonusAmount": "0.25", "AssignmentId": aid, "Reason": reason,
            "UniqueRequestToken": mturk.bonus_token(SLUG, worker, aid, 25)}


def paid() -> list[str]:
    return sorted(Participant.objects.filter(bonus_paid=True).values_list("worker_id", flat=True))


def test_throttled_bonuses_stop_and_a_rerun_pays_only_the_rest(experiment, stub):
    """Throttled at worker 3 it carried on sending bonuses into the throttle, each one failing."""
    approved_with_bonus(experiment, 5)
    for i in range(2):
        stub.add_response("send_bonus", {}, bonus_params(i))
    stub.add_client_error("send_bonus", *THROTTLED, expected_params=bonus_params(2))
    with pytest.raises(CommandError, match=r"Paid 2 of 5 .*worker W0002: ThrottlingException.*3 remain: rerun "
                                           r"`manage.py mturk bonus --experiment pilot` to finish"):
        run("bonus", "--yes")
    assert paid() == ["W0000", "W0001"]
    for i in range(2, 5):
        stub.add_response("send_bonus", {}, bonus_params(i))
    assert "Paid: 3" in run("bonus", "--yes")
    assert len(paid()) == 5


def test_a_bonus_whose_reply_timed_out_is_looked_up_and_never_paid_twice(experiment, stub):
    """A timeout left the bonus unmarked though MTurk had paid it: a rerun after 24 hours (token expired) paid it again."""
    approved_with_bonus(experiment, 3)
    stub.add_response("send_bonus", {}, bonus_params(0))
    fail_call(stub, "SendBonus", timed_out(), nth=2)
    stub.add_response("list_bonus_payments", {"NumResults": 1, "BonusPayments": [
        {"WorkerId": "W0001", "BonusAmount": "0.25", "AssignmentId": "A0001", "Reason": "x", "GrantTime": NOW}]},
        {"AssignmentId": "A0001", "MaxResults": 100})
    with pytest.raises(CommandError, match=r"Paid 2 of 3 .*Read timeout.*1 remain"):
        run("bonus", "--yes")
    assert paid() == ["W0000", "W0001"]
    stub.add_response("send_bonus", {}, bonus_params(2))
    run("bonus", "--yes")
    assert len(paid()) == 3


def test_a_bonus_that_may_have_gone_through_and_cannot_be_checked_is_said(experiment, stub):
    """When MTurk cannot be asked either, the researcher must learn the 24-hour window of the request token."""
    approved_with_bonus(experiment, 2)
    fail_call(stub, "SendBonus", timed_out(), nth=1)
    fail_call(stub, "ListBonusPayments", no_network(), nth=1)
    with pytest.raises(CommandError, match=r"Paid 0 of 2 .*2 remain.*W0000 may have been paid: rerun within 24 hours"):
        run("bonus", "--yes")
    assert paid() == []


def test_insufficient_funds_for_bonuses_stops_at_the_first_and_says_what_is_needed(experiment, stub):
    """Out of funds it went on asking MTurk for every remaining bonus, each refused the same way."""
    approved_with_bonus(experiment, 4)
    stub.add_response("send_bonus", {}, bonus_params(0))
    stub.add_client_error("send_bonus", *NO_FUNDS, expected_params=bonus_params(1))
    with pytest.raises(CommandError, match=r"Paid 1 of 4 .*insufficient funds.*\$0\.90 with fees: add funds.*3 remain"):
        run("bonus", "--yes")
    assert paid() == ["W0000"]


def test_bonus_without_a_reason_is_refused_before_any_call(experiment, stub):
    """An empty --reason was sent to MTurk for every worker (MTurk requires one), after the money was confirmed."""
    approved_with_bonus(experiment, 2)
    with pytest.raises(CommandError, match="needs a reason"):
        run("bonus", "--yes", "--reason", "  ")
    assert paid() == []


def test_a_bonus_already_paid_with_that_token_is_marked_paid(experiment, stub):
    """MTurk's real duplicate-token reply ('idempotency token ... has already been processed') means paid."""
    approved_with_bonus(experiment, 1)
    token = bonus_params(0)["UniqueRequestToken"]
    stub.add_client_error("send_bonus", "RequestError",
                          f'The idempotency token "{token}" has already been processed. (1626172412406)', 400,
                          expected_params=bonus_params(0))
    assert "already paid on MTurk: 1" in run("bonus", "--yes")
    assert paid() == ["W0000"]


# ---------------------------------------------------------------- paging, status, sync, expire


def test_sync_sees_every_assignment_over_several_pages(experiment, stub):
    """ListAssignmentsForHIT returns 100 a page: all 250 must be stored."""
    posted(experiment, HIT_A)
    rows = [assignment(f"A{i:04d}", f"W{i:04d}") for i in range(250)]
    for n, page in enumerate([rows[:100], rows[100:200], rows[200:]]):
        params = {"HITId": HIT_A, "AssignmentStatuses": ["Submitted", "Approved", "Rejected"], "MaxResults": 100}
        body = {"Assignments": page, "NumResults": len(page)}
        if n:
            params["NextToken"] = f"t{n}"
        if n < 2:
            body["NextToken"] = f"t{n + 1}"
        stub.add_response("list_assignments_for_hit", body, params)
    assert "Assignments: 250" in run("sync")
    assert MturkAssignment.objects.count() == 250


def sync_params(hit_id: str) -> dict:
    return {"HITId": hit_id, "AssignmentStatuses": ["Submitted", "Approved", "Rejected"], "MaxResults": 100}


def does_not_exist(hit_id: str) -> tuple:
    return ("RequestError", f"Hit {hit_id} does not exist. (1700000000000)", 400)


def test_sync_goes_past_a_hit_mturk_no_longer_has(experiment, stub):
    """One deleted HIT ended the sync: the HITs after it were never synced."""
    posted(experiment, HIT_A, HIT_B)
    stub.add_client_error("list_assignments_for_hit", *does_not_exist(HIT_A), expected_params=sync_params(HIT_A))
    stub.add_response("list_assignments_for_hit", {"Assignments": [assignment("A1", "W1", hit_id=HIT_B)], "NumResults": 1},
                      sync_params(HIT_B))
    out = run("sync")
    assert "Assignments: 1" in out and f"no longer on MTurk (their assignments stay as last synced): {HIT_A}" in out


def test_sync_throttled_says_how_far_it_got(experiment, stub):
    """Throttled on the second HIT it said only which call failed, not that one HIT was synced and a rerun finishes."""
    posted(experiment, HIT_A, HIT_B)
    stub.add_response("list_assignments_for_hit", {"Assignments": [assignment("A1", "W1")], "NumResults": 1}, sync_params(HIT_A))
    stub.add_client_error("list_assignments_for_hit", *THROTTLED, expected_params=sync_params(HIT_B))
    with pytest.raises(CommandError, match=r"synced \(1 assignments stored\) 1 of 2 HITs; 1 remain: rerun"):
        run("sync")
    assert MturkAssignment.objects.count() == 1


def test_status_shows_a_deleted_hit_and_an_expired_one_and_still_the_rest(experiment, stub):
    """A HIT MTurk no longer has ended `status` with an error: no counts for the others, no balance."""
    posted(experiment, HIT_A, HIT_B)
    stub.add_client_error("get_hit", *does_not_exist(HIT_A), expected_params={"HITId": HIT_A})
    gone_by = datetime.now(UTC) - timedelta(days=1)
    stub.add_response("get_hit", {"HIT": hit(HIT_B, available=0, completed=3, status="Reviewable") | {"Expiration": gone_by}},
                      {"HITId": HIT_B})
    stub.add_response("get_account_balance", {"AvailableBalance": "12.00", "OnHoldBalance": "0.00"}, {})
    out = run("status")
    assert f"{HIT_A}  Deleted" in out and "no longer on MTurk" in out
    assert f"expired {gone_by:%Y-%m-%d}" in out and "$12.00 available" in out


def expire_params(hit_id: str) -> dict:
    return {"HITId": hit_id, "ExpireAt": datetime(2015, 1, 1, tzinfo=UTC)}


def test_expire_on_hits_already_expired_or_deleted_still_expires_the_rest(experiment, stub):
    """Rerun after a partial expire, MTurk refused the first (same expiry twice) and the HITs after it kept taking workers."""
    posted(experiment, HIT_A, HIT_B, HIT_C)
    stub.add_client_error("update_expiration_for_hit", "RequestError",
                          f'The idempotency token "{HIT_A}Thu Jan 01 00:00:00 UTC 2015" has already been processed. (1626172412406)',
                          400, expected_params=expire_params(HIT_A))
    stub.add_response("get_hit", {"HIT": hit(HIT_A, status="Reviewable") | {"Expiration": datetime(2015, 1, 1, tzinfo=UTC)}},
                      {"HITId": HIT_A})
    stub.add_client_error("update_expiration_for_hit", *does_not_exist(HIT_B), expected_params=expire_params(HIT_B))
    stub.add_client_error("get_hit", *does_not_exist(HIT_B), expected_params={"HITId": HIT_B})
    stub.add_response("update_expiration_for_hit", {}, expire_params(HIT_C))
    out = run("expire")
    assert "Expired 1 HITs; already expired or disposed 1; no longer on MTurk 1" in out
    assert MturkHit.objects.get(hit_id=HIT_C).available == 0 and MturkHit.objects.get(hit_id=HIT_B).status == "Deleted"


def test_expire_refused_for_a_hit_still_open_is_an_error_naming_it(experiment, stub):
    """A refusal for a HIT that still takes workers must not pass as expired."""
    posted(experiment, HIT_A)
    stub.add_client_error("update_expiration_for_hit", "RequestError", "Something else (1)", 400, expected_params=expire_params(HIT_A))
    stub.add_response("get_hit", {"HIT": hit(HIT_A) | {"Expiration": datetime.now(UTC) + timedelta(days=3)}}, {"HITId": HIT_A})
    with pytest.raises(CommandError, match=f"1 could not be expired and may still take workers: {HIT_A}"):
        run("expire")


def test_expire_throttled_says_how_many_still_take_workers(experiment, stub):
    """Throttled on the second HIT it did not say that two HITs still take workers."""
    posted(experiment, HIT_A, HIT_B, HIT_C)
    stub.add_response("update_expiration_for_hit", {}, expire_params(HIT_A))
    stub.add_client_error("update_expiration_for_hit", *THROTTLED, expected_params=expire_params(HIT_B))
    with pytest.raises(CommandError, match=r"expired 1 of 3 HITs; 2 remain: rerun"):
        run("expire")


# ---------------------------------------------------------------- sandbox vs live


@pytest.mark.parametrize("action", [["approve"], ["status"], ["sync"], ["expire"], ["bonus", "--yes"], ["reject", "--yes"]])
def test_live_flag_on_a_sandbox_study_is_refused_not_a_silent_nothing(experiment, stub, action):
    """`approve --live` on a sandbox study answered 'Approved: 0' (exit 0), as if all were done."""
    many_submitted(experiment, 2)
    with pytest.raises(CommandError, match=r"no HITs or assignments in the LIVE marketplace, but 1 HITs and 2 assignments "
                                           r"in the SANDBOX: drop --live"):
        run(*action, "--live")


def test_without_live_on_a_live_study_is_refused(experiment, stub):
    """The other way round: sandbox commands on a study that only ran live."""
    many_submitted(experiment, 1)
    MturkHit.objects.update(sandbox=False)
    MturkAssignment.objects.update(sandbox=False)
    with pytest.raises(CommandError, match="add --live"):
        run("approve")


def test_live_bonus_names_the_marketplace_before_the_money(experiment, stub):
    """The researcher reads LIVE before the cost line and before any payment."""
    approved_with_bonus(experiment, 1)
    MturkHit.objects.update(sandbox=False)
    MturkAssignment.objects.update(sandbox=False)
    stub.add_response("send_bonus", {}, bonus_params(0))
    out = run("bonus", "--yes", "--live")
    assert out.index("LIVE MTurk marketplace") < out.index("1 bonuses: $0.25") < out.index("Paid: 1")


# ---------------------------------------------------------------- Prolific


def test_prolific_url_prints_the_completion_code_prolific_will_receive(stub):
    """A code saved with stray spaces was printed with them, while listeners were sent the stripped code."""
    Experiment.objects.create(slug="p1", completion_code=" C0DE-1 ")
    out = io.StringIO()
    call_command("prolific_url", experiment="p1", base_url="https://survey.example.org", stdout=out)
    assert "Completion code: C0DE-1\n" in out.getvalue()


def test_prolific_code_with_odd_characters_is_one_line(stub):
    """A code Prolific would not take (set outside the admin) is refused in one line, not a traceback."""
    Experiment.objects.create(slug="p2", completion_code="C0DE&cc=1")
    with pytest.raises(CommandError, match="completion code 'C0DE&cc=1' must be"):
        call_command("prolific_url", experiment="p2", base_url="https://survey.example.org")
