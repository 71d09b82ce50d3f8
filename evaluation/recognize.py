"""pocketsphinx over a listener's clips in a worker process, answering as the recognizer in the parent would.

Django-free, so that worker processes can import it without setting Django up.
"""
from __future__ import annotations

import numpy as np

from generation.asr import Recognizer


def recognize_all(words: list[str], seed: int, clips: list[tuple[np.ndarray, int]]) -> list[str]:
    """The word heard in each clip, in order, by one fresh recognizer (as `evaluation.machine.asr_judge` hears them)."""
    recognizer = Recognizer(words, seed=seed)
    return [recognizer.recognize(wave, rate) for wave, rate in clips]
