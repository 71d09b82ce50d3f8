"""manage.py load_stimuli MANIFEST --experiment SLUG: add a generated stimulus set to an experiment."""
from django.core.management.base import BaseCommand, CommandError

from evaluation.models import Experiment
from evaluation.stimuli import load_manifest
from hearsay.errors import HearsayError


class Command(BaseCommand):
    help = "Validate a manifest.csv and its wav files, then load them (idempotently) into an experiment."

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
        try:
            report = load_manifest(
                opts["manifest"], opts["experiment"], create=opts["create"], task=opts["task"], words=opts["words"],
                ratings_per_stimulus=opts["ratings_per_stimulus"], title=opts["title"],
                gold_from_corpus=opts["gold_from_corpus"], gold_per_word=opts["gold_per_word"],
            )
        except HearsayError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(report.summary())
