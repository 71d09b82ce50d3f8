"""Researchers' side: every model in the (staff-only) admin, live counts per experiment, CSV download."""
from __future__ import annotations

import re
from collections import Counter

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpResponseBadRequest, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import content_disposition_header

from evaluation.export import long_table_csv_chunks
from evaluation.models import Assignment, Experiment, Participant, Response, Stimulus
from hearsay.errors import HearsayError


def download_name(slug: str) -> str:
    """The CSV's file name: the slug's letters (any script), digits, '-', '_' and '.'; anything else becomes '_'."""
    return re.sub(r"[^\w.-]", "_", slug) + "-responses.csv"


def csv_response(slug: str) -> StreamingHttpResponse:
    """The responses CSV, streamed as it is read (raises HearsayError before any byte for a study without answers)."""
    response = StreamingHttpResponse(long_table_csv_chunks(slug), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = content_disposition_header(True, download_name(slug))
    return response


def count_of(queryset, outer: str):
    """How many rows of `queryset` point (through `outer`) at the admin's row: one correlated subquery, 0 when none.

    A list's per-row counts, joined and grouped instead, multiply rows (stimuli x listeners x answers) before counting;
    asked per row in Python, they cost a query per row.
    """
    rows = queryset.filter(**{outer: OuterRef("pk")}).order_by().values(outer).annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(rows), 0)


class KeepsAnswers:
    """For a model whose rows hold answers (experiment, stimulus, participant): nothing holding answers is deleted
    (page, confirmation or the 'delete selected' action), and the fields the answers depend on become read-only.

    Paid answers cannot be collected again, and Django would delete them with their experiment, stimulus or
    listener after one confirmation. A subclass names the path from an answer to its row (`answers_of`), what to
    do instead of deleting (`instead`), and the fields fixed once answered with a note saying why; objects without
    answers (a draft, a clip nobody heard) delete and edit as before.
    """

    answers_of = ""  # the Response field path to this admin's model, e.g. "stimulus__experiment"
    instead = ""
    fixed_once_answered: tuple[str, ...] = ()
    fixed_note = ""

    def holds_answers(self, obj) -> bool:
        return Response.objects.filter(**{self.answers_of: obj}).exists()

    def answered(self, queryset):
        """The objects of `queryset` that hold answers, each annotated with `n_held` (its answer count)."""
        return queryset.annotate(n_held=count_of(Response.objects.all(), self.answers_of)).filter(n_held__gt=0)

    def _refusal(self, held) -> str:
        names = ", ".join(f"{obj} ({obj.n_held} answers)" for obj in held[:5]) + (", ..." if len(held) > 5 else "")
        return f"Not deleted: {names} cannot be deleted, since paid answers cannot be collected again. {self.instead}"

    def has_delete_permission(self, request, obj=None):
        if obj is not None and self.holds_answers(obj):
            return False
        return super().has_delete_permission(request, obj)

    def delete_view(self, request, object_id, extra_context=None):
        obj = self.get_object(request, object_id)
        if obj is not None:
            held = list(self.answered(self.model.objects.filter(pk=obj.pk)))
            if held:
                self.message_user(request, self._refusal(held), messages.ERROR)
                return HttpResponseRedirect(reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk]))
        return super().delete_view(request, object_id, extra_context)

    @admin.action(permissions=["delete"], description="Delete selected %(verbose_name_plural)s (only those without answers)")
    def delete_selected(self, request, queryset):
        held = list(self.answered(queryset))
        if held:
            self.message_user(request, self._refusal(held), messages.ERROR)
            return None
        return django_delete_selected(self, request, queryset)

    def get_readonly_fields(self, request, obj=None):
        fields = tuple(super().get_readonly_fields(request, obj))
        if obj is not None and self.holds_answers(obj):
            fields += tuple(f for f in self.fixed_once_answered if f not in fields)
        return fields

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method == "GET":
            obj = self.get_object(request, object_id)
            if obj is not None and self.holds_answers(obj):
                self.message_user(request, self.fixed_note.format(obj=obj), messages.INFO)
        return super().change_view(request, object_id, form_url, extra_context)


class CheckedSelection:
    """For every admin of the site: an action posted for a selected id that is no id of the model (tampered, or
    beyond the column's range) gets a 400; Django would pass it to the database and fail with a 500."""

    def response_action(self, request, queryset):
        pk = queryset.model._meta.pk
        for value in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
            try:
                pk.clean(value, None)
            except ValidationError:
                return HttpResponseBadRequest(f"Bad request: {value[:40]!r} is not the id of a {queryset.model._meta.verbose_name}.\n",
                                              content_type="text/plain; charset=utf-8")
        return super().response_action(request, queryset)


class CheckedSelectionAdmin(CheckedSelection, admin.ModelAdmin):
    pass


# Django's own admins of accounts, with the same check
for _model, _admin in ((get_user_model(), UserAdmin), (Group, GroupAdmin)):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)
    admin.site.register(_model, type(f"Checked{_admin.__name__}", (CheckedSelection, _admin), {}))


# What informed consent must tell a listener, each with a pattern that a consent text naming it will match.
CONSENT_NEEDS = (
    ("who the researcher is", re.compile(r"research(er|ers|group)|investigator|\blab\b|laborator|universit|institut|department|\bdr\b|\bprof", re.I)),
    ("a contact address", re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+|https?://", re.I)),
    ("the pay", re.compile(r"\bpa(y|id|yment)\b|reward|compensat|[$£€]\s?\d|\d\s?(usd|gbp|eur)\b", re.I)),
    ("how long the answers are kept", re.compile(r"\bkept\b|\bkeep\b|retain|retention|\bstored?\b|delet|destroy", re.I)),
)


def listener_page_gaps(experiment: Experiment) -> list[str]:
    """What the listener's pages still lack before a study should go live (empty when ready).

    The built-in consent text is a placeholder: it names no researcher, contact, pay or retention,
    so an experiment without its own consent text lacks all four.
    """
    gaps = []
    if not experiment.title.strip() or experiment.title.strip() == experiment.slug:
        gaps.append("a title for listeners (they see 'Listening study' until then, never the slug)")
    text = experiment.consent_text.strip()
    missing = [need for need, pattern in CONSENT_NEEDS if not pattern.search(text)] if text else [n for n, _ in CONSENT_NEEDS]
    if missing:
        gaps.append("consent text naming " + ", ".join(missing) + ("" if text else " (the built-in text names none of these)"))
    return gaps


@admin.register(Experiment)
class ExperimentAdmin(KeepsAnswers, CheckedSelectionAdmin):
    list_display = (
        "slug", "title", "task", "status", "ready", "ratings_per_stimulus", "stimulus_count", "answer_total", "participant_count", "links",
    )
    list_filter = ("status", "task")
    search_fields = ("slug", "title")
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}  # a redirect typed without a scheme is https
    actions = ["make_live", "make_closed", "download_csv", "delete_selected"]
    answers_of = "stimulus__experiment"
    instead = ("To end a study, select it and choose the action 'Mark closed (no more answers)': "
               "listeners can no longer take it and its answers stay for the analysis.")
    fixed_once_answered = ("slug", "task", "words", "replay_limit", "anchors")
    fixed_note = ("Experiment {obj.slug} has answers, and the answers depend on its slug (the survey's links), task, "
                  "words, replay limit and rating anchors: these are fixed now. Title, texts, answers per clip and "
                  "status can still be changed; to stop the study, set it closed.")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            n_stimuli=count_of(Stimulus.objects.all(), "experiment"),
            n_participants=count_of(Participant.objects.all(), "experiment"),
            n_answers=count_of(Response.objects.all(), "stimulus__experiment"),
        )

    @admin.display(description="ready for listeners")
    def ready(self, obj):
        gaps = listener_page_gaps(obj)
        if not gaps:
            return format_html('<span class="hs-ready">{}</span>', "yes")
        return format_html('<strong class="hs-gaps" style="color:#b00020">⚠ needs {}</strong>', "; ".join(gaps))

    def _warn_gaps(self, request, experiments) -> None:
        for experiment in experiments:
            gaps = listener_page_gaps(experiment)
            if gaps:
                self.message_user(request, f"Experiment {experiment.slug}: before listeners see it, add " + "; ".join(gaps) + ".", messages.WARNING)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method == "GET":
            experiment = self.get_object(request, object_id)
            if experiment is not None:
                self._warn_gaps(request, [experiment])
        return super().change_view(request, object_id, form_url, extra_context)

    def changelist_view(self, request, extra_context=None):
        if request.method == "GET":
            unready = [e for e in Experiment.objects.exclude(status=Experiment.Status.CLOSED) if listener_page_gaps(e)]
            if unready:
                self.message_user(
                    request, f"{len(unready)} experiment(s) are not ready for listeners: see the 'ready for listeners' column.", messages.WARNING,
                )
        return super().changelist_view(request, extra_context)

    @admin.display(description="stimuli", ordering="n_stimuli")
    def stimulus_count(self, obj):
        return obj.n_stimuli

    @admin.display(description="listeners", ordering="n_participants")
    def participant_count(self, obj):
        return obj.n_participants

    @admin.display(description="answers", ordering="n_answers")
    def answer_total(self, obj):
        return obj.n_answers

    @admin.display(description="")
    def links(self, obj):
        return format_html(
            '<a href="{}">counts</a> · <a href="{}">CSV</a>',
            reverse("admin:evaluation_experiment_counts", args=[obj.pk]),
            reverse("admin:evaluation_experiment_csv", args=[obj.pk]),
        )

    @admin.action(description="Mark live (open to listeners)")
    def make_live(self, request, queryset):
        """Opens the selected studies that have test clips; one without any is named and left as it was."""
        empty = queryset.exclude(stimuli__kind=Stimulus.Kind.TEST)
        if empty.exists():
            names = ", ".join(sorted(e.slug for e in empty))
            self.message_user(request, f"Not made live (no test clips to hear): {names}. Load stimuli first: "
                                       "manage.py load_stimuli MANIFEST --experiment SLUG.", messages.ERROR)
        pks = list(queryset.filter(stimuli__kind=Stimulus.Kind.TEST).distinct().values_list("pk", flat=True))
        if pks:
            updated = Experiment.objects.filter(pk__in=pks).update(status=Experiment.Status.LIVE)
            self.message_user(request, f"{updated} experiment(s) are live.")
        self._warn_gaps(request, Experiment.objects.filter(pk__in=pks))

    @admin.action(description="Mark closed (no more answers)")
    def make_closed(self, request, queryset):
        updated = queryset.update(status=Experiment.Status.CLOSED)
        self.message_user(request, f"{updated} experiment(s) are closed.")

    @admin.action(description="Download responses CSV (one experiment)")
    def download_csv(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Choose exactly one experiment to download.", messages.ERROR)
            return None
        try:
            return csv_response(queryset.get().slug)
        except HearsayError as exc:
            self.message_user(request, f"No CSV: {exc}.", messages.ERROR)
            return None

    def get_urls(self):
        extra = [
            path("<int:pk>/counts/", self.admin_site.admin_view(self.counts_view), name="evaluation_experiment_counts"),
            path("<int:pk>/responses.csv", self.admin_site.admin_view(self.csv_view), name="evaluation_experiment_csv"),
        ]
        return extra + super().get_urls()

    def csv_view(self, request, pk: int):
        experiment = get_object_or_404(Experiment, pk=pk)
        try:
            return csv_response(experiment.slug)
        except HearsayError as exc:  # no answers yet: back to the study's counts, saying so
            self.message_user(request, f"No CSV: {exc}.", messages.WARNING)
            return HttpResponseRedirect(reverse("admin:evaluation_experiment_counts", args=[experiment.pk]))

    def counts_view(self, request, pk: int):
        """Live progress: answers per stimulus and condition, and per listener with gold/trap accuracy.

        A fixed number of queries whatever the crowd's size: the gold/trap answers of all listeners are read in
        one query and judged in one pass by `passes`, the rule `_passes` applies to one answer.
        """
        experiment = get_object_or_404(Experiment, pk=pk)
        by_kind = {
            "human": Count("responses", filter=Q(responses__participant__kind=Participant.Kind.HUMAN)),
            "machine": Count("responses", filter=Q(responses__participant__kind=Participant.Kind.MACHINE)),
        }
        stimuli = experiment.stimuli.annotate(**by_kind).order_by("kind", "condition", "human", "stimulus_id")
        conditions = list(
            experiment.stimuli.values("kind", "condition")
            .annotate(stimuli=Count("id", distinct=True), **by_kind)
            .order_by("kind", "condition")
        )
        for row in conditions:  # the N answers per clip are people's: machine answers never fill a quota
            row["target"] = row["stimuli"] * experiment.ratings_per_stimulus if row["kind"] == Stimulus.Kind.TEST else None
        checks = [Stimulus.Kind.GOLD, Stimulus.Kind.TRAP]
        participants = experiment.participants.annotate(
            answers=Count("responses"),
            checks=Count("responses", filter=Q(responses__stimulus__kind__in=checks)),
        ).order_by("-started_at")
        checked = Response.objects.filter(participant__experiment=experiment, stimulus__kind__in=checks).values_list(
            "participant_id", "stimulus__kind", "stimulus__expected_answer", "stimulus__word", "answer", "rating")
        correct = Counter()
        for participant_id, kind, expected_answer, word, answer, rating in checked.iterator(chunk_size=5000):
            correct[participant_id] += passes(experiment.task, kind, expected_answer, word, answer, rating)
        listeners = [{"p": p, "answers": p.answers, "checks": p.checks, "correct": correct[p.pk],
                      "accuracy": f"{100 * correct[p.pk] / p.checks:.0f}%" if p.checks else "-"} for p in participants]
        context = {
            **self.admin_site.each_context(request), "title": f"Counts: {experiment.slug}", "experiment": experiment,
            "stimuli": stimuli, "conditions": conditions, "listeners": listeners, "opts": self.model._meta,
            "answers": Response.objects.filter(stimulus__experiment=experiment).count(),
        }
        return render(request, "evaluation/admin_counts.html", context)


def _passes(experiment: Experiment, response: Response) -> bool:
    stimulus = response.stimulus
    return passes(experiment.task, stimulus.kind, stimulus.expected_answer, stimulus.word, response.answer, response.rating)


def passes(task: str, kind: str, expected_answer: str, word: str, answer: str, rating: int | None) -> bool:
    """Whether a gold/trap answer is right, from the plain values (so a whole study's are judged from one query)."""
    expected = expected_answer or word
    if task == Experiment.Task.RATING:
        if kind == Stimulus.Kind.GOLD:
            return rating is not None and rating >= 3
        return str(rating) == expected
    return answer == expected


@admin.register(Stimulus)
class StimulusAdmin(KeepsAnswers, CheckedSelectionAdmin):
    list_display = ("stimulus_id", "experiment", "kind", "word", "condition", "method", "init", "stage", "pair_id", "answer_count")
    list_filter = ("experiment", "kind", "condition", "method", "init", "stage")
    search_fields = ("stimulus_id", "word", "pair_id")
    readonly_fields = ("sha256", "answer_count")
    list_select_related = ("experiment",)
    actions = ["delete_selected"]
    answers_of = "stimulus"
    instead = "A clip that should leave the analysis is left out there (analyze), not deleted here."
    fixed_once_answered = ("experiment", "stimulus_id", "audio", "word", "method", "init", "stage", "condition", "pair_id",
                           "kind", "expected_answer", "provenance")
    fixed_note = ("Stimulus {obj} has answers, and the answers depend on everything about it (its audio, word, "
                  "condition, kind, expected answer): it is read-only now.")


@admin.register(Participant)
class ParticipantAdmin(KeepsAnswers, CheckedSelectionAdmin):
    list_display = ("pk", "experiment", "source", "worker_id", "step", "answers", "headphone_score", "pay_ok", "analyse_ok", "started_at", "finished_at")
    list_filter = ("experiment", "source", "kind", "step", "pay_ok", "analyse_ok")
    search_fields = ("worker_id", "assignment_id", "hit_id", "study_id")
    readonly_fields = ("token", "headphone_key")
    list_select_related = ("experiment",)
    actions = ["pay_yes", "pay_no", "analyse_yes", "analyse_no", "delete_selected"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    answers_of = "participant"
    instead = ("To keep a listener out of the analysis, use the action 'Verdict: not fit to analyse'; "
               "the answers stay stored and the analysis leaves them out.")
    fixed_once_answered = ("experiment", "source", "kind", "worker_id", "assignment_id", "hit_id", "study_id", "session_id", "preview")
    fixed_note = ("Participant {obj} has answers: who they are (experiment, platform, worker id) is fixed now. "
                  "The pay and analyse verdicts can still be set.")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_answers=count_of(Response.objects.all(), "participant"))

    @admin.display(description="answers", ordering="n_answers")
    def answers(self, obj):
        return obj.n_answers

    def _verdict(self, request, queryset, field: str, value: bool):
        reason = f"set by {request.user.get_username()} in admin"
        for p in queryset:
            setattr(p, field, value)
            reasons = getattr(p, field.replace("_ok", "_reasons"))
            if reason not in reasons:
                reasons.append(reason)
            p.save(update_fields=[field, field.replace("_ok", "_reasons")])
        self.message_user(request, f"{queryset.count()} participant(s) updated.")

    @admin.action(description="Verdict: fit to pay")
    def pay_yes(self, request, queryset):
        self._verdict(request, queryset, "pay_ok", True)

    @admin.action(description="Verdict: not fit to pay")
    def pay_no(self, request, queryset):
        self._verdict(request, queryset, "pay_ok", False)

    @admin.action(description="Verdict: fit to analyse")
    def analyse_yes(self, request, queryset):
        self._verdict(request, queryset, "analyse_ok", True)

    @admin.action(description="Verdict: not fit to analyse")
    def analyse_no(self, request, queryset):
        self._verdict(request, queryset, "analyse_ok", False)


class RecordAdmin(CheckedSelectionAdmin):
    """What listeners did, as the server recorded it: shown, never added or edited here."""

    raw_id_fields = ("participant", "stimulus")
    list_select_related = ("participant__experiment", "stimulus__experiment")  # their names show the experiment's slug

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Assignment)
class AssignmentAdmin(RecordAdmin):
    """The server's record of each trial (plays, timing); one holding an answer is never deleted."""

    list_display = ("pk", "participant", "stimulus", "position", "play_count", "answered", "void", "expires_at")
    list_filter = ("answered", "void", "participant__experiment")

    def has_delete_permission(self, request, obj=None):
        if obj is not None and Response.objects.filter(assignment=obj).exists():
            return False
        return super().has_delete_permission(request, obj)


@admin.register(Response)
class ResponseAdmin(RecordAdmin):
    """Answers as given, never deleted here either (a verdict or an analysis rule leaves one out)."""

    list_display = ("pk", "participant", "stimulus", "answer", "rating", "play_count", "listened_to_end", "response_ms", "answered_at")
    list_filter = ("stimulus__experiment", "stimulus__kind", "listened_to_end")
    raw_id_fields = ("assignment", "participant", "stimulus")

    def has_delete_permission(self, request, obj=None):
        return False
