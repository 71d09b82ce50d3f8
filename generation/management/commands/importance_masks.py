"""`manage.py importance_masks`: the sparsest binary mask that keeps each clip's decision, as figures and audio (seed 001)."""
from config.commands import HearsayCommand


class Command(HearsayCommand):
    help = (
        "For each clip, optimize the sparsest binary mask M with the same top class on M x X as on X (a sigmoid "
        "relaxation with a sparsity penalty, binarized and verified); write the kept share (masks.csv), a GIF of the "
        "mask over the steps, audio of the masked clip and of the clip with time windows muted where the mask mean is "
        "below 0.1/0.2/0.3 (plus equal-size random controls), the muting figure, manifest.csv and run.json. "
        "Rerun the same command to resume."
    )
    interrupted = "interrupted: rerun the same command to resume; finished batches are kept"

    def add_arguments(self, parser):
        parser.add_argument("--classifier", required=True, help="classifier checkpoint (--arch conv or paper)")
        parser.add_argument("--corpus", required=True, help="Speech Commands V2-layout folder")
        parser.add_argument("--out", required=True, help="output folder (new, empty, or a previous run to resume)")
        parser.add_argument("--n", type=int, default=50, help="clips (words take turns)")
        parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
        parser.add_argument("--steps", type=int, default=300)
        parser.add_argument("--lr", type=float, default=0.1)
        parser.add_argument("--sparsity", type=float, default=2.0, help="weight of the mean mask value in the loss")
        parser.add_argument("--animations", type=int, default=3, help="GIFs for the first N clips")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
        parser.add_argument("--batch-size", type=int, default=32)

    def handle(self, *args, **opts):
        from generation.explain.masks import MaskSettings, run_importance_masks
        from generation.train import resolve_device

        summary = run_importance_masks(
            opts["classifier"], opts["corpus"], opts["out"], n=opts["n"], split=opts["split"],
            settings=MaskSettings(steps=opts["steps"], lr=opts["lr"], sparsity=opts["sparsity"]), seed=opts["seed"],
            batch_size=opts["batch_size"], device=resolve_device(opts["device"]), animations=opts["animations"],
            progress=opts["verbosity"] > 0,
        )
        self.stdout.write(
            f"{summary.out}: {summary.clips} clips, masks keep {100 * summary.mean_kept_share:.1f}% of the input on average, "
            f"{summary.verified} verified after binarization, {summary.seconds:.1f} s; masks.csv, manifest.csv, figures/ written"
        )
