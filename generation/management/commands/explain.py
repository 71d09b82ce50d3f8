"""`manage.py explain`: attribution maps turned into audio regions, with their faithfulness (seed 002)."""
from django.core.management.base import CommandError

from config.commands import HearsayCommand
from generation.explain.attribution import DEFAULT_METHODS, METHODS
from hearsay.errors import HearsayError


MAX_IG_STEPS = 10_000  # captum's default is 50; the path's points are made in memory
MAX_LIME_SAMPLES = 100_000  # each perturbation is one forward pass of one clip


def number_list(text: str, kind, option: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CommandError(f"{option} must be a comma-separated list of numbers, got {text!r}") from None
    if not values:
        raise CommandError(f"{option} is empty")
    return values


class Command(HearsayCommand):
    help = (
        "Explain clips of a Speech Commands-layout corpus with captum attribution methods, cut each relevance map into "
        "rectangular time-frequency regions (percentile threshold + HDBSCAN, settings searched on validation clips), "
        "write audio of the regions and of equal-area random controls (identification: vocoded region bins; "
        "reconstruction: the clip's own STFT bins), the drop in the target's probability when the regions are removed "
        "vs random regions (faithfulness.csv), figures, manifest.csv for load_stimuli, and run.json. "
        f"Methods: {', '.join(METHODS)}. Rerun the same command to resume."
    )
    interrupted = "interrupted: rerun the same command to resume; finished methods are kept"

    def add_arguments(self, parser):
        parser.add_argument("--classifier", required=True, help="classifier checkpoint (--arch conv or paper)")
        parser.add_argument("--corpus", required=True, help="Speech Commands V2-layout folder")
        parser.add_argument("--out", required=True, help="output folder (new, empty, or a previous run to resume)")
        parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated attribution methods (lrp: paper architecture only)")
        parser.add_argument("--n", type=int, default=50, help="clips to explain (words take turns)")
        parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
        parser.add_argument("--tune-n", type=int, default=20, help="validation clips for the region search (0: no search, first value of each list)")
        parser.add_argument("--target", default="predicted", choices=["predicted", "true"], help="class to explain")
        parser.add_argument("--audio", default="identification,reconstruction", help="audio strategies")
        parser.add_argument("--percentiles", default="98,95,90,80,70")
        parser.add_argument("--min-cluster-sizes", default="15,20,30,40,50,60,70")
        parser.add_argument("--min-samples", default="5,10,15,20,25,30")
        parser.add_argument("--random-runs", type=int, default=5, help="random selections of equal area per clip")
        parser.add_argument("--ig-steps", type=int, default=32)
        parser.add_argument("--lime-samples", type=int, default=300)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
        parser.add_argument("--batch-size", type=int, default=32)

    def handle(self, *args, **opts):
        from generation.explain.attribution import AttributionSettings, parse_methods
        from generation.explain.pipeline import ExplainOptions, run_explain
        from generation.train import resolve_device

        if not (1 <= opts["ig_steps"] <= MAX_IG_STEPS and 2 <= opts["lime_samples"] <= MAX_LIME_SAMPLES):
            raise HearsayError(f"--ig-steps must be between 1 and {MAX_IG_STEPS:,} and --lime-samples between 2 and {MAX_LIME_SAMPLES:,}")
        options = ExplainOptions(
            methods=parse_methods(opts["methods"]), n=opts["n"], split=opts["split"], tune_n=opts["tune_n"],
            target=opts["target"], strategies=[s.strip() for s in opts["audio"].split(",") if s.strip()],
            percentiles=number_list(opts["percentiles"], float, "--percentiles"),
            min_cluster_sizes=number_list(opts["min_cluster_sizes"], int, "--min-cluster-sizes"),
            min_samples=number_list(opts["min_samples"], int, "--min-samples"), runs=opts["random_runs"],
            attribution=AttributionSettings(ig_steps=opts["ig_steps"], lime_samples=opts["lime_samples"], seed=opts["seed"]),
            seed=opts["seed"], batch_size=opts["batch_size"],
        )
        summary = run_explain(opts["classifier"], opts["corpus"], opts["out"], options,
                              device=resolve_device(opts["device"]), progress=opts["verbosity"] > 0)
        for row in summary.table:
            self.stdout.write(
                f"{row['method']:>22}: regions drop {row['mean_drop_regions']:+.3f}, random {row['mean_drop_random']:+.3f}, "
                f"area {100 * row['mean_area_share']:.1f}%, regions beat random in {100 * row['share_regions_beat_random']:.0f}% of clips"
            )
        for method, why in summary.skipped.items():
            self.stdout.write(f"{method}: skipped ({why})")
        resumed = f", {len(summary.resumed)} resumed" if summary.resumed else ""
        self.stdout.write(f"{summary.out}: {summary.clips} clips, {len(summary.computed)} method(s) computed{resumed}, "
                          f"{summary.seconds:.1f} s; faithfulness.csv, manifest.csv, figures/ written")
