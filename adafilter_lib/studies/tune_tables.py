"""The tables of a selection study (:mod:`adafilter_lib.studies.tune`), written from its run records.

Files under the study's ``out`` folder:

``cells.csv``          every finished or failed run: ``row, method, dataset, cell, seed, chosen, status, failure``
                       and its summary numbers (``val_top1_err`` decided the choice; ``top1_err`` is shown, never
                       used); a failed run (``status`` ``failed``, the reason in ``failure``) has no numbers
``comparison.csv/.md`` one line per (row, dataset) at its chosen cell: test error mean and std over seeds,
                       mean validation error, the difference to the reference row paired by seed with the
                       standard error of the paired differences (``diff_se``) and the seeds it wins, and for
                       gated rows the share of fine-tuned choices and of filters varying across test images;
                       ``comparison.md`` ends with validation's choice over all rows (:func:`validation_choice`)
``<row>/``             the ``table --metric`` files of the chosen runs: ``error_table``, ``val_top1_err_table``
                       and, for AdaFilter rows, ``test_frac_finetuned_table`` and ``test_frac_adaptive_filters_table``
``front.csv/.md/.png`` pruning studies only: each pruning row's test error at its achieved compression, paired by
                       seed with the reference (:mod:`adafilter_lib.analysis.pruning_front`)
``structured.csv``     channel-pruning rows: MACs, parameter and latency ratios (dense ÷ pruned), paired errors
``sparsity_by_stage.csv`` pruning rows: each stage's sparsity in the chosen runs (mean, min and max over seeds)
``stage_choice.csv/.png`` with a ``surgical`` row: the stage validation chose beside each gated row's fine-tuned share
                       per stage (:mod:`adafilter_lib.analysis.stage_choice`)
``README.md``          the command, the recipe, the selection rule and the comparison table
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import pandas as pd

from ..analysis.cells import label_settings
from ..analysis.comparison_render import GATE_METRICS, comparison_markdown, validation_choice
from ..analysis.records import runs_of
from ..analysis.results import error_table, export_table, standard_error, table_stem
from ..core.errors import KitError
from ..core.files import atomic_write_text
from ..core.provenance import one_line
from .recipe import Study


def comparison_table(records: pd.DataFrame, reference: Optional[str]) -> pd.DataFrame:
    """Chosen cells only: one line per (row, dataset), rows in recipe order (see the module docstring)."""
    chosen = records[records["chosen"]]
    if "status" in chosen:  # a chosen cell's seed that failed has no numbers (cells.csv lists it as failed)
        chosen = chosen[chosen["status"] == "finished"]
    lines = []
    for (row, dataset), group in chosen.groupby(["row", "dataset"], sort=False):
        line = {
            "row": row,
            "dataset": dataset,
            "cell": group["cell"].iloc[0],
            "seeds": len(group),
            "top1_err": group["top1_err"].mean(),
            "top1_err_std": group["top1_err"].std(ddof=1),
            "val_top1_err": group["val_top1_err"].mean(),
        }
        if reference is not None and row != reference:
            ref = chosen[(chosen["row"] == reference) & (chosen["dataset"] == dataset)].set_index("seed")["top1_err"]
            diffs = group.set_index("seed")["top1_err"].sub(ref).dropna()  # paired by seed
            line.update(
                {
                    "diff_vs_reference": diffs.mean() if len(diffs) else math.nan,
                    "diff_se": standard_error(diffs),
                    "wins": f"{int((diffs < 0).sum())}/{len(diffs)}",
                }
            )
        for metric in GATE_METRICS:
            if metric in group and group[metric].notna().any():
                line[metric] = group[metric].mean()
        lines.append(line)
    return pd.DataFrame(lines)


def paired_comparison(runs: pd.DataFrame, reference: str) -> pd.DataFrame:
    """:func:`comparison_table` for a plain runs folder: each method one row with one cell, paired by seed
    against the method ``reference`` (``runs``: :func:`~adafilter_lib.analysis.results.load_runs` rows).

    Raises:
        KitError: ``reference`` is not among the runs' methods.
    """
    runs = runs.assign(method=label_settings(runs))  # one cell, one setting, as error_table
    methods = list(dict.fromkeys(runs["method"]))
    if reference not in methods:
        raise KitError(f"reference method '{reference}' has no finished run here; choose one of {', '.join(methods)}")
    ordered = [reference, *[m for m in methods if m != reference]]
    datasets = list(dict.fromkeys(runs["dataset"]))
    records = runs.assign(row=runs["method"], cell="default", chosen=True)
    # as tune's tables: per dataset, the reference first, then the other methods in the order they come
    order = records["dataset"].map(datasets.index) * len(ordered) + records["row"].map(ordered.index)
    return comparison_table(records.iloc[order.argsort(kind="stable")], reference)


def write_paired_comparison(runs: pd.DataFrame, reference: str, out_dir: str | Path) -> str:
    """Write :func:`paired_comparison` as ``comparison.csv`` and ``comparison.md`` in ``out_dir``; returns the Markdown."""
    table = paired_comparison(runs, reference)
    markdown = comparison_markdown(table, reference)
    atomic_write_text(Path(out_dir) / "comparison.csv", table.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(Path(out_dir) / "comparison.md", markdown)
    return markdown


def write_tables(study: Study, records: list[dict], command: str) -> pd.DataFrame:
    """Write every file of the module docstring under ``study.out_dir``; returns the comparison table."""
    out = Path(study.out_dir)
    if not records:
        raise KitError(
            f"no run of this study has finished under '{study.runs_root}'; train some first (the same command "
            f"without --tables-only)"
        )
    frame = pd.DataFrame(records)
    atomic_write_text(out / "cells.csv", frame.drop(columns=["run_dir"]).to_csv(index=False, lineterminator="\n"))
    for row in study.rows:
        chosen_dirs = frame[(frame["row"] == row.name) & frame["chosen"]]["run_dir"].tolist()
        if not chosen_dirs:
            continue
        chosen_runs = runs_of(chosen_dirs, Path(study.runs_root) / row.name)
        for metric in ("top1_err", "val_top1_err", *GATE_METRICS):
            if metric in chosen_runs and chosen_runs[metric].notna().any():
                export_table(error_table(chosen_runs, metric=metric), out / row.name, stem=table_stem(metric))
    table = comparison_table(frame, study.reference)
    atomic_write_text(out / "comparison.csv", table.to_csv(index=False, lineterminator="\n"))
    _write_front(frame, study.reference, out)
    _write_stage_choice(frame, study.select_seeds, out)
    chosen = frame[frame["chosen"] & (frame["status"] == "finished")]
    held_back = chosen[~chosen["seed"].isin(study.select_seeds)].groupby(["row", "dataset"])["val_top1_err"].mean()
    markdown = comparison_markdown(table, study.reference) + validation_choice(table, study.reference, held_back.to_dict())
    atomic_write_text(out / "comparison.md", markdown)
    atomic_write_text(out / "README.md", _readme(study, markdown, command))
    return table


def _write_front(frame: pd.DataFrame, reference: Optional[str], out: Path) -> None:
    """``front.csv``, ``front.md`` and ``front.png`` when the study has unstructured pruning rows, ``structured.csv`` when it has
    ``channel_pruning`` rows (both paired with the reference row by seed)."""
    from ..analysis.pruning_front import front_markdown, front_plot, pruning_tables
    from ..analysis.viz import save_figure

    tables = pruning_tables(frame, reference)
    for name, key in (("sparsity_by_stage.csv", "sparsity"), ("structured.csv", "structured"), ("front.csv", "front")):
        if tables[key] is not None:
            atomic_write_text(out / name, tables[key].to_csv(index=False, lineterminator="\n"))
    if tables["front"] is not None:
        atomic_write_text(out / "front.md", front_markdown(tables["front"]))
        chosen = frame[frame["chosen"] & (frame["row"] == reference)]
        save_figure(front_plot(tables["front"], chosen.groupby("dataset")["top1_err"].mean().to_dict()), out / "front.png")


def _write_stage_choice(frame: pd.DataFrame, selection_seeds: tuple[int, ...], out: Path) -> None:
    """``stage_choice.csv`` and ``.png`` when the study has a ``surgical`` row: its chosen stage beside each gated
    row's fine-tuned share per stage (:mod:`adafilter_lib.analysis.stage_choice`)."""
    from ..analysis.stage_choice import stage_choice, stage_choice_figure
    from ..analysis.viz import save_figure

    table = stage_choice(frame, selection_seeds=selection_seeds)
    if table is not None:
        atomic_write_text(out / "stage_choice.csv", table.to_csv(index=False, lineterminator="\n"))
        save_figure(stage_choice_figure(table), out / "stage_choice.png")


def _readme(study: Study, markdown: str, command: str) -> str:
    rule = (
        "each row's cell is chosen on the validation error of seed "
        f"{study.seeds[0]} alone; the other seeds are trained at that cell only"
        if study.select == "first"
        else "each row's cell is chosen on the mean validation error over all seeds (every cell trained on every seed)"
    )
    cells = "\n".join(
        f"- `{row.name}` (`{row.method}`{', ' + ' '.join(row.settings) if row.settings else ''}): "
        + ", ".join(f"`{c}`" for c in row.cells)
        + (
            f"; with {', '.join(' '.join(t) for t in row.taken.values()) or 'settings'} taken from `{row.take['row']}`'s chosen cell"
            if row.take
            else ""
        )
        for row in study.rows
    )
    about = f"The recipe's header:\n\n```text\n{study.about}\n```\n\n" if study.about else ""
    return f"""# {Path(study.out_dir).as_posix()}

{about}Written by `{command}` from the run records under `{study.runs_root}` (recipe: `{study.recipe}`).
Rerunning the command reuses finished runs, continues unfinished ones and rewrites these files.
{one_line()} (Each run's `summary.json` records the commit, versions and command it was trained with.)

Selection: {rule}. The rule: the lowest validation error; ties go to the lower validation loss of the
best epochs, then to the cell listed first. A cell with a failed run (a loss or weight that is not finite, or a
chosen epoch that is a confident guess; `status` `failed` in `cells.csv`) is never chosen and has no
numbers. The test split is never used to choose. Differences are
test-error points against `{study.reference}`, paired by seed, ± the standard error of the paired
differences; "wins" counts the seeds where the row is better.

{markdown}
Cells tried per row (every run of every cell: `cells.csv`):

{cells}

Per row, the chosen runs' `error_table`, `val_top1_err_table` and (AdaFilter rows) `test_frac_finetuned_table` and
`test_frac_adaptive_filters_table` (`.csv`, `.md`, `.tex`) are in `<row>/`.
"""
