"""`manage.py objective`: the paper's noise-start experiment, judged by an independent classifier."""
from config.commands import HearsayCommand
from generation.maximize import METHODS, PRECISIONS, PRESETS
from generation.workers import default_jobs


class Command(HearsayCommand):
    help = (
        "For every word and method, maximize N noise starts toward the word for classifier A and record A's and "
        "B's softmax before and after (OUT/<method>/<word>.npz), B's mean-softmax heatmaps (heatmap_<method>.png/.pdf/.csv) "
        "and how often A and B pick the target (summary.csv). Rerunning the same command resumes after an interruption."
    )
    interrupted = "interrupted: rerun the same command to resume; finished words are kept"

    def add_arguments(self, parser):
        parser.add_argument("--classifier", required=True, help="classifier A checkpoint (the one maximized)")
        parser.add_argument("--evaluator", required=True, help="independent classifier B checkpoint")
        parser.add_argument("--decoder", help="autoencoder checkpoint (needed for the decoder method)")
        parser.add_argument("--n", type=int, default=10000, help="noise starts per word and method (paper: 10000)")
        parser.add_argument("--out", required=True, help="output folder")
        parser.add_argument("--words", nargs="+", help="target words (default: all of A's classes)")
        parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: classifier,decoder")
        parser.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="maximization settings (paper: the original hyperparameters)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
        parser.add_argument("--batch-size", type=int, default=None,
                            help="samples per batch (default: 64 on a CPU, up to 4096 on a GPU as memory allows; results agree to float rounding)")
        parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                            help="the networks' arithmetic: fp32 (default), tf32 or bf16 (CUDA; recorded in run.json, "
                                 "so a resumed run never mixes precisions)")
        parser.add_argument("--jobs", type=int, default=default_jobs(),
                            help="worker processes of one thread each on a CPU (default: one per core; the results do not depend on it)")
        parser.add_argument("--gan", help="plain log-mel GAN generator (manage.py train_gan): adds the method 'gan'")
        parser.add_argument("--cgan", help="conditional log-mel GAN generator: adds the method 'cgan'")
        parser.add_argument("--wave-gan", help="waveform GAN generator (--domain wave): adds the method 'wave-gan'")

    def handle(self, *args, **opts):
        from generation.objective import format_summary, run_objective
        from generation.train import resolve_device

        words = [w.strip() for item in opts["words"] or [] for w in item.split(",") if w.strip()]
        run = run_objective(
            opts["classifier"], opts["evaluator"], opts["decoder"], opts["out"], n=opts["n"], words=words or None,
            methods=[m.strip() for m in opts["methods"].split(",") if m.strip()], preset_name=opts["preset"],
            seed=opts["seed"], device=resolve_device(opts["device"]), batch_size=opts["batch_size"],
            precision_mode=opts["precision"], progress=opts["verbosity"] > 0, jobs=opts["jobs"],
            gans={m: opts[k] for m, k in (("gan", "gan"), ("cgan", "cgan"), ("wave-gan", "wave_gan")) if opts[k]},
        )
        self.stdout.write(format_summary(run))
        self.stdout.write(
            f"{run.out}: {run.computed} word(s) computed, {run.resumed} resumed, {run.seconds:.1f} s; "
            f"summary.csv and heatmap_<method>.png/.pdf/.csv written"
        )
