"""The whole study in one command, on the built-in corpus.

corpus -> classifiers A and B and the autoencoder -> the paper's stimulus set ->
an identification experiment -> the objective experiment -> machine listeners ->
the analysis report -> the survey served locally. Every step resumes or is skipped
when its output is complete, so rerunning after an interruption loses nothing.

The heavy steps run in worker processes of one thread each (`--jobs`, one per core;
`generation.workers`): the three models train side by side, the stimulus set and the
objective experiment split by unit, and pocketsphinx hears the clips while the
objective experiment runs. This process keeps one thread too, so that its own small
steps never compete with them.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import torch
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError, CommandParser

from config.commands import HearsayCommand
from evaluation.models import Experiment
from evaluation.machine import recognize_ahead
from generation import workers

EXPERIMENT = "demo"


class Command(HearsayCommand):
    help = "Run the whole Hearsay study on the built-in corpus and serve the survey at http://127.0.0.1:8000."
    interrupted = "interrupted: rerun the same command to resume; finished steps are skipped"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", default=str(settings.DATA_DIR / "demo"), help="working folder (default var/demo)")
        parser.add_argument("--words", default="", help="comma-separated subset of words (default: all 35)")
        parser.add_argument("--speakers", type=int, default=60, help="synthetic speakers in the corpus")
        parser.add_argument("--epochs", type=int, default=0, help="classifier epochs (default: the command's own)")
        parser.add_argument("--ae-epochs", type=int, default=0, help="autoencoder epochs (default: the command's own)")
        parser.add_argument("--per-class", type=int, default=3, help="stimuli per class and condition")
        parser.add_argument("--objective-n", type=int, default=50, help="noise starts per class in the objective experiment")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--neural-vocoder-epochs", type=int, default=0,
                            help="train a neural vocoder for this many epochs and voice the stimuli with it (default 0: Griffin-Lim)")
        parser.add_argument("--device", default="auto")
        parser.add_argument("--jobs", type=int, default=workers.default_jobs(),
                            help="processes of one thread each for the steps that split (default: one per core; the results do not depend on it)")
        parser.add_argument("--no-serve", action="store_true", help="stop after the report instead of serving the survey")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args, **opts) -> None:
        started = time.monotonic()
        out = Path(opts["out"]).resolve()
        out.mkdir(parents=True, exist_ok=True)
        corpus, models, stimuli = out / "corpus", out / "models", out / "stimuli"
        objective, report = out / "objective", out / "report"
        a, b, ae = models / "A.pt", models / "B.pt", models / "AE.pt"
        words = {"words": opts["words"]} if opts["words"] else {}
        device = opts["device"]
        epochs = {"epochs": opts["epochs"]} if opts["epochs"] else {}
        ae_epochs = {"epochs": opts["ae_epochs"]} if opts["ae_epochs"] else {}
        jobs = opts["jobs"]
        if jobs < 1:
            raise CommandError(f"--jobs must be at least 1, got {jobs}")
        torch.set_num_threads(1)

        self.step("migrate the database", lambda: call_command("migrate", verbosity=0))
        self.step(
            "build the built-in corpus",
            lambda: call_command("make_corpus", out=str(corpus), speakers=opts["speakers"], seed=opts["seed"], jobs=jobs, **words),
            done=(corpus / "testing_list.txt").exists(),
        )
        self.train_models([  # longest first: with two workers the autoencoder trains beside A, then B
            ("the autoencoder (the decoder prior)", "autoencoder", {"out": str(ae), "seed": 1, **ae_epochs}),
            ("classifier A", "classifier", {"out": str(a), "seed": 1, **epochs}),
            ("the independent classifier B", "classifier", {"out": str(b), "seed": 2, **epochs}),
        ], corpus, device, jobs)
        vocoder = {}
        if opts["neural_vocoder_epochs"] > 0:
            voc = models / "V.pt"
            self.step(
                "train the neural vocoder",
                lambda: call_command("train_vocoder", data=str(corpus), out=str(voc), epochs=opts["neural_vocoder_epochs"], device=device),
                done=voc.exists(),
            )
            vocoder = {"vocoder": str(voc)}
        self.step(
            "generate the paper's stimulus set",
            lambda: call_command(
                "generate", classifier=str(a), evaluator=str(b), decoder=str(ae), corpus=str(corpus),
                design="paper", out=str(stimuli), per_class=opts["per_class"], seed=opts["seed"], device=device, jobs=jobs, **vocoder,
            ),
            done=(stimuli / "manifest.csv").exists(),
        )
        self.step(
            "load the identification experiment",
            lambda: call_command(
                "load_stimuli", str(stimuli / "manifest.csv"), experiment=EXPERIMENT, create=True, task="identification",
                gold_from_corpus=str(corpus), title="Short spoken words",
            ),
            done=Experiment.objects.filter(slug=EXPERIMENT).exists(),
        )
        experiment = Experiment.objects.get(slug=EXPERIMENT)
        Experiment.objects.filter(pk=experiment.pk).update(status=Experiment.Status.LIVE)
        with workers.pool(1) as recognizer:  # pocketsphinx hears the clips meanwhile, on one core (it cannot split)
            self.stdout.write("== machine listener pocketsphinx: recognizing the clips in the background")
            asr_answers = recognize_ahead(experiment, recognizer)
            self.step(
                "run the objective experiment",
                lambda: call_command(
                    "objective", classifier=str(a), evaluator=str(b), decoder=str(ae), n=opts["objective_n"],
                    out=str(objective), seed=opts["seed"], device=device, jobs=jobs,
                ),
                done=(objective / "summary.csv").exists(),
            )
            self.step(
                "machine listener: classifier B",
                lambda: call_command("listen", experiment=EXPERIMENT, machine="evaluator", checkpoint=str(b)),
            )
            self.step("machine listener: pocketsphinx", lambda: self.stdout.write(asr_answers().summary()))
        self.step(
            "write the analysis report",
            lambda: call_command(
                "analyze", experiment=EXPERIMENT, out=str(report), include_machines=True, objective=str(objective),
            ),
        )
        user, password = self.researcher(out)
        minutes = (time.monotonic() - started) / 60
        self.stdout.write(self.style.SUCCESS(f"Study finished in {minutes:.1f} min. Report: {report / 'report.html'}"))
        self.stdout.write(f"Survey: http://127.0.0.1:{opts['port']}/s/{EXPERIMENT}/   Researchers: http://127.0.0.1:{opts['port']}/admin/")
        self.stdout.write(f"Researcher login: {user} / {password}")
        if not opts["no_serve"]:
            self.serve(opts["port"])

    def step(self, title: str, action, done: bool = False) -> None:
        if done:
            self.stdout.write(f"== {title}: already done, skipped")
            return
        self.stdout.write(self.style.MIGRATE_HEADING(f"== {title}"))
        began = time.monotonic()
        action()
        self.stdout.write(f"   ({time.monotonic() - began:.0f} s)")

    def train_models(self, trainings: list[tuple[str, str, dict]], corpus: Path, device: str, jobs: int) -> None:
        """Train the models not yet trained side by side, one thread each (`generation.workers`), one line per epoch."""
        from generation.train import prepare_features, train_and_summarize

        todo = []
        for title, kind, options in trainings:
            if Path(options["out"]).exists():
                self.stdout.write(f"== train {title}: already done, skipped")
            else:
                todo.append((title, kind, options))
        if not todo:
            return
        titles = ", ".join(title for title, _, _ in todo)
        self.stdout.write(self.style.MIGRATE_HEADING(f"== train {titles} ({min(jobs, len(todo))} at a time)"))
        self.stdout.flush()  # before the workers' own lines
        began = time.monotonic()
        prepare_features(corpus)
        with workers.pool(min(jobs, len(todo))) as pool:
            calls = [(kind, {"corpus_root": str(corpus), "device": device, **options}) for _, kind, options in todo]
            for _, (summary, seconds) in workers.run(pool, train_and_summarize, calls):
                self.stdout.write(f"{summary} ({seconds:.0f} s)")
        self.stdout.write(f"   ({time.monotonic() - began:.0f} s)")

    def researcher(self, out: Path) -> tuple[str, str]:
        """A staff login for the admin, created once; its password is kept beside the demo's data."""
        secret = out / "researcher.txt"
        name = "researcher"
        password = secret.read_text().strip() if secret.exists() else secrets.token_urlsafe(12)
        users = get_user_model()
        user = users.objects.filter(username=name).first() or users(username=name)
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        secret.write_text(password + "\n")
        secret.chmod(0o600)
        return name, password

    def serve(self, port: int) -> None:
        call_command("collectstatic", interactive=False, verbosity=0)
        env = dict(os.environ, SECURE_COOKIES="0")
        gunicorn = Path(sys.executable).with_name("gunicorn")
        cmd = [str(gunicorn), "config.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--access-logfile", "-"]
        self.stdout.write("Serving; press Ctrl-C to stop.")
        try:
            subprocess.run(cmd, env=env, cwd=settings.BASE_DIR, check=False)
        except KeyboardInterrupt:
            pass
        except FileNotFoundError:
            raise CommandError(f"gunicorn not found beside {sys.executable}; run ./hearsay.sh setup") from None
