"""The survey's data: Experiment -> Stimulus, Participant -> Assignment -> Response.

Every answer is its own row, saved as it is given. Participants carry two verdicts
(fit to pay, fit to analyse), each with reasons, because the two differ: a listener
who failed a trap may still deserve pay, and an honest listener with bad headphones
may not belong in the analysis.
"""
from __future__ import annotations

import secrets

from django.core.exceptions import ValidationError
from django.db import models

from evaluation.prolific import CODE_RULE, MAX_CODE_LENGTH
from hearsay.errors import HearsayError


def new_token() -> str:
    return secrets.token_urlsafe(24)


class UnknownExperiment(HearsayError):
    """No experiment has the slug asked for."""


class ExperimentQuerySet(models.QuerySet):
    def by_slug(self, slug: str) -> "Experiment":
        """The one way to find an experiment by its slug; a missing one raises UnknownExperiment (a HearsayError)."""
        experiment = self.filter(slug=slug).first() if isinstance(slug, str) and "\x00" not in slug else None
        if experiment is None:
            raise UnknownExperiment(f"no experiment named {slug!r}")
        return experiment


class Experiment(models.Model):
    class Task(models.TextChoices):
        IDENTIFICATION = "identification", "Which word do you hear?"
        RATING = "rating", "How clear is word X?"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        LIVE = "live", "Live"
        CLOSED = "closed", "Closed"

    slug = models.SlugField(unique=True)
    title = models.CharField(max_length=200, blank=True)
    task = models.CharField(max_length=20, choices=Task.choices, default=Task.IDENTIFICATION)
    words = models.JSONField(default=list, help_text="Answer options, in display order.")
    instructions = models.TextField(blank=True)
    consent_text = models.TextField(blank=True)
    ratings_per_stimulus = models.PositiveIntegerField(default=3)
    trials_per_listener = models.PositiveIntegerField(default=20)
    gold_per_listener = models.PositiveIntegerField(default=2)
    traps_per_listener = models.PositiveIntegerField(default=1)
    practice_trials = models.PositiveIntegerField(default=2)
    headphone_check = models.BooleanField(default=False)
    replay_limit = models.PositiveIntegerField(default=3, help_text="Plays allowed per clip, the first included.")
    assignment_timeout_minutes = models.PositiveIntegerField(default=30)
    completion_code = models.CharField(
        max_length=MAX_CODE_LENGTH, blank=True, validators=[CODE_RULE]
    )
    screened_out_code = models.CharField(
        max_length=MAX_CODE_LENGTH, blank=True, validators=[CODE_RULE],
        help_text="Prolific: the study's screen-out code (a completion code with Prolific's fixed screen-out payment). Listeners the "
                  "headphone check screens out are sent back to Prolific with it; left empty, they are asked to return their submission.",
    )
    redirect_url = models.URLField(blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    anchors = models.JSONField(default=list, blank=True, help_text="Rating task: [{label, value, audio}] example clips, one per option.")
    created = models.DateTimeField(auto_now_add=True)

    objects = ExperimentQuerySet.as_manager()

    def __str__(self) -> str:
        return self.slug

    def clean(self) -> None:
        """The screen-out code must not be the completion code: Prolific would pay every screened-out listener in full."""
        super().clean()
        code = (self.screened_out_code or "").strip()
        if code and code == (self.completion_code or "").strip():
            raise ValidationError({"screened_out_code": "Must differ from the completion code (that one pays the full reward)."})


class Stimulus(models.Model):
    class Kind(models.TextChoices):
        TEST = "test", "Test clip"
        GOLD = "gold", "Gold (clean natural word)"
        TRAP = "trap", "Trap (asks for a given answer)"
        PRACTICE = "practice", "Practice"

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="stimuli")
    stimulus_id = models.CharField(max_length=64, help_text="The manifest's id; never shown to listeners.")
    audio = models.FileField(upload_to="stimuli/")
    word = models.CharField(max_length=64, help_text="Intended word (the correct answer for identification).")
    method = models.CharField(max_length=32, blank=True)
    init = models.CharField(max_length=32, blank=True)
    stage = models.CharField(max_length=32, blank=True)
    condition = models.CharField(max_length=64, blank=True)
    pair_id = models.CharField(max_length=64, blank=True)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.TEST)
    expected_answer = models.CharField(
        max_length=64, blank=True,
        help_text="Gold/trap/practice: the answer a listener who heard it must give (a word, 'none', or a rating 0-4).",
    )
    sha256 = models.CharField(max_length=64, blank=True, help_text="Checksum of the audio file as loaded.")
    provenance = models.JSONField(default=dict, blank=True)
    answer_count = models.PositiveIntegerField(default=0, help_text="Completed answers (kept in step under row locks).")

    class Meta:
        verbose_name_plural = "stimuli"
        constraints = [models.UniqueConstraint(fields=["experiment", "stimulus_id"], name="unique_stimulus_per_experiment")]
        indexes = [models.Index(fields=["experiment", "kind", "answer_count"])]

    def __str__(self) -> str:
        return f"{self.experiment.slug}:{self.stimulus_id}"


class Participant(models.Model):
    class Source(models.TextChoices):
        WEB = "web", "Our pages"
        MTURK = "mturk", "Mechanical Turk"
        PROLIFIC = "prolific", "Prolific"
        MACHINE = "machine", "Machine listener"

    class Kind(models.TextChoices):
        HUMAN = "human", "Human"
        MACHINE = "machine", "Machine"

    class Step(models.TextChoices):
        """Where a listener is in the flow (evaluation.flow moves them on)."""

        CONSENT = "consent", "Consent"
        INSTRUCTIONS = "instructions", "Instructions"
        HEADPHONES = "headphones", "Headphone screen"
        TRIALS = "trials", "Trials"
        DONE = "done", "Finished"
        SCREENED = "screened", "Screened out (headphones)"

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="participants")
    token = models.CharField(max_length=64, unique=True, default=new_token)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.WEB)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.HUMAN)
    worker_id = models.CharField(max_length=128, blank=True, help_text="MTurk WorkerId, Prolific PID or machine name.")
    assignment_id = models.CharField(max_length=128, blank=True)
    hit_id = models.CharField(max_length=128, blank=True)
    study_id = models.CharField(max_length=128, blank=True)
    session_id = models.CharField(max_length=128, blank=True)
    turk_submit_to = models.URLField(blank=True, help_text="MTurk's submission host for this assignment.")
    step = models.CharField(max_length=20, choices=Step.choices, default=Step.CONSENT)
    preview = models.BooleanField(
        default=False, help_text="Staff trying the study: answers are never stored, counted or analysed.",
    )
    headphone_key = models.JSONField(default=list, blank=True, help_text="Per trial, which of the three tones is the quiet one.")
    consented_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    headphone_score = models.PositiveSmallIntegerField(null=True, blank=True)
    pay_ok = models.BooleanField(null=True, blank=True, help_text="Verdict: fit to pay (None = undecided).")
    pay_reasons = models.JSONField(default=list, blank=True)
    analyse_ok = models.BooleanField(null=True, blank=True, help_text="Verdict: fit to analyse (None = undecided).")
    analyse_reasons = models.JSONField(default=list, blank=True)
    paid_state = models.CharField(max_length=20, blank=True, help_text="approved / rejected on the platform.")
    bonus_cents = models.PositiveIntegerField(default=0)
    bonus_paid = models.BooleanField(default=False)

    class Meta:
        indexes = [models.Index(fields=["experiment", "worker_id"])]
        constraints = [
            models.UniqueConstraint(
                fields=["experiment", "source", "worker_id"], condition=~models.Q(worker_id=""), name="one_participant_per_worker",
            )
        ]

    def __str__(self) -> str:
        return f"{self.experiment.slug}:{self.source}:{self.worker_id or self.pk}"


class Assignment(models.Model):
    """One trial handed to one participant: the slot that must become a Response."""

    participant = models.ForeignKey(Participant, on_delete=models.CASCADE, related_name="assignments")
    stimulus = models.ForeignKey(Stimulus, on_delete=models.CASCADE, related_name="assignments")
    position = models.PositiveIntegerField()
    token = models.CharField(max_length=64, unique=True, default=new_token, help_text="Opaque audio token.")
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    play_count = models.PositiveIntegerField(default=0, help_text="Plays: fetches from byte 0, and ranges that do not continue the current play.")
    play_served_to = models.BigIntegerField(default=-1, help_text="Last byte served contiguously from byte 0 in the current play (-1: none).")
    first_played_at = models.DateTimeField(null=True, blank=True, help_text="When the clip was first fetched from byte 0.")
    served_full_at = models.DateTimeField(null=True, blank=True, help_text="When every byte of the clip was first served within one play.")
    clip_ms = models.PositiveIntegerField(null=True, blank=True, help_text="The clip's duration, measured when it was served.")
    played_to_end = models.BooleanField(default=False)
    answered = models.BooleanField(default=False)
    void = models.BooleanField(default=False, help_text="Expired and its stimulus filled up meanwhile: skipped, never answered.")

    class Meta:
        ordering = ["participant", "position"]
        constraints = [
            models.UniqueConstraint(fields=["participant", "stimulus"], name="one_assignment_per_stimulus_and_participant"),
            models.UniqueConstraint(fields=["participant", "position"], name="one_assignment_per_position"),
        ]


class Response(models.Model):
    assignment = models.OneToOneField(Assignment, on_delete=models.CASCADE, related_name="response")
    participant = models.ForeignKey(Participant, on_delete=models.CASCADE, related_name="responses")
    stimulus = models.ForeignKey(Stimulus, on_delete=models.CASCADE, related_name="responses")
    answer = models.CharField(max_length=64, blank=True, help_text="Identification: a word or 'none'.")
    rating = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Rating: 0 = Bad ... 4 = Excellent.")
    play_count = models.PositiveIntegerField(default=0)
    listened_to_end = models.BooleanField(default=False)
    response_ms = models.PositiveIntegerField(null=True, blank=True, help_text="From end of first playback to answer.")
    presented_at = models.DateTimeField(null=True, blank=True)
    answered_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["stimulus"]), models.Index(fields=["participant"])]


# --- Mechanical Turk records ------------------------------------------------------------------
# HITs made through the API are invisible on the requester website, so every HIT and every
# worker assignment is recorded here: retries, syncs and payments consult these rows first.


class MturkHit(models.Model):
    """One HIT we created, keyed by the deterministic request token that prevents doubles."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="mturk_hits")
    sandbox = models.BooleanField(default=True)
    hit_id = models.CharField(max_length=128)
    hit_type_id = models.CharField(max_length=128, blank=True)
    batch = models.CharField(max_length=64)
    index = models.PositiveIntegerField()
    request_token = models.CharField(max_length=64)
    url = models.URLField(max_length=1000)
    title = models.CharField(max_length=200)
    reward = models.DecimalField(max_digits=8, decimal_places=2)
    max_assignments = models.PositiveIntegerField()
    parameters = models.JSONField(default=dict, help_text="The create_hit parameters, for the record.")
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=32, blank=True, help_text="Last HITStatus seen.")
    available = models.PositiveIntegerField(default=0)
    pending = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["experiment", "sandbox", "batch", "index"]
        constraints = [
            models.UniqueConstraint(fields=["sandbox", "hit_id"], name="unique_mturk_hit"),
            models.UniqueConstraint(fields=["sandbox", "request_token"], name="unique_mturk_request_token"),
        ]

    def __str__(self) -> str:
        return f"{self.experiment.slug}:{'sandbox' if self.sandbox else 'live'}:{self.hit_id}"


class MturkAssignment(models.Model):
    """One worker's submission on MTurk, linked to the Participant who took our survey."""

    class Status(models.TextChoices):
        SUBMITTED = "Submitted", "Submitted"
        APPROVED = "Approved", "Approved"
        REJECTED = "Rejected", "Rejected"

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="mturk_assignments")
    participant = models.ForeignKey(
        Participant, on_delete=models.SET_NULL, null=True, blank=True, related_name="mturk_assignments"
    )
    sandbox = models.BooleanField(default=True)
    hit_id = models.CharField(max_length=128)
    assignment_id = models.CharField(max_length=128)
    worker_id = models.CharField(max_length=128)
    status = models.CharField(max_length=16, choices=Status.choices)
    via_batch = models.BooleanField(default=False, help_text="Imported from a requester-website results CSV.")
    submitted_at = models.DateTimeField(null=True, blank=True)
    synced_at = models.DateTimeField(auto_now=True)
    response = models.OneToOneField(
        Response, on_delete=models.SET_NULL, null=True, blank=True, related_name="mturk_assignment",
        help_text="Batch route: the answer this assignment gave (one clip per HIT).",
    )
    invalid_reason = models.TextField(blank=True, help_text="Batch route: why the row's answer could not be read.")

    class Meta:
        ordering = ["experiment", "hit_id", "assignment_id"]
        constraints = [models.UniqueConstraint(fields=["sandbox", "assignment_id"], name="unique_mturk_assignment")]

    def __str__(self) -> str:
        return f"{self.assignment_id} ({self.status})"


class MturkBatch(models.Model):
    """A set of HITs made on the requester website from one export-batch: its clips go by opaque names."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="mturk_batches")
    label = models.CharField(max_length=64)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["experiment", "label"], name="unique_mturk_batch_label")]

    def __str__(self) -> str:
        return f"{self.experiment.slug}:{self.label}"


class MturkBatchClip(models.Model):
    """One clip of a batch under the opaque file name workers' pages load it by (served as long as the batch exists)."""

    batch = models.ForeignKey(MturkBatch, on_delete=models.CASCADE, related_name="clips")
    stimulus = models.ForeignKey(Stimulus, on_delete=models.CASCADE, related_name="batch_clips")
    name = models.CharField(max_length=64, unique=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["batch", "stimulus"], name="one_name_per_clip_and_batch")]
