"""What a researcher does to a running study in the admin, and whether the paid answers survive it.

The answers of a crowd study cannot be collected again: nothing in the admin (a delete, an edit, an
action, a reload of stimuli) may remove them, move them or change what they mean.
"""
from __future__ import annotations

import csv
import io
import shutil
import tracemalloc
from email.message import Message
from pathlib import Path

import pandas as pd
import pytest
from django import forms
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.core.management.base import CommandError

from evaluation.export import long_table
from evaluation.models import Assignment, Experiment, Participant, Response, Stimulus
from evaluation.stimuli import load_manifest
from hearsay.csvsafe import safe_frame
from tests.helpers.survey import FIXTURE, Listener, make_experiment

ADMIN = "/admin/evaluation"


@pytest.fixture
def answered(media):
    """The fixture set as a live study that one listener has answered."""
    experiment = make_experiment(trials_per_listener=3)
    person = Listener("demo")
    person.start()
    assert person.finish() > 0
    return experiment


def a_draft(slug: str = "draft") -> Experiment:
    """A study loaded but never answered: deleting or editing it must stay possible."""
    load_manifest(FIXTURE, slug, create=True)
    return Experiment.objects.get(slug=slug)


def said(response) -> str:
    return " | ".join(str(m) for m in get_messages(response.wsgi_request))


def form_data(client, url: str) -> dict:
    """The admin change form as the page shows it (read-only fields are not in it), ready to post back."""
    page = client.get(url)
    assert page.status_code == 200, url
    form = page.context["adminform"].form
    data = {"_save": "Save"}
    for name, field in form.fields.items():
        value = form[name].value()
        if isinstance(field, forms.BooleanField):
            if value:
                data[name] = "on"
        elif isinstance(field, forms.FileField):
            continue
        else:
            data[name] = "" if value is None else value
    return data


def answer_count() -> int:
    return Response.objects.count()


# --- deleting things that hold answers ---------------------------------------------------------


@pytest.mark.django_db
def test_an_answered_experiment_cannot_be_deleted_and_the_page_says_close_it_instead(answered, admin_client):
    """Django's delete page plus one confirmation used to wipe every paid answer of the study."""
    n = answer_count()
    url = f"{ADMIN}/experiment/{answered.pk}/delete/"
    confirmed = admin_client.post(url, {"post": "yes"})
    assert Experiment.objects.filter(pk=answered.pk).exists() and answer_count() == n
    assert confirmed.status_code == 302 and "cannot be deleted" in said(confirmed)
    page = admin_client.get(url)
    assert page.status_code == 302 and "cannot be deleted" in said(page) and "Mark closed" in said(page)


@pytest.mark.django_db
def test_the_delete_action_refuses_a_selection_holding_answers_and_deletes_nothing(answered, admin_client):
    """A draft selected beside the running study must not be deleted alone either: bad input changes nothing."""
    draft = a_draft()
    n = answer_count()
    page = admin_client.post(f"{ADMIN}/experiment/", {"action": "delete_selected", "_selected_action": [answered.pk, draft.pk], "post": "yes"})
    assert page.status_code == 302 and "demo" in said(page) and "Mark closed" in said(page)
    assert Experiment.objects.count() == 2 and answer_count() == n


@pytest.mark.django_db
def test_a_draft_without_answers_can_still_be_deleted(media, admin_client):
    draft = a_draft()
    admin_client.post(f"{ADMIN}/experiment/", {"action": "delete_selected", "_selected_action": [draft.pk], "post": "yes"})
    assert not Experiment.objects.exists() and not Stimulus.objects.exists()
    other = a_draft("other")
    assert admin_client.post(f"{ADMIN}/experiment/{other.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not Experiment.objects.exists()


@pytest.mark.django_db
def test_an_answered_stimulus_cannot_be_deleted_an_unanswered_one_can(answered, admin_client):
    heard = Stimulus.objects.filter(responses__isnull=False).first()
    unheard = Stimulus.objects.filter(responses__isnull=True, experiment=answered).first()
    n = answer_count()
    page = admin_client.post(f"{ADMIN}/stimulus/{heard.pk}/delete/", {"post": "yes"})
    assert "cannot be deleted" in said(page)
    assert Stimulus.objects.filter(pk=heard.pk).exists() and answer_count() == n
    page = admin_client.post(f"{ADMIN}/stimulus/", {"action": "delete_selected", "_selected_action": [heard.pk], "post": "yes"})
    assert Stimulus.objects.filter(pk=heard.pk).exists() and answer_count() == n
    admin_client.post(f"{ADMIN}/stimulus/{unheard.pk}/delete/", {"post": "yes"})
    assert not Stimulus.objects.filter(pk=unheard.pk).exists()


@pytest.mark.django_db
def test_a_participant_with_answers_cannot_be_deleted_one_without_can(answered, admin_client):
    """Excluding a listener is the analyse verdict's job: deleting them lost their answers for good."""
    listener = Participant.objects.filter(responses__isnull=False).distinct().first()
    idle = Listener("demo").participant  # opened the link, never answered
    n = answer_count()
    page = admin_client.post(f"{ADMIN}/participant/{listener.pk}/delete/", {"post": "yes"})
    assert "cannot be deleted" in said(page) and "not fit to analyse" in said(page)
    admin_client.post(f"{ADMIN}/participant/", {"action": "delete_selected", "_selected_action": [listener.pk], "post": "yes"})
    assert Participant.objects.filter(pk=listener.pk).exists() and answer_count() == n
    admin_client.post(f"{ADMIN}/participant/{idle.pk}/delete/", {"post": "yes"})
    assert not Participant.objects.filter(pk=idle.pk).exists()


@pytest.mark.django_db
def test_answers_and_answered_trials_are_records_not_editable(answered, admin_client):
    """A researcher could rewrite a listener's answer, or delete it with its trial, in two clicks."""
    response = Response.objects.first()
    before = (response.answer, response.rating, response.stimulus_id, response.participant_id)
    admin_client.post(f"{ADMIN}/response/{response.pk}/change/", {"answer": "cat", "rating": "", "play_count": "1",
                                                                  "assignment": response.assignment_id, "participant": response.participant_id,
                                                                  "stimulus": response.stimulus_id, "_save": "Save"})
    response.refresh_from_db()
    assert (response.answer, response.rating, response.stimulus_id, response.participant_id) == before
    admin_client.post(f"{ADMIN}/response/{response.pk}/delete/", {"post": "yes"})
    assert Response.objects.filter(pk=response.pk).exists()
    admin_client.post(f"{ADMIN}/assignment/{response.assignment_id}/delete/", {"post": "yes"})
    assert Assignment.objects.filter(pk=response.assignment_id).exists() and Response.objects.filter(pk=response.pk).exists()
    admin_client.post(f"{ADMIN}/response/", {"action": "delete_selected", "_selected_action": [response.pk], "post": "yes"})
    assert Response.objects.filter(pk=response.pk).exists()
    assert admin_client.get(f"{ADMIN}/response/{response.pk}/change/").status_code == 200  # still readable


# --- editing what answers depend on ------------------------------------------------------------


@pytest.mark.django_db
def test_an_answered_experiment_keeps_its_task_words_replay_limit_and_slug(answered, admin_client):
    """Switching identification to rating blanked every stored answer in the CSV; new words changed chance."""
    url = f"{ADMIN}/experiment/{answered.pk}/change/"
    data = form_data(admin_client, url)
    data.update(task="rating", words='["cat", "dog"]', replay_limit="9", slug="renamed", title="A new title")
    assert admin_client.post(url, data).status_code == 302
    answered.refresh_from_db()
    assert (answered.task, answered.words, answered.replay_limit, answered.slug) == ("identification", ["down", "no", "up", "yes"], 3, "demo")
    assert answered.title == "A new title"  # what listeners read may still be edited
    assert (long_table("demo")["answer"] != "").all()
    assert "answers depend on" in said(admin_client.get(url))


@pytest.mark.django_db
def test_a_draft_experiment_stays_fully_editable(media, admin_client):
    draft = a_draft()
    url = f"{ADMIN}/experiment/{draft.pk}/change/"
    data = form_data(admin_client, url)
    data.update(task="rating", replay_limit="1")
    assert admin_client.post(url, data).status_code == 302
    draft.refresh_from_db()
    assert (draft.task, draft.replay_limit) == ("rating", 1)


@pytest.mark.django_db
def test_an_answered_stimulus_keeps_what_its_answers_were_given_to(answered, admin_client):
    """A relabelled word or condition silently rescored every answer the clip had."""
    heard = Stimulus.objects.filter(responses__isnull=False).first()
    url = f"{ADMIN}/stimulus/{heard.pk}/change/"
    data = form_data(admin_client, url)
    data.update(word="cat", condition="9-other", kind="trap", expected_answer="none", stimulus_id="renamed")
    admin_client.post(url, data)
    fresh = Stimulus.objects.get(pk=heard.pk)
    assert (fresh.word, fresh.condition, fresh.kind, fresh.expected_answer, fresh.stimulus_id, fresh.audio.name) == (
        heard.word, heard.condition, heard.kind, heard.expected_answer, heard.stimulus_id, heard.audio.name)
    assert "answers depend on" in said(admin_client.get(url))


@pytest.mark.django_db
def test_an_answering_participant_cannot_be_moved_to_another_study(answered, admin_client):
    """Moving a listener to another experiment left their answers pointing across two studies."""
    draft = a_draft()
    listener = Participant.objects.filter(responses__isnull=False).first()
    url = f"{ADMIN}/participant/{listener.pk}/change/"
    data = form_data(admin_client, url)
    data.update(experiment=draft.pk, worker_id="someone-else", analyse_ok="False")
    admin_client.post(url, data)
    listener.refresh_from_db()
    assert listener.experiment_id == answered.pk and listener.worker_id == ""
    assert listener.analyse_ok is False  # the verdicts stay the researcher's to set


# --- the responses CSV -------------------------------------------------------------------------


def pandas_csv(slug: str) -> bytes:
    """The download as it was made before streaming: the analysis reads files made this way."""
    return safe_frame(long_table(slug)).to_csv(index=False).encode("utf-8")


def bulk_answers(experiment: Experiment, n: int, prefix: str = "W") -> None:
    """`n` stored answers of many listeners, written directly: what a large crowd study leaves in the database."""
    stimuli = list(experiment.stimuli.order_by("pk"))
    per = len(stimuli)
    people = Participant.objects.bulk_create(
        Participant(experiment=experiment, worker_id=f"{prefix}{i}", source="mturk", step="done") for i in range(-(-n // per)))
    assignments = Assignment.objects.bulk_create(
        Assignment(participant=people[i // per], stimulus=stimuli[i % per], position=i % per, answered=True) for i in range(n))
    Response.objects.bulk_create(
        Response(assignment=a, participant_id=a.participant_id, stimulus_id=a.stimulus_id, answer=("yes", "-1", "=A1", "none")[i % 4],
                 play_count=1, listened_to_end=True, response_ms=None if i % 7 == 0 else 900 + i)
        for i, a in enumerate(assignments))


@pytest.mark.django_db
def test_the_download_is_streamed_and_identical_to_the_table_analysis_reads(answered, admin_client):
    """The whole study was built in memory three times over (rows, DataFrame, CSV text) before a byte went out."""
    bulk_answers(answered, 3000)
    Participant.objects.filter(worker_id="W1").update(worker_id='@SUM(1+1)*cmd|" /C calc"!A0')
    download = admin_client.get(f"{ADMIN}/experiment/{answered.pk}/responses.csv")
    assert download.status_code == 200 and download["Content-Type"].startswith("text/csv")
    assert download.streaming
    body = b"".join(download.streaming_content)
    assert body == pandas_csv("demo")
    frame = pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False)
    assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for col in frame.columns for v in frame[col])
    action = admin_client.post(f"{ADMIN}/experiment/", {"action": "download_csv", "_selected_action": [answered.pk]})
    assert b"".join(action.streaming_content) == body


def download_peak(client, experiment: Experiment) -> tuple[int, int]:
    """(bytes downloaded, peak bytes allocated) over the whole request, from the view to the last chunk."""
    tracemalloc.start()
    try:
        download = client.get(f"{ADMIN}/experiment/{experiment.pk}/responses.csv")
        size = sum(len(chunk) for chunk in download)
        return size, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.django_db
def test_the_download_of_a_large_study_holds_no_more_memory_than_a_small_one(answered, admin_client):
    """Memory must not grow with the study: five times the answers, about the same peak (was five times the peak)."""
    bulk_answers(answered, 4000)
    small, small_peak = download_peak(admin_client, answered)
    bulk_answers(answered, 16000, prefix="X")
    large, large_peak = download_peak(admin_client, answered)
    assert large > 4.5 * small
    assert large_peak < 1.5 * small_peak, (small_peak, large_peak)


@pytest.mark.django_db
def test_a_study_without_answers_says_so_in_the_admin(media, admin_client):
    """The CSV link of an unanswered study opened a bare 404 text page."""
    draft = a_draft()
    page = admin_client.get(f"{ADMIN}/experiment/{draft.pk}/responses.csv")
    assert page.status_code == 302 and "no answers yet" in said(page)
    action = admin_client.post(f"{ADMIN}/experiment/", {"action": "download_csv", "_selected_action": [draft.pk]})
    assert action.status_code == 302 and "no answers yet" in said(action)
    counts = admin_client.get(f"{ADMIN}/experiment/{draft.pk}/counts/")
    assert counts.status_code == 200 and "no answers yet" in counts.content.decode()


@pytest.mark.parametrize("slug, name", [
    ('pilot "2"', "pilot__2_-responses.csv"),
    ("étude-研究", "étude-研究-responses.csv"),
    ("a\nb;c", "a_b_c-responses.csv"),
])
@pytest.mark.django_db
def test_the_download_is_named_after_the_study_whatever_its_slug(answered, admin_client, slug, name):
    """A quote cut the file name short, a newline made a 500, other scripts became '=?utf-8?b?...' names."""
    Experiment.objects.filter(pk=answered.pk).update(slug=slug)
    download = admin_client.get(f"{ADMIN}/experiment/{answered.pk}/responses.csv")
    assert download.status_code == 200
    header = Message()
    header["Content-Disposition"] = download["Content-Disposition"]
    assert header.get_filename() == name


# --- actions on many experiments ---------------------------------------------------------------


@pytest.mark.django_db
def test_a_study_without_test_clips_is_not_made_live(answered, admin_client):
    """Listeners of a live study with nothing to hear gave consent, read the instructions, then were told it is full."""
    empty = Experiment.objects.create(slug="empty", title="Empty", words=["yes", "no"])
    closed = a_draft("later")
    Experiment.objects.filter(pk=closed.pk).update(status="closed")
    page = admin_client.post(f"{ADMIN}/experiment/", {"action": "make_live", "_selected_action": [answered.pk, empty.pk, closed.pk]})
    assert "empty" in said(page) and "no test clips" in said(page)
    assert dict(Experiment.objects.values_list("slug", "status")) == {"demo": "live", "empty": "draft", "later": "live"}


@pytest.mark.django_db
def test_closing_twice_is_harmless_and_a_closed_study_takes_no_answers(answered, admin_client):
    """Not a defect found: closing is idempotent and keeps every answer; kept as a guard."""
    draft = a_draft()
    n = answer_count()
    admin_client.post(f"{ADMIN}/experiment/", {"action": "make_closed", "_selected_action": [answered.pk]})
    page = admin_client.post(f"{ADMIN}/experiment/", {"action": "make_closed", "_selected_action": [answered.pk, draft.pk]})
    assert "2 experiment(s) are closed." in said(page)
    assert set(Experiment.objects.values_list("status", flat=True)) == {"closed"} and answer_count() == n
    assert Listener("demo").entry.status_code == 410 and answer_count() == n


# --- load_stimuli into a running study ---------------------------------------------------------


@pytest.fixture
def more_clips(tmp_path) -> Path:
    """The fixture set plus one new clip (a copy of an existing file under a new id)."""
    target = tmp_path / "set"
    shutil.copytree(FIXTURE.parent, target)
    manifest = target / "manifest.csv"
    rows = list(csv.DictReader(manifest.open(newline="", encoding="utf-8")))
    rows.append(dict(rows[0], stimulus_id="added-mid-study", pair_id=""))
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def answers_by_stimulus() -> dict:
    return dict(Stimulus.objects.filter(responses__isnull=False).values_list("stimulus_id", "sha256"))


@pytest.mark.django_db
def test_clips_added_to_a_live_study_keep_every_answer(answered, more_clips):
    n, heard = answer_count(), answers_by_stimulus()
    out = io.StringIO()
    call_command("load_stimuli", str(FIXTURE), "--experiment", "demo", stdout=out)
    call_command("load_stimuli", str(more_clips), "--experiment", "demo", stdout=out)
    assert "added 1 test" in out.getvalue()
    assert answer_count() == n and answers_by_stimulus() == heard


@pytest.mark.django_db
def test_the_word_list_of_an_answered_study_is_not_changed_by_a_reload(answered):
    """--words on a reload rewrote the answer options under the stored answers (and the chance level)."""
    with pytest.raises(CommandError, match="^experiment 'demo' has answers: its word list") as refused:
        call_command("load_stimuli", str(FIXTURE), "--experiment", "demo", "--words", "yes", "no", "up", "down", "left")
    assert "\n" not in str(refused.value)
    assert Experiment.objects.get(slug="demo").words == ["down", "no", "up", "yes"]


@pytest.mark.django_db
def test_a_reload_naming_another_task_is_refused(answered):
    """--task was ignored without --create, yet chose the task of any new check clips."""
    with pytest.raises(CommandError, match="exists with task identification, not rating"):
        call_command("load_stimuli", str(FIXTURE), "--experiment", "demo", "--task", "rating")


@pytest.mark.django_db
def test_a_manifest_relabelling_a_loaded_clip_is_refused(answered, tmp_path):
    """A clip's new condition in the manifest was silently ignored: the file and the database then disagreed."""
    target = tmp_path / "set"
    shutil.copytree(FIXTURE.parent, target)
    manifest = target / "manifest.csv"
    rows = list(csv.DictReader(manifest.open(newline="", encoding="utf-8")))
    rows[0]["condition"] = "2-decoder-noise"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    n = Stimulus.objects.count()
    with pytest.raises(CommandError, match=f"stimulus '{rows[0]['stimulus_id']}' is already loaded with condition '1-classifier-noise', not '2-decoder-noise'"):
        call_command("load_stimuli", str(manifest), "--experiment", "demo")
    assert Stimulus.objects.count() == n
    assert Stimulus.objects.get(stimulus_id=rows[0]["stimulus_id"]).condition == "1-classifier-noise"
