"""manage.py listen: a machine listener answers an experiment like a person would."""
from django.core.management.base import CommandError, CommandParser

from config.commands import HearsayCommand
from evaluation.machine import asr_judge, evaluator_judge, listen
from evaluation.models import Experiment


class Command(HearsayCommand):
    help = (
        "Let a machine answer every test and gold clip of an experiment through the survey's own answer path: "
        "--machine evaluator (a classifier checkpoint, e.g. the independent B) or --machine asr (pocketsphinx)."
    )
    interrupted = "interrupted: answers given so far are kept; rerun the same command to go on"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--experiment", required=True, help="experiment slug")
        parser.add_argument("--machine", required=True, choices=["evaluator", "asr"])
        parser.add_argument("--checkpoint", help="classifier checkpoint for --machine evaluator")
        parser.add_argument("--device", default="cpu", help="cpu or cuda")
        parser.add_argument("--seed", type=int, default=0, help="seed of the recognizer's dither")

    def handle(self, *args, **opts) -> None:
        experiment = Experiment.objects.by_slug(opts["experiment"])
        if opts["machine"] == "evaluator":
            if not opts["checkpoint"]:
                raise CommandError("--machine evaluator needs --checkpoint FILE")
            from generation.train import resolve_device

            name, judge = evaluator_judge(opts["checkpoint"], experiment, device=str(resolve_device(opts["device"])))
        else:
            name, judge = asr_judge(experiment, seed=opts["seed"])
        report = listen(experiment, name, judge, progress=opts["verbosity"] > 0)
        self.stdout.write(report.summary())
