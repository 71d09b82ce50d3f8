"""`manage.py mturk ...`: post, watch, pay and close HITs; the batch route's export and import.

Sandbox unless --live. Anything that spends money or rejects work asks first (--yes skips;
without a terminal it refuses). The logic lives in evaluation.mturk; this file parses and prints.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from django.core.management.base import CommandError
from django.utils import timezone

from config.commands import HearsayCommand
from evaluation import mturk
from hearsay import atomic
from hearsay.errors import HearsayError

DEFAULT_TITLES = {
    "identification": "Listen to short recordings and say which word you hear",
    "rating": "Listen to short recordings and rate how clear a word is",
}


def check_output_folder(out: Path) -> None:
    """A folder the batch files can be written into (it may not exist yet); else one line before anything is made."""
    if out.exists() and not out.is_dir():
        raise HearsayError(f"output {out} exists and is not a folder")
    above = atomic.nearest_existing(out)
    if not above.is_dir():
        raise HearsayError(f"cannot create the output folder {out}: {above} is not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise HearsayError(f"cannot create the output folder {out}: {above} is not writable")


class Command(HearsayCommand):
    help = "Mechanical Turk: create-hits, status, sync, approve, reject, bonus, expire, export-batch, import-results."
    interrupted = "interrupted: work done so far is recorded; rerun the same command to resume"

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        def action(name: str, help_text: str, api: bool = True):
            p = sub.add_parser(name, help=help_text, description=help_text)
            p.add_argument("--experiment", required=True, metavar="SLUG")
            if api:
                p.add_argument("--live", action="store_true", help="Use the real marketplace (real money). Default: sandbox.")
            return p

        p = action("create-hits", "Post ExternalQuestion HITs pointing at the survey.")
        p.add_argument("--url", required=True, help="The survey's HTTPS entry URL, https://host/s/SLUG/.")
        p.add_argument("--hits", type=int, required=True)
        p.add_argument("--assignments-per-hit", type=int, required=True)
        p.add_argument("--reward", required=True, help="Dollars per assignment, e.g. 0.50.")
        p.add_argument("--duration-minutes", type=int, default=30)
        p.add_argument("--lifetime-days", type=float, default=7)
        p.add_argument("--auto-approve-days", type=float, default=3)
        p.add_argument("--min-approval", type=int, default=98, help="Minimum approval rate in percent; -1 for none.")
        p.add_argument("--locale", default="US,GB", help="Comma-separated country codes; empty for any.")
        p.add_argument("--title")
        p.add_argument("--description")
        p.add_argument("--keywords", default="audio, listening, speech, words, headphones")
        p.add_argument("--batch", default="main", help="Label of this set of HITs; a new label posts new HITs.")
        p.add_argument("--yes", action="store_true", help="Do not ask before spending.")

        action("status", "HIT counts and the account balance.")
        action("sync", "Pull submitted/approved/rejected assignments and link them to participants.")
        p = action("approve", "Approve submitted assignments of participants judged fit to pay.")
        p = action("reject", "Reject submitted assignments judged unfit to pay, with their reasons.")
        p.add_argument("--yes", action="store_true", help="Do not ask before rejecting.")
        p = action("bonus", "Pay each unpaid bonus_cents once.")
        p.add_argument("--reason", default="Thank you for your careful listening.", help="Shown to the worker.")
        p.add_argument("--yes", action="store_true", help="Do not ask before spending.")
        action("expire", "Stop all recorded HITs from taking new workers.")

        p = action("export-batch", "Write batch.csv, layout.html, batch_key.csv and batch.json for the requester website.", api=False)
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--base-url", required=True, help="This site's public HTTPS origin, e.g. https://host; it serves the clips.")
        p.add_argument("--batch", default="main", help="Label of the batch; the same label keeps the same audio names.")
        p.add_argument("--anchors", default="", help="Rating only: five HTTPS clip URLs, Excellent first, Bad last.")
        p.add_argument("--seed", type=int, default=0, help="Seed of the row order.")

        p = action("import-results", "Read the requester website's results CSV into responses.", api=False)
        p.add_argument("results", type=Path, metavar="Batch_RESULTS.csv")
        p.add_argument("--strict", action="store_true", help="Refuse the whole file if any row is invalid.")

    def handle(self, *args, **opts):
        from botocore.exceptions import BotoCoreError

        try:
            experiment = mturk.get_experiment(opts["experiment"])
            getattr(self, "do_" + opts["action"].replace("-", "_"))(experiment, opts)
        except BotoCoreError as exc:  # no credentials, no network: work done so far is recorded, a rerun resumes
            raise CommandError(f"MTurk call failed: {exc}") from exc

    # ------------------------------------------------------------------ helpers

    def _announce(self, live: bool) -> None:
        style = self.style.ERROR if live else self.style.WARNING
        self.stdout.write(style(mturk.environment(live)))

    def _confirm(self, question: str, yes: bool) -> None:
        if yes:
            return
        if sys.stdin is None or not sys.stdin.isatty():
            raise CommandError(f"{question} -- no terminal to ask; rerun with --yes to go ahead")
        self.stdout.write(f"{question} [y/N] ", ending="")
        self.stdout.flush()
        if sys.stdin.readline().strip().lower() not in {"y", "yes"}:
            raise CommandError("cancelled; nothing was done")

    def _report(self, verb: str, report: mturk.PayReport, opts) -> None:
        """The summary line; a failure or an early stop is one error line saying what was done and what remains."""
        self.stdout.write(f"{verb}: {len(report.done)}; already {verb.lower()} on MTurk: {len(report.skipped)}")
        problems = []
        if report.failed:
            shown = "; ".join(report.failed[:5]) + (f"; and {len(report.failed) - 5} more" if len(report.failed) > 5 else "")
            problems.append(f"{len(report.failed)} could not be {verb.lower()}: {shown}")
        if report.stopped:
            problems.append(
                f"stopped at {report.stopped}; {len(report.remaining)} remain: rerun "
                f"`manage.py mturk {opts['action']} --experiment {opts['experiment']}{' --live' if opts['live'] else ''}` to finish"
            )
        if report.unsure:
            problems.append(report.unsure)
        if problems:
            where = mturk.marketplace(opts["live"])
            raise CommandError(f"{verb} {len(report.done)} of {report.due} in the {where} "
                               f"({len(report.skipped)} already done on MTurk); " + "; ".join(problems))

    def _check_marketplace(self, experiment, live: bool) -> None:
        """Nothing recorded in the marketplace asked for but something in the other: the --live flag is wrong."""
        here, there = mturk.recorded(experiment, live), mturk.recorded(experiment, not live)
        if not any(here) and any(there):
            raise CommandError(
                f"experiment {experiment.slug!r} has no HITs or assignments in the {mturk.marketplace(live)}, but "
                f"{there[0]} HITs and {there[1]} assignments in the {mturk.marketplace(not live)}: "
                f"{'drop --live' if live else 'add --live'} to act on those (HIT and assignment IDs of one marketplace do not exist in the other)"
            )

    # ------------------------------------------------------------------ actions

    def do_create_hits(self, experiment, opts):
        live = opts["live"]
        spec = mturk.HitSpec(
            url=opts["url"],
            hits=opts["hits"],
            assignments_per_hit=opts["assignments_per_hit"],
            reward=mturk.parse_reward(opts["reward"]),
            title=opts["title"] or DEFAULT_TITLES.get(experiment.task, "Listen to short recordings"),
            description=opts["description"]
            or f"Listen to {experiment.trials_per_listener} short recordings with headphones and answer one question about each.",
            keywords=opts["keywords"],
            duration_minutes=opts["duration_minutes"],
            lifetime_days=opts["lifetime_days"],
            auto_approve_days=opts["auto_approve_days"],
            min_approval=None if opts["min_approval"] < 0 else opts["min_approval"],
            locales=mturk.parse_locales(opts["locale"]),
            batch=opts["batch"],
        )
        spec.validate(experiment.slug)
        mturk.require_live(experiment)
        self._announce(live)
        todo = mturk.pending_indices(experiment, spec, live)
        if not todo:
            self.stdout.write(f"All {spec.hits} HITs of batch {spec.batch!r} already exist; nothing to create.")
            return
        cost = mturk.hit_cost(spec.reward, spec.assignments_per_hit, len(todo))
        self.stdout.write(f"Experiment {experiment.slug}: {len(todo)} of {spec.hits} HITs of batch {spec.batch!r} to create.")
        self.stdout.write(f"Cost: {cost.describe()}")
        needed = mturk.listeners_needed(experiment)
        self.stdout.write(f"Listeners needed for {experiment.ratings_per_stimulus} answers per clip: {needed}; assignments posted: {cost.assignments}")
        self._confirm(f"Create {len(todo)} HITs for ${cost.total}{' of REAL money' if live else ' (sandbox)'}?", opts["yes"])
        made = mturk.create_hits(mturk.make_client(live), experiment, spec, live, progress=opts["verbosity"] > 0)
        for hit in made:
            self.stdout.write(f"HIT {hit.hit_id} (batch {hit.batch} #{hit.index})")
        if made:
            self.stdout.write(self.style.SUCCESS(f"Created {len(made)} HITs. Workers see them at {mturk.preview_url(made[0])}"))

    def do_status(self, experiment, opts):
        live = opts["live"]
        self._announce(live)
        self._check_marketplace(experiment, live)
        report = mturk.hit_status(mturk.make_client(live), experiment, live)
        for hit in report.hits:
            expires = ""
            if hit.status == mturk.GONE:
                expires = "  no longer on MTurk"
            elif hit.expires_at:
                past = hit.expires_at <= timezone.now()
                expires = f"  {'expired' if past else 'expires'} {hit.expires_at:%Y-%m-%d %H:%M}"
            self.stdout.write(
                f"{hit.hit_id}  {hit.status or '?':<12} available {hit.available:>4}  pending {hit.pending:>4}  "
                f"completed {hit.completed:>4}{expires}"
            )
        self.stdout.write(
            f"{len(report.hits)} HITs: available {report.available}, pending {report.pending}, completed {report.completed}"
        )
        if report.participants:
            self.stdout.write("Participants: " + ", ".join(f"{k} {v}" for k, v in sorted(report.participants.items())))
        self.stdout.write(f"Balance: ${report.balance} available, ${report.on_hold} on hold")

    def do_sync(self, experiment, opts):
        live = opts["live"]
        self._announce(live)
        self._check_marketplace(experiment, live)
        report = mturk.sync(mturk.make_client(live), experiment, live, progress=opts["verbosity"] > 0)
        states = ", ".join(f"{k} {v}" for k, v in sorted(report.statuses.items())) or "none"
        self.stdout.write(f"Assignments: {report.assignments} ({states}); new {report.new}; linked to participants {report.linked}")
        if report.unmatched:
            self.stdout.write(self.style.WARNING(
                f"{len(report.unmatched)} submitted on MTurk with no survey record (worker/assignment): " + ", ".join(report.unmatched)
            ))
        if report.gone:
            self.stdout.write(self.style.WARNING(
                f"{len(report.gone)} HITs no longer on MTurk (their assignments stay as last synced): " + ", ".join(report.gone)
            ))

    def do_approve(self, experiment, opts):
        live = opts["live"]
        self._announce(live)
        self._check_marketplace(experiment, live)
        self._report("Approved", mturk.approve(mturk.make_client(live), experiment, live, progress=opts["verbosity"] > 0), opts)

    def do_reject(self, experiment, opts):
        live = opts["live"]
        self._announce(live)
        self._check_marketplace(experiment, live)
        due = mturk.rejections_due(experiment, live)
        if not due:
            self.stdout.write("Nothing to reject.")
            return
        self._confirm(f"Reject {len(due)} assignments (this lowers the workers' approval rates)?", opts["yes"])
        self._report("Rejected", mturk.reject(mturk.make_client(live), experiment, live, progress=opts["verbosity"] > 0), opts)

    def do_bonus(self, experiment, opts):
        live = opts["live"]
        self._announce(live)
        self._check_marketplace(experiment, live)
        reason = mturk.check_bonus_reason(opts["reason"])
        due = mturk.bonuses_due(experiment, live)
        if not due:
            self.stdout.write("No unpaid bonuses on approved assignments.")
            return
        amount, fees = mturk.bonus_cost(p.bonus_cents for p, _ in due)
        self.stdout.write(f"{len(due)} bonuses: ${amount} + MTurk fee ${fees} = ${amount + fees}")
        self._confirm(f"Pay ${amount + fees}{' of REAL money' if live else ' (sandbox)'}?", opts["yes"])
        report = mturk.bonus(mturk.make_client(live), experiment, live, reason, progress=opts["verbosity"] > 0)
        self._report("Paid", report, opts)

    def do_expire(self, experiment, opts):
        live = opts["live"]
        self._announce(live)
        self._check_marketplace(experiment, live)
        report = mturk.expire(mturk.make_client(live), experiment, live)
        line = (f"Expired {len(report.expired)} HITs; already expired or disposed {len(report.already)}; "
                f"no longer on MTurk {len(report.gone)}")
        if report.failed:
            raise CommandError(f"{line}; {len(report.failed)} could not be expired and may still take workers: "
                               + "; ".join(report.failed))
        self.stdout.write(f"{line}. Workers already on them may still submit.")

    def do_export_batch(self, experiment, opts):
        check_output_folder(opts["out"])
        anchors = [a.strip() for a in opts["anchors"].split(",") if a.strip()]
        files = mturk.export_batch(experiment, opts["out"], opts["base_url"], anchors, seed=opts["seed"], label=opts["batch"])
        self.stdout.write(f"Wrote {files.rows} rows to {files.csv}, the layout to {files.layout}, provenance to {files.record}")
        self.stdout.write(f"Keep {files.key} to yourself: it maps each audio name to its stimulus (analyze --batch-key).")
        if experiment.task == "rating" and not anchors:
            self.stdout.write(self.style.WARNING("No anchor clips (--anchors); the paper played one example per option."))
        self.stdout.write(
            f"Answers come back as Answer.{mturk.answer_field(experiment)}.label; this site must be reachable at "
            f"{opts['base_url'].rstrip('/')} while the batch runs (it serves the clips)."
        )

    def do_import_results(self, experiment, opts):
        report = mturk.import_results(experiment, opts["results"], strict=opts["strict"])
        self.stdout.write(
            f"{report.rows} rows: {report.imported} new responses ({report.rejected} from rejected assignments, "
            f"stored but never analysed), {report.already} already imported, {report.participants_created} new participants"
        )
        for line in report.duplicates:
            self.stdout.write(self.style.WARNING(f"not stored: {line}"))
        if report.invalid:
            self.stdout.write(self.style.WARNING(
                f"{len(report.invalid)} invalid row(s) recorded as invalid, no answer stored (--strict refuses the file):"
            ))
            for line in report.invalid:
                self.stdout.write(self.style.WARNING(f"  {line}"))
