"""Selection-study recipes: the YAML format of ``adafilter_lib/configs/studies/*.yaml`` and the run configs it defines.

A recipe has rows (a method with its own settings) and, per row, cells: the cartesian product of a
learning-rate ``grid`` and optional named ``variants`` (alternative recipes). Keys: ``base`` (a packaged
config name such as ``demo``, or a YAML path), ``set`` (overrides for every run), ``datasets`` ({name:
labelled images per class, or null for all}; a value may also be a mapping ``{n_per_class: N, set: [...]}``
for settings of that task alone), ``seeds``, ``select`` (``first`` or ``all``), ``reference`` (the row
paired differences are taken against), ``runs``, ``out``, ``rows``. :mod:`adafilter_lib.studies.tune` runs it.

:func:`run_config` is the kit's one grid builder: the notebooks' grids (:mod:`~adafilter_lib.studies.study`),
``sweep`` and the pruning benchmark describe their grids as a :class:`Study` too (:func:`method_grid`, with
``flat`` run folders), so every run config is assembled in one order: base, study settings, task, method,
cell, seed, runs folder, the caller's ``--set``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..core.config import RunConfig, load_config
from ..core.config_files import display_path, read_yaml, resolve_config
from ..core.errors import KitError

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
    datasets: dict[str, Optional[int]]  # labelled images per class (None: all)
    seeds: tuple[int, ...]
    select: str
    reference: Optional[str]
    runs_root: str
    out_dir: str
    rows: list[Row]
    recipe: Optional[str] = None  # the YAML file it came from (named in the tables' README)
    dataset_settings: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per-task overrides
    overrides: tuple[str, ...] = ()  # the caller's --set: applied last, to every run
    dataset_bases: dict[str, Path] = field(default_factory=dict)  # a task's own base config (sweep: paper/<task>.yaml)
    flat: bool = False  # every run directly in runs_root (sweep, notebooks, pruning) instead of <runs>/<row>/<cell>/
    about: str = ""  # the recipe file's header comment (what, command, result), quoted in the tables' README

    @property
    def select_seeds(self) -> tuple[int, ...]:
        return self.seeds[:1] if self.select == "first" else self.seeds


def base_config_path(name: Optional[str]) -> Optional[Path]:
    """A recipe's ``base``: a YAML path or a packaged config name (see :func:`~adafilter_lib.core.config_files.resolve_config`)."""
    return None if name is None else resolve_config(name)


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
    """Read and check a study recipe (a YAML path, or a packaged name such as ``studies/uc_merced_few``);
    every cell's config is validated before anything trains."""
    path = resolve_config(path)
    spec = read_yaml(path, "study recipe", "pass a YAML file or a packaged recipe such as studies/uc_merced_few")
    known = {"base", "set", "datasets", "seeds", "select", "reference", "runs", "out", "rows"}
    if not isinstance(spec, dict) or set(spec) - known or "rows" not in spec or "datasets" not in spec:
        raise KitError(f"study recipe '{path}' must be a mapping with 'datasets' and 'rows' (keys: {', '.join(sorted(known))})")
    rows = []
    for name, row in spec["rows"].items():
        row = row or {}
        cells = expand_cells(row.get("grid"), row.get("variants"))
        rows.append(Row(str(name), str(row.get("method", name)), tuple(row.get("set", ())), cells))
    datasets = {
        str(name): value if not isinstance(value, dict) else value.get("n_per_class") for name, value in spec["datasets"].items()
    }
    per_task = {str(name): tuple(value.get("set", ())) for name, value in spec["datasets"].items() if isinstance(value, dict)}
    study = Study(
        base_config_path(spec.get("base")),
        tuple(spec.get("set", ())),
        datasets,
        tuple(int(s) for s in spec.get("seeds", [0])),
        str(spec.get("select", "first")),
        spec.get("reference"),
        str(spec.get("runs", f"runs/{path.stem}")),
        str(spec.get("out", f"results/{path.stem}")),
        rows,
        display_path(path),
        per_task,
        about=header_comment(path),
    )
    check_study(study)
    return study


def header_comment(path: Path) -> str:
    """The comment lines at the top of a YAML file, without their ``#`` (big_vision style: what it is,
    the command that runs it, what it gave)."""
    lines = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(lines).strip()


def check_study(study: Study) -> None:
    """Refuse an unknown select rule, reference row, dataset or method, and build every config once (values)."""
    if study.select not in SELECT_RULES:
        raise KitError(f"study 'select' must be one of {', '.join(SELECT_RULES)}; got '{study.select}'")
    names = [r.name for r in study.rows]
    if study.reference is not None and study.reference not in names:
        raise KitError(f"study 'reference' '{study.reference}' is not a row; choose one of {', '.join(names)}")
    if not study.seeds or len(set(study.seeds)) != len(study.seeds):
        raise KitError("study 'seeds' must list distinct seeds")
    from ..core.model import backbone_spec
    from ..data import get_spec
    from ..methods import build_method

    for dataset in study.datasets:
        get_spec(dataset)
    for row in study.rows:
        for dataset in study.datasets:
            for cell in row.cells:
                cfg = run_config(study, row, dataset, cell, study.seeds[0])
                build_method(cfg), backbone_spec(cfg.model.backbone)


def run_config(study: Study, row: Row, dataset: str, cell: str, seed: int) -> RunConfig:
    """The config of one run: base, study settings, dataset, row settings, cell, seed (later wins)."""
    n = study.datasets[dataset]
    runs_root = study.runs_root if study.flat else Path(study.runs_root) / row.name / cell
    return load_config(
        study.dataset_bases.get(dataset, study.base),
        [
            *study.settings,
            f"data.dataset={dataset}",
            f"data.n_per_class={'null' if n is None else n}",
            *study.dataset_settings.get(dataset, ()),
            f"method.name={row.method}",
            *row.settings,
            *row.cells[cell],
            f"seed={seed}",
            f"runs_root={runs_root}",
            *study.overrides,
        ],
    )


def grid(study: Study) -> list[RunConfig]:
    """One config per (dataset, seed, row), each row at its first cell, in that order: a grid without
    selection (the notebooks', ``sweep``'s, the pruning benchmark's; ``tune`` trains every cell instead)."""
    return [
        run_config(study, row, dataset, next(iter(row.cells)), seed)
        for dataset in study.datasets
        for seed in study.seeds
        for row in study.rows
    ]


def method_grid(
    runs_root: str | Path,
    methods: Sequence[str],
    datasets: dict[str, Optional[int]],
    seeds: Sequence[int],
    base: Optional[Path] = None,
    settings: Sequence[str] = (),
    overrides: Sequence[str] = (),
    dataset_bases: Optional[dict[str, Path]] = None,
) -> Study:
    """A checked study of plain method rows whose runs lie directly in ``runs_root`` (see :func:`grid`).

    Args:
        datasets: ``{dataset: labelled images per class}`` (None: every image).
        base / settings / overrides: the base config, settings for every run, the caller's ``--set`` (applied last).
        dataset_bases: per-task base configs, replacing ``base`` for those tasks.

    Raises:
        KitError: an unknown method, dataset or backbone, or a bad setting (before anything trains).
    """
    study = Study(
        base,
        tuple(settings),
        dict(datasets),
        tuple(int(s) for s in seeds),
        "first",
        None,
        str(runs_root),
        "",
        [Row(str(m), str(m)) for m in methods],
        overrides=tuple(overrides),
        dataset_bases=dict(dataset_bases or {}),
        flat=True,
    )
    check_study(study)
    return study


def rows_named(study: Study, names: Optional[Sequence[str]]) -> Study:
    """The study restricted to some rows (the reference row is kept so that differences stay defined)."""
    if not names:
        return study
    unknown = sorted(set(names) - {r.name for r in study.rows})
    if unknown:
        raise KitError(f"unknown row(s) {', '.join(unknown)}; the recipe has {', '.join(r.name for r in study.rows)}")
    keep = set(names) | ({study.reference} if study.reference else set())
    return Study(**{**study.__dict__, "rows": [r for r in study.rows if r.name in keep]})
