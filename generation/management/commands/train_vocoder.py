"""`manage.py train_vocoder`: a neural vocoder for our features, trained on the corpus at hand."""
from config.commands import HearsayCommand


class Command(HearsayCommand):
    help = (
        "Train a Vocos-style neural vocoder (ConvNeXt + inverse STFT; multi-period and multi-resolution discriminators) "
        "on the training split of a Speech Commands V2-layout folder; keeps the epoch with the lowest validation MCD and "
        "reports feature L1 and mel-cepstral distortion of re-extracted test clips beside Griffin-Lim's. An interrupted "
        "run resumes from FILE.partial when rerun with the same arguments (--epochs and --max-seconds may grow). Use it "
        "with --vocoder FILE in generate and demo."
    )
    interrupted = "interrupted: rerun the same command to resume from the last finished epoch"

    def add_arguments(self, parser):
        from generation.neural_vocoder import TrainSettings

        d = TrainSettings()
        parser.add_argument("--data", required=True, help="corpus folder in the Speech Commands V2 layout")
        parser.add_argument("--out", required=True, help="checkpoint file to write, e.g. var/models/V.pt")
        parser.add_argument("--epochs", type=int, default=d.epochs)
        parser.add_argument("--max-seconds", type=float, default=d.max_seconds,
                            help="training time budget: stop after the epoch that reaches it and save as usual (default 0: none)")
        parser.add_argument("--adversarial-after", type=int, default=d.adversarial_after,
                            help="epochs of reconstruction losses only before the discriminators join (fast on a CPU)")
        parser.add_argument("--adversarial-ramp", type=int, default=d.adversarial_ramp,
                            help="epochs over which the adversarial and feature-matching terms rise to full weight")
        parser.add_argument("--batch-size", type=int, default=d.batch_size)
        parser.add_argument("--segment-frames", type=int, default=d.segment_frames, help="feature frames per training crop")
        parser.add_argument("--lr", type=float, default=d.lr, help="generator learning rate (cosine decay over the run)")
        parser.add_argument("--lr-d", type=float, default=d.lr_d, help="discriminators' learning rate")
        parser.add_argument("--dim", type=int, default=d.dim, help="generator width")
        parser.add_argument("--hidden", type=int, default=d.hidden, help="ConvNeXt hidden width")
        parser.add_argument("--layers", type=int, default=d.layers, help="ConvNeXt blocks")
        parser.add_argument("--seed", type=int, default=d.seed)
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda")

    def handle(self, *args, **opts):
        from generation.neural_vocoder import TrainSettings, train_vocoder

        settings = TrainSettings(
            epochs=opts["epochs"], max_seconds=opts["max_seconds"], batch_size=opts["batch_size"], segment_frames=opts["segment_frames"],
            lr=opts["lr"], lr_d=opts["lr_d"], adversarial_after=opts["adversarial_after"], adversarial_ramp=opts["adversarial_ramp"],
            seed=opts["seed"], dim=opts["dim"], hidden=opts["hidden"], layers=opts["layers"],
        )
        ckpt = train_vocoder(opts["data"], opts["out"], settings=settings, device=opts["device"], progress=opts["verbosity"] > 0)
        m, c = ckpt.metrics, ckpt.train_config
        self.stdout.write(
            f"{ckpt.path}: on {m['n_test']} held-out clips feature L1 {m['test_feature_l1']:.4f} (Griffin-Lim "
            f"{m['test_griffin_lim_feature_l1']:.4f}), MCD {m['test_mcd_db']:.2f} dB (Griffin-Lim {m['test_griffin_lim_mcd_db']:.2f} dB); "
            f"kept {c['selected']}; {c['epochs_run']} epochs (stopped by {c['stopped_by']}) in {m['train_seconds']:.0f} s "
            f"({m['train_cpu_seconds']:.0f} CPU s) on {c['device']}"
        )
