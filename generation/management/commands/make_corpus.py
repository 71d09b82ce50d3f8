"""manage.py make_corpus: write the built-in offline espeak corpus in the Speech Commands V2 layout."""
from django.core.management.base import CommandParser

from config.commands import HearsayCommand
from generation.corpus import SPEECH_COMMANDS_WORDS, CorpusSettings, build_corpus
from hearsay.errors import HearsayError


def _words(text: str) -> tuple[str, ...]:
    return tuple(w.strip().lower() for w in text.split(",") if w.strip())


def _noise(text: str) -> tuple[float, float] | None:
    if text.strip().lower() == "none":
        return None
    parts = text.split(",")
    try:
        low, high = (float(parts[0]), float(parts[-1])) if len(parts) <= 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None:
        raise HearsayError(f"--noise-db expects LOW,HIGH (e.g. 20,40), one value, or none; got {text!r}")
    return low, high


class Command(HearsayCommand):
    help = "Synthesize the built-in speech-command corpus offline with eSpeak NG (Speech Commands V2 layout)."
    interrupted = "interrupted; run the same command again to resume where it stopped"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", required=True, help="new or empty folder (or an unfinished run of the same settings, which is resumed)")
        parser.add_argument("--words", default=",".join(SPEECH_COMMANDS_WORDS), help="comma-separated words (default: the 35 Speech Commands V2 words)")
        parser.add_argument("--speakers", type=int, default=60, help="synthetic speakers, split ~80/10/10 by speaker (default 60)")
        parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
        parser.add_argument("--noise-db", default="20,40", help="speech-to-background-noise ratio range in dB, LOW,HIGH, or 'none' (default 20,40)")
        parser.add_argument("--takes", type=int, default=1, help="clips per speaker per word (default 1)")
        parser.add_argument("--jobs", type=int, default=1, help="parallel synthesis processes (default 1)")

    def handle(self, *args, **options) -> None:
        settings = CorpusSettings(
            words=_words(options["words"]), speakers=options["speakers"], seed=options["seed"],
            noise_db=_noise(options["noise_db"]), takes=options["takes"],
        )
        report = build_corpus(options["out"], settings, jobs=options["jobs"], progress=options["verbosity"] > 0)
        speed = f"; {report.clips_per_second:.1f} clips/s" if report.written else ""
        self.stdout.write(f"{report.out}: {report.written} clips written, {report.skipped} already there{speed}")
