"""Rendering of an :func:`adafilter_lib.analysis.results.error_table`: the wide methods x datasets table as
strings, GitHub Markdown (for READMEs) and a booktabs LaTeX ``tabular`` (for papers).

Only formatting lives here: which runs are averaged, and how, is decided in :mod:`adafilter_lib.analysis.results`.
"""

from __future__ import annotations

import math

import pandas as pd

MISSING = "–"  # en dash: a method that has no run on a dataset
_METRIC_NAMES = {
    "top1_err": "Top-1 test error (%)",
    "val_top1_err": "Top-1 validation error (%)",
    "test_frac_finetuned": "Fraction of gate choices that picked the fine-tuned filter (test)",
    "test_frac_adaptive_filters": "Fraction of gated filters whose choice varies across test images",
}
# Names in LaTeX: method/dataset names such as "cub_200" would otherwise break compilation.
_LATEX_ESCAPES = str.maketrans(
    {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
)


def _metric_of(table: pd.DataFrame) -> str:
    """The metric an :func:`error_table` summarises (the column ``X`` that has an ``X_std``)."""
    return next(c for c in table.columns if f"{c}_std" in table.columns)


def _grid(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Means and stds as methods x datasets (plus ``average`` when there are >= 2 datasets)."""
    metric = _metric_of(table)
    methods = list(dict.fromkeys(table["method"]))  # keeps the error_table's method order
    datasets = sorted(table["dataset"].unique())
    means = table.pivot(index="method", columns="dataset", values=metric).reindex(index=methods, columns=datasets)
    stds = table.pivot(index="method", columns="dataset", values=f"{metric}_std").reindex(index=methods, columns=datasets)
    if len(datasets) >= 2:
        # Only methods run on every dataset get an average: one over a subset is not comparable.
        means["average"] = means.mean(axis=1, skipna=False)
        stds["average"] = float("nan")
    means.columns.name = stds.columns.name = None
    return means, stds


def _cell(mean: float, std: float) -> str:
    if pd.isna(mean):
        return MISSING
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def wide_table(table: pd.DataFrame) -> pd.DataFrame:
    """Methods as rows, datasets as columns, cells ``"12.34 ± 0.56"`` (``"12.34"`` for one seed).

    Args:
        table: the output of :func:`error_table`.

    Returns:
        A DataFrame of strings indexed by ``method``; an ``average`` column (mean of the dataset
        means) is added when there are at least two datasets; ``"–"`` marks a missing cell.
    """
    means, stds = _grid(table)
    cells = {c: [_cell(m, s) for m, s in zip(means[c], stds[c])] for c in means.columns}
    return pd.DataFrame(cells, index=means.index, dtype=object)


def caption(table: pd.DataFrame) -> str:
    """One-line caption: what the numbers are and how many seeds each cell averages."""
    metric = _metric_of(table)
    counts = sorted(set(int(n) for n in table["seeds"]))
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    notes = f"{seeds} seed{'' if counts == [1] else 's'} per cell"
    notes += "; a dataset cell without ± is one run" if counts[0] == 1 and counts[-1] > 1 else ""
    notes += "; average = mean over datasets" if table["dataset"].nunique() >= 2 else ""
    return f"{_METRIC_NAMES.get(metric, metric)}, mean ± std over seeds ({notes})."


def markdown_table(table: pd.DataFrame) -> str:
    """The wide table as GitHub Markdown: caption line, blank line, pipe table.

    Args:
        table: the output of :func:`error_table`.

    Returns:
        The Markdown text (number columns right-aligned, newline-ended).
    """
    wide = wide_table(table).reset_index()
    align = ["left"] + ["right"] * (wide.shape[1] - 1)
    # disable_numparse: tabulate would otherwise reprint the one-seed cell "12.00" as "12".
    body = wide.to_markdown(index=False, colalign=align, disable_numparse=True)
    return f"{caption(table)}\n\n{body}\n"


def latex_table(table: pd.DataFrame) -> str:
    """The wide table as a booktabs ``tabular``; the lowest error of each column (ties too) in bold
    (only for error metrics, ``*_err``: for others, e.g. gate fractions, lower is not better).

    Args:
        table: the output of :func:`error_table`.

    Returns:
        LaTeX source; the caption is a comment, so the tabular can be ``\\input`` into any float.
    """
    means, stds = _grid(table)
    rounded = means.round(2)
    # Bold only where there is a comparison to win; compare what the reader sees (2 decimals).
    lower_is_better = _metric_of(table).endswith("_err")
    best = {c: rounded[c].min() if lower_is_better and rounded[c].notna().sum() >= 2 else None for c in means.columns}
    lines = [
        f"% {caption(table)}",
        "% Generated by adafilter_lib.analysis.results; regenerate, do not edit.",
        r"\begin{tabular}{l" + "r" * len(means.columns) + "}",
        r"\toprule",
        " & ".join(str(c).translate(_LATEX_ESCAPES) for c in ["method", *means.columns]) + r" \\",
        r"\midrule",
    ]
    for method in means.index:
        cells = [str(method).translate(_LATEX_ESCAPES)]
        for c in means.columns:
            mean, std = means.at[method, c], stds.at[method, c]
            if pd.isna(mean):
                cells.append("--")
                continue
            number = f"{mean:.2f}"
            if best[c] is not None and math.isclose(rounded.at[method, c], best[c]):
                number = rf"\textbf{{{number}}}"
            cells.append(number if pd.isna(std) else rf"{number} $\pm$ {std:.2f}")
        lines.append(" & ".join(cells) + r" \\")
    return "\n".join([*lines, r"\bottomrule", r"\end{tabular}"]) + "\n"
