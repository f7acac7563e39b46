"""Selection-study recipes: the YAML format of ``adafilter_lib/configs/studies/*.yaml`` and the run configs it defines.

A recipe has rows (a method with its own settings) and, per row, cells: the cartesian product of a
learning-rate ``grid`` and optional named ``variants`` (alternative recipes). Keys: ``base`` (a packaged
config name such as ``demo``, or a YAML path), ``set`` (overrides for every run), ``datasets`` ({name:
labelled images per class, or null for all}; a value may also be a mapping ``{n_per_class: N, set: [...]}``
for settings of that task alone), ``seeds``, ``select`` (``first`` or ``all``), ``reference`` (the row
paired differences are taken against), ``runs``, ``out``, ``rows``. :mod:`adafilter_lib.studies.tune` runs it.

:func:`run_config` is the kit's one grid builder: the notebooks' grids (:mod:`~adafilter_lib.studies.notebook_grid`),
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
from ..core.errors import KitError, did_you_mean

SELECT_RULES = ("first", "all")


@dataclass
class Row:
    """One table row: a method with settings, and the cells it is tuned over (``{slug: overrides}``).

    ``take`` (``{"row": source, "settings": {source key: key}}``) copies settings from the cell that validation
    chose for an earlier row (AdaFilter gated in the stage surgical fine-tuning chose); :mod:`.takes` fills
    ``taken`` per dataset once that choice exists, and :func:`run_config` applies it after the cell."""

    name: str
    method: str
    settings: tuple[str, ...] = ()
    cells: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"default": ()})
    take: Optional[dict] = None
    taken: dict[str, tuple[str, ...]] = field(default_factory=dict)  # {dataset: settings taken}


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


RECIPE_KEYS = ("base", "set", "datasets", "seeds", "select", "reference", "runs", "out", "rows")
ROW_KEYS = ("method", "set", "grid", "variants", "take")
TAKE_KEYS = ("row", "settings")
TASK_KEYS = ("n_per_class", "set")


def load_study(path: str | Path) -> Study:
    """Read and check a study recipe (a YAML path, or a packaged name such as ``studies/uc_merced_few``);
    every cell's config is validated before anything trains.

    Raises:
        KitError: one line naming the file and the key: an unknown key at any level (with the nearest
            valid one), a value of the wrong type or shape, or a run config that does not validate.
    """
    path = resolve_config(path)
    spec = read_yaml(path, "study recipe", "pass a YAML file or a packaged recipe such as studies/uc_merced_few")
    where = f"study recipe '{display_path(path)}'"
    try:
        study = _study_from_spec(spec, path)
        check_study(study)
    except KitError as err:
        raise KitError(f"{where}: {err}") from None
    return study


def _study_from_spec(spec, path: Path) -> Study:
    """The :class:`Study` of a parsed recipe, every key and type checked (no config is built yet)."""
    _mapping(spec, "", RECIPE_KEYS, required=("datasets", "rows"))
    rows = []
    for name, row in _mapping(spec["rows"], "rows", nonempty=True).items():
        row = _mapping(row or {}, f"rows.{name}", ROW_KEYS)
        settings = _settings(row.get("set"), f"rows.{name}.set")
        grid = {
            key: _values(values, f"rows.{name}.grid.{key}")
            for key, values in _mapping(row.get("grid") or {}, f"rows.{name}.grid").items()
        }
        variants = {
            str(v): _settings(extra, f"rows.{name}.variants.{v}")
            for v, extra in _mapping(row.get("variants") or {}, f"rows.{name}.variants").items()
        }
        method = row.get("method", name)
        if not isinstance(method, str):
            raise KitError(f"'rows.{name}.method' must be a method name, got {method!r}")
        take = None
        if row.get("take") is not None:
            take = dict(_mapping(row["take"], f"rows.{name}.take", TAKE_KEYS, required=TAKE_KEYS))
            links = _mapping(take["settings"], f"rows.{name}.take.settings", nonempty=True)
            if not isinstance(take["row"], str) or not all(isinstance(k, str) and isinstance(v, str) for k, v in links.items()):
                raise KitError(f"'rows.{name}.take' must name a row and map its setting keys to this row's, got {take!r}")
        rows.append(Row(str(name), method, settings, expand_cells(grid, variants or None), take))
    datasets, per_task = {}, {}
    for name, value in _mapping(spec["datasets"], "datasets", nonempty=True).items():
        if isinstance(value, dict):
            _mapping(value, f"datasets.{name}", TASK_KEYS)
            per_task[str(name)] = _settings(value.get("set"), f"datasets.{name}.set")
            value = value.get("n_per_class")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise KitError(f"'datasets.{name}' must be a number of images per class, null (all) or a mapping, got {value!r}")
        datasets[str(name)] = value
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise KitError(f"'seeds' must be a list of whole numbers, e.g. [0, 1, 2]; got {seeds!r}")
    for key in ("base", "select", "reference", "runs", "out"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise KitError(f"'{key}' must be a string, got {spec[key]!r}")
    return Study(
        base_config_path(spec.get("base")),
        _settings(spec.get("set"), "set"),
        datasets,
        tuple(seeds),
        spec.get("select", "first"),
        spec.get("reference"),
        spec.get("runs", f"runs/{path.stem}"),
        spec.get("out", f"results/{path.stem}"),
        rows,
        display_path(path),
        per_task,
        about=header_comment(path),
    )


def _mapping(value, key: str, allowed: Sequence[str] = (), required: Sequence[str] = (), nonempty: bool = False) -> dict:
    """``value`` if it is a mapping whose keys are all ``allowed`` (when given) and hold ``required``
    (``key`` "": the recipe's top level)."""
    label = f"'{key}'" if key else "the recipe's top level"
    if not isinstance(value, dict) or (nonempty and not value):
        raise KitError(f"{label} must be a {'non-empty ' if nonempty else ''}mapping of names, got {value!r}")
    for name in value:
        if allowed and name not in allowed:
            raise KitError(f"unknown key '{name}' in {label}{did_you_mean(str(name), allowed)}; valid keys: {', '.join(allowed)}")
    for name in required:
        if name not in value:
            raise KitError(f"{label} has no '{name}' key; add it (keys: {', '.join(allowed)})")
    return value


def _settings(value, key: str) -> tuple[str, ...]:
    """A ``set`` list: ``key=value`` strings (None: none)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise KitError(f"'{key}' must be a list of key=value settings, e.g. [optim.lr=0.01]; got {value!r}")
    return tuple(value)


def _values(value, key: str) -> list:
    """A grid axis: a non-empty list of plain values."""
    if not isinstance(value, list) or not value or any(isinstance(v, (dict, list)) for v in value):
        raise KitError(f"'{key}' must be a non-empty list of values, e.g. [0.005, 0.01]; got {value!r}")
    return value


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
    for index, row in enumerate(study.rows):
        if row.take is not None and row.take["row"] not in names[:index]:
            raise KitError(f"row '{row.name}' takes settings from '{row.take['row']}', which must be a row listed before it")
        if row.take is not None and study.rows[names.index(row.take["row"])].take is not None:
            raise KitError(
                f"row '{row.name}' takes settings from '{row.take['row']}', which takes settings itself: take from its source"
            )
        for dataset in study.datasets:
            for cell in row.cells:
                try:
                    cfg = run_config(study, row, dataset, cell, study.seeds[0])
                    build_method(cfg), backbone_spec(cfg.model.backbone)
                except KitError as err:
                    raise KitError(f"row '{row.name}', dataset '{dataset}', cell '{cell}': {err}") from None


def run_config(study: Study, row: Row, dataset: str, cell: str, seed: int) -> RunConfig:
    """The config of one run: base, study settings, dataset, row settings, cell, seed (later wins)."""
    n = study.datasets[dataset]
    taken = row.taken.get(dataset, ())
    # taken settings name the folder too: runs taken from an earlier choice are never read as those of a new one
    folder = "_".join([*(_slug(*setting.split("=", 1)) for setting in taken), cell])
    runs_root = study.runs_root if study.flat else Path(study.runs_root) / row.name / folder
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
            *taken,
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
    for row in reversed(study.rows):  # a kept row that takes settings keeps its source (and the source's, in turn)
        if row.name in keep and row.take is not None:
            keep.add(row.take["row"])
    return Study(**{**study.__dict__, "rows": [r for r in study.rows if r.name in keep]})
