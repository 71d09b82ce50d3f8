"""`manage.py generate`: the paper's perceptual stimulus set (conditions 1-4 plus originals)."""
from django.core.management.base import BaseCommand, CommandError

from hearsay.errors import HearsayError
from generation.maximize import PRESETS
from generation.stimuli import DESIGNS


class Command(BaseCommand):
    help = (
        "Maximize, vocode and package the paper's perceptual stimulus set: per word, --per-class samples of "
        "(1) classifier/noise, (2) classifier/test before+after, (3) decoder/noise, (4) decoder/test before "
        "(autoencoder reconstruction) + after + the untouched original. Writes wav/ and features/ under opaque "
        "ids, manifest.csv and run.json. Rerun the same command to resume an interrupted run."
    )

    def add_arguments(self, parser):
        parser.add_argument("--classifier", required=True, help="classifier A checkpoint (drives the maximization)")
        parser.add_argument("--evaluator", required=True, help="independent classifier B checkpoint (judges the results)")
        parser.add_argument("--decoder", required=True, help="autoencoder checkpoint whose decoder is the prior")
        parser.add_argument("--corpus", required=True, help="Speech Commands V2-layout folder (test starts come from its test split)")
        parser.add_argument("--design", default="paper", choices=DESIGNS)
        parser.add_argument("--out", required=True, help="output folder (new, empty, or a previous run to resume)")
        parser.add_argument("--per-class", type=int, default=3, help="samples per word and condition")
        parser.add_argument("--max-attempts", type=int, default=20, help="cap on retries until classifier A agrees")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
        parser.add_argument("--words", help="comma-separated subset of the classifier's words (default: all)")
        parser.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="maximization settings")

    def handle(self, *args, **opts):
        from generation.stimuli import generate_stimuli

        for flag in ("per_class", "max_attempts"):
            if opts[flag] < 1:
                raise CommandError(f"--{flag.replace('_', '-')} must be at least 1, got {opts[flag]}")
        words = opts["words"].split(",") if opts["words"] is not None else None
        try:
            summary = generate_stimuli(
                opts["classifier"], opts["evaluator"], opts["decoder"], opts["corpus"], opts["out"],
                design=opts["design"], per_class=opts["per_class"], max_attempts=opts["max_attempts"], seed=opts["seed"],
                device=opts["device"], words=words, preset=opts["preset"], progress=opts["verbosity"] > 0,
            )
        except HearsayError as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError("interrupted: rerun the same command to resume from the last finished word/condition") from None
        resumed = f", {summary.units_resumed} resumed" if summary.units_resumed else ""
        self.stdout.write(
            f"{summary.out / 'manifest.csv'}: {summary.clips} clips ({summary.units_run} units run{resumed}); "
            f"{summary.unconverged} unconverged after the attempt cap, {summary.failed} failed (NaN/inf, not written)"
        )
