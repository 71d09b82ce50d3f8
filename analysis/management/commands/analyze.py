"""manage.py analyze: the listening-test report from the database, an MTurk batch CSV or a saved answer table."""
from __future__ import annotations

from pathlib import Path

from analysis.report import ReportOptions, build_report, check_output, sha256_file, table_sha256
from analysis.table import EXCLUDE_RULES, Exclusion, read_answers, read_mturk
from config.commands import HearsayCommand
from hearsay.errors import HearsayError


class Command(HearsayCommand):
    help = "Accuracy, confusions, ratings and statistical comparisons of a listening test in one report folder."
    interrupted = "interrupted: the previous report, if any, is unchanged; rerun the command"

    def add_arguments(self, parser):
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--experiment", help="slug of an experiment in the database")
        source.add_argument("--mturk-csv", type=Path, nargs="+", action="extend",
                            help="MTurk batch results CSV(s) of one study, read as one (needs --manifest)")
        source.add_argument("--answers", type=Path,
                            help="the long answer table as CSV (the admin's responses download), read away from the database")
        parser.add_argument("--manifest", type=Path,
                            help="stimulus manifest.csv the batch was made from (with --answers: the answer options)")
        parser.add_argument("--batch-key", type=Path,
                            help="batch_key.csv written by mturk export-batch (audio name -> stimulus)")
        parser.add_argument("--strict", action="store_true", help="refuse an MTurk CSV with any invalid row")
        parser.add_argument("--out", type=Path, required=True, help="report folder (replaced when complete)")
        parser.add_argument("--exclude", choices=EXCLUDE_RULES, default="gold", help="listener exclusion rule")
        parser.add_argument("--min-gold-accuracy", type=float, default=0.5)
        parser.add_argument("--include-machines", action="store_true", help="report machine listeners too")
        parser.add_argument("--objective", type=Path, help="output folder of manage.py objective")
        parser.add_argument("--tsne", type=Path, help="folder with t-SNE PNG/CSV files")
        parser.add_argument("--seed", type=int, default=0, help="seed for bootstrap and subsampling")
        parser.add_argument("--mixed-max-answers", type=int, default=None,
                            help="subsample answers above this count for the mixed model (default: fit on all)")
        parser.add_argument("--pdf", action="store_true",
                            help="also write every figure as a PDF for print (the report embeds PNGs)")

    def handle(self, *args, **opts):
        out = run(experiment=opts.get("experiment"), mturk_csv=opts.get("mturk_csv"), answers=opts.get("answers"),
                  manifest=opts.get("manifest"), batch_key=opts.get("batch_key"), strict=opts["strict"],
                  out=opts["out"], exclude=opts["exclude"],
                  min_gold_accuracy=opts["min_gold_accuracy"], include_machines=opts["include_machines"],
                  objective=opts.get("objective"), tsne=opts.get("tsne"), seed=opts["seed"],
                  mixed_max_answers=opts["mixed_max_answers"], pdf=opts["pdf"], progress=opts.get("verbosity", 1) > 0,
                  note=lambda line: self.stdout.write(self.style.WARNING(line)))
        self.stdout.write(f"report written to {out / 'report.html'}")


def run(*, experiment: str | None, mturk_csv: Path | list[Path] | None, manifest: Path | None, out: Path,
        answers: Path | None = None, batch_key: Path | None = None, strict: bool = False, exclude: str = "gold",
        min_gold_accuracy: float = 0.5, include_machines: bool = False, objective: Path | None = None,
        tsne: Path | None = None, seed: int = 0, mixed_max_answers: int | None = None, pdf: bool = False,
        progress: bool = True, note=None) -> Path:
    """Load the answers from either route, then build the report; HearsayError on bad input.

    `note` receives one line per answer left out (rejected assignments, invalid rows), if given.
    """
    if not 0.0 <= min_gold_accuracy <= 1.0:
        raise HearsayError("--min-gold-accuracy must lie between 0 and 1")
    if mixed_max_answers is not None and mixed_max_answers < 100:
        raise HearsayError("--mixed-max-answers must be at least 100")
    if seed < 0:
        raise HearsayError(f"--seed must be a non-negative integer, got {seed}")
    if isinstance(mturk_csv, (str, Path)):  # one file (call_command and callers pass one as it is)
        mturk_csv = [mturk_csv]
    mturk_csv = [Path(p) for p in mturk_csv] if mturk_csv else None
    check_output(out)  # before the analysis: a folder it must not replace is refused at once
    if experiment:
        if mturk_csv or manifest or batch_key or answers:
            raise HearsayError("give either --experiment, --mturk-csv with --manifest, or --answers, not several")
        from evaluation.export import experiment_info, long_table

        table = long_table(experiment)
        info = experiment_info(experiment)
        inputs = {f"database:{experiment}:long_table": table_sha256(table)}
    elif answers is not None:
        if mturk_csv or batch_key or strict:
            raise HearsayError("--answers takes no --mturk-csv, --batch-key or --strict")
        table, info = read_answers(answers, manifest)
        inputs = {str(p): sha256_file(p) for p in (answers, manifest) if p}
    else:
        if manifest is None:
            raise HearsayError("--mturk-csv needs --manifest")
        from evaluation.mturk.batch import batch_key_from_database

        table, info = read_mturk(mturk_csv, manifest, batch_key, strict=strict, key_provider=batch_key_from_database)
        inputs = {str(p): sha256_file(p) for p in (*mturk_csv, manifest, batch_key) if p}
    if note is not None:
        if info.get("rejected_answers"):
            note(f"{info['rejected_answers']} answer(s) of rejected assignments left out (stored, never analysed)")
        for line in info.get("invalid_rows", []):
            note(f"invalid row left out: {line}")
    options = ReportOptions(exclusion=Exclusion(exclude, min_gold_accuracy, include_machines), seed=seed,
                            bayes_max_answers=mixed_max_answers, objective_dir=objective, tsne_dir=tsne)
    return build_report(table, info, out, options, inputs, progress=progress, pdf=pdf)
