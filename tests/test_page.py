"""The listener's page as served: the study's title, the researcher's consent checklist, markup that
works without JavaScript, an announced redirect. The behaviour in a browser is in test_page_browser.py."""
from __future__ import annotations

import re

import pytest

from evaluation.models import Experiment, Participant
from tests.helpers.survey import Listener, make_experiment

FULL_CONSENT = (
    "This study is run by Dr Ada Lovelace's lab at the University of Somewhere. Questions: ada@example.org.\n"
    "You will be paid £1.50 for about 8 minutes. Your answers are kept for 5 years, then deleted."
)


def heading(page) -> str:
    return re.search(rb"<h1>(.*?)</h1>", page.content, re.S).group(1).decode().strip()


@pytest.mark.django_db
def test_the_heading_and_tab_show_the_title_never_the_slug(media):
    make_experiment()  # load_stimuli names the experiment after its slug when no title is given
    consent = Listener("demo").client.get("/s/demo/consent")
    assert heading(consent) == "Listening study" and b"<title>Listening study</title>" in consent.content
    assert b">demo<" not in consent.content
    Experiment.objects.filter(slug="demo").update(title="How words sound")
    consent = Listener("demo").client.get("/s/demo/consent")
    assert heading(consent) == "How words sound" and b"<title>How words sound</title>" in consent.content
    preview = Listener("demo", assignmentId="ASSIGNMENT_ID_NOT_AVAILABLE").entry
    assert heading(preview) == "How words sound"


@pytest.mark.django_db
def test_the_admin_warns_until_title_and_consent_name_researcher_contact_pay_and_retention(media, admin_client):
    from evaluation.admin import listener_page_gaps

    experiment = make_experiment()
    gaps = listener_page_gaps(experiment)
    assert len(gaps) == 2 and "built-in text" in gaps[1]
    for need in ("researcher", "contact", "pay", "kept"):
        assert need in gaps[1]
    listing = admin_client.get("/admin/evaluation/experiment/").content.decode()
    assert "not ready for listeners" in listing and "consent text naming who the researcher is" in listing
    change = admin_client.get(f"/admin/evaluation/experiment/{experiment.pk}/change/").content.decode()
    assert "before listeners see it, add" in change and "a contact address" in change
    live = admin_client.post("/admin/evaluation/experiment/", {"action": "make_live", "_selected_action": [experiment.pk]}, follow=True)
    assert "1 experiment(s) are live." in live.content.decode() and "Experiment demo: before listeners see it, add" in live.content.decode()

    experiment.consent_text = "You may stop at any time. Questions: ada@example.org"
    experiment.title = "How words sound"
    experiment.save()
    assert listener_page_gaps(experiment) == ["consent text naming who the researcher is, the pay, how long the answers are kept"]

    experiment.consent_text = FULL_CONSENT
    experiment.save()
    assert listener_page_gaps(experiment) == []
    listing = admin_client.get("/admin/evaluation/experiment/").content.decode()
    change = admin_client.get(f"/admin/evaluation/experiment/{experiment.pk}/change/").content.decode()
    assert "not ready for listeners" not in listing and "before listeners see it" not in change
    consent = Listener("demo").client.get("/s/demo/consent").content.decode()
    assert "ada@example.org" in consent and "Dr Ada Lovelace" in consent


@pytest.mark.django_db
def test_trial_markup_works_without_javascript_and_labels_state_and_progress(media):
    make_experiment()
    listener = Listener("demo")
    listener.start()
    page = listener.client.get("/s/demo/trial").content.decode()
    answers = re.findall(r"<button[^>]*class=\"answer[^\"]*\"[^>]*>", page)
    assert len(answers) == 5  # 4 words + none
    assert all('type="submit"' in b and 'name="answer"' in b and "disabled" not in b for b in answers)  # one tap posts one choice
    assert re.search(r"<noscript><audio controls[^>]*src=\"/a/", page)  # and the clip plays without the script
    confirm = re.search(r"<button[^>]*id=\"confirm\"[^>]*>", page).group(0)
    assert "name=" not in confirm  # the confirm bar posts nothing of its own without the script
    progress = re.search(r"<progress[^>]*>", page).group(0)
    assert 'aria-label="Progress"' in progress and 'aria-valuenow="0"' in progress and 'aria-valuetext="0 of' in progress
    assert re.search(r'id="state" role="status" aria-live="polite">Press Play', page)
    assert re.search(r'id="plays" aria-live="polite">3 plays left', page)
    trial = listener.current()
    assert listener.answer(trial).status_code == 303 and trial.participant.responses.count() == 1


@pytest.mark.django_db
def test_the_prolific_redirect_is_announced_with_a_link(media):
    make_experiment(completion_code="PCODE")
    listener = Listener("demo", PROLIFIC_PID="pid9", STUDY_ID="study9", SESSION_ID="sess9")
    Participant.objects.filter(worker_id="pid9").update(step="done")
    page = listener.client.get("/s/demo/done").content.decode()
    note = re.search(r'<p id="redirect-note" role="status" aria-live="polite">([^<]+)</p>', page)
    assert note and "Prolific" in note.group(1)
    link = re.search(r'<a[^>]*id="redirect"[^>]*href="([^"]+)"[^>]*>([^<]+)</a>', page)
    assert link and link.group(1).startswith("https://app.prolific.com/submissions/complete?cc=PCODE")
    assert "Return to Prolific" in link.group(2)
