"""manage.py prolific_url: what to paste into a Prolific study for an experiment."""
from urllib.parse import urlsplit

from django.core.management.base import CommandError, CommandParser
from django.urls import reverse

from config.commands import HearsayCommand
from evaluation import prolific
from evaluation.models import Experiment


class Command(HearsayCommand):
    help = "Print the study URL (with Prolific's placeholders) and the completion code of an experiment."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--experiment", required=True, help="experiment slug")
        parser.add_argument("--base-url", required=True, help="public https:// address of this survey, e.g. https://survey.example.org")

    def handle(self, *args, **opts) -> None:
        experiment = Experiment.objects.by_slug(opts["experiment"])
        code = (experiment.completion_code or "").strip()  # what listeners are sent back with (prolific.completion_url)
        if not code:
            raise CommandError("set the experiment's completion code (admin) first: Prolific matches it to mark submissions complete")
        base = urlsplit(opts["base_url"])
        if base.query or base.fragment:
            raise CommandError(f"--base-url {opts['base_url']!r} must be the survey's address without ?query or #fragment")
        path = reverse("evaluation:entry", args=[experiment.slug])
        url = prolific.study_url(opts["base_url"].rstrip("/") + path)
        prolific.completion_url(code)
        self.stdout.write(f"Study URL:       {url}")
        self.stdout.write(f"Completion code: {code}")
        screened = (experiment.screened_out_code or "").strip()
        if screened:
            prolific.completion_url(screened)
            self.stdout.write(f"Screen-out code: {screened}  (add it in Prolific as a code with the screen-out payment)")
        elif experiment.headphone_check:
            self.stdout.write("Screen-out code: none set; listeners the headphone check screens out are asked to return "
                              "their submission (set one in the admin to pay Prolific's screen-out reward)")
