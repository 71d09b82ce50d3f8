"""manage.py load_stimuli MANIFEST --experiment SLUG: add a generated stimulus set to an experiment."""
import re

from django.core.management.base import CommandError

from config.commands import HearsayCommand
from evaluation.models import Experiment
from evaluation.stimuli import load_manifest

SLUG = re.compile(r"[-a-zA-Z0-9_]+")  # Django's slug rule, which the survey's URLs assume
MAX_COUNT = 2_147_483_647  # the largest count every database stores


class Command(HearsayCommand):
    help = "Validate a manifest.csv and its audio files, then load them (idempotently) into an experiment."
    interrupted = "interrupted: nothing was loaded; rerun the command"

    def add_arguments(self, parser):
        parser.add_argument("manifest", help="manifest.csv written by generation or by hand (audio files relative to its folder: wav, FLAC, Ogg, AIFF...)")
        parser.add_argument("--experiment", required=True, help="experiment slug")
        parser.add_argument("--create", action="store_true", help="create the experiment if it does not exist")
        parser.add_argument("--task", choices=["identification", "rating"], help="task of a new experiment (default identification)")
        parser.add_argument("--words", nargs="+", help="answer words, in display order (default: the manifest's words, sorted)")
        parser.add_argument("--ratings-per-stimulus", type=int, help="answers wanted per test stimulus")
        parser.add_argument("--title", help="title shown to listeners")
        parser.add_argument("--gold-from-corpus", metavar="DIR", help="Speech Commands-layout folder to take clean gold clips from")
        parser.add_argument("--gold-per-word", type=int, default=1, help="gold clips per word from --gold-from-corpus")

    def handle(self, *args, **opts):
        exists = Experiment.objects.filter(slug=opts["experiment"]).exists()
        if not opts["create"] and not exists:
            raise CommandError(f"no experiment named {opts['experiment']!r}; pass --create to make it")
        slug_length = Experiment._meta.get_field("slug").max_length
        if not exists and not (len(opts["experiment"]) <= slug_length and SLUG.fullmatch(opts["experiment"])):
            raise CommandError(f"experiment name {opts['experiment']!r} must be 1-{slug_length} letters, digits, '_' or '-' "
                               "(it becomes the survey's URL)")
        title_length = Experiment._meta.get_field("title").max_length
        if opts["title"] is not None and len(opts["title"]) > title_length:
            raise CommandError(f"--title must be at most {title_length} characters, got {len(opts['title'])}")
        if opts["ratings_per_stimulus"] is not None and not 1 <= opts["ratings_per_stimulus"] <= MAX_COUNT:
            raise CommandError(f"--ratings-per-stimulus must be between 1 and {MAX_COUNT}")
        if not 1 <= opts["gold_per_word"] <= MAX_COUNT:
            raise CommandError(f"--gold-per-word must be between 1 and {MAX_COUNT}")
        report = load_manifest(
            opts["manifest"], opts["experiment"], create=opts["create"], task=opts["task"], words=opts["words"],
            ratings_per_stimulus=opts["ratings_per_stimulus"], title=opts["title"],
            gold_from_corpus=opts["gold_from_corpus"], gold_per_word=opts["gold_per_word"],
        )
        self.stdout.write(report.summary())
