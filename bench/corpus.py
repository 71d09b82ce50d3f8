"""Corpus synthesis speed: raw espeak calls/s and make_corpus clips/s with 1 and 2 worker processes.

Run: .venv/bin/python bench/corpus.py [--words 5] [--speakers 20]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generation.corpus import SPEECH_COMMANDS_WORDS, CorpusSettings, build_corpus  # noqa: E402
from generation.espeak import Synthesizer, Voice  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=5)
    parser.add_argument("--speakers", type=int, default=20)
    args = parser.parse_args()
    words = SPEECH_COMMANDS_WORDS[: args.words]
    clips = len(words) * args.speakers
    print(f"corpus synthesis, {len(words)} words x {args.speakers} speakers = {clips} clips, {os.cpu_count()} CPUs")

    with Synthesizer() as synth:
        synth.synthesize("warm", Voice())
        start = time.perf_counter()
        for word in words * 20:
            synth.synthesize(word, Voice("en-us", "m3"))
        raw = 20 * len(words) / (time.perf_counter() - start)
    print(f"  espeak synthesize() alone          {raw:7.1f} words/s")

    rates = {}
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            report = build_corpus(Path(tmp) / "c", CorpusSettings(words=words, speakers=args.speakers, seed=0), jobs=jobs, progress=False)
            rates[jobs] = report.clips_per_second
        print(f"  make_corpus --jobs {jobs}                {rates[jobs]:7.1f} clips/s")
    print(f"  ratio jobs 2 / jobs 1              {rates[2] / rates[1]:7.2f}x")
    print(f"  default corpus (35 words x 60 speakers) at --jobs 1: about {35 * 60 / rates[1]:.0f} s")


if __name__ == "__main__":
    main()
