"""The ``tune`` command: a selection study from a recipe file (see :mod:`adafilter_lib.studies.tune`).

Hooked into :mod:`adafilter_lib.cli.app` by :func:`add_parsers` and ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import dataclasses


def _add_tune(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="a selection study: each method over its lr grid, cell chosen on validation, then all seeds",
        description="Train every row of a study recipe over its cells (learning-rate grid x variants), keep "
        "per row and dataset the cell with the lowest validation error, train the remaining "
        "seeds there, and write cells.csv, comparison.{csv,md}, per-row tables and a README. "
        "Resumable: run the same command again after an interruption.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m adafilter_lib tune studies/uc_merced_few --dry-run\n"
        "  python -m adafilter_lib tune studies/uc_merced_few --rows finetune adafilter\n"
        "  python -m adafilter_lib tune studies/uc_merced_few --tables-only       # rebuild the tables from the committed records\n"
        "  python -m adafilter_lib tune studies/uc_merced_few --runs runs/few --out results/my_few   # retrain it all",
    )
    p.add_argument(
        "recipe", help="study recipe: a YAML file, or one shipped with the kit (studies/uc_merced_few, studies/uc_merced_full)"
    )
    p.add_argument("--rows", nargs="+", help="train only these rows (and the reference row); the tables cover every row")
    p.add_argument(
        "--runs",
        dest="runs_root",
        help="train into this runs folder instead of the recipe's `runs` (where a shipped study's committed records "
        "are: finished runs there are reused, so the shipped tables rebuild without training)",
    )
    p.add_argument("--out", help="write the tables here instead of the recipe's `out`")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the state of every selection run, train nothing")
    p.add_argument(
        "--tables-only",
        action="store_true",
        help="write the tables from the runs that finished so far (a study stopped half-way), train nothing",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars and per-epoch lines")


def _cmd_tune(args) -> int:
    from ..studies.recipe import load_study, rows_named
    from ..studies.tune import chosen_so_far, run_study, selection_runs
    from ..studies.tune_tables import write_tables

    full = load_study(args.recipe)
    full = dataclasses.replace(full, runs_root=args.runs_root or full.runs_root, out_dir=args.out or full.out_dir)
    study = rows_named(full, args.rows)  # --rows trains those rows; the tables still cover every row
    if args.dry_run:
        run_study(study, dry_run=True)
        return 0
    if not args.tables_only:
        run_study(study, progress=not args.no_progress)
    chosen = chosen_so_far(full)  # rows whose selection is unfinished are left out of comparison.md
    # --tables-only rewrites tables; the README names the command that trains them (the whole recipe)
    command = args.command_line.replace(" --tables-only", "")
    if args.rows:  # the tables are the whole recipe's: name the command without the row filter
        words, kept, skipping = command.split(" "), [], False
        for word in words:
            skipping = word == "--rows" or (skipping and not word.startswith("--"))
            kept += [] if skipping else [word]
        command = " ".join(kept)
    table = write_tables(full, selection_runs(full, chosen), command)
    print(table.to_markdown(index=False, floatfmt=".2f"))
    print(f"written: {study.out_dir}/comparison.md, comparison.csv, cells.csv, README.md and one folder per row")
    return 0


def add_parsers(sub) -> None:
    """Add ``tune`` to the CLI's subparsers."""
    _add_tune(sub)


COMMANDS = {"tune": _cmd_tune}
