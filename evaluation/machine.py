"""Machine listeners: answer a survey through the same Assignment -> Response path as people.

A machine hears every test and gold clip once (trap clips ask for an instruction to be
followed, which is a human's test). Its answers are marked listener kind "machine",
never count towards the N human answers a clip needs, and resume after an interruption.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from django.utils import timezone
from tqdm import tqdm

from evaluation.answers import Heard, slot_for, store_answer
from evaluation.models import Experiment, Participant, Stimulus
from generation.features import read_wave
from hearsay.answers import RATING_SCALE
from hearsay.errors import HearsayError

RATING_OPTIONS = len(RATING_SCALE)
HEARD_WHOLE_FILE = Heard(play_count=1, listened_to_end=True)  # a model reads every sample of the clip once


@dataclass
class ListenReport:
    listener: str
    answered: int
    skipped: int
    correct: int
    scored: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.scored if self.scored else float("nan")


Judge = Callable[[np.ndarray, int, Stimulus], tuple[str, int | None]]


def evaluator_judge(checkpoint_path: str, experiment: Experiment, device: str = "cpu") -> tuple[str, Judge]:
    """Classifier B (or any classifier checkpoint) as a listener, restricted to the experiment's words."""
    from generation import checkpoint
    from generation.features import LogMel, prepare_waves

    ckpt = checkpoint.load(checkpoint_path, device=device, kind="classifier")
    known = [w for w in experiment.words if w in ckpt.classes]
    if not known:
        raise HearsayError(f"{checkpoint_path} knows none of the experiment's words")
    index = torch.tensor([ckpt.classes.index(w) for w in known], device=device)
    logmel = LogMel(ckpt.feature_config).to(device)

    def judge(wave: np.ndarray, rate: int, stimulus: Stimulus) -> tuple[str, int | None]:
        with torch.no_grad():
            feats = logmel(prepare_waves([wave], rate, ckpt.feature_config, device))
            probs = torch.softmax(ckpt.model(feats)[0, index], dim=0)
        word = known[int(probs.argmax())]
        p_intended = float(probs[known.index(stimulus.word)]) if stimulus.word in known else 0.0
        return word, _rating(p_intended)

    return f"machine:evaluator:{ckpt.sha256[:12]}", judge


def asr_judge(experiment: Experiment, seed: int = 0) -> tuple[str, Judge]:
    """The pocketsphinx recognizer, its grammar restricted to the experiment's words."""
    from generation.asr import Recognizer

    recognizer = Recognizer(experiment.words, seed=seed)

    def judge(wave: np.ndarray, rate: int, stimulus: Stimulus) -> tuple[str, int | None]:
        word = recognizer.recognize(wave, rate)
        return word, (RATING_OPTIONS - 1 if word == stimulus.word else 0)

    return "machine:asr:pocketsphinx", judge


def _rating(p: float) -> int:
    """A probability as the 0 (Bad) .. 4 (Excellent) scale: equal-width bins."""
    return min(RATING_OPTIONS - 1, int(p * RATING_OPTIONS))


def listen(experiment: Experiment, listener: str, judge: Judge, progress: bool = True) -> ListenReport:
    participant, _ = Participant.objects.get_or_create(
        experiment=experiment,
        worker_id=listener,
        source=Participant.Source.MACHINE,
        defaults={"kind": Participant.Kind.MACHINE, "step": Participant.Step.TRIALS, "pay_ok": False, "pay_reasons": ["machine listener"]},
    )
    heard = set(participant.assignments.filter(answered=True).values_list("stimulus_id", flat=True))
    stimuli = list(
        experiment.stimuli.filter(kind__in=[Stimulus.Kind.TEST, Stimulus.Kind.GOLD]).exclude(pk__in=heard).order_by("stimulus_id")
    )
    answered = correct = scored = 0
    for stimulus in tqdm(stimuli, desc=listener, unit="clip", disable=not progress):
        with stimulus.audio.open("rb") as fh:
            wave, rate = read_wave(fh)
        answer, rating = judge(wave, rate, stimulus)
        assignment = slot_for(participant, stimulus)
        if experiment.task == Experiment.Task.RATING:
            store_answer(assignment, rating=rating, heard=HEARD_WHOLE_FILE)
        else:
            store_answer(assignment, answer=answer, heard=HEARD_WHOLE_FILE)
            scored += 1
            correct += answer == stimulus.word
        answered += 1
    participant.step = Participant.Step.DONE
    if participant.finished_at is None:
        participant.finished_at = timezone.now()
    participant.save(update_fields=["step", "finished_at"])
    return ListenReport(listener=listener, answered=answered, skipped=len(heard), correct=correct, scored=scored)
