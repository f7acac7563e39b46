"""Selection studies: every method gets the same tuning budget, and its setting is chosen on validation only.

A study is a YAML recipe (``configs/studies/*.yaml``; :func:`load_study`) with rows (a method with its
own settings) and, per row, cells: the cartesian product of a learning-rate ``grid`` and optional named
``variants`` (alternative recipes). For each (row, dataset) the cell with the lowest validation error
is kept (:func:`choose_cell`; the rule is written below), and the row's seeds are trained at that cell.
``select: first`` chooses on the first seed and trains the other seeds at the chosen cell only (what a
CPU can afford; the tables say so); ``select: all`` trains every cell on every seed and chooses on the
mean over seeds. The test split never takes part. Runs go to ``<runs>/<row>/<cell>/<run>``, so a killed
study continues where it stopped (``fit(resume=True)``), and :mod:`adafilter_lib.tune_tables` writes the
tables from the run records.

Recipe keys: ``base`` (a packaged config name such as ``demo``, or a YAML path), ``set`` (overrides for
every run), ``datasets`` ({name: labelled images per class, or null for all}), ``seeds``, ``select``,
``reference`` (the row paired differences are taken against), ``runs``, ``out``, ``rows``. A dataset's value
may also be a mapping ``{n_per_class: N, set: [...]}`` for settings of that task alone (e.g. its own lr).
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import yaml

from . import runs
from .config import RunConfig, load_config
from .errors import KitError

if TYPE_CHECKING:
    import pandas as pd

SELECT_RULES = ("first", "all")


@dataclass
class Row:
    """One table row: a method with settings, and the cells it is tuned over (``{slug: overrides}``)."""

    name: str
    method: str
    settings: tuple[str, ...] = ()
    cells: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"default": ()})


@dataclass
class Study:
    base: Optional[Path]
    settings: tuple[str, ...]
    datasets: dict[str, Optional[int]]        # labelled images per class (None: all)
    seeds: tuple[int, ...]
    select: str
    reference: Optional[str]
    runs_root: str
    out_dir: str
    rows: list[Row]
    recipe: Optional[str] = None  # the YAML file it came from (named in the tables' README)
    dataset_settings: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per-task overrides
    overrides: tuple[str, ...] = ()  # the caller's --set: applied last, to every run

    @property
    def select_seeds(self) -> tuple[int, ...]:
        return self.seeds[:1] if self.select == "first" else self.seeds


def base_config_path(name: Optional[str]) -> Optional[Path]:
    """A packaged config (``demo`` -> ``adafilter_lib/configs/demo.yaml``) or an existing YAML path."""
    if name is None:
        return None
    packaged = Path(str(resources.files("adafilter_lib") / "configs" / f"{name}.yaml"))
    if packaged.is_file():
        return packaged
    if Path(name).is_file():
        return Path(name)
    raise KitError(f"study base '{name}' is neither a packaged config (e.g. demo) nor a YAML file; fix 'base:'")


def _slug(key: str, value) -> str:
    return f"{key.rsplit('.', 1)[-1]}{value}"


def expand_cells(grid: Optional[dict], variants: Optional[dict]) -> dict[str, tuple[str, ...]]:
    """``{slug: overrides}`` for every combination of named variants and grid values, in recipe order.

    Example: ``grid={"optim.lr": [0.01, 0.02]}`` gives ``{"lr0.01": ("optim.lr=0.01",), "lr0.02": (...)}``.
    """
    variants = variants or {"": []}
    keys = list((grid or {}).keys())
    cells = {}
    for (variant, extra), values in itertools.product(variants.items(), itertools.product(*[grid[k] for k in keys])):
        parts = ([variant] if variant else []) + [_slug(k, v) for k, v in zip(keys, values)]
        cells["_".join(parts) or "default"] = (*extra, *(f"{k}={v}" for k, v in zip(keys, values)))
    return cells


def load_study(path: str | Path) -> Study:
    """Read and check a study recipe; every cell's config is validated before anything trains."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"study recipe '{path}' not found; pass a YAML file such as configs/studies/uc_merced_few.yaml")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise KitError(f"study recipe '{path}' is not valid YAML ({str(err).splitlines()[0]})") from None
    known = {"base", "set", "datasets", "seeds", "select", "reference", "runs", "out", "rows"}
    if not isinstance(spec, dict) or set(spec) - known or "rows" not in spec or "datasets" not in spec:
        raise KitError(f"study recipe '{path}' must be a mapping with 'datasets' and 'rows' (keys: {', '.join(sorted(known))})")
    rows = []
    for name, row in spec["rows"].items():
        row = row or {}
        cells = expand_cells(row.get("grid"), row.get("variants"))
        rows.append(Row(str(name), str(row.get("method", name)), tuple(row.get("set", ())), cells))
    datasets = {str(name): value if not isinstance(value, dict) else value.get("n_per_class")
                for name, value in spec["datasets"].items()}
    per_task = {str(name): tuple(value.get("set", ())) for name, value in spec["datasets"].items() if isinstance(value, dict)}
    study = Study(base_config_path(spec.get("base")), tuple(spec.get("set", ())), datasets,
                  tuple(int(s) for s in spec.get("seeds", [0])), str(spec.get("select", "first")),
                  spec.get("reference"), str(spec.get("runs", f"runs/{path.stem}")), str(spec.get("out", f"results/{path.stem}")),
                  rows, str(path), per_task)
    check_study(study)
    return study


def check_study(study: Study) -> None:
    """Refuse an unknown select rule, reference row, dataset or method, and build every config once (values)."""
    if study.select not in SELECT_RULES:
        raise KitError(f"study 'select' must be one of {', '.join(SELECT_RULES)}; got '{study.select}'")
    names = [r.name for r in study.rows]
    if study.reference is not None and study.reference not in names:
        raise KitError(f"study 'reference' '{study.reference}' is not a row; choose one of {', '.join(names)}")
    if not study.seeds or len(set(study.seeds)) != len(study.seeds):
        raise KitError("study 'seeds' must list distinct seeds")
    from .data import get_spec
    from .methods import build_method

    for dataset in study.datasets:
        get_spec(dataset)
    for row in study.rows:
        for dataset in study.datasets:
            for cell in row.cells:
                build_method(run_config(study, row, dataset, cell, study.seeds[0]))


def run_config(study: Study, row: Row, dataset: str, cell: str, seed: int) -> RunConfig:
    """The config of one run: base, study settings, dataset, row settings, cell, seed (later wins)."""
    n = study.datasets[dataset]
    return load_config(study.base, [*study.settings, f"data.dataset={dataset}", f"data.n_per_class={'null' if n is None else n}",
                                    *study.dataset_settings.get(dataset, ()), f"method.name={row.method}", *row.settings,
                                    *row.cells[cell], f"seed={seed}", f"runs_root={Path(study.runs_root) / row.name / cell}",
                                    *study.overrides])


def best_val_loss(run_dir: Path) -> float:
    """The validation loss of a finished run's best epoch (``metrics.jsonl``), the tie-breaker of :func:`choose_cell`."""
    best_epoch = runs.read_summary(run_dir)["best_epoch"] - 1
    for record in runs.read_jsonl(run_dir / runs.METRICS):
        if record["epoch"] == best_epoch:
            return float(record["val_loss"])
    return float("inf")


def choose_cell(scores: dict[str, tuple[float, float]]) -> str:
    """The rule: the lowest mean validation error; ties go to the lower mean validation loss of the best
    epochs, then to the cell listed first in the recipe. ``scores`` is ``{cell: (val error, val loss)}``."""
    order = list(scores)
    return min(order, key=lambda cell: (scores[cell][0], scores[cell][1], order.index(cell)))


def plan(study: Study) -> list[tuple[Row, str, str, list[RunConfig]]]:
    """Every selection run, as ``(row, dataset, cell, configs of the selection seeds)``."""
    return [(row, dataset, cell, [run_config(study, row, dataset, cell, s) for s in study.select_seeds])
            for dataset in study.datasets for row in study.rows for cell in row.cells]


def run_study(study: Study, progress: bool = True, dry_run: bool = False, fit=None,
              force: bool = False) -> dict[tuple[str, str], str]:
    """Train (or reuse) the selection runs, choose each row's cell per dataset, train its other seeds.

    Returns:
        ``{(row, dataset): chosen cell}`` (with ``dry_run``: only prints the plan and returns ``{}``).
    """
    if fit is None:
        from .trainer import fit
    jobs = plan(study)
    total = sum(len(c) for *_, c in jobs) + len(study.datasets) * len(study.rows) * (len(study.seeds) - len(study.select_seeds))
    if dry_run:
        for row, dataset, cell, configs in jobs:
            state = ", ".join(sweep_status(c) for c in configs)
            print(f"{row.name:<22} {dataset:<12} {cell:<28} {state}")
        print(f"{total} runs in all ({len(jobs)} selection cells x {len(study.select_seeds)} seed(s), then the other seeds "
              f"of each row's chosen cell); runs under {study.runs_root}")
        return {}
    done = 0
    chosen: dict[tuple[str, str], str] = {}
    for dataset in study.datasets:
        for row in study.rows:
            for cell in row.cells:
                for seed in study.select_seeds:
                    done += 1
                    _fit_one(fit, run_config(study, row, dataset, cell, seed), done, total, progress, force)
            cell = chosen[(row.name, dataset)] = choose_cell(_cell_scores(study, row, dataset))
            for seed in study.seeds:
                if seed not in study.select_seeds:
                    done += 1
                    _fit_one(fit, run_config(study, row, dataset, cell, seed), done, total, progress, force)
    return chosen


def _cell_scores(study: Study, row: Row, dataset: str) -> Optional[dict[str, tuple[float, float]]]:
    """``{cell: (mean val error, mean best-epoch val loss)}`` over the selection seeds; None if one is unfinished."""
    scores = {}
    for cell in row.cells:
        dirs = [run_config(study, row, dataset, cell, s).run_dir() for s in study.select_seeds]
        if not all(runs.is_finished(d) for d in dirs):
            return None
        errors = [runs.read_summary(d)["val_top1_err"] for d in dirs]
        scores[cell] = (sum(errors) / len(errors), sum(map(best_val_loss, dirs)) / len(dirs))
    return scores


def chosen_so_far(study: Study) -> dict[tuple[str, str], str]:
    """``{(row, dataset): cell}`` for every (row, dataset) whose selection runs have all finished (no training)."""
    chosen = {}
    for dataset in study.datasets:
        for row in study.rows:
            scores = _cell_scores(study, row, dataset)
            if scores is not None:
                chosen[(row.name, dataset)] = choose_cell(scores)
    return chosen


def _fit_one(fit, cfg: RunConfig, index: int, total: int, progress: bool, force: bool = False) -> dict:
    if progress:
        print(f"[{index}/{total}] {cfg.run_dir()} ({sweep_status(cfg)})", flush=True)
    return fit(cfg, resume=True, progress=progress, **({"force": True} if force else {}))


def sweep_status(cfg: RunConfig) -> str:
    if runs.is_finished(cfg.run_dir()):
        return "finished"
    return "unfinished" if runs.staging_dir(cfg.run_dir()).exists() else "to do"


def selection_runs(study: Study, chosen: dict[tuple[str, str], str]) -> list[dict]:
    """One record per finished run of the study: row, dataset, cell, seed, chosen, run_dir and the summary numbers."""
    records = []
    for dataset in study.datasets:
        for row in study.rows:
            for cell in row.cells:
                for seed in study.seeds:
                    run_dir = run_config(study, row, dataset, cell, seed).run_dir()
                    if not runs.is_finished(run_dir):
                        continue
                    summary = json.loads((run_dir / runs.SUMMARY).read_text())
                    records.append({"row": row.name, "method": row.method, "dataset": dataset, "cell": cell, "seed": seed,
                                    "chosen": chosen.get((row.name, dataset)) == cell, "run_dir": str(run_dir),
                                    **{k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}})
    return records


def chosen_runs(study: Study) -> "pd.DataFrame":
    """The :func:`~adafilter_lib.results.load_runs` rows of each (row, dataset)'s chosen cell, finished runs only.

    What analyses of a study read: one run per (method, dataset, seed) even where a row tried several
    recipes (the demo's AdaFilter), so tables and ``find_run`` work as on a flat runs folder.
    """
    from .records import runs_of

    picked = [r["run_dir"] for r in selection_runs(study, chosen_so_far(study)) if r["chosen"]]
    return runs_of(picked, study.runs_root)


def rows_named(study: Study, names: Optional[Sequence[str]]) -> Study:
    """The study restricted to some rows (the reference row is kept so that differences stay defined)."""
    if not names:
        return study
    unknown = sorted(set(names) - {r.name for r in study.rows})
    if unknown:
        raise KitError(f"unknown row(s) {', '.join(unknown)}; the recipe has {', '.join(r.name for r in study.rows)}")
    keep = set(names) | ({study.reference} if study.reference else set())
    return Study(**{**study.__dict__, "rows": [r for r in study.rows if r.name in keep]})
