"""manage.py make_survey_fixture OUT: a small stimulus set in the generation manifest format, for tests and demos.

The clips are espeak words (clean, and degraded with noise or a low-pass filter to
stand in for generated audio), so the survey can be exercised before any model is
trained. Provenance column `status` says so.
"""
import secrets
from pathlib import Path

import numpy as np
from django.core.management.base import CommandError
from scipy.signal import butter, sosfilt

from config.commands import HearsayCommand
from evaluation.audio import wav_bytes
from generation import espeak
from hearsay.manifest import MANIFEST_NAME, ORIGINAL_CONDITION, PAPER_CONDITIONS, write_manifest


_NOISE, _DECODER_TEST = PAPER_CONDITIONS[0], PAPER_CONDITIONS[3]
CONDITIONS = (  # condition, method, init, stage, pairing
    (_NOISE.name, _NOISE.method, _NOISE.init, "after", False),
    (_DECODER_TEST.name, _DECODER_TEST.method, _DECODER_TEST.init, "before", True),
    (_DECODER_TEST.name, _DECODER_TEST.method, _DECODER_TEST.init, "after", True),
    (ORIGINAL_CONDITION, "natural", "none", "original", True),
)
RATE = 16_000


def degrade(samples: np.ndarray, condition: str, stage: str, rng: np.random.Generator) -> np.ndarray:
    if stage == "original":
        return samples
    if condition.startswith("1"):
        return 0.3 * samples + 0.2 * rng.standard_normal(samples.size)
    sos = butter(4, 1500 if stage == "after" else 3000, fs=RATE, output="sos")
    return sosfilt(sos, samples) + 0.02 * rng.standard_normal(samples.size)


class Command(HearsayCommand):
    help = "Write a small manifest.csv + wav/ stimulus set (espeak words) for tests and demos."
    interrupted = "interrupted: no manifest was written; rerun the command"

    def add_arguments(self, parser):
        parser.add_argument("out", help="output folder (created)")
        parser.add_argument("--words", nargs="+", default=["down", "no", "up", "yes"])
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, **opts):
        out = Path(opts["out"])
        if out.exists() and not out.is_dir():
            raise CommandError(f"output {out} exists and is not a folder")
        if (out / MANIFEST_NAME).exists():
            raise CommandError(f"{out / MANIFEST_NAME} already exists; choose an empty folder")
        if opts["seed"] < 0:
            raise CommandError(f"--seed must be a non-negative integer, got {opts['seed']}")
        if len(set(opts["words"])) != len(opts["words"]):
            raise CommandError("--words names a word twice")
        try:
            (out / "wav").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CommandError(f"cannot create {out / 'wav'}: {exc.strerror or exc}") from None
        rng = np.random.default_rng(opts["seed"])
        voice = espeak.Voice(language="en-us", rate=160)
        rows = []
        for word in sorted(opts["words"]):
            clean = espeak.synthesize(word, voice, seed=opts["seed"]).astype(np.float64)
            clean = 0.9 * clean / (np.max(np.abs(clean)) or 1.0)
            pair = secrets.token_hex(5)
            for condition, method, init, stage, paired in CONDITIONS:
                audio = degrade(clean, condition, stage, rng)
                data = wav_bytes(0.95 * audio / (np.max(np.abs(audio)) or 1.0), RATE)
                name = f"wav/{secrets.token_hex(5)}.wav"
                (out / name).write_bytes(data)
                rows.append({
                    "stimulus_id": secrets.token_hex(5), "file": name, "word": word, "method": method, "init": init,
                    "stage": stage, "pair_id": pair if paired else "", "condition": condition, "speaker": voice.name,
                    "seed": opts["seed"], "status": "fixture: espeak-ng word, degraded; not a generated stimulus",
                })
        write_manifest(out / MANIFEST_NAME, rows)
        self.stdout.write(f"wrote {len(rows)} clips of {len(opts['words'])} words to {out / MANIFEST_NAME}")
