"""The analysis commands of the CLI: ``drift``, ``counterfactual`` and ``usage`` over finished AdaFilter runs.

Hooked into :mod:`adafilter_lib.cli.app` by :func:`add_parsers` and ``COMMANDS``; imports of torch-heavy modules
stay inside the command functions so that ``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

RUNS_HELP = "folder searched for finished runs (default: runs)"


def _report(header: str, summary, table, out, floatfmt: str) -> int:
    """Print ``header`` and the ``summary`` frame as Markdown; write the per-run ``table`` to ``out`` (CSV) if given."""
    from ..core.files import atomic_write_text

    print(header + "\n")
    print(summary.reset_index().to_markdown(index=False, floatfmt=floatfmt))
    if out:
        atomic_write_text(Path(out), table.to_csv(index=False))
        print(f"written: {out}")
    return 0


def _add_drift(sub) -> None:
    p = sub.add_parser("drift", help="AdaFilter runs: how far fine-tuned filters moved, by how often their gate chose them")
    p.add_argument("--runs", dest="runs_root", default="runs", help=RUNS_HELP)
    p.add_argument("--out", help="CSV file for the per-run table (default: print the summary only)")


def _cmd_drift(args) -> int:
    from ..analysis.drift import drift_by_selection

    table = drift_by_selection(args.runs_root)
    summary = table.groupby(["method", "dataset", "band"], sort=False)[["share", "median_drift"]].mean()
    header = "Share of gated filters per test selection band and their median relative drift ||W_ft - W_pre|| / ||W_pre|| (mean over runs):"
    return _report(header, summary, table, args.out, ".3f")


def _add_counterfactual(sub) -> None:
    p = sub.add_parser(
        "counterfactual", help="AdaFilter runs re-evaluated with every gate 1 / every gate 0: does the selection help?"
    )
    p.add_argument("--runs", dest="runs_root", default="runs", help=RUNS_HELP)
    overrides = ("learned", "ones", "zeros")  # counterfactual.GATE_OVERRIDES (not imported: --help stays torch-free)
    p.add_argument(
        "--gates",
        nargs="+",
        default=list(overrides),
        choices=overrides,
        help="the gate settings to evaluate (default: all three)",
    )
    p.add_argument(
        "--recalibrate",
        action="store_true",
        help="re-estimate BN statistics on the training split under each override (default: keep the run's)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--out", help="CSV file for the per-run table (default: print the summary only)")


def _cmd_counterfactual(args) -> int:
    from ..analysis.counterfactual import counterfactual_table

    table = counterfactual_table(args.runs_root, args.gates, args.recalibrate, progress=not args.no_progress)
    summary = table.groupby(["method", "dataset", "gates"], sort=False)[["val_top1_err", "top1_err", "val_frac_finetuned"]].mean()
    header = (
        f"Error (%) of each AdaFilter run's weights under its learned gates and with every gate forced "
        f"(mean over {table['run_dir'].nunique()} runs; choose by val_top1_err only):"
    )
    return _report(header, summary, table, args.out, ".2f")


def _add_usage(sub) -> None:
    p = sub.add_parser(
        "usage", help="AdaFilter runs: per-layer share of fine-tuned choices on the test split and its spread over images"
    )
    p.add_argument("--runs", dest="runs_root", default="runs", help=RUNS_HELP)
    p.add_argument("--out", help="CSV file for the per-run, per-layer table (default: print the summary only)")


def _cmd_usage(args) -> int:
    from ..analysis.records import load_gate_usage

    table = load_gate_usage(args.runs_root)
    table = table[table["group"] == "all"].drop(columns=["group"])
    summary = table.groupby(["method", "dataset", "layer_index", "layer"], sort=False)[["frac_finetuned", "frac_std"]].mean()
    header = (
        "Per layer, the share of gates choosing the fine-tuned filter on the test split and its standard deviation "
        f"over images (mean over {table['run_dir'].nunique()} runs):"
    )
    return _report(header, summary, table, args.out, ".3f")


def add_parsers(sub) -> None:
    """Add ``drift``, ``counterfactual`` and ``usage`` to the CLI's subparsers."""
    _add_drift(sub)
    _add_counterfactual(sub)
    _add_usage(sub)


COMMANDS = {"drift": _cmd_drift, "counterfactual": _cmd_counterfactual, "usage": _cmd_usage}
