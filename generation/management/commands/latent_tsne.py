"""`manage.py latent_tsne`: the paper's figure of how maximization moves real utterances in latent space."""
from django.core.management.base import CommandError

from config.commands import HearsayCommand


class Command(HearsayCommand):
    help = (
        "Encode a split's utterances with the autoencoder, maximize each toward its own word through the decoder "
        "(paper preset), and plot a t-SNE of original and maximized latents coloured by word and by speaker, with "
        "arrows and utterances misclassified by A marked. Writes OUT/tsne.png, tsne.pdf, tsne.csv and tsne.json."
    )
    interrupted = "interrupted: nothing was written; rerun the command"

    def add_arguments(self, parser):
        parser.add_argument("--encoder", help="autoencoder checkpoint")
        parser.add_argument("--classifier", required=True, help="classifier A checkpoint")
        parser.add_argument("--corpus", help="Speech Commands V2-layout folder")
        parser.add_argument("--gan", help="instead of the autoencoder: a GAN generator (manage.py train_gan); its samples are maximized")
        parser.add_argument("--per-word", type=int, default=20, help="GAN samples per target word (with --gan)")
        parser.add_argument("--out", required=True, help="output folder")
        parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
        parser.add_argument("--max-utterances", type=int, help="random subset of this size (t-SNE gets slow beyond a few thousand)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda")

    def handle(self, *args, **opts):
        from generation.train import resolve_device
        from generation.tsne import run_latent_tsne

        if opts["gan"]:
            return self.handle_gan(opts)
        if not (opts["encoder"] and opts["corpus"]):
            raise CommandError("--encoder and --corpus are needed (or --gan for a GAN's latents)")
        record = run_latent_tsne(
            opts["encoder"], opts["classifier"], opts["corpus"], opts["out"], split=opts["split"],
            max_utterances=opts["max_utterances"], seed=opts["seed"], device=resolve_device(opts["device"]),
            progress=opts["verbosity"] > 0,
        )
        self.stdout.write(
            f"{opts['out']}: t-SNE of {record['utterances']} {record['split']} utterances "
            f"({record['misclassified']} misclassified by A, {record['failed']} failed) -> tsne.png, tsne.pdf, tsne.csv"
        )

    def handle_gan(self, opts):
        from generation.gan import run_gan_tsne
        from generation.train import resolve_device

        record = run_gan_tsne(opts["gan"], opts["classifier"], opts["out"], per_word=opts["per_word"], seed=opts["seed"],
                              device=resolve_device(opts["device"]))
        self.stdout.write(
            f"{opts['out']}: t-SNE of {record['samples']} {record['method']} latents ({record['maximized_target']} reach their word for A, "
            f"{record['failed']} failed) -> tsne.png, tsne.pdf, tsne.csv"
        )
