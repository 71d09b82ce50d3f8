"""An independent machine listener: the pocketsphinx recognizer shipped in its wheel.

Its acoustic model was trained on real English speech by other people, so it shares
nothing with our classifiers; its grammar is restricted to the experiment's words,
which makes it answer the same forced-choice question as a human listener.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.signal import resample_poly

from hearsay.answers import NONE_ANSWER as NONE
from hearsay.errors import HearsayError

RATE = 16000


class Recognizer:
    """Forced-choice word recognition with a JSGF grammar over `words`."""

    _lock = threading.Lock()

    def __init__(self, words: Sequence[str], dither: float = 1e-4, seed: int = 0):
        from pocketsphinx import Config, Decoder, get_model_path

        model = Path(get_model_path()) / "en-us"
        config = Config(
            hmm=str(model / "en-us"),
            dict=str(model / "cmudict-en-us.dict"),
            samprate=RATE,
            loglevel="FATAL",
        )
        config["lm"] = None
        self.decoder = Decoder(config)
        missing = [w for w in words if not self.decoder.lookup_word(w.lower())]
        if missing:
            raise HearsayError(f"the recognizer's dictionary has no pronunciation for: {', '.join(missing)}")
        self.words = list(words)
        alternatives = " | ".join(w.lower() for w in self.words)
        self.decoder.add_jsgf_string("words", f"#JSGF V1.0;\ngrammar words;\npublic <word> = {alternatives};\n")
        self.decoder.activate_search("words")
        self.dither = dither
        self.rng = np.random.default_rng(seed)

    def recognize(self, wave: np.ndarray, rate: int) -> str:
        """The recognized word, or "none" when the decoder finds no word at all."""
        wave = np.asarray(wave, dtype=np.float64)
        if wave.ndim > 1:
            wave = wave.mean(axis=1)
        if rate != RATE:
            from math import gcd

            g = gcd(RATE, rate)
            wave = resample_poly(wave, RATE // g, rate // g)
        peak = np.abs(wave).max()
        if peak > 0:
            wave = wave / peak * 0.7
        # The decoder fails on pure digital silence; a whisper of noise keeps it working.
        wave = wave + self.rng.normal(0.0, self.dither, size=wave.shape)
        pcm = (np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16)
        with self._lock:
            self.decoder.start_utt()
            self.decoder.process_raw(pcm.tobytes(), no_search=False, full_utt=True)
            self.decoder.end_utt()
            hyp = self.decoder.hyp()
        text = (hyp.hypstr if hyp is not None else "").strip().lower()
        if not text:
            return NONE
        first = text.split()[0]
        return next((w for w in self.words if w.lower() == first), NONE)
