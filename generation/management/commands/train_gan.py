"""`manage.py train_gan`: a GAN prior (log-mel or raw-waveform generator, plain or conditional on the word)."""
from config.commands import HearsayCommand


class Command(HearsayCommand):
    help = (
        "Train a GAN whose generator serves as a prior for maximization (seed 004): --domain mel generates log-mel "
        "features, --domain wave raw audio judged through a differentiable copy of the feature pipeline; --conditional "
        "makes the word an input. Hinge loss, spectral-norm critic. With --evaluator B.pt it reports B's accuracy on "
        "conditional samples per word and the Fréchet distance in B's penultimate layer, and writes FILE.samples.png. "
        "An interrupted run resumes from FILE.partial when rerun with the same arguments (--epochs and --max-seconds may grow)."
    )
    interrupted = "interrupted: rerun the same command to resume from the last finished epoch"

    def add_arguments(self, parser):
        from generation.gan import DOMAINS, GanSettings

        d = GanSettings()
        parser.add_argument("--data", required=True, help="corpus folder in the Speech Commands V2 layout")
        parser.add_argument("--out", required=True, help="checkpoint file to write, e.g. var/models/G.pt")
        parser.add_argument("--domain", default=d.domain, choices=DOMAINS)
        parser.add_argument("--conditional", action="store_true", help="the generator (and critic) take the word")
        parser.add_argument("--evaluator", help="independent classifier B checkpoint for the quality figures")
        parser.add_argument("--epochs", type=int, default=d.epochs)
        parser.add_argument("--max-seconds", type=float, default=d.max_seconds,
                            help="training time budget: stop after the epoch that reaches it and save as usual (default 0: none)")
        parser.add_argument("--batch-size", type=int, default=d.batch_size)
        parser.add_argument("--latent", type=int, default=d.latent)
        parser.add_argument("--width", type=int, default=d.width, help="base channel count")
        parser.add_argument("--lr-g", type=float, default=d.lr_g)
        parser.add_argument("--lr-d", type=float, default=d.lr_d)
        parser.add_argument("--seed", type=int, default=d.seed)
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda")

    def handle(self, *args, **opts):
        from generation.gan import GanSettings, train_gan

        settings = GanSettings(
            domain=opts["domain"], conditional=opts["conditional"], epochs=opts["epochs"], max_seconds=opts["max_seconds"], batch_size=opts["batch_size"],
            latent=opts["latent"], width=opts["width"], lr_g=opts["lr_g"], lr_d=opts["lr_d"], seed=opts["seed"],
        )
        ckpt = train_gan(opts["data"], opts["out"], settings=settings, evaluator=opts["evaluator"], device=opts["device"],
                         progress=opts["verbosity"] > 0)
        m = ckpt.metrics
        parts = [f"{ckpt.train_config['epochs_run']} epochs (stopped by {ckpt.train_config['stopped_by']}) in {m['train_seconds']:.0f} s ({m['train_cpu_seconds']:.0f} CPU s)"]
        if "b_accuracy" in m:
            parts.append(f"B recognizes {m['b_accuracy']:.1%} of conditional samples as their word")
        if "fid_b" in m:
            parts.append(f"FID(B) {m['fid_b']:.2f} (real vs real {m.get('fid_b_real_vs_real', float('nan')):.2f})")
        if "b_predicted_words" in m:
            parts.append(f"B's predictions cover {m['b_predicted_words']}/{len(ckpt.classes)} words")
        self.stdout.write(f"{ckpt.path}: " + "; ".join(parts))
