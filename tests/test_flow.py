"""The listener flow, the answer writer, and the experiment lookup, without HTTP."""
from __future__ import annotations

import pytest

from evaluation import answers, flow
from evaluation.models import Assignment, Experiment, Participant, Response, Stimulus, UnknownExperiment
from tests.helpers.survey import make_experiment

SUBMIT = ("https://www.mturk.com",)


@pytest.mark.parametrize("raw, source, canonical", [
    ("  A1B2C3 ", "mturk", "A1B2C3"),
    ("a1b2\u200bc3", "mturk", "A1B2C3"),
    ("\ufeffA1B2C3\u00a0", "mturk", "A1B2C3"),
    ("\uff21\uff11", "mturk", "A1"),
    ("5F3A9C0D1E2F3A4B5C6D7E8F", "prolific", "5f3a9c0d1e2f3a4b5c6d7e8f"),
    ("machine:asr:pocketsphinx", "machine", "machine:asr:pocketsphinx"),
])
def test_worker_ids_are_normalized_by_the_platforms_rules(raw, source, canonical):
    assert flow.normalize_worker_id(raw, source) == canonical


@pytest.mark.parametrize("raw, source", [("A1-B2", "mturk"), ("", "mturk"), ("ab\x00cd", "prolific"), ("x" * 65, "prolific")])
def test_impossible_worker_ids_are_invalid_links(raw, source):
    with pytest.raises(flow.InvalidLink):
        flow.normalize_worker_id(raw, source)


def test_parse_link_reads_mturk_and_prolific_and_refuses_foreign_submit_hosts():
    mturk = flow.parse_link({"workerId": " aw1 ", "assignmentId": "A", "hitId": "H", "turkSubmitTo": "https://www.mturk.com/"}, SUBMIT)
    assert (mturk.source, mturk.worker_id, mturk.assignment_id, mturk.turk_submit_to) == ("mturk", "AW1", "A", "https://www.mturk.com")
    prolific = flow.parse_link({"PROLIFIC_PID": "ABC123", "STUDY_ID": "S", "SESSION_ID": "X"}, SUBMIT)
    assert (prolific.source, prolific.worker_id, prolific.study_id) == ("prolific", "abc123", "S")
    assert flow.parse_link({"assignmentId": flow.PREVIEW_ASSIGNMENT}, SUBMIT).is_mturk_preview
    assert flow.parse_link({}, SUBMIT).source == "web"
    with pytest.raises(flow.InvalidLink, match="turkSubmitTo"):
        flow.parse_link({"workerId": "W", "turkSubmitTo": "https://evil.example"}, SUBMIT)
    with pytest.raises(flow.InvalidLink, match="NUL"):
        flow.parse_link({"STUDY_ID": "S\x00"}, SUBMIT)


def test_the_carried_token_is_signed_and_the_csrf_secret_is_bound_to_it():
    participant = Participant(token="tok-123")
    carried = flow.carry_token(participant)
    assert flow.carried_participant_token(carried) == "tok-123"
    assert flow.carried_participant_token(carried[:-1] + ("A" if carried[-1] != "A" else "B")) is None
    assert flow.carried_participant_token("tok-123") is None
    secret = flow.csrf_secret_for("tok-123")
    assert len(secret) == 32 and secret.isalnum() and secret != flow.csrf_secret_for("tok-124")


@pytest.mark.django_db
def test_the_flow_moves_through_its_typed_steps(media):
    experiment = make_experiment(headphone_check=True)
    participant = flow.enter(experiment, flow.Link(), current=None)
    assert flow.steps(participant) == ["consent", "instructions", "headphones", "trials", "done"]
    flow.consent(participant)
    flow.finish_instructions(participant)
    assert participant.step == Participant.Step.HEADPHONES
    assert flow.screen_headphones(participant, [(k + 1) % 3 for k in flow.headphone_key(participant)]) is False
    participant.refresh_from_db()
    assert participant.step == Participant.Step.SCREENED and participant.analyse_ok is False


@pytest.mark.django_db
def test_entering_twice_is_the_same_participant_and_a_finished_one_is_refused(media):
    experiment = make_experiment()
    link = flow.Link(source="mturk", worker_id="AW1", assignment_id="A1")
    first = flow.enter(experiment, link, current=None)
    again = flow.enter(experiment, flow.Link(source="mturk", worker_id="AW1", assignment_id="A2"), current=None)
    assert again.pk == first.pk and again.assignment_id == "A2"
    flow.finish(first)
    with pytest.raises(flow.AlreadyTakenPart):
        flow.enter(experiment, link, current=None)


@pytest.mark.django_db
def test_one_writer_stores_machine_answers_as_reported_and_checks_options(media):
    experiment = make_experiment(ratings_per_stimulus=1)
    machine = Participant.objects.create(experiment=experiment, source="machine", kind="machine", worker_id="m")
    stim = experiment.stimuli.filter(kind=Stimulus.Kind.TEST).first()
    slot = answers.slot_for(machine, stim)
    assert answers.slot_for(machine, stim).pk == slot.pk
    with pytest.raises(answers.InvalidAnswer):
        answers.store_answer(slot, answer="banana", heard=answers.Heard())
    stored = answers.store_answer(slot, answer=stim.word, heard=answers.Heard(play_count=1, listened_to_end=True))
    assert stored.created and stored.response.listened_to_end and stored.response.play_count == 1
    assert answers.store_answer(slot, answer=stim.word, heard=answers.Heard()) == answers.Stored(stored.response, False)
    with pytest.raises(answers.Conflict, match="differently"):
        answers.store_answer(slot, answer=answers.NONE_ANSWER, heard=answers.Heard())
    stim.refresh_from_db()
    assert stim.answer_count == 0  # machines never use up the human quota


@pytest.mark.django_db
def test_the_quota_can_be_kept_for_work_already_done(media):
    experiment = make_experiment(ratings_per_stimulus=1)
    stim = experiment.stimuli.filter(kind=Stimulus.Kind.TEST).first()
    people = [Participant.objects.create(experiment=experiment, source="mturk", worker_id=f"W{n}") for n in range(3)]
    slots = [Assignment.objects.create(participant=p, stimulus=stim, position=0) for p in people]
    answers.store_answer(slots[0], answer=stim.word, heard=answers.Heard())
    with pytest.raises(answers.Conflict, match="all the answers"):
        answers.store_answer(slots[1], answer=stim.word, heard=answers.Heard())
    answers.store_answer(slots[2], answer=stim.word, heard=answers.Heard(), enforce_quota=False)
    stim.refresh_from_db()
    assert stim.answer_count == 2 and Response.objects.count() == 2


@pytest.mark.django_db
def test_a_web_answer_needs_the_servers_own_record_of_the_clip(media):
    experiment = make_experiment()
    person = Participant.objects.create(experiment=experiment)
    slot = Assignment.objects.create(participant=person, stimulus=experiment.stimuli.first(), position=0, play_count=1)
    with pytest.raises(answers.Conflict, match="listen to the whole clip"):
        answers.store_answer(slot, answer="yes")  # a play counted, but nothing was ever served in full
    assert Response.objects.count() == 0


@pytest.mark.django_db
def test_experiments_are_found_by_slug_in_one_place(media):
    make_experiment("study1")
    assert Experiment.objects.by_slug("study1").slug == "study1"
    with pytest.raises(UnknownExperiment, match="no experiment named 'nope'"):
        Experiment.objects.by_slug("nope")
    with pytest.raises(UnknownExperiment):
        Experiment.objects.by_slug("study1\x00")
