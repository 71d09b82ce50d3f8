"""Machine listeners: answer a survey through the same Assignment -> Response path as people.

A machine hears every test and gold clip once (trap clips ask for an instruction to be
followed, which is a human's test). Its answers are marked listener kind "machine",
never count towards the N human answers a clip needs, and resume after an interruption.
"""
from __future__ import annotations

from dataclasses import dataclass
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable

import numpy as np
import torch
from django.db import transaction
from django.utils import timezone
from tqdm import tqdm

from evaluation.answers import Heard, slot_for, store_answer
from evaluation.models import Experiment, Participant, Stimulus
from generation.features import read_wave
from hearsay.answers import RATING_SCALE
from hearsay.errors import HearsayError

RATING_OPTIONS = len(RATING_SCALE)
ASR_LISTENER = "machine:asr:pocketsphinx"
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

    def summary(self) -> str:
        text = f"{self.listener}: {self.answered} answers saved"
        if self.skipped:
            text += f", {self.skipped} already answered before"
        if self.scored:
            text += f"; accuracy {self.accuracy:.1%} ({self.correct}/{self.scored})"
        return text


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

    return ASR_LISTENER, judge


def _rating(p: float) -> int:
    """A probability as the 0 (Bad) .. 4 (Excellent) scale: equal-width bins."""
    return min(RATING_OPTIONS - 1, int(p * RATING_OPTIONS))


STORE_EVERY = 64  # answers stored per transaction: one commit (one wait for the disk) per chunk, not two per clip


def _participant(experiment: Experiment, listener: str) -> Participant:
    participant, _ = Participant.objects.get_or_create(
        experiment=experiment,
        worker_id=listener,
        source=Participant.Source.MACHINE,
        defaults={"kind": Participant.Kind.MACHINE, "step": Participant.Step.TRIALS, "pay_ok": False, "pay_reasons": ["machine listener"]},
    )
    return participant


def _unheard(experiment: Experiment, participant: Participant) -> tuple[int, list[Stimulus]]:
    """(clips answered before, the test and gold clips still to hear in a fixed order)."""
    heard = set(participant.assignments.filter(answered=True).values_list("stimulus_id", flat=True))
    stimuli = list(
        experiment.stimuli.filter(kind__in=[Stimulus.Kind.TEST, Stimulus.Kind.GOLD]).exclude(pk__in=heard).order_by("stimulus_id")
    )
    return len(heard), stimuli


def _read(stimulus: Stimulus) -> tuple[np.ndarray, int]:
    with stimulus.audio.open("rb") as fh:
        return read_wave(fh)


def listen(experiment: Experiment, listener: str, judge: Judge, progress: bool = True) -> ListenReport:
    participant = _participant(experiment, listener)
    skipped, stimuli = _unheard(experiment, participant)
    verdicts = (judge(*_read(stimulus), stimulus) for stimulus in stimuli)
    return _store(experiment, participant, listener, stimuli, verdicts, skipped, progress)


def _store(experiment: Experiment, participant: Participant, listener: str, stimuli: list[Stimulus],
           verdicts: Iterable[tuple[str, int | None]], skipped: int, progress: bool) -> ListenReport:
    """Store each clip's verdict as the listener's answer, `STORE_EVERY` clips per transaction.

    Judging happens outside the transactions, so people answering the same survey meanwhile
    wait for the database at most for one chunk's writes; an interruption keeps every stored chunk.
    """
    answered = correct = scored = 0
    pending: list[tuple[Stimulus, str, int | None]] = []

    def flush() -> None:
        nonlocal answered, correct, scored
        with transaction.atomic():
            for stimulus, answer, rating in pending:
                assignment = slot_for(participant, stimulus)
                if experiment.task == Experiment.Task.RATING:
                    store_answer(assignment, rating=rating, heard=HEARD_WHOLE_FILE)
                else:
                    store_answer(assignment, answer=answer, heard=HEARD_WHOLE_FILE)
                    scored += 1
                    correct += answer == stimulus.word
                answered += 1
        pending.clear()

    for stimulus, (answer, rating) in zip(tqdm(stimuli, desc=listener, unit="clip", disable=not progress), verdicts):
        pending.append((stimulus, answer, rating))
        if len(pending) == STORE_EVERY:
            flush()
    flush()
    participant.step = Participant.Step.DONE
    if participant.finished_at is None:
        participant.finished_at = timezone.now()
    participant.save(update_fields=["step", "finished_at"])
    return ListenReport(listener=listener, answered=answered, skipped=skipped, correct=correct, scored=scored)


def recognize_ahead(experiment: Experiment, pool: ProcessPoolExecutor, seed: int = 0) -> Callable[[], ListenReport]:
    """Start pocketsphinx on the clips it has not answered, in `pool`, while other work goes on; call the result to store its answers.

    One worker recognizes every clip in order, as `listen_asr` does here: the decoder
    carries state from one clip to the next (its dither stream, its cepstral mean), so
    clips split among processes were answered differently (2 of 16 in a test, with the dither
    stream reproduced).
    """
    from evaluation import recognize

    participant = _participant(experiment, ASR_LISTENER)
    skipped, stimuli = _unheard(experiment, participant)
    words = pool.submit(recognize.recognize_all, experiment.words, seed, [_read(stimulus) for stimulus in stimuli])

    def store() -> ListenReport:
        verdicts = [(word, RATING_OPTIONS - 1 if word == stimulus.word else 0) for word, stimulus in zip(words.result(), stimuli)]
        return _store(experiment, participant, ASR_LISTENER, stimuli, verdicts, skipped, False)

    return store
