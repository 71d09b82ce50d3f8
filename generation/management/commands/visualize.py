"""`manage.py visualize`: inputs that maximize chosen units of a layer, beside the corpus clips that excite them most (seed 001)."""
from django.core.management.base import CommandError

from config.commands import HearsayCommand


def _numbers(text, kind, option):
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CommandError(f"{option} must be a comma-separated list of numbers, got {text!r}") from None


class Command(HearsayCommand):
    help = (
        "For each layer (default: every convolution and dense layer, first to logits) and total-variation weight, learn "
        "the input that maximizes the mean activation of the chosen units (neuron objective - λ x TV), vocode it, and "
        "find the corpus clips that activate the same units most. Writes learned.csv, top_examples.csv, wav/, "
        "figures/grid.png|pdf (layers x λ plus top clips) and one GIF per λ of the inputs over the steps."
    )
    interrupted = "interrupted: rerun the same command to resume; finished layers are kept"

    def add_arguments(self, parser):
        parser.add_argument("--classifier", required=True, help="classifier checkpoint (--arch conv or paper)")
        parser.add_argument("--out", required=True, help="output folder (new, empty, or a previous run to resume)")
        parser.add_argument("--layer", action="append", help="layer name (repeat or comma-separate; default: first to logits)")
        parser.add_argument("--units", default="", help="comma-separated unit (channel) indices; default the first three")
        parser.add_argument("--tv", default="0,0.05", help="comma-separated total-variation weights λ")
        parser.add_argument("--steps", type=int, default=256)
        parser.add_argument("--lr", type=float, default=0.02, help="RMS-normalized step size")
        parser.add_argument("--frames", type=int, default=32, help="animation frames")
        parser.add_argument("--corpus", help="Speech Commands V2-layout folder for the dataset search")
        parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
        parser.add_argument("--top", type=int, default=4, help="top activating clips per layer")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda")

    def handle(self, *args, **opts):
        from generation.explain.layers import run_visualize
        from generation.train import resolve_device

        layers = [n.strip() for item in opts["layer"] or [] for n in item.split(",") if n.strip()]
        summary = run_visualize(
            opts["classifier"], opts["out"], layers=layers or None, units=_numbers(opts["units"], int, "--units"),
            tv=_numbers(opts["tv"], float, "--tv"), steps=opts["steps"], lr=opts["lr"], frames=opts["frames"],
            corpus=opts["corpus"], split=opts["split"], top=opts["top"], seed=opts["seed"],
            device=resolve_device(opts["device"]), progress=opts["verbosity"] > 0,
        )
        for row in summary.learned:
            self.stdout.write(f"{row['layer']:>12} λ={row['tv']:<5g} units {row['units']}: activation {row['activation_start']:.4g} -> {row['activation']:.4g}")
        self.stdout.write(f"{summary.out}: {len(summary.learned)} learned inputs, {summary.seconds:.1f} s; grid and GIFs in figures/")
