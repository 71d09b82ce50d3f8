"""manage.py load_stimuli MANIFEST --experiment SLUG: add a generated stimulus set to an experiment."""
from django.core.management.base import CommandError

from config.commands import HearsayCommand
from evaluation.models import Experiment
from evaluation.stimuli import load_manifest


class Command(HearsayCommand):
    help = "Validate a manifest.csv and its wav files, then load them (idempotently) into an experiment."
    interrupted = "interrupted: nothing was loaded; rerun the command"

    def add_arguments(self, parser):
        parser.add_argument("manifest", help="manifest.csv written by generation (files relative to its folder)")
        parser.add_argument("--experiment", required=True, help="experiment slug")
        parser.add_argument("--create", action="store_true", help="create the experiment if it does not exist")
        parser.add_argument("--task", choices=["identification", "rating"], help="task of a new experiment (default identification)")
        parser.add_argument("--words", nargs="+", help="answer words, in display order (default: the manifest's words, sorted)")
        parser.add_argument("--ratings-per-stimulus", type=int, help="answers wanted per test stimulus")
        parser.add_argument("--title", help="title shown to listeners")
        parser.add_argument("--gold-from-corpus", metavar="DIR", help="Speech Commands-layout folder to take clean gold clips from")
        parser.add_argument("--gold-per-word", type=int, default=1, help="gold clips per word from --gold-from-corpus")

    def handle(self, *args, **opts):
        if not opts["create"] and not Experiment.objects.filter(slug=opts["experiment"]).exists():
            raise CommandError(f"no experiment named {opts['experiment']!r}; pass --create to make it")
        if opts["ratings_per_stimulus"] is not None and opts["ratings_per_stimulus"] < 1:
            raise CommandError("--ratings-per-stimulus must be at least 1")
        report = load_manifest(
            opts["manifest"], opts["experiment"], create=opts["create"], task=opts["task"], words=opts["words"],
            ratings_per_stimulus=opts["ratings_per_stimulus"], title=opts["title"],
            gold_from_corpus=opts["gold_from_corpus"], gold_per_word=opts["gold_per_word"],
        )
        self.stdout.write(report.summary())
