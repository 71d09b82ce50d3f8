"""`manage.py veracity`: LIME under targeted adversarial attack, partial perturbations and drawn "horses" (seed 003)."""
from config.commands import HearsayCommand
from hearsay.errors import HearsayError


class Command(HearsayCommand):
    help = (
        "Attack clips toward a random other word (on the waveform through the feature pipeline, or on the log-mel input; "
        "L-infinity bound, SNR reported), explain each successful adversarial clip with LIME on time segments and on "
        "time x frequency cells, and count how often restoring LIME's top-k segments flips the label back vs the k most "
        "perturbed segments (veracity.csv, figures/veracity); partial perturbations confined to a few cells (does LIME "
        "find them?); drawn patterns that flip the label and whether each attribution method points at them (horses.csv)."
    )
    interrupted = "interrupted: rerun the same command to resume (the attacks are kept)"

    def add_arguments(self, parser):
        parser.add_argument("--classifier", required=True, help="classifier checkpoint (--arch conv or paper)")
        parser.add_argument("--corpus", required=True, help="Speech Commands V2-layout folder")
        parser.add_argument("--out", required=True, help="output folder (new, empty, or a previous run to resume)")
        parser.add_argument("--attack", default="spec", choices=["wave", "spec"])
        parser.add_argument("--n", type=int, default=20, help="clips to attack (words take turns)")
        parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
        parser.add_argument("--epsilon", type=float, default=0.0, help="L-infinity bound (0: 0.1 for spec, 0.005 for wave)")
        parser.add_argument("--steps", type=int, default=200)
        parser.add_argument("--lr", type=float, default=0.0, help="Adam step (0: epsilon / 10)")
        parser.add_argument("--c", type=float, default=10.0, help="weight of the classification loss against ||delta||^2")
        parser.add_argument("--segments-time", type=int, default=10)
        parser.add_argument("--segments-freq", type=int, default=8)
        parser.add_argument("--lime-samples", type=int, default=500)
        parser.add_argument("--k", default="1,3,5", help="comma-separated numbers of top segments to restore")
        parser.add_argument("--partial-segments", type=int, default=3)
        parser.add_argument("--horse-methods", default="saliency,integrated_gradients,occlusion,lime")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
        parser.add_argument("--batch-size", type=int, default=32)

    def handle(self, *args, **opts):
        from generation.explain.attribution import parse_methods
        from generation.explain.veracity import VeracityOptions, run_veracity
        from generation.train import resolve_device

        try:
            ks = tuple(int(k) for k in opts["k"].split(",") if k.strip())
        except ValueError:
            raise HearsayError(f"--k must be comma-separated whole numbers, got {opts['k']!r}") from None
        options = VeracityOptions(
            attack=opts["attack"], n=opts["n"], split=opts["split"], epsilon=opts["epsilon"], steps=opts["steps"], lr=opts["lr"],
            c=opts["c"], segments_time=opts["segments_time"], segments_freq=opts["segments_freq"], lime_samples=opts["lime_samples"],
            ks=ks, partial_segments=opts["partial_segments"], horse_methods=tuple(parse_methods(opts["horse_methods"])),
            seed=opts["seed"], batch_size=opts["batch_size"],
        )
        summary = run_veracity(opts["classifier"], opts["corpus"], opts["out"], options, device=resolve_device(opts["device"]),
                               progress=opts["verbosity"] > 0)
        self.stdout.write(f"attack success: {100 * summary.attack_success:.0f}% of clips")
        for r in summary.table:
            flips = ", ".join(f"top{k[len('lime_top'):]}: LIME {r[k]} vs largest {r['largest_top' + k[len('lime_top'):]]}"
                              for k in r if k.startswith("lime_top"))
            self.stdout.write(f"{r['segmentation']:>15}: labels flipped back ({flips})")
        for h in summary.horses:
            self.stdout.write(f"horses, {h['method']}: pointing game {h['pointing_game']:.2f}, relevance on pattern {h['relevance_share_on_pattern']:.2f}")
        self.stdout.write(f"{summary.out}: {summary.seconds:.1f} s; veracity.csv, attacks.csv, horses.csv, figures/ written")
