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
# What a listener whose study ends early does on their platform (README, "Listeners who end early"): Prolific and MTurk
# both expect an unfinished place to be returned by the participant; only a screened-out listener has more (below, done).
RETURN_ON = {
    Participant.Source.MTURK: "Please return this HIT: press Return on Mechanical Turk's page (outside this box), "
                              "so that it does not count against you.",
    Participant.Source.PROLIFIC: "Please return your submission on Prolific: on Prolific's page for this study, press "
                                 "\u201cCancel participation\u201d. Returning does not affect your Prolific account.",
}
STUDY_FULL = "Thank you! Every clip already has all the answers we need, so there is nothing left to do."
STUDY_CLOSED = "Thank you for your interest; this study no longer takes answers."
SCREENED_OUT = "This study needs headphones, and the sound check suggests you are not wearing them, so the study ends here."
TAKEN_PART = "You already completed this study, and each person can take it only once."
SCREENED_BEFORE = ("You already took part in this study: the sound check ended it for you, and each person can take it "
                   "only once.")
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


def message(request: HttpRequest, title: str, text: str, status: int, experiment: Experiment | None = None, link: str = "",
            link_label: str = "") -> HttpResponse:
    """A page of text; `link_label` marks `link` as the way back to the platform (it leaves MTurk's or any frame)."""
    return render(request, "evaluation/message.html", {"title": title, "text": text, "experiment": experiment, "link": link,
                                                       "link_label": link_label}, status=status)


def with_next_step(text: str, source: str) -> str:
    """`text`, then what a listener of `source` does on their platform when the study ends early for them."""
    return f"{text} {RETURN_ON[source]}" if source in RETURN_ON else text


def _session_key(slug: str) -> str:
    return f"hearsay:{slug}"


def _open_experiment(request: HttpRequest, slug: str) -> Experiment | HttpResponse:
    try:
        experiment = Experiment.objects.by_slug(slug)
    except UnknownExperiment:
        raise Http404("no such study") from None
    return _refuse_closed(request, experiment) or experiment


def _refuse_closed(request: HttpRequest, experiment: Experiment, source: str = "") -> HttpResponse | None:
    """404 for a draft (unless staff), 410 for a closed study (saying what to do on the listener's platform), None for a
    study that takes visitors."""
    if experiment.status == Experiment.Status.DRAFT and not request.user.is_staff:
        raise Http404("no such study")
    if experiment.status == Experiment.Status.CLOSED:
        return message(request, "This study is closed", with_next_step(STUDY_CLOSED, source), 410, experiment)
    return None


def _study_full(request: HttpRequest, experiment: Experiment, source: str) -> HttpResponse:
    return message(request, "This study is full", with_next_step(STUDY_FULL, source), 200, experiment)


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
    if participant.finished_at is None:  # a listener whose study ended keeps their ending page (code, HIT) after it closes
        refusal = _refuse_closed(request, participant.experiment, participant.source)
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
    try:
        experiment = Experiment.objects.by_slug(slug)
    except UnknownExperiment:
        raise Http404("no such study") from None
    try:
        link = flow.parse_link(request.GET, tuple(settings.MTURK_SUBMIT_HOSTS))
    except flow.InvalidLink as exc:
        return _refuse_closed(request, experiment) or message(request, "Invalid study link", f"{exc}.".capitalize(), 400, experiment)
    if link.is_mturk_preview:
        if experiment.status == Experiment.Status.CLOSED:
            return message(request, "This study is closed", f"{STUDY_CLOSED} Please do not accept this HIT.", 410, experiment)
        refusal = _refuse_closed(request, experiment)
        if refusal is not None:
            return refusal
        if not request.user.is_staff and flow.study_full(Participant(experiment=experiment)):
            return message(request, "This study is full", f"{STUDY_FULL} Please do not accept this HIT.", 200, experiment)
        sample = experiment.stimuli.filter(kind=Stimulus.Kind.PRACTICE).exists()
        return render(request, "evaluation/preview.html", {"experiment": experiment, "sample": sample})
    refusal = _refuse_closed(request, experiment, link.source)
    if refusal is not None:
        finished = flow.finished_before(experiment, link)  # their ending (code, HIT to submit) outlives the study
        return refusal if finished is None else _ended_before(request, experiment, finished, flow.same_assignment(link, finished))
    if request.method == "HEAD":  # a link checker: the link works, but nobody entered the study
        return HttpResponse(content_type="text/html; charset=utf-8")
    try:
        participant = flow.enter(experiment, link, _participant(request, experiment), preview=request.user.is_staff)
    except flow.AlreadyTakenPart as taken:
        return _ended_before(request, experiment, taken.participant, taken.same_assignment)
    request.session[_session_key(experiment.slug)] = participant.token
    return HttpResponseRedirect(_step_url(participant))


def _ended_before(request: HttpRequest, experiment: Experiment, participant: Participant, same_assignment: bool) -> HttpResponse:
    """MTurk's page reloaded the link of the HIT they finished: back to its submit button. Anyone else: 409."""
    if same_assignment:
        request.session[_session_key(experiment.slug)] = participant.token
        return HttpResponseRedirect(_step_url(participant))
    return _taken_part(request, experiment, participant)


def _taken_part(request: HttpRequest, experiment: Experiment, participant: Participant) -> HttpResponse:
    """409 for a second visit of someone who finished or was screened out: how it ended, and what to do on the platform.

    A Prolific listener who never went back to Prolific still needs their code, so it is on the page (Prolific takes one
    submission per participant and study, so showing it again pays nobody twice). An MTurk worker in another assignment
    must return it: one submission per worker and study.
    """
    screened = participant.step == Step.SCREENED
    text = SCREENED_BEFORE if screened else TAKEN_PART
    title = "You have already taken part"
    if participant.source == Participant.Source.PROLIFIC:
        code = flow.screened_out_code(participant) if screened else flow.completion_code(participant)
        if code:
            what = "screen-out code" if screened else "completion code"
            return message(request, title, f"{text} If Prolific still shows this study as in progress, finish it there "
                                             f"with your {what}, {code}.", 409, experiment,
                           link=prolific.completion_url(code), link_label="Go back to Prolific to finish")
    return message(request, title, with_next_step(f"Thank you! {text}", participant.source), 409, experiment)


@require_http_methods(["GET", "HEAD", "POST"])
@participant_page(Step.CONSENT)
def consent(request, experiment, participant):
    if request.method != "POST" and not participant.preview and flow.study_full(participant):
        return _study_full(request, experiment, participant.source)  # before anyone spends time on consent and the checks
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
        return _study_full(request, experiment, participant.source)
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
    refusal = _refuse_closed(request, experiment, participant.source)
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
    """The ending: completed, or screened out by the headphone check, each as the listener's platform expects it."""
    if participant.step == Step.SCREENED:
        return _screened_out(request, experiment, participant)
    if participant.step != Step.DONE:
        return HttpResponseRedirect(_step_url(participant))
    code = flow.completion_code(participant)
    context = {"experiment": experiment, "code": code}
    if _mturk_submits(participant):
        context["mturk_action"] = participant.turk_submit_to + "/mturk/externalSubmit"
    elif participant.source == Participant.Source.PROLIFIC:
        context["redirect"] = prolific.completion_url(code)
    elif experiment.redirect_url:
        context["redirect"] = experiment.redirect_url
    return _page(request, "evaluation/done.html", participant, context)


def _mturk_submits(participant: Participant) -> bool:
    return participant.source == Participant.Source.MTURK and bool(participant.turk_submit_to and participant.assignment_id)


def _screened_out(request: HttpRequest, experiment: Experiment, participant: Participant) -> HttpResponse:
    """Prolific: back with the study's screen-out code (Prolific's fixed screen-out payment), or else return the
    submission. MTurk has no screen-out payment: a submitted HIT is paid in full once MTurk auto-approves it, which
    would pay failing the sound check on purpose, so the worker returns the HIT (no effect on their record)."""
    code = flow.screened_out_code(participant)
    if code:
        context = {"experiment": experiment, "screened": True, "code": code, "redirect": prolific.completion_url(code)}
        return _page(request, "evaluation/done.html", participant, context)
    return message(request, "Thank you for your time", with_next_step(SCREENED_OUT, participant.source), 200, experiment)


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

