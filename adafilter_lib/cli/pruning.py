"""CLI subcommands for pruning and compaction: ``prune``, ``compact`` and ``prune-bench``.

Hooked into :mod:`adafilter_lib.cli.app` by :func:`add_parsers` and ``COMMANDS``; imports stay inside
the handlers so that ``--help`` does not load torch.
"""

from __future__ import annotations

import argparse

from .args import add_run_options, add_set_option, config_from_args

EXAMPLES = """examples:
  python -m adafilter_lib prune --config adafilter_lib/configs/demo.yaml --dataset digits --method fine_pruning
  python -m adafilter_lib prune --config adafilter_lib/configs/demo.yaml --dataset digits --method prune_after_finetune
  python -m adafilter_lib prune ... --method gradual_magnitude --set method.fine_pruning.target_compression=4
  python -m adafilter_lib prune ... --set method.fine_pruning.target_compression=4   # Fine-Pruning at a fixed budget
  python -m adafilter_lib prune ... --method channel_pruning --set method.fine_pruning.target_macs_ratio=2
  python -m adafilter_lib prune ... --set method.fine_pruning.sampler=tpe method.fine_pruning.splice=true
  python -m adafilter_lib prune ... --resume           # continue a killed study (finished trials are kept)
  python -m adafilter_lib compact --run runs/digits__adafilter__efficientnet_lite0__s0 --out results/compaction.csv
  python -m adafilter_lib compact --runs results/uc_merced/full/runs --out results/uc_merced/full/compaction/compaction.csv
  python -m adafilter_lib prune-bench                  # the benchmark, seeds 0-2: results/pruning/summary.csv, ...
"""


def _add_prune(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="Fine-Pruning (Bayesian-optimized pruning rounds) or a pruning baseline (prune after fine-tuning, gradual magnitude)",
        description="Run method fine_pruning, prune_after_finetune, gradual_magnitude or channel_pruning to a run directory. Settings as for "
        "`train` (defaults, --config, shortcut flags, --set); options under method.fine_pruning.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    add_run_options(
        p,
        methods=["fine_pruning", "prune_after_finetune", "gradual_magnitude", "channel_pruning"],
        method_default="fine_pruning",
        epochs=False,
    )


def _cmd_prune(args) -> int:
    from ..pruning.runner import run_pruning

    cfg = config_from_args(args)
    summary = run_pruning(cfg, resume=args.resume, force=args.force, progress=not args.no_progress)
    print(
        f"{cfg.run_dir()}: top1_err {summary['top1_err']:.2f}% (test), compression {summary['compression']:.1f}x "
        f"(sparsity {100 * summary['sparsity']:.1f}%), {summary['nonzero_params']:,} nonzero parameters"
    )
    return 0


def _add_compact(sub) -> None:
    p = sub.add_parser(
        "compact",
        help="AdaFilter compaction sweep: extra parameters per task vs error, over thresholds",
        description="Sweep selection-frequency thresholds of finished AdaFilter runs. Each run's sweep is recorded in "
        "its folder (compaction.csv) and read back when the same thresholds are asked for again, so a committed "
        "study's table rebuilds without its weights.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a finished adafilter run directory")
    which.add_argument("--runs", dest="runs_root", help="every finished learned-gate adafilter run under this folder")
    p.add_argument("--thresholds", type=float, nargs="+", help="selection-frequency thresholds (default: 0 0.01 ... 1.01)")
    p.add_argument(
        "--out", help="write the table as CSV here (with --runs: one row per run and threshold, and <out>_summary.csv)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide per-threshold lines")


def _cmd_compact(args) -> int:
    from pathlib import Path

    from ..core.files import atomic_write_text
    from ..pruning.compaction import DEFAULT_THRESHOLDS
    from ..pruning.compaction_records import compaction_over_runs, compaction_summary, recorded_compaction_sweep

    thresholds, progress = args.thresholds or DEFAULT_THRESHOLDS, not args.no_progress
    if args.run:
        table = recorded_compaction_sweep(args.run, thresholds, progress=progress)
        shown = table[["threshold", "extra_params_frac", "top1_err", "val_top1_err", "top1_err_change"]]
    else:
        table = compaction_over_runs(args.runs_root, thresholds, progress=progress)
        shown = compaction_summary(table)
    print(shown.to_markdown(index=False, floatfmt=".4g"))
    if args.out:
        atomic_write_text(Path(args.out), table.to_csv(index=False, lineterminator="\n"))
        print(f"written: {args.out}")
        if args.runs_root:
            summary_path = Path(args.out).with_name(Path(args.out).stem + "_summary.csv")
            atomic_write_text(summary_path, shown.to_csv(index=False, lineterminator="\n"))
            print(f"written: {summary_path}")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "prune-bench", help="the pruning benchmark on offline data (Fine-Pruning, baselines, AdaFilter compaction)"
    )
    p.add_argument("--dataset", default="mnist5k", help="offline dataset (default: mnist5k)")
    p.add_argument("--n-per-class", type=int, default=20, help="labelled images per class (default: 20)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds, paired in the comparison (default: 0 1 2)")
    p.add_argument("--runs", dest="runs_root", default="runs/pruning", help="run directories (default: runs/pruning)")
    p.add_argument("--out", default="results/pruning", help="result folder (default: results/pruning)")
    add_set_option(p, "config overrides for every run")
    p.add_argument("--no-progress", action="store_true", help="hide per-epoch lines")


def _cmd_bench(args) -> int:
    from ..studies.pruning_bench import run_pruning_bench

    summary, _ = run_pruning_bench(
        args.runs_root,
        args.out,
        args.dataset,
        args.n_per_class,
        overrides=args.set,
        progress=not args.no_progress,
        seeds=args.seeds,
    )
    print(summary.to_markdown(index=False, floatfmt=".4g"))
    print(f"written: {args.out}/summary.csv, compaction.csv, error_table.*, comparison.*, front_seed*.png, README.md")
    return 0


def add_parsers(sub) -> None:
    """Add ``prune``, ``compact`` and ``prune-bench`` to the CLI's subparsers."""
    _add_prune(sub)
    _add_compact(sub)
    _add_bench(sub)


COMMANDS = {"prune": _cmd_prune, "compact": _cmd_compact, "prune-bench": _cmd_bench}
