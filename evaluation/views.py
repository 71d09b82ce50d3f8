"""The listener's pages: entry -> consent -> instructions -> headphone screen -> practice + trials -> done.

The views only wire requests to evaluation.flow (who the listener is and where they
are) and evaluation.answers (the one writer of answers). A listener is found by the
signed token their own URLs carry (inside MTurk's frame the browser may refuse every
cookie) or else by the session cookie. Every page may run inside MTurk's frame, so
framing is allowed for MTurk's origins only. Bad input gets a 4xx page and writes nothing.
"""
from __future__ import annotations

import functools
from urllib.parse import urlencode

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.clickjacking import xframe_options_exempt
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from evaluation import answers, flow, prolific, rows
from evaluation import assignment as assigning
from evaluation.audio import HEADPHONE_TRIALS, audio_response, file_response, headphone_trial, parse_range, stored_clip_duration_ms
from evaluation.forms import TOKEN, AnswerForm, HeadphoneForm
from evaluation.models import Experiment, Participant, Stimulus, UnknownExperiment
from evaluation.rows import Trial
from hearsay.answers import RATING_HINTS, RATING_LABELS

Step = Participant.Step
STUDY_FULL = "Thank you! Every clip already has all the answers we need, so there is nothing left to do."
STUDY_FULL_MTURK = (
    "Thank you! Every clip already has all the answers we need, so there is nothing left to do. "
    "Please return this HIT (the Return button on Mechanical Turk's page) so that it does not count against you."
)
NO_SESSION = ("Please start from the study link", "We could not find your session; please open the study link again.")
RATINGS = [(v, RATING_LABELS[v], RATING_HINTS[RATING_LABELS[v]]) for v in range(4, -1, -1)]
STEP_PAGES = {Step.CONSENT: "consent", Step.INSTRUCTIONS: "instructions", Step.HEADPHONES: "headphones", Step.TRIALS: "trial"}


def _csp() -> str:
    return (
        "default-src 'self'; img-src 'self' data:; media-src 'self'; object-src 'none'; base-uri 'none'; "
        f"form-action 'self' {' '.join(settings.MTURK_SUBMIT_HOSTS)}; frame-ancestors 'self' {' '.join(settings.MTURK_FRAME_ORIGINS)}"
    )


def frameable(view):
    """Allow MTurk (and only MTurk) to frame the page; no X-Frame-Options DENY for survey pages."""

    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        response["Content-Security-Policy"] = _csp()
        response["Referrer-Policy"] = "same-origin"
        return response

    return xframe_options_exempt(wrapped)


def message(request: HttpRequest, title: str, text: str, status: int, experiment: Experiment | None = None, link: str = "") -> HttpResponse:
    return render(request, "evaluation/message.html", {"title": title, "text": text, "experiment": experiment, "link": link}, status=status)


def _session_key(slug: str) -> str:
    return f"hearsay:{slug}"


def _open_experiment(request: HttpRequest, slug: str) -> Experiment | HttpResponse:
    try:
        experiment = Experiment.objects.by_slug(slug)
    except UnknownExperiment:
        raise Http404("no such study") from None
    return _refuse_closed(request, experiment) or experiment


def _refuse_closed(request: HttpRequest, experiment: Experiment) -> HttpResponse | None:
    """404 for a draft (unless staff), 410 for a closed study, None for a study that takes visitors."""
    if experiment.status == Experiment.Status.DRAFT and not request.user.is_staff:
        raise Http404("no such study")
    if experiment.status == Experiment.Status.CLOSED:
        return message(request, "This study is closed", "Thank you for your interest; this study no longer takes answers.", 410, experiment)
    return None


def _participant_token(request: HttpRequest, slug: str) -> str | None:
    """The carried token (a page inside a frame without cookies) wins over the session cookie."""
    return flow.carried_participant_token(request.GET.get("p")) or request.session.get(_session_key(slug))


def _participant(request: HttpRequest, experiment: Experiment) -> Participant | None:
    token = _participant_token(request, experiment.slug)
    if not token:
        return None
    return Participant.objects.select_related("experiment").filter(token=token, experiment=experiment).first()


def _participant_at(request: HttpRequest, slug: str, with_trials: bool = False) -> tuple[Participant, list[Trial]] | None:
    """The visitor's participant in the study at `slug`, with its experiment (and its trials when asked), in one query (every survey page asks)."""
    token = _participant_token(request, slug)
    if not token or "\x00" in slug:
        return None
    return rows.participant_at(slug, token, with_trials)


def _carry(url: str, participant: Participant) -> str:
    return f"{url}?{urlencode({'p': flow.carry_token(participant)})}"


def _step_url(participant: Participant) -> str:
    name = STEP_PAGES.get(participant.step, "done")
    return _carry(reverse(f"evaluation:{name}", args=[participant.experiment.slug]), participant)


def _page(request: HttpRequest, template: str, participant: Participant, context: dict, status: int = 200) -> HttpResponse:
    """A participant's page: its forms and links carry the participant (see flow.carry_token)."""
    carry = "?" + urlencode({"p": flow.carry_token(participant)})
    return render(request, template, {**context, "participant": participant, "carry": carry}, status=status)


def _visitor(request: HttpRequest, slug: str, step: str | None, with_trials: bool = False) -> tuple[Participant, list[Trial]] | HttpResponse:
    """The visitor's participant (and trials), or the page for a visitor who has none here, a closed study, or another step."""
    found = _participant_at(request, slug, with_trials)
    if found is None:
        experiment = _open_experiment(request, slug)
        if isinstance(experiment, HttpResponse):
            return experiment
        return message(request, *NO_SESSION, 403, experiment)
    participant = found[0]
    refusal = _refuse_closed(request, participant.experiment)
    if refusal is not None:
        return refusal
    if step is not None and participant.step != step:
        return HttpResponseRedirect(_step_url(participant), status=303 if request.method == "POST" else 302)
    return found


def participant_page(step: str | None, with_trials: bool = False):
    """Load experiment + participant (+ trials, for the trial page); send a listener who is elsewhere in the flow back to their step."""

    def decorate(view):
        @functools.wraps(view)
        def wrapped(request, slug, *args, **kwargs):
            found = _visitor(request, slug, step, with_trials)
            if isinstance(found, HttpResponse):
                return found
            participant, trials = found
            if with_trials:
                return view(request, participant.experiment, participant, trials, *args, **kwargs)
            return view(request, participant.experiment, participant, *args, **kwargs)

        return frameable(wrapped)

    return decorate


@require_safe
@frameable
def entry(request: HttpRequest, slug: str) -> HttpResponse:
    """The study link, with MTurk's or Prolific's parameters; staff get a preview that stores nothing."""
    experiment = _open_experiment(request, slug)
    if isinstance(experiment, HttpResponse):
        return experiment
    try:
        link = flow.parse_link(request.GET, tuple(settings.MTURK_SUBMIT_HOSTS))
    except flow.InvalidLink as exc:
        return message(request, "Invalid study link", f"{exc}.".capitalize(), 400, experiment)
    if link.is_mturk_preview:
        sample = experiment.stimuli.filter(kind=Stimulus.Kind.PRACTICE).exists()
        return render(request, "evaluation/preview.html", {"experiment": experiment, "sample": sample})
    if request.method == "HEAD":  # a link checker: the link works, but nobody entered the study
        return HttpResponse(content_type="text/html; charset=utf-8")
    try:
        participant = flow.enter(experiment, link, _participant(request, experiment), preview=request.user.is_staff)
    except flow.AlreadyTakenPart:
        return message(
            request, "You have already taken part",
            "Thank you! You already completed this study, and each person can take it only once.", 409, experiment,
        )
    request.session[_session_key(experiment.slug)] = participant.token
    return HttpResponseRedirect(_step_url(participant))


@require_http_methods(["GET", "HEAD", "POST"])
@participant_page(Step.CONSENT)
def consent(request, experiment, participant):
    if request.method == "POST":
        if request.POST.get("agree") != "yes":
            return _page(request, "evaluation/consent.html", participant,
                         {"experiment": experiment, "error": "Please tick the box to agree, or close this page."}, status=400)
        flow.consent(participant)
        return HttpResponseRedirect(_step_url(participant), status=303)
    return _page(request, "evaluation/consent.html", participant, {"experiment": experiment})


def _anchors(experiment: Experiment) -> list[dict]:
    return [
        {"value": a["value"], "label": a["label"], "hint": RATING_HINTS[a["label"]], "url": reverse("evaluation:anchor", args=[experiment.slug, a["value"]])}
        for a in sorted(experiment.anchors, key=lambda a: -a["value"])
    ]


@require_http_methods(["GET", "HEAD", "POST"])
@participant_page(Step.INSTRUCTIONS)
def instructions(request, experiment, participant):
    if request.method == "POST":
        flow.finish_instructions(participant)
        return HttpResponseRedirect(_step_url(participant), status=303)
    return _page(request, "evaluation/instructions.html", participant, {"experiment": experiment, "anchors": _anchors(experiment)})


@require_http_methods(["GET", "HEAD", "POST"])
@participant_page(Step.HEADPHONES)
def headphones(request, experiment, participant):
    flow.headphone_key(participant)
    context = {"experiment": experiment, "trials": range(HEADPHONE_TRIALS)}
    if request.method == "POST":
        form = HeadphoneForm(request.POST)
        if not form.is_valid():
            return _page(request, "evaluation/headphones.html", participant, {**context, "error": "Please answer all six questions."}, status=400)
        flow.screen_headphones(participant, form.answers())
        return HttpResponseRedirect(_step_url(participant), status=303)
    return _page(request, "evaluation/headphones.html", participant, context)


@require_safe
@participant_page(Step.HEADPHONES)
def headphone_audio(request, experiment, participant, n: int):
    if n >= HEADPHONE_TRIALS:
        raise Http404("no such tone")
    return audio_response(headphone_trial(flow.headphone_key(participant)[n]), request.headers.get("Range"))


@require_safe
@participant_page(Step.TRIALS, with_trials=True)
def trial(request, experiment, participant, trials):
    try:
        progress = flow.next_trial(participant, trials)
    except assigning.StudyFull:
        text = STUDY_FULL_MTURK if participant.source == Participant.Source.MTURK else STUDY_FULL
        return message(request, "This study is full", text, 200, experiment)
    if progress is None:
        return HttpResponseRedirect(_step_url(participant))
    current = progress.current
    context = {
        "experiment": experiment,
        "trial": current,
        "audio_url": _carry(reverse("evaluation:audio", args=[current.token]), participant),
        "plays_left": max(0, experiment.replay_limit - current.play_count),
        "done": progress.done,
        "total": progress.total,
        "percent": round(100 * progress.done / max(1, progress.total)),
        "is_practice": progress.is_practice,
        "practice_over": progress.practice_over,
        "words": experiment.words,
        "none_answer": answers.NONE_ANSWER,
        "question_word": current.word,
    }
    if experiment.task == Experiment.Task.RATING:
        context["ratings"] = RATINGS
        context["anchors"] = _anchors(experiment)
    response = _page(request, "evaluation/trial.html", participant, context)
    response["Cache-Control"] = "private, no-store"
    return response


SKIPPED = ("Recording skipped", "That recording never reached your device in full, and it has no plays left, so it was skipped: "
           "no answer was stored for it. Please continue with the next one.")
ANSWER_NOT_SAVED = ("That answer could not be saved", "The answer was not one of the options. Please go back and choose again.")


@require_POST
@frameable
def answer(request, slug):
    """Store the answer to one of the visitor's trials; the trial, its participant, experiment and clip are read in one query."""
    form = AnswerForm(request.POST)
    token = _participant_token(request, slug)
    target = None
    if form.is_valid() and token and "\x00" not in slug:
        target = rows.trial_by_token(form.cleaned_data["token"], token, slug)
    if target is None:  # who is this, and why is there no such trial of theirs: the usual pages say
        found = _visitor(request, slug, None)
        if isinstance(found, HttpResponse):
            return found
        participant = found[0]
        if not form.is_valid():
            return message(request, *ANSWER_NOT_SAVED, 400, participant.experiment, _step_url(participant))
        raise Http404("no such trial")
    participant = target.participant
    experiment = participant.experiment
    refusal = _refuse_closed(request, experiment)
    if refusal is not None:
        return refusal
    data = form.cleaned_data
    try:
        answers.store_answer(target, answer=data["answer"], rating=data["rating"], response_ms=data["response_ms"])
    except answers.InvalidAnswer:
        return message(request, *ANSWER_NOT_SAVED, 400, experiment, _step_url(participant))
    except answers.Conflict as exc:
        if answers.skip_if_unhearable(target):
            return message(request, *SKIPPED, 200, experiment, _step_url(participant))
        return message(request, "Not saved", str(exc)[:1].upper() + str(exc)[1:] + ".", 409, experiment, _step_url(participant))
    return HttpResponseRedirect(_carry(reverse("evaluation:trial", args=[experiment.slug]), participant), status=303)


@require_safe
@participant_page(None)
def done(request, experiment, participant):
    if participant.step == Step.SCREENED:
        return message(request, "Thank you", "This study needs headphones, and the sound check suggests you are not wearing them. Thank you for your time.", 200, experiment)
    if participant.step != Step.DONE:
        return HttpResponseRedirect(_step_url(participant))
    code = flow.completion_code(participant)
    context = {"experiment": experiment, "code": code}
    if participant.source == Participant.Source.MTURK and participant.turk_submit_to and participant.assignment_id:
        context["mturk_action"] = participant.turk_submit_to + "/mturk/externalSubmit"
    elif participant.source == Participant.Source.PROLIFIC:
        context["redirect"] = prolific.completion_url(code)
    elif experiment.redirect_url:
        context["redirect"] = experiment.redirect_url
    return _page(request, "evaluation/done.html", participant, context)


@require_safe
@frameable
def audio(request: HttpRequest, token: str) -> HttpResponse:
    """A trial's clip, only for the listener it was handed to; plays are counted and a full serving is noted (assignment.register_fetch)."""
    if not TOKEN.regex.fullmatch(token):
        return HttpResponse("not a clip token", status=400, content_type="text/plain")
    clip = rows.clip_by_token(token)
    if clip is None or _participant_token(request, clip.slug) != clip.participant_token:
        raise Http404("no such clip")
    if clip.status != Experiment.Status.LIVE and not clip.preview:
        return HttpResponse("this study is closed", status=410, content_type="text/plain")
    storage = Stimulus._meta.get_field("audio").storage
    with storage.open(clip.audio, "rb") as handle:
        size = handle.size
        rng = request.headers.get("Range")
        parsed = parse_range(rng, size)
        if parsed != "unsatisfiable" and request.method == "GET" and not _is_probe(rng):  # HEAD reads no sound
            start, end = parsed or (0, size - 1)
            duration_ms = stored_clip_duration_ms(handle, str(getattr(storage, "location", "")), clip.audio, size)
            if assigning.register_fetch(clip.assignment_id, start, end, size, duration_ms, clip.replay_limit) is assigning.Fetch.REFUSED:
                return HttpResponse("no plays left for this clip", status=403, content_type="text/plain")
        return file_response(handle, size, parsed)


def _is_probe(range_header: str | None) -> bool:
    """Safari first asks for bytes=0-1 to learn the size: that is not a play."""
    return (range_header or "").replace(" ", "") == "bytes=0-1"


def _public_clip(request: HttpRequest, stimulus_file) -> HttpResponse:
    with stimulus_file.open("rb") as handle:
        return audio_response(handle.read(), request.headers.get("Range"))


@require_safe
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


@require_safe
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

