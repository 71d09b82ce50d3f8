"""`manage.py generate`: the paper's perceptual stimulus set (conditions 1-4 plus originals)."""
from django.core.management.base import CommandError

from config.commands import HearsayCommand
from generation.maximize import PRESETS
from generation.stimuli import DESIGNS
from generation.workers import default_jobs
from hearsay.errors import HearsayError


MAX_SAMPLES = 100_000  # about 3 GB of log-mel features for one word and condition; the paper's design is 3 x 20


class Command(HearsayCommand):
    help = (
        "Maximize, vocode and package the paper's perceptual stimulus set: per word, --per-class samples of "
        "(1) classifier/noise, (2) classifier/test before+after, (3) decoder/noise, (4) decoder/test before "
        "(autoencoder reconstruction) + after + the untouched original. Writes wav/ and features/ under opaque "
        "ids, manifest.csv and run.json. Rerun the same command to resume an interrupted run."
    )
    interrupted = "interrupted: rerun the same command to resume from the last finished word/condition"

    def add_arguments(self, parser):
        parser.add_argument("--classifier", required=True, help="classifier A checkpoint (drives the maximization)")
        parser.add_argument("--evaluator", required=True, help="independent classifier B checkpoint (judges the results)")
        parser.add_argument("--decoder", help="autoencoder checkpoint whose decoder is the prior (paper method)")
        parser.add_argument("--corpus", help="Speech Commands V2-layout folder (test starts come from its test split; paper method)")
        parser.add_argument("--method", default="paper", choices=["paper", "gan", "cgan", "wave-gan"],
                            help="paper: conditions 1-4; gan/cgan/wave-gan: before/after pairs maximized through --gan")
        parser.add_argument("--gan", help="generator checkpoint (manage.py train_gan) for --method gan, cgan or wave-gan")
        parser.add_argument("--design", default="paper", choices=DESIGNS)
        parser.add_argument("--out", required=True, help="output folder (new, empty, or a previous run to resume)")
        parser.add_argument("--per-class", type=int, default=3, help="samples per word and condition")
        parser.add_argument("--max-attempts", type=int, default=20, help="cap on retries until classifier A agrees")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
        parser.add_argument("--words", help="comma-separated subset of the classifier's words (default: all)")
        parser.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="maximization settings")
        parser.add_argument("--jobs", type=int, default=default_jobs(),
                            help="worker processes of one thread each on a CPU, with Griffin-Lim (default: one per core; "
                                 "the stimuli do not depend on it)")
        parser.add_argument("--vocoder", default="griffin-lim", help="griffin-lim, or a neural vocoder checkpoint (manage.py train_vocoder)")

    def handle(self, *args, **opts):
        from generation.neural_vocoder import vocoder_for
        from generation.stimuli import generate_stimuli

        for flag in ("per_class", "max_attempts"):
            if opts[flag] < 1:
                raise CommandError(f"--{flag.replace('_', '-')} must be at least 1, got {opts[flag]}")
        if opts["per_class"] * opts["max_attempts"] > MAX_SAMPLES:
            raise CommandError(f"--per-class x --max-attempts must be at most {MAX_SAMPLES:,} (the samples one word and "
                               f"condition may maximize, all held in memory), got {opts['per_class'] * opts['max_attempts']:,}")
        words = opts["words"].split(",") if opts["words"] is not None else None
        vocoder = vocoder_for(opts["vocoder"], opts["classifier"], opts["device"])
        if opts["method"] != "paper":
            return self.handle_gan(opts, words, vocoder)
        if not (opts["decoder"] and opts["corpus"]):
            raise HearsayError("the paper method needs --decoder and --corpus")
        summary = generate_stimuli(
            opts["classifier"], opts["evaluator"], opts["decoder"], opts["corpus"], opts["out"],
            design=opts["design"], per_class=opts["per_class"], max_attempts=opts["max_attempts"], seed=opts["seed"],
            device=opts["device"], words=words, preset=opts["preset"], vocoder=vocoder, progress=opts["verbosity"] > 0,
            jobs=opts["jobs"],
        )
        resumed = f", {summary.units_resumed} resumed" if summary.units_resumed else ""
        self.stdout.write(
            f"{summary.out / 'manifest.csv'}: {summary.clips} clips ({summary.units_run} units run{resumed}); "
            f"{summary.unconverged} unconverged after the attempt cap, {summary.failed} failed (NaN/inf, not written)"
        )

    def handle_gan(self, opts, words, vocoder):
        from generation.gan_stimuli import generate_gan_stimuli

        if not opts["gan"]:
            raise CommandError(f"--method {opts['method']} needs --gan (a generator checkpoint from manage.py train_gan)")
        self.interrupted = "interrupted: rerun the same command to resume from the last finished word"
        s = generate_gan_stimuli(
            opts["classifier"], opts["evaluator"], opts["gan"], opts["out"], method=opts["method"], per_class=opts["per_class"],
            max_attempts=opts["max_attempts"], seed=opts["seed"], device=opts["device"], words=words, preset=opts["preset"],
            vocoder=vocoder, progress=opts["verbosity"] > 0,
        )
        total = {k: f"{v:.0%}" if isinstance(v, float) else "n/a" for k, v in s.enhancer[-1].items()}
        self.stdout.write(
            f"{s.out / 'manifest.csv'}: {s.clips} clips ({s.words_run} words run, {s.words_resumed} resumed); {s.unconverged} unconverged, "
            f"{s.failed} failed (not written). Recognized as the word before/after: B {total['b_before']}/{total['b_after']}, "
            f"pocketsphinx {total['asr_before']}/{total['asr_after']} (enhancer.csv)"
        )
        if s.asr_skipped:
            self.stdout.write(s.asr_skipped)
