"""`manage.py train_classifier`: one speech-command classifier per run (A, or B with another seed)."""
from config.commands import HearsayCommand
from generation.nets import CLASSIFIERS


class Command(HearsayCommand):
    help = (
        "Train a speech-command classifier on a Speech Commands V2-layout folder, choose the epoch on the "
        "validation split and report accuracy on the test split (speakers unseen in training). "
        "Writes FILE plus <stem>.metrics.json, <stem>.confusion.csv and <stem>.confusion.png. "
        "The independent evaluator B is the same command with another --seed (e.g. A: --seed 1, B: --seed 2). "
        "An interrupted run resumes from FILE.partial when rerun with the same arguments."
    )
    interrupted = "interrupted: rerun the same command to resume from the last finished epoch"

    def add_arguments(self, parser):
        parser.add_argument("--data", required=True, help="corpus folder in the Speech Commands V2 layout")
        parser.add_argument("--out", required=True, help="checkpoint file to write, e.g. var/models/A.pt")
        parser.add_argument("--epochs", type=int, default=15)
        parser.add_argument("--seed", type=int, default=1, help="use another seed for the independent evaluator B")
        parser.add_argument("--arch", choices=sorted(CLASSIFIERS), default="conv", help="conv (default, better on held-out speakers) or paper (Soomro et al.)")
        parser.add_argument("--batch-size", type=int, default=32)
        parser.add_argument("--lr", type=float, default=1e-3)
        parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine", help="learning rate: cosine decay to 0 (default) or constant (the paper's)")
        parser.add_argument("--no-augment", action="store_true", help="train without time-shift and masking augmentation")
        parser.add_argument("--init-from", help="start from this classifier checkpoint (same classes and features)")
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda")

    def handle(self, *args, **opts):
        from generation.corpus import read_corpus
        from generation.train import summary, train_classifier

        ckpt = train_classifier(
            opts["data"], opts["out"], epochs=opts["epochs"], seed=opts["seed"], arch=opts["arch"],
            batch_size=opts["batch_size"], lr=opts["lr"], schedule=opts["schedule"], augmentation=not opts["no_augment"],
            device=opts["device"], init_from=opts["init_from"], progress=opts["verbosity"] > 0,
        )
        self.stdout.write(summary(ckpt))
        warning = read_corpus(opts["data"]).shared_speakers_warning()
        if warning:
            self.stderr.write(warning)
