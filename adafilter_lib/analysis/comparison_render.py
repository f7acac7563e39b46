"""Rendering of a study's comparison (:func:`adafilter_lib.studies.tune_tables.comparison_table`): the Markdown
table of chosen cells with their paired differences, and validation's choice over all rows.

Only formatting lives here: which runs are paired, and how, is decided in :mod:`adafilter_lib.studies.tune_tables`.
"""

from __future__ import annotations

import math
from typing import Optional

import pandas as pd

GATE_METRICS = ("test_frac_finetuned", "test_frac_adaptive_filters")


def comparison_markdown(table: pd.DataFrame, reference: Optional[str]) -> str:
    """The comparison as a Markdown table (errors in %, differences in points, shares as fractions)."""
    header = ["row", "dataset", "chosen cell", "seeds", "test error (%)", "val error (%)"]
    if reference is not None:
        header += [f"vs {reference} (points, ± SE)", "wins"]
    header += ["fine-tuned choices", "filters varying"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        cells = [
            r["row"],
            r["dataset"],
            f"`{r['cell']}`",
            str(r["seeds"]),
            _mean_std(r["top1_err"], r["top1_err_std"]),
            f"{r['val_top1_err']:.2f}",
        ]
        if reference is not None:
            diff = r.get("diff_vs_reference", math.nan)
            shown = "" if _missing(diff) else f"{diff:+.2f}" + ("" if _missing(r["diff_se"]) else f" ± {r['diff_se']:.2f}")
            cells += [shown, "" if _missing(diff) else r["wins"]]
        cells += [_fraction(r.get(m)) for m in GATE_METRICS]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def validation_choice(table: pd.DataFrame, reference: Optional[str], held_back: Optional[dict] = None) -> str:
    """Per dataset, the row a user who trusts validation would ship, with its test error and paired difference.

    Rows are ranked on ``held_back`` (``{(row, dataset): mean validation error of the seeds that did not choose the
    cell}``) where every row has it: the choosing seed's error is a minimum over the row's grid and favours rows
    with more cells. Without held-back seeds (``select: all``) they are ranked on ``val_top1_err``, and the text
    says so. Ties go to the row listed first.
    """
    lines, biased = [], False
    for dataset, group in table.groupby("dataset", sort=False):
        if len(group) < 2:
            continue
        unbiased = [held_back.get((r, dataset)) for r in group["row"]] if held_back else []
        if unbiased and all(v is not None and not _missing(v) for v in unbiased):
            scores = pd.Series(unbiased, index=group.index)
        else:
            scores, biased = group["val_top1_err"], True
        best = group.loc[scores.idxmin()]  # idxmin keeps the first of equal values
        diff = best.get("diff_vs_reference", math.nan)
        versus = (
            ""
            if reference is None or _missing(diff)
            else f", {diff:+.2f}" + ("" if _missing(best["diff_se"]) else f" ± {best['diff_se']:.2f}") + f" points vs {reference}"
        )
        lines.append(
            f"- {dataset}: `{best['row']}` (`{best['cell']}`), validation error {scores[best.name]:.2f} %, "
            f"test error {_mean_std(best['top1_err'], best['top1_err_std'])} %{versus}"
        )
    if not lines:
        return ""
    rule = (
        "the lowest mean validation error at each row's chosen cell; every seed chose it, so rows tuned over more "
        "cells are favoured"
        if biased
        else "the lowest mean validation error at each row's chosen cell, over the seeds that did not choose it"
    )
    return f"\nValidation's choice over all rows ({rule}):\n\n" + "\n".join(lines) + "\n"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _mean_std(mean: float, std: float) -> str:
    return f"{mean:.2f}" if _missing(std) else f"{mean:.2f} ± {std:.2f}"


def _fraction(value) -> str:
    return "" if _missing(value) else f"{value:.2f}"
