"""AdaFilter study kit: train, compare and tabulate transfer-learning methods (also installed as ``adafilter``).

Every user-caused problem ends as one line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional

from .. import __version__
from ..core.errors import KitError
from . import analysis as cli_analysis
from . import paper as cli_paper
from . import pruning as cli_pruning
from . import step_time as cli_step_time
from . import tune as cli_tune
from .args import add_run_options, add_set_option, config_from_args

EXAMPLES = """examples:
  python -m adafilter_lib train --dataset digits --method finetune --set data.n_per_class=20 optim.epochs=5
  python -m adafilter_lib train --config adafilter_lib/configs/demo.yaml --method l2sp --seed 1
  python -m adafilter_lib train --config adafilter_lib/configs/demo.yaml --resume      # continue a killed run
  torchrun --nproc_per_node=2 -m adafilter_lib train --dataset mnist5k    # data-parallel (DDP)
  python -m adafilter_lib table --runs runs --out results/my_study
  python -m adafilter_lib table --runs runs --out results/my_study --metric test_frac_finetuned
  python -m adafilter_lib demo
  python -m adafilter_lib tune studies/uc_merced_few   # lr chosen on validation per method, then 3 seeds
  python -m adafilter_lib bench --backbone resnet18 --res 64 --batch 32 --also adafilter_all_finetuned
  python -m adafilter_lib bench-table                 # every record in results/bench as a markdown table
  python -m adafilter_lib drift --runs runs/demo --out results/drift.csv
  python -m adafilter_lib counterfactual --runs runs/demo   # AdaFilter runs with every gate 1 / 0 instead
  python -m adafilter_lib usage --runs runs/demo        # AdaFilter runs: per-layer share of fine-tuned choices
"""


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train one run (a method on a dataset with a backbone)",
        description="Train one run. Settings come from defaults, then --config, then the "
        "shortcut flags, then --set overrides (dotted keys, e.g. optim.lr=0.01).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    add_run_options(p)


def _cmd_train(args) -> int:
    from ..training.trainer import fit

    cfg = config_from_args(args)
    summary = fit(cfg, resume=args.resume, force=args.force, progress=not args.no_progress)
    from ..core import distributed

    if distributed.is_main():
        print(
            f"{cfg.run_dir()}: top1_err {summary['top1_err']:.2f}% (test, best epoch {summary['best_epoch']} "
            f"by val err {summary['val_top1_err']:.2f}%)"
        )
    distributed.shutdown()
    return 0


def _add_table(sub) -> None:
    p = sub.add_parser("table", help="build the error table (CSV, Markdown, LaTeX) from finished runs")
    p.add_argument("--runs", dest="runs_root", default="runs", help="folder searched for finished runs (default: runs)")
    p.add_argument("--out", default="results/tables", help="folder the tables are written to (default: results/tables)")
    p.add_argument(
        "--metric", default="top1_err", help="summary.json column to tabulate, e.g. test_frac_finetuned (default: top1_err)"
    )
    p.add_argument(
        "--reference",
        metavar="METHOD",
        help="also write comparison.csv/.md: every method's test error paired by seed against METHOD, ± SE",
    )


def _cmd_table(args) -> int:
    from ..analysis.results import build_tables, load_runs, markdown_table, table_stem, unfinished_runs
    from ..studies.tune_tables import paired_comparison, write_paired_comparison

    if args.reference:  # checked before anything is written
        paired_comparison(load_runs(args.runs_root), args.reference)
    table = build_tables(args.runs_root, args.out, metric=args.metric)
    print(markdown_table(table))
    left_out = unfinished_runs(args.runs_root)
    if left_out:
        shown = ", ".join(p.name for p in left_out[:3]) + (" ..." if len(left_out) > 3 else "")
        print(
            f"note: {len(left_out)} unfinished run(s) left out of the table ({shown}); finish them with --resume", file=sys.stderr
        )
    print(f"written: {args.out}/{table_stem(args.metric)}.csv, .md, .tex")
    if args.reference:
        print(write_paired_comparison(load_runs(args.runs_root), args.reference, args.out))
        print(f"written: {args.out}/comparison.csv, .md")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: offline comparison on a near (UC Merced) and two far (digit) tasks, as a table",
        description="Train the demo grid (adafilter_lib/configs/demo_study.yaml): every method once per seed on "
        "uc_merced, mnist5k and digits; AdaFilter once per recipe, its row showing per task the "
        "recipe with the lowest validation error. Finished runs are reused.",
    )
    p.add_argument("--runs", dest="runs_root", help="run directories (default: runs/demo)")
    p.add_argument("--out", help="table folder (default: results/demo)")
    p.add_argument("--seeds", type=int, nargs="+", help="run seeds (default: 0)")
    p.add_argument("--datasets", nargs="+", help="only these demo tasks, e.g. mnist5k digits (default: all three)")
    p.add_argument("--methods", nargs="+", help="only these methods (default: all demo methods)")
    p.add_argument(
        "--adafilter-recipes",
        nargs="+",
        metavar="RECIPE",
        help="only these AdaFilter recipes: gates_adamw, defaults (default: both, chosen per task on validation)",
    )
    p.add_argument("--library-defaults", action="store_true", help="the same as --adafilter-recipes defaults")
    p.add_argument("--force", action="store_true", help="retrain runs that already finished")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars and per-epoch lines")
    add_set_option(p, "config overrides for every run, e.g. method.adafilter.gate_bias_init=0.5 (use a separate --runs folder)")


def _cmd_demo(args) -> int:
    from ..studies.demo import demo_study, run_demo

    recipes = ["defaults"] if args.library_defaults else args.adafilter_recipes
    study = demo_study(args.runs_root, args.out, args.seeds, args.datasets, args.methods, args.set, recipes)
    run_demo(study, force=args.force, progress=not args.no_progress, command=args.command_line)
    return 0


def _cmd_list(args) -> int:
    from ..core.model import backbone_names
    from ..data import dataset_names
    from ..methods import method_names

    print("datasets: " + ", ".join(dataset_names()) + ", folder:PATH")
    print("methods:  " + ", ".join(method_names()))
    print("backbones: " + ", ".join(backbone_names()))
    return 0


def _prog() -> str:
    """How the user called the kit: ``adafilter`` (the console script) or ``python -m adafilter_lib``."""
    return "adafilter" if Path(sys.argv[0]).name == "adafilter" else "python -m adafilter_lib"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_prog(), description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_table(sub)
    _add_demo(sub)
    cli_step_time.add_parsers(sub)
    cli_analysis.add_parsers(sub)
    cli_paper.add_parsers(sub)
    cli_pruning.add_parsers(sub)
    cli_tune.add_parsers(sub)
    sub.add_parser("list", help="list the dataset, method and backbone names")
    return parser


COMMANDS = {
    "train": _cmd_train,
    "table": _cmd_table,
    "demo": _cmd_demo,
    "list": _cmd_list,
    **cli_step_time.COMMANDS,
    **cli_analysis.COMMANDS,
    **cli_paper.COMMANDS,
    **cli_pruning.COMMANDS,
    **cli_tune.COMMANDS,
}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # the command as typed, for the READMEs that studies write beside their tables
    args.command_line = " ".join(["python -m adafilter_lib", *(shlex.quote(a) for a in argv if a != "--no-progress")])
    try:
        return COMMANDS[args.command](args)
    except KitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
        # an output path under a file, onto a folder, or not writable: a user's path, not a bug of the kit
        where = err.filename if err.filename is not None else "an output path"
        print(f"error: cannot write '{where}' ({err.strerror}); choose another --out / --runs path", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # A killed run keeps <run>.partial/ with its last epoch's checkpoint (studies resume run by run).
        print(
            "interrupted; an unfinished run keeps its last checkpoint: run the same command again with --resume "
            "(train, prune) or as it was (demo, tune, sweep) to continue",
            file=sys.stderr,
        )
        return 130
