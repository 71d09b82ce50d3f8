"""Mechanical Turk and Prolific: every API call is checked against botocore's real MTurk model by Stubber."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from evaluation import mturk, prolific
from evaluation.models import Experiment, MturkAssignment, MturkHit, Participant, Response, Stimulus
from tests.helpers.mturk import HIT_A, HIT_B, NOW, SLUG, URL, WORDS, assignment, hit, pilot_experiment, posted, stubbed_mturk

pytestmark = pytest.mark.django_db


@pytest.fixture
def experiment(media):
    return pilot_experiment()


@pytest.fixture
def stub(monkeypatch):
    yield from stubbed_mturk(monkeypatch)


def expected_create(index: int, live_url: str = URL) -> dict:
    token = mturk.request_token(SLUG, "main", index)
    return {
        "MaxAssignments": 3,
        "AutoApprovalDelayInSeconds": 3 * 86400,
        "LifetimeInSeconds": 7 * 86400,
        "AssignmentDurationInSeconds": 30 * 60,
        "Reward": "0.50",
        "Title": "Listen to short recordings and say which word you hear",
        "Keywords": "audio, listening, speech, words, headphones",
        "Description": "Listen to 20 short recordings with headphones and answer one question about each.",
        "Question": (
            '<?xml version="1.0" encoding="UTF-8"?>\n<ExternalQuestion xmlns="http://mechanicalturk.amazonaws.com/'
            'AWSMechanicalTurkDataSchemas/2006-07-14/ExternalQuestion.xsd">'
            f"<ExternalURL>{live_url}</ExternalURL><FrameHeight>0</FrameHeight></ExternalQuestion>"
        ),
        "RequesterAnnotation": token,
        "QualificationRequirements": [
            {"QualificationTypeId": "000000000000000000L0", "Comparator": "GreaterThanOrEqualTo", "IntegerValues": [98], "ActionsGuarded": "Accept"},
            {"QualificationTypeId": "00000000000000000071", "Comparator": "In", "LocaleValues": [{"Country": "US"}, {"Country": "GB"}], "ActionsGuarded": "Accept"},
        ],
        "UniqueRequestToken": token,
    }


def create(*extra):
    out = io.StringIO()
    call_command("mturk", "create-hits", "--experiment", SLUG, "--url", URL, "--hits", "2", "--assignments-per-hit", "3",
                 "--reward", "0.50", *extra, stdout=out)
    return out.getvalue()


# ---------------------------------------------------------------- cost and parameters


def test_cost_includes_the_fee_and_the_surcharge_for_ten_or_more_assignments():
    small = mturk.hit_cost(Decimal("0.50"), 9, 10)
    assert (small.rewards, small.fees, small.total) == (Decimal("45.00"), Decimal("9.00"), Decimal("54.00"))
    large = mturk.hit_cost(Decimal("0.50"), 10, 2)
    assert (large.rewards, large.fees, large.total) == (Decimal("10.00"), Decimal("4.00"), Decimal("14.00"))
    assert mturk.hit_cost(Decimal("0.02"), 1, 1).fees == Decimal("0.01")  # MTurk's minimum commission
    assert mturk.bonus_cost([100, 3]) == (Decimal("1.03"), Decimal("0.21"))


def test_request_tokens_are_stable_distinct_and_within_mturks_limit():
    a = mturk.request_token(SLUG, "main", 0)
    assert a == mturk.request_token(SLUG, "main", 0)
    assert len({a, mturk.request_token(SLUG, "main", 1), mturk.request_token(SLUG, "b2", 0), mturk.request_token("x", "main", 0)}) == 4
    assert len(a) <= 64


@pytest.mark.parametrize("bad", ["0", "-1", "0.505", "abc", "nan", "1e400", "-1e400"])
def test_bad_reward_is_one_line_error(experiment, stub, bad):
    with pytest.raises(CommandError, match="reward"):
        create("--reward", bad, "--yes")


@pytest.mark.parametrize("option, value, message", [
    ("--hits", str(10**21), "between 1 and 1,000,000 HITs"),  # listed in memory before anything was asked: exhausted it
    ("--assignments-per-hit", str(10**10), "between 1 and 1,000,000,000"),
    ("--min-approval", "101", "must lie in 0..100"),  # accepted up to the cost question before
])
def test_out_of_range_batch_sizes_are_refused_before_anything_is_asked_or_sent(experiment, stub, option, value, message):
    with pytest.raises(CommandError, match=message):
        create(option, value)  # no --yes: a question asked would fail differently (no terminal)
    assert not MturkHit.objects.exists()


# ---------------------------------------------------------------- create-hits


def test_create_hits_sends_external_question_qualifications_and_tokens(experiment, stub):
    for i, hit_id in enumerate([HIT_A, HIT_B]):
        stub.add_response("create_hit", {"HIT": hit(hit_id)}, expected_create(i))
    out = create("--yes")
    assert "SANDBOX" in out and "total $3.60" in out  # 6 x 0.50 + 6 x 0.10 fee
    assert stub.asked_live == [False]
    hits = list(MturkHit.objects.order_by("index"))
    assert [h.hit_id for h in hits] == [HIT_A, HIT_B] and all(h.sandbox for h in hits)
    assert hits[0].parameters["UniqueRequestToken"] == mturk.request_token(SLUG, "main", 0)
    assert hits[0].parameters["ExternalURL"] == URL


def test_live_is_announced_and_uses_the_live_marketplace(experiment, stub):
    for i, hit_id in enumerate([HIT_A, HIT_B]):
        stub.add_response("create_hit", {"HIT": hit(hit_id)}, expected_create(i))
    out = create("--live", "--yes")
    assert "LIVE" in out and "real money" in out
    assert stub.asked_live == [True]
    assert not MturkHit.objects.filter(sandbox=True).exists()


def test_create_hits_refuses_without_yes_when_nobody_can_answer(experiment, stub, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # not a terminal
    with pytest.raises(CommandError, match="--yes"):
        create()
    assert not MturkHit.objects.exists()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_create_hits_asks_and_a_no_spends_nothing(experiment, stub, monkeypatch):
    monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
    with pytest.raises(CommandError, match="cancelled"):
        create()
    assert not MturkHit.objects.exists()
    monkeypatch.setattr(sys, "stdin", _Terminal("y\n"))
    for i, hit_id in enumerate([HIT_A, HIT_B]):
        stub.add_response("create_hit", {"HIT": hit(hit_id)}, expected_create(i))
    create()
    assert MturkHit.objects.count() == 2


@pytest.mark.parametrize("url", ["http://survey.example.org/s/pilot/", "https://survey.example.org/s/other/", "survey/s/pilot/"])
def test_create_hits_refuses_a_url_that_is_not_our_https_survey(experiment, stub, url):
    with pytest.raises(CommandError, match="survey URL"):
        call_command("mturk", "create-hits", "--experiment", SLUG, "--url", url, "--hits", "1",
                     "--assignments-per-hit", "1", "--reward", "0.50", "--yes")
    assert not MturkHit.objects.exists()


def test_create_hits_refuses_an_experiment_that_is_not_live(experiment, stub):
    Experiment.objects.filter(pk=experiment.pk).update(status=Experiment.Status.DRAFT)
    with pytest.raises(CommandError, match="set it live"):
        create("--yes")


def test_unknown_experiment_is_one_line_error(stub):
    with pytest.raises(CommandError, match="no experiment"):
        call_command("mturk", "status", "--experiment", "missing")


def test_retry_after_a_failure_never_doubles_hits(experiment, stub):
    stub.add_response("create_hit", {"HIT": hit(HIT_A)}, expected_create(0))
    stub.add_client_error("create_hit", "ServiceFault", "Internal error", 500, expected_params=expected_create(1))
    with pytest.raises(CommandError, match="HIT 1"):
        create("--yes")
    assert list(MturkHit.objects.values_list("hit_id", flat=True)) == [HIT_A]
    # The failed call did reach MTurk after all: the rerun asks only for HIT 1, MTurk answers "already exists".
    stub.add_client_error(
        "create_hit", "RequestError", f"The HIT with ID {HIT_B} already exists.", 400,
        expected_params=expected_create(1), modeled_fields={"TurkErrorCode": "AWS.MechanicalTurk.HitAlreadyExists"},
    )
    stub.add_response("get_hit", {"HIT": hit(HIT_B)}, {"HITId": HIT_B})
    create("--yes")
    out = create("--yes")  # everything recorded: no call at all
    assert "already exist" in out
    assert sorted(MturkHit.objects.values_list("hit_id", flat=True)) == [HIT_A, HIT_B]


def test_duplicate_without_an_id_in_the_message_is_found_by_its_annotation(experiment, stub):
    MturkHit.objects.create(experiment=experiment, hit_id=HIT_A, batch="main", index=0, url=URL, title="t",
                            request_token=mturk.request_token(SLUG, "main", 0), reward=Decimal("0.50"), max_assignments=3)
    stub.add_client_error("create_hit", "RequestError", "HIT already exists", 400, expected_params=expected_create(1),
                          modeled_fields={"TurkErrorCode": "AWS.MechanicalTurk.HitAlreadyExists"})
    other = hit("3ZZZ9REUTFGXCRWFZUG9LHQ0J01Y6Z") | {"RequesterAnnotation": "someone else's"}
    ours = hit(HIT_B) | {"RequesterAnnotation": mturk.request_token(SLUG, "main", 1)}
    stub.add_response("list_hits", {"HITs": [other], "NextToken": "p2", "NumResults": 1}, {"MaxResults": 100})
    stub.add_response("list_hits", {"HITs": [ours], "NumResults": 1}, {"MaxResults": 100, "NextToken": "p2"})
    stub.add_response("get_hit", {"HIT": ours}, {"HITId": HIT_B})
    create("--yes")
    assert sorted(MturkHit.objects.values_list("hit_id", flat=True)) == [HIT_A, HIT_B]


# ---------------------------------------------------------------- status, sync, expire


def test_status_refreshes_counts_and_shows_the_balance(experiment, stub):
    posted(experiment, HIT_A, HIT_B)
    stub.add_response("get_hit", {"HIT": hit(HIT_A, available=1, pending=1, completed=1)}, {"HITId": HIT_A})
    stub.add_response("get_hit", {"HIT": hit(HIT_B, available=0, pending=0, completed=3)}, {"HITId": HIT_B})
    stub.add_response("get_account_balance", {"AvailableBalance": "10000.00", "OnHoldBalance": "0.00"}, {})
    out = io.StringIO()
    call_command("mturk", "status", "--experiment", SLUG, stdout=out)
    assert "available 1, pending 1, completed 4" in out.getvalue()
    assert "$10000.00" in out.getvalue()
    assert MturkHit.objects.get(hit_id=HIT_B).completed == 3


STATUSES = ["Submitted", "Approved", "Rejected"]


def add_sync(stub, pages):
    """Stub list_assignments_for_hit for HIT_A, one response per page, chained by NextToken."""
    for n, page in enumerate(pages):
        params = {"HITId": HIT_A, "AssignmentStatuses": STATUSES, "MaxResults": 100}
        if n:
            params["NextToken"] = f"page{n}"
        body = {"Assignments": page, "NumResults": len(page)}
        if n + 1 < len(pages):
            body["NextToken"] = f"page{n + 1}"
        stub.add_response("list_assignments_for_hit", body, params)


def mturk_participants(experiment):
    good = Participant.objects.create(experiment=experiment, source="mturk", worker_id="WGOOD", assignment_id="AGOOD",
                                      hit_id=HIT_A, step="done", finished_at=NOW, pay_ok=True)
    bad = Participant.objects.create(experiment=experiment, source="mturk", worker_id="WBAD", assignment_id="ABAD",
                                     hit_id=HIT_A, step="done", finished_at=NOW, pay_ok=False,
                                     pay_reasons=["answered 3 of 3 trap clips wrong", "played no clip to the end"])
    return good, bad


def test_sync_pages_through_assignments_and_links_participants(experiment, stub):
    posted(experiment, HIT_A)
    good, bad = mturk_participants(experiment)
    add_sync(stub, [[assignment("AGOOD", "WGOOD")], [assignment("ABAD", "WBAD"), assignment("ASTRAY", "WSTRAY")]])
    out = io.StringIO()
    call_command("mturk", "sync", "--experiment", SLUG, stdout=out)
    assert "Assignments: 3" in out.getvalue() and "WSTRAY/ASTRAY" in out.getvalue()
    rows = {a.assignment_id: a for a in MturkAssignment.objects.all()}
    assert rows["AGOOD"].participant == good and rows["ABAD"].participant == bad and rows["ASTRAY"].participant is None
    good.refresh_from_db()
    assert good.paid_state == "submitted"
    # A second sync sees MTurk's new state (auto-approved) and adds no rows.
    add_sync(stub, [[assignment("AGOOD", "WGOOD", "Approved"), assignment("ABAD", "WBAD"), assignment("ASTRAY", "WSTRAY")]])
    call_command("mturk", "sync", "--experiment", SLUG, stdout=io.StringIO())
    assert MturkAssignment.objects.count() == 3
    good.refresh_from_db()
    assert good.paid_state == "approved"


def test_expire_moves_every_hits_expiry_into_the_past(experiment, stub):
    posted(experiment, HIT_A, HIT_B)
    for hit_id in (HIT_A, HIT_B):
        stub.add_response("update_expiration_for_hit", {}, {"HITId": hit_id, "ExpireAt": datetime(2015, 1, 1, tzinfo=UTC)})
    call_command("mturk", "expire", "--experiment", SLUG, stdout=io.StringIO())
    assert MturkHit.objects.filter(available=0, expires_at__isnull=False).count() == 2


# ---------------------------------------------------------------- approve, reject, bonus


def synced(experiment):
    posted(experiment, HIT_A)
    good, bad = mturk_participants(experiment)
    for p in (good, bad):
        MturkAssignment.objects.create(experiment=experiment, participant=p, hit_id=HIT_A, assignment_id=p.assignment_id,
                                       worker_id=p.worker_id, status="Submitted", submitted_at=NOW)
    return good, bad


def test_approve_follows_the_verdicts_and_is_idempotent(experiment, stub):
    good, bad = synced(experiment)
    stub.add_response("approve_assignment", {}, {"AssignmentId": "AGOOD", "RequesterFeedback": "Thank you for listening."})
    call_command("mturk", "approve", "--experiment", SLUG, stdout=io.StringIO())
    assert MturkAssignment.objects.get(assignment_id="AGOOD").status == "Approved"
    assert MturkAssignment.objects.get(assignment_id="ABAD").status == "Submitted"
    good.refresh_from_db()
    assert good.paid_state == "approved"
    out = io.StringIO()
    call_command("mturk", "approve", "--experiment", SLUG, stdout=out)  # no stubbed call: none may be made
    assert "Approved: 0" in out.getvalue()


def test_approve_records_an_assignment_mturk_already_approved(experiment, stub):
    synced(experiment)
    stub.add_client_error("approve_assignment", "RequestError", "This operation can be called with a status of: Submitted", 400)
    stub.add_response("get_assignment", {"Assignment": assignment("AGOOD", "WGOOD", "Approved")}, {"AssignmentId": "AGOOD"})
    out = io.StringIO()
    call_command("mturk", "approve", "--experiment", SLUG, stdout=out)
    assert "already approved on MTurk: 1" in out.getvalue()
    assert MturkAssignment.objects.get(assignment_id="AGOOD").status == "Approved"


def test_reject_tells_the_worker_why_and_is_idempotent(experiment, stub):
    synced(experiment)
    stub.add_response("reject_assignment", {}, {
        "AssignmentId": "ABAD", "RequesterFeedback": "answered 3 of 3 trap clips wrong; played no clip to the end"})
    call_command("mturk", "reject", "--experiment", SLUG, "--yes", stdout=io.StringIO())
    assert Participant.objects.get(worker_id="WBAD").paid_state == "rejected"
    out = io.StringIO()
    call_command("mturk", "reject", "--experiment", SLUG, "--yes", stdout=out)
    assert "Nothing to reject" in out.getvalue()


def test_reject_without_a_reason_is_refused(experiment, stub):
    synced(experiment)
    Participant.objects.filter(worker_id="WBAD").update(pay_reasons=[])
    with pytest.raises(CommandError, match="no pay_reasons"):
        call_command("mturk", "reject", "--experiment", SLUG, "--yes", stdout=io.StringIO())
    assert MturkAssignment.objects.get(assignment_id="ABAD").status == "Submitted"


def test_bonus_is_paid_once_with_a_request_token(experiment, stub, monkeypatch):
    good, _ = synced(experiment)
    MturkAssignment.objects.filter(assignment_id="AGOOD").update(status="Approved")
    Participant.objects.filter(pk=good.pk).update(bonus_cents=25)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(CommandError, match="--yes"):
        call_command("mturk", "bonus", "--experiment", SLUG, stdout=io.StringIO())
    stub.add_response("send_bonus", {}, {
        "WorkerId": "WGOOD", "BonusAmount": "0.25", "AssignmentId": "AGOOD", "Reason": "Thank you for your careful listening.",
        "UniqueRequestToken": mturk.bonus_token(SLUG, "WGOOD", "AGOOD", 25)})
    out = io.StringIO()
    call_command("mturk", "bonus", "--experiment", SLUG, "--yes", stdout=out)
    assert "$0.25 + MTurk fee $0.05" in out.getvalue()
    good.refresh_from_db()
    assert good.bonus_paid
    out = io.StringIO()
    call_command("mturk", "bonus", "--experiment", SLUG, "--yes", stdout=out)
    assert "No unpaid bonuses" in out.getvalue()


def test_bonus_whose_earlier_reply_was_lost_is_marked_paid(experiment, stub):
    good, _ = synced(experiment)
    MturkAssignment.objects.filter(assignment_id="AGOOD").update(status="Approved")
    Participant.objects.filter(pk=good.pk).update(bonus_cents=25)
    stub.add_client_error("send_bonus", "RequestError", "The request with this token has already been processed (request id 1234).", 400)
    call_command("mturk", "bonus", "--experiment", SLUG, "--yes", stdout=io.StringIO())
    good.refresh_from_db()
    assert good.bonus_paid


# ---------------------------------------------------------------- batch route


def test_identification_batch_reveals_no_word(experiment, tmp_path):
    out = tmp_path / "batch"
    call_command("mturk", "export-batch", "--experiment", SLUG, "--out", str(out), "--base-url", "https://cdn.example.org",
                 stdout=io.StringIO())
    text = (out / "batch.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["audio_url"] and len(rows) == 4  # practice clips stay out
    assert all(re.fullmatch(r"https://cdn\.example\.org/batch-audio/[0-9a-f]{32}\.wav", r["audio_url"]) for r in rows)
    key = dict(csv.reader((out / "batch_key.csv").open()))
    names = {r["audio_url"].rsplit("/", 1)[1] for r in rows}
    assert set(key) - {"audio_name"} == names
    assert set(key.values()) - {"stimulus_id"} == set(
        experiment.stimuli.exclude(kind__in=["practice", "trap"]).values_list("stimulus_id", flat=True))
    tokens = set(" ".join([text, *(p.name for p in out.iterdir())]).replace("/", " ").replace(".", " ").replace("_", " ").split())
    assert not tokens & set(WORDS) and "classifier" not in text and "noise" not in text
    layout = (out / "layout.html").read_text()
    assert 'name="heard-word"' in layout and "${audio_url}" in layout and "Which word do you hear?" in layout
    record = json.loads((out / "batch.json").read_text())
    assert record["sha256"]["batch.csv"] == hashlib.sha256((out / "batch.csv").read_bytes()).hexdigest()


def test_export_never_overwrites_another_batchs_key_but_repeats_its_own(experiment, tmp_path):
    out = tmp_path / "batch"
    export = ("mturk", "export-batch", "--experiment", SLUG, "--out", str(out), "--base-url", "https://cdn.example.org")
    call_command(*export, stdout=io.StringIO())
    call_command(*export, stdout=io.StringIO())  # the same batch again: allowed
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(CommandError, match="holds batch 'main' of experiment"):
        call_command(*export, "--batch", "second", stdout=io.StringIO())
    (out / "batch.json").write_text("{not json")
    before["batch.json"] = (out / "batch.json").read_bytes()
    with pytest.raises(CommandError, match="no batch record"):
        call_command(*export, stdout=io.StringIO())
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_identification_export_refuses_a_base_url_that_names_a_word(experiment, tmp_path):
    with pytest.raises(CommandError, match="names a word"):
        call_command("mturk", "export-batch", "--experiment", SLUG, "--out", str(tmp_path / "b"), "--base-url", "https://dog.h.org")
    assert not (tmp_path / "b" / "batch.csv").exists()


def test_rating_batch_has_the_papers_question_and_anchors(experiment, tmp_path):
    Experiment.objects.filter(pk=experiment.pk).update(task=Experiment.Task.RATING)
    anchors = [f"https://h.org/anchor{i}.wav" for i in range(5)]
    call_command("mturk", "export-batch", "--experiment", SLUG, "--out", str(tmp_path), "--base-url", "https://h.org",
                 "--anchors", ",".join(anchors), stdout=io.StringIO())
    rows = list(csv.DictReader((tmp_path / "batch.csv").open()))
    assert list(rows[0]) == ["experiment", "class_label", "audio_url"]
    assert sorted(r["class_label"] for r in rows) == sorted(WORDS)
    layout = (tmp_path / "layout.html").read_text()
    assert "How clear and audible is the word &#x27;${class_label}&#x27; in this recording?" in layout or \
        "How clear and audible is the word '${class_label}' in this recording?" in layout
    for label in ["Excellent (completely clear speech)", "Good (mostly clear)", "Fair (equally clear and unclear)",
                  "Poor (mostly unclear)", "Bad (completely unclear)", *anchors]:
        assert label in layout
    assert 'name="audio-naturalness"' in layout


def test_export_refuses_plain_http(experiment, tmp_path):
    with pytest.raises(CommandError, match="https"):
        call_command("mturk", "export-batch", "--experiment", SLUG, "--out", str(tmp_path), "--base-url", "http://h.org")


def results_csv(path: Path, experiment, answers: dict[tuple[str, str], str], extra=None) -> Path:
    """An MTurk results file as the requester website writes it: one row per (worker, clip)."""
    urls = {s.word: f"https://cdn.example.org{s.audio.url}" for s in experiment.stimuli.exclude(kind="practice")}
    header = ["HITId", "HITTypeId", "AssignmentId", "WorkerId", "AssignmentStatus", "AcceptTime", "SubmitTime",
              "WorkTimeInSeconds", "Input.audio_url", "Answer.heard-word.label", "Answer.play-count", "Answer.played-to-end"]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for n, ((worker, word), label) in enumerate(answers.items()):
            w.writerow([f"HIT{word.upper()}", "T", f"A{worker}{n}", worker, "Submitted", "Mon Jan 05 03:00:00 PST 2026",
                        "Mon Jan 05 03:01:10 PST 2026", "70", urls[word], label, "2", "true"])
        for row in extra or []:
            w.writerow(row)
    return path


def test_import_results_round_trip_and_twice_changes_nothing(experiment, tmp_path):
    path = results_csv(tmp_path / "Batch_1_batch_results.csv", experiment,
                       {("W1", "dog"): "dog", ("W1", "bed"): "None of these / can't tell", ("W2", "dog"): "bed"})
    out = io.StringIO()
    call_command("mturk", "import-results", str(path), "--experiment", SLUG, stdout=out)
    assert "3 new responses" in out.getvalue()
    answers = sorted((r.participant.worker_id, r.stimulus.word, r.answer) for r in Response.objects.select_related("participant", "stimulus"))
    assert answers == [("W1", "bed", "none"), ("W1", "dog", "dog"), ("W2", "dog", "bed")]
    r = Response.objects.get(participant__worker_id="W2")
    assert r.play_count == 2 and r.listened_to_end and r.answered_at == datetime(2026, 1, 5, 11, 1, 10, tzinfo=UTC)
    assert Participant.objects.filter(source="mturk").count() == 2
    assert Stimulus.objects.get(word="dog", kind="test").answer_count == 2
    call_command("mturk", "import-results", str(path), "--experiment", SLUG, stdout=io.StringIO())
    assert Response.objects.count() == 3 and Participant.objects.count() == 2 and MturkAssignment.objects.count() == 3
    assert Stimulus.objects.get(word="dog", kind="test").answer_count == 2


def test_imported_rating_results_keep_the_papers_scores(experiment, tmp_path):
    Experiment.objects.filter(pk=experiment.pk).update(task=Experiment.Task.RATING)
    experiment.refresh_from_db()
    path = tmp_path / "r.csv"
    url = f"https://h.org{Stimulus.objects.get(word='yes', kind='test').audio.url}"
    path.write_text(
        "HITId,AssignmentId,WorkerId,AssignmentStatus,SubmitTime,Input.experiment,Input.class_label,Input.audio_url,Answer.audio-naturalness.label\n"
        f"H1,A1,W1,Approved,2026-01-05T10:00:00+00:00,{SLUG},yes,{url},Excellent - Completely clear speech\n"
        f"H1,A2,W2,Submitted,2026-01-05T10:00:00+00:00,{SLUG},yes,{url},Bad - Completely unclear speech\n"
    )
    call_command("mturk", "import-results", str(path), "--experiment", SLUG, stdout=io.StringIO())
    assert sorted(Response.objects.values_list("rating", flat=True)) == [0, 4]
    assert MturkAssignment.objects.get(assignment_id="A1").status == "Approved"


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda t: t.replace("Input.audio_url", "Input.url"), "lacks column"),
        (lambda t: t.replace("Answer.heard-word.label", "Answer.naturalness.label"), "no answer column Answer.heard-word"),
        (lambda t: t.replace("Submitted", "Pending", 1), "AssignmentStatus"),
        (lambda t: t + "H9,T,A9,W9\n", "fields where the header has"),
        (lambda t: t.replace("AW21", "AW10"), "already appeared on line 2"),
        (lambda t: t.replace("Mon Jan 05 03:01:10 PST 2026", "yesterday", 1), "time"),
    ],
)
def test_bad_results_files_write_nothing(experiment, tmp_path, mangle, message):
    path = results_csv(tmp_path / "r.csv", experiment, {("W1", "yes"): "yes", ("W2", "yes"): "dog"})
    path.write_text(mangle(path.read_text()))
    with pytest.raises(CommandError, match=message):
        call_command("mturk", "import-results", str(path), "--experiment", SLUG, stdout=io.StringIO())
    assert not Response.objects.exists() and not Participant.objects.exists() and not MturkAssignment.objects.exists()


def test_missing_results_file_is_one_line_error(experiment, tmp_path):
    with pytest.raises(CommandError, match="does not exist"):
        call_command("mturk", "import-results", str(tmp_path / "nope.csv"), "--experiment", SLUG)


@pytest.mark.parametrize(
    "mangle, reason",
    [
        (lambda t: "".join(t.splitlines(True)[:-1]) + re.sub(r"/[^/,]*\.wav", "/deadbeef00.wav", t.splitlines(True)[-1]),
         "not in the study's clips"),
        (lambda t: t.replace(",dog,2,", ",cat,2,"), "not a word of this experiment"),
        (lambda t: t.replace(",dog,2,", ",,2,"), "no answer"),
    ],
)
def test_invalid_rows_are_recorded_as_invalid_and_strict_refuses_the_file(experiment, tmp_path, mangle, reason):
    path = results_csv(tmp_path / "r.csv", experiment, {("W1", "yes"): "yes", ("W2", "yes"): "dog"})
    path.write_text(mangle(path.read_text()))
    with pytest.raises(CommandError, match="1 invalid row.*lines 3"):
        call_command("mturk", "import-results", str(path), "--experiment", SLUG, "--strict", stdout=io.StringIO())
    assert not Response.objects.exists() and not MturkAssignment.objects.exists()
    out = io.StringIO()
    call_command("mturk", "import-results", str(path), "--experiment", SLUG, stdout=out)
    assert "1 invalid row(s)" in out.getvalue() and "line 3" in out.getvalue()
    assert Response.objects.count() == 1
    bad = MturkAssignment.objects.get(worker_id="W2")
    assert bad.response is None and reason in bad.invalid_reason and bad.invalid_reason.startswith("line 3")
    call_command("mturk", "import-results", str(path), "--experiment", SLUG, stdout=io.StringIO())
    assert MturkAssignment.objects.count() == 2 and Response.objects.count() == 1


# ---------------------------------------------------------------- Prolific


def test_prolific_urls():
    assert prolific.completion_url("C1A2B3") == "https://app.prolific.com/submissions/complete?cc=C1A2B3"
    with pytest.raises(Exception, match="completion code"):
        prolific.completion_url("bad code&x=1")
    assert prolific.study_url(URL) == URL + "?PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}"


# ---------------------------------------------------------------- the real client factory


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_the_client_factory_defaults_to_the_sandbox(no_credentials):
    assert mturk.make_client(False).meta.endpoint_url == "https://mturk-requester-sandbox.us-east-1.amazonaws.com"
    assert mturk.make_client(True).meta.endpoint_url == "https://mturk-requester.us-east-1.amazonaws.com"


def test_missing_credentials_are_one_line_and_record_nothing(experiment, no_credentials):
    with pytest.raises(CommandError, match="credentials"):
        create("--yes")
    assert not MturkHit.objects.exists()


def test_batch_results_are_live_and_sync_leaves_batch_hits_alone(experiment, tmp_path, stub):
    path = results_csv(tmp_path / "r.csv", experiment, {("W1", "yes"): "yes"})
    call_command("mturk", "import-results", str(path), "--experiment", SLUG, stdout=io.StringIO())
    row = MturkAssignment.objects.get()
    assert row.via_batch and not row.sandbox  # batch results only come from the live requester website
    out = io.StringIO()
    call_command("mturk", "sync", "--experiment", SLUG, "--live", stdout=out)  # the stub fails on any call it was not given
    assert "Assignments: 0" in out.getvalue()
    with pytest.raises(CommandError, match="unrecognized arguments: --live"):
        call_command("mturk", "import-results", str(path), "--experiment", SLUG, "--live", stdout=io.StringIO())


def test_a_rejected_batch_assignment_keeps_the_workers_other_answers(experiment, tmp_path):
    from evaluation.export import long_table

    path = results_csv(tmp_path / "r.csv", experiment, {("W1", "yes"): "yes", ("W1", "dog"): "dog"})
    path.write_text(path.read_text().replace("Submitted", "Rejected", 1))
    call_command("mturk", "import-results", str(path), "--experiment", SLUG, stdout=io.StringIO())
    assert Response.objects.count() == 2  # stored
    table = long_table(SLUG)
    assert table["listener"].tolist() == ["W1"] and table["word"].tolist() == ["dog"]  # the rejected one is not analysed
