"""`manage.py train_autoencoder`: the paper's autoencoder, whose decoder is the prior for maximization."""
from config.commands import HearsayCommand


class Command(HearsayCommand):
    help = (
        "Train the paper's autoencoder (conv encoder, linear latent, sigmoid decoder, BCE) on a Speech Commands "
        "V2-layout folder; keeps the epoch with the lowest validation BCE and reports test BCE and MSE. "
        "An interrupted run resumes from FILE.partial when rerun with the same arguments."
    )
    interrupted = "interrupted: rerun the same command to resume from the last finished epoch"

    def add_arguments(self, parser):
        parser.add_argument("--data", required=True, help="corpus folder in the Speech Commands V2 layout")
        parser.add_argument("--out", required=True, help="checkpoint file to write, e.g. var/models/AE.pt")
        parser.add_argument("--epochs", type=int, default=8)
        parser.add_argument("--latent", type=int, default=256, help="size of the linear bottleneck")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--batch-size", type=int, default=32)
        parser.add_argument("--lr", type=float, default=1e-3)
        parser.add_argument("--init-from", help="start from this autoencoder checkpoint (same classes and features)")
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda")

    def handle(self, *args, **opts):
        from generation.corpus import read_corpus
        from generation.train import summary, train_autoencoder

        ckpt = train_autoencoder(
            opts["data"], opts["out"], epochs=opts["epochs"], seed=opts["seed"], latent=opts["latent"],
            batch_size=opts["batch_size"], lr=opts["lr"], device=opts["device"], init_from=opts["init_from"],
            progress=opts["verbosity"] > 0,
        )
        self.stdout.write(summary(ckpt))
        warning = read_corpus(opts["data"]).shared_speakers_warning()
        if warning:
            self.stderr.write(warning)
