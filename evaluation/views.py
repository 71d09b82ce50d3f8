"""The listener's pages: entry -> consent -> instructions -> headphone screen -> practice + trials -> done.

A participant is found by the signed session cookie and, when the platform
gives one, by worker id, so a reload or a return resumes where they were and a
worker who finished cannot start again. Every page may run inside MTurk's
frame, so framing is allowed for MTurk's origins only. Bad input gets a 4xx
page and writes nothing.
"""
from __future__ import annotations

import functools
import random

from django.core.files.storage import default_storage
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.clickjacking import xframe_options_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from evaluation import assignment as assigning
from evaluation import prolific
from evaluation.audio import HEADPHONE_PASS, HEADPHONE_TRIALS, audio_response, headphone_trial, range_starts_at_zero
from evaluation.forms import NONE_ANSWER, AnswerForm, HeadphoneForm
from evaluation.models import Assignment, Experiment, Participant, Stimulus
from evaluation.traps import RATING_HINTS, RATING_LABELS

MTURK_FRAMERS = ("https://www.mturk.com", "https://worker.mturk.com", "https://workersandbox.mturk.com", "https://sandbox.mturk.com")
MTURK_SUBMIT_HOSTS = ("https://www.mturk.com", "https://workersandbox.mturk.com")
PREVIEW_ASSIGNMENT = "ASSIGNMENT_ID_NOT_AVAILABLE"
STUDY_FULL = "Thank you! Every clip already has all the answers we need, so there is nothing left to do."
CSP = (
    "default-src 'self'; img-src 'self' data:; media-src 'self'; object-src 'none'; base-uri 'none'; "
    f"form-action 'self' {' '.join(MTURK_SUBMIT_HOSTS)}; frame-ancestors 'self' {' '.join(MTURK_FRAMERS)}"
)


def frameable(view):
    """Allow MTurk (and only MTurk) to frame the page; no X-Frame-Options DENY for survey pages."""

    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        response["Content-Security-Policy"] = CSP
        response["Referrer-Policy"] = "same-origin"
        return response

    return xframe_options_exempt(wrapped)


def message(request: HttpRequest, title: str, text: str, status: int, experiment: Experiment | None = None, link: str = "") -> HttpResponse:
    return render(request, "evaluation/message.html", {"title": title, "text": text, "experiment": experiment, "link": link}, status=status)


def _session_key(experiment: Experiment) -> str:
    return f"hearsay:{experiment.slug}"


def _open_experiment(request: HttpRequest, slug: str) -> Experiment | HttpResponse:
    experiment = Experiment.objects.filter(slug=slug).first()
    if experiment is None or (experiment.status == Experiment.Status.DRAFT and not request.user.is_staff):
        raise Http404("no such study")
    if experiment.status == Experiment.Status.CLOSED:
        return message(request, "This study is closed", "Thank you for your interest; this study no longer takes answers.", 410, experiment)
    return experiment


def _participant(request: HttpRequest, experiment: Experiment) -> Participant | None:
    token = request.session.get(_session_key(experiment))
    if not token:
        return None
    return Participant.objects.filter(token=token, experiment=experiment).first()


def _step_url(participant: Participant) -> str:
    slug = participant.experiment.slug
    name = {"consent": "consent", "instructions": "instructions", "headphones": "headphones", "trials": "trial"}.get(participant.step, "done")
    return reverse(f"evaluation:{name}", args=[slug])


def participant_page(step: str | None):
    """Load experiment + participant; send a listener who is elsewhere in the flow back to their step."""

    def decorate(view):
        @functools.wraps(view)
        def wrapped(request, slug, *args, **kwargs):
            experiment = _open_experiment(request, slug)
            if isinstance(experiment, HttpResponse):
                return experiment
            participant = _participant(request, experiment)
            if participant is None:
                return message(request, "Please start from the study link", "We could not find your session; please open the study link again.", 403, experiment)
            if step is not None and participant.step != step:
                if request.method == "POST":
                    return HttpResponseRedirect(_step_url(participant), status=303)
                return HttpResponseRedirect(_step_url(participant))
            return view(request, experiment, participant, *args, **kwargs)

        return frameable(wrapped)

    return decorate


def _clean(value: str | None) -> str:
    return (value or "").strip()[:128]


@require_GET
@frameable
def entry(request: HttpRequest, slug: str) -> HttpResponse:
    """The study link. Captures MTurk (workerId, assignmentId, hitId, turkSubmitTo) and Prolific (PROLIFIC_PID, STUDY_ID, SESSION_ID) parameters."""
    experiment = _open_experiment(request, slug)
    if isinstance(experiment, HttpResponse):
        return experiment
    q = request.GET
    assignment_id = _clean(q.get("assignmentId"))
    if assignment_id == PREVIEW_ASSIGNMENT:
        sample = experiment.stimuli.filter(kind=Stimulus.Kind.PRACTICE).exists()
        return render(request, "evaluation/preview.html", {"experiment": experiment, "sample": sample})
    worker_id, source = "", Participant.Source.WEB
    if _clean(q.get("workerId")):
        worker_id, source = _clean(q.get("workerId")), Participant.Source.MTURK
    elif _clean(q.get("PROLIFIC_PID")):
        worker_id, source = _clean(q.get("PROLIFIC_PID")), Participant.Source.PROLIFIC
    submit_to = _clean(q.get("turkSubmitTo")).rstrip("/")
    if submit_to and submit_to not in MTURK_SUBMIT_HOSTS:
        return message(request, "Invalid study link", "The link's turkSubmitTo is not a Mechanical Turk address.", 400, experiment)

    participant = None
    if worker_id:
        participant = Participant.objects.filter(experiment=experiment, worker_id=worker_id).order_by("pk").first()
        if participant is not None and participant.finished_at is not None:
            return message(
                request, "You have already taken part",
                "Thank you! You already completed this study, and each person can take it only once.", 409, experiment,
            )
    if participant is None:
        current = _participant(request, experiment)
        if current is not None and (not worker_id or current.worker_id in ("", worker_id)):
            participant = current
    if participant is None:
        participant = Participant.objects.create(
            experiment=experiment, source=source, worker_id=worker_id, assignment_id=assignment_id,
            hit_id=_clean(q.get("hitId")), study_id=_clean(q.get("STUDY_ID")), session_id=_clean(q.get("SESSION_ID")),
            turk_submit_to=submit_to,
        )
    elif worker_id and not participant.worker_id:
        participant.worker_id, participant.source = worker_id, source
        participant.save(update_fields=["worker_id", "source"])
    if source == Participant.Source.MTURK and assignment_id and assignment_id != participant.assignment_id:
        participant.assignment_id, participant.turk_submit_to = assignment_id, submit_to or participant.turk_submit_to
        participant.save(update_fields=["assignment_id", "turk_submit_to"])
    request.session[_session_key(experiment)] = participant.token
    return HttpResponseRedirect(_step_url(participant))


def _advance(participant: Participant, after: str) -> None:
    order = ["consent", "instructions"] + (["headphones"] if participant.experiment.headphone_check else []) + ["trials"]
    participant.step = order[order.index(after) + 1]
    participant.save(update_fields=["step", "consented_at", "headphone_score", "analyse_ok", "analyse_reasons", "headphone_key"])


@require_http_methods(["GET", "POST"])
@participant_page("consent")
def consent(request, experiment, participant):
    if request.method == "POST":
        if request.POST.get("agree") != "yes":
            return render(request, "evaluation/consent.html", {"experiment": experiment, "error": "Please tick the box to agree, or close this page."}, status=400)
        participant.consented_at = timezone.now()
        _advance(participant, "consent")
        return HttpResponseRedirect(_step_url(participant), status=303)
    return render(request, "evaluation/consent.html", {"experiment": experiment})


def _anchors(experiment: Experiment) -> list[dict]:
    return [
        {"value": a["value"], "label": a["label"], "hint": RATING_HINTS[a["label"]], "url": reverse("evaluation:anchor", args=[experiment.slug, a["value"]])}
        for a in sorted(experiment.anchors, key=lambda a: -a["value"])
    ]


@require_http_methods(["GET", "POST"])
@participant_page("instructions")
def instructions(request, experiment, participant):
    if request.method == "POST":
        _advance(participant, "instructions")
        return HttpResponseRedirect(_step_url(participant), status=303)
    return render(request, "evaluation/instructions.html", {"experiment": experiment, "anchors": _anchors(experiment)})


@require_http_methods(["GET", "POST"])
@participant_page("headphones")
def headphones(request, experiment, participant):
    if not participant.headphone_key:
        participant.headphone_key = [random.randrange(3) for _ in range(HEADPHONE_TRIALS)]
        participant.save(update_fields=["headphone_key"])
    if request.method == "POST":
        form = HeadphoneForm(request.POST)
        if not form.is_valid():
            return render(request, "evaluation/headphones.html", {"experiment": experiment, "trials": range(HEADPHONE_TRIALS), "error": "Please answer all six questions."}, status=400)
        score = sum(a == k for a, k in zip(form.answers(), participant.headphone_key))
        participant.headphone_score = score
        if score >= HEADPHONE_PASS:
            _advance(participant, "headphones")
        else:
            participant.step = "screened"
            participant.finished_at = timezone.now()
            participant.analyse_ok = False
            participant.analyse_reasons = list(participant.analyse_reasons) + [f"failed headphone screen ({score}/{HEADPHONE_TRIALS})"]
            participant.save()
        return HttpResponseRedirect(_step_url(participant), status=303)
    return render(request, "evaluation/headphones.html", {"experiment": experiment, "trials": range(HEADPHONE_TRIALS)})


@require_GET
@participant_page("headphones")
def headphone_audio(request, experiment, participant, n: int):
    if n >= HEADPHONE_TRIALS or not participant.headphone_key:
        raise Http404("no such tone")
    return audio_response(headphone_trial(participant.headphone_key[n]), request.headers.get("Range"))


def _finish(participant: Participant) -> None:
    Participant.objects.filter(pk=participant.pk, finished_at__isnull=True).update(finished_at=timezone.now(), step="done")
    participant.refresh_from_db()


@require_GET
@participant_page("trials")
def trial(request, experiment, participant):
    try:
        trials = assigning.assign(participant)
    except assigning.StudyFull:
        participant.step = "full"
        participant.save(update_fields=["step"])
        return message(request, "This study is full", STUDY_FULL, 200, experiment)
    current = assigning.next_assignment(participant)
    if current is None:
        _finish(participant)
        return HttpResponseRedirect(_step_url(participant))
    live = [a for a in trials if not a.void or a.answered]
    done = sum(1 for a in live if a.answered)
    practice_total = sum(1 for a in trials if a.stimulus.kind == Stimulus.Kind.PRACTICE)
    is_practice = current.stimulus.kind == Stimulus.Kind.PRACTICE
    context = {
        "experiment": experiment,
        "trial": current,
        "audio_url": reverse("evaluation:audio", args=[current.token]),
        "plays_left": max(0, experiment.replay_limit - current.play_count),
        "done": done,
        "total": len(live),
        "percent": round(100 * done / max(1, len(live))),
        "is_practice": is_practice,
        "practice_over": not is_practice and practice_total > 0 and done == practice_total,
        "words": experiment.words,
        "none_answer": NONE_ANSWER,
        "ratings": [(v, RATING_LABELS[v], RATING_HINTS[RATING_LABELS[v]]) for v in range(4, -1, -1)],
        "anchors": _anchors(experiment),
        "question_word": current.stimulus.word,
    }
    response = render(request, "evaluation/trial.html", context)
    response["Cache-Control"] = "private, no-store"
    return response


@require_POST
@frameable
def answer(request: HttpRequest, slug: str) -> HttpResponse:
    experiment = _open_experiment(request, slug)
    if isinstance(experiment, HttpResponse):
        return experiment
    participant = _participant(request, experiment)
    if participant is None:
        return message(request, "Please start from the study link", "We could not find your session; please open the study link again.", 403, experiment)
    form = AnswerForm(experiment, request.POST)
    if not form.is_valid():
        return message(request, "That answer could not be saved", "The answer was not one of the options. Please go back and choose again.", 400, experiment, _step_url(participant))
    data = form.cleaned_data
    target = Assignment.objects.filter(token=data["token"], participant=participant).first()
    if target is None:
        raise Http404("no such trial")
    try:
        assigning.record_answer(target, answer=data["answer"], rating=data["rating"], response_ms=data["response_ms"], ended=data["ended"])
    except assigning.Conflict as exc:
        return message(request, "Not saved", str(exc)[:1].upper() + str(exc)[1:] + ".", 409, experiment, _step_url(participant))
    return HttpResponseRedirect(reverse("evaluation:trial", args=[experiment.slug]), status=303)


@require_GET
@participant_page(None)
def done(request, experiment, participant):
    if participant.step == "screened":
        return message(request, "Thank you", "This study needs headphones, and the sound check suggests you are not wearing them. Thank you for your time.", 200, experiment)
    if participant.step == "full":
        return message(request, "This study is full", STUDY_FULL, 200, experiment)
    if participant.step != "done":
        return HttpResponseRedirect(_step_url(participant))
    code = experiment.completion_code or f"HS-{participant.token[:10].upper()}"
    context = {"experiment": experiment, "code": code, "participant": participant}
    if participant.source == Participant.Source.MTURK and participant.turk_submit_to and participant.assignment_id:
        context["mturk_action"] = participant.turk_submit_to + "/mturk/externalSubmit"
    elif participant.source == Participant.Source.PROLIFIC:
        context["redirect"] = prolific.completion_url(code)
    elif experiment.redirect_url:
        context["redirect"] = experiment.redirect_url
    return render(request, "evaluation/done.html", context)


@require_GET
@frameable
def audio(request: HttpRequest, token: str) -> HttpResponse:
    """A trial's clip, only for the listener it was handed to; a fetch from byte 0 counts as a play."""
    target = Assignment.objects.select_related("participant__experiment", "stimulus").filter(token=token).first()
    if target is None:
        raise Http404("no such clip")
    experiment = target.participant.experiment
    if request.session.get(_session_key(experiment)) != target.participant.token:
        raise Http404("no such clip")
    if experiment.status != Experiment.Status.LIVE and not request.user.is_staff:
        return HttpResponse("this study is closed", status=410, content_type="text/plain")
    rng = request.headers.get("Range")
    if range_starts_at_zero(rng) and not _is_probe(rng):
        if not target.answered and not assigning.count_play(target, experiment.replay_limit):
            return HttpResponse("no plays left for this clip", status=403, content_type="text/plain")
    elif target.play_count == 0:
        return HttpResponse("start playing from the beginning", status=416, content_type="text/plain")
    with target.stimulus.audio.open("rb") as handle:
        data = handle.read()
    return audio_response(data, rng)


def _is_probe(range_header: str | None) -> bool:
    """Safari first asks for bytes=0-1 to learn the size: that is not a play."""
    return (range_header or "").replace(" ", "") == "bytes=0-1"


def _public_clip(request: HttpRequest, stimulus_file) -> HttpResponse:
    with stimulus_file.open("rb") as handle:
        return audio_response(handle.read(), request.headers.get("Range"))


@require_GET
@frameable
def anchor(request: HttpRequest, slug: str, value: int) -> HttpResponse:
    """Rating examples: public by design (they show what each option means)."""
    experiment = _open_experiment(request, slug)
    if isinstance(experiment, HttpResponse):
        return experiment
    entry_ = next((a for a in experiment.anchors if a["value"] == value), None)
    if entry_ is None:
        raise Http404("no such example")
    with default_storage.open(entry_["audio"], "rb") as handle:
        return audio_response(handle.read(), request.headers.get("Range"))


@require_GET
@frameable
def sample(request: HttpRequest, slug: str) -> HttpResponse:
    """The preview's example clip: a practice word, so nothing under study is revealed."""
    experiment = _open_experiment(request, slug)
    if isinstance(experiment, HttpResponse):
        return experiment
    clip = experiment.stimuli.filter(kind=Stimulus.Kind.PRACTICE).order_by("stimulus_id").first()
    if clip is None:
        raise Http404("no sample")
    return _public_clip(request, clip.audio)

