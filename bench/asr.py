"""The pocketsphinx machine listener on clean utterances: accuracy and clips per second.

    .venv/bin/python bench/asr.py --data var/demo/corpus [--split test]

Its grammar is restricted to the corpus's words, as in `manage.py listen --machine asr`;
chance is one over the number of words.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generation.asr import Recognizer  # noqa: E402
from generation.corpus import read_corpus  # noqa: E402
from generation.features import read_wave  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="var/demo/corpus")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    args = parser.parse_args()
    corpus = read_corpus(args.data)
    recognizer = Recognizer(corpus.classes)
    utterances = corpus.split(args.split)
    wrong: Counter[str] = Counter()
    start = time.perf_counter()
    for u in utterances:
        wave, rate = read_wave(u.path)
        if recognizer.recognize(wave, rate) != u.word:
            wrong[u.word] += 1
    seconds = time.perf_counter() - start
    correct = len(utterances) - sum(wrong.values())
    print(f"pocketsphinx, {args.split} split of {args.data}: {correct}/{len(utterances)} = {correct / len(utterances):.1%} "
          f"(chance {1 / len(corpus.classes):.1%}), {len(utterances) / seconds:.1f} clips/s")
    print("most missed words: " + ", ".join(f"{w} ({n})" for w, n in wrong.most_common(8)))


if __name__ == "__main__":
    main()
