"""Where config and recipe files live and how they are read: the configs shipped inside the package
(``adafilter_lib/configs/``), a config named by path or by packaged name, YAML with one-line errors.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import KitError


def packaged_config_path(*parts: str) -> Path:
    """A path inside the configs shipped with the package, ``adafilter_lib/configs/<parts>``."""
    return Path(str(resources.files("adafilter_lib").joinpath("configs", *parts)))


def resolve_config(name: str | Path) -> Path:
    """A config given as a YAML path, or by the name of one shipped in the package: ``demo``,
    ``demo_study``, ``paper/<dataset>`` (``adafilter_lib/configs/<name>.yaml``); an existing file wins.

    Raises:
        KitError: neither exists.
    """
    if Path(name).is_file():
        return Path(name)
    packaged = packaged_config_path(f"{name}.yaml")
    if packaged.is_file():
        return packaged
    raise KitError(
        f"config '{name}' not found: neither a YAML file nor a config shipped with the kit (demo, "
        f"paper/<dataset>, studies/<study>, e.g. paper/dtd); check the path"
    )


def packaged_recipe(name: str) -> dict:
    """A settings file shipped in ``adafilter_lib/configs/recipes/<name>.yaml`` (the smoke recipe, benchmark
    schedules): a mapping whose lists are ``--set``-style settings."""
    return read_yaml(packaged_config_path("recipes", f"{name}.yaml"), "packaged recipe", "reinstall the kit (pip install -e .)")


def display_path(path: str | Path) -> str:
    """A config path as a README shows it: ``adafilter_lib/configs/...`` for a packaged one (no machine path)."""
    package = Path(str(resources.files("adafilter_lib"))).resolve()
    try:
        return (Path("adafilter_lib") / Path(path).resolve().relative_to(package)).as_posix()
    except ValueError:
        return Path(path).as_posix()


def read_yaml(path: str | Path, what: str, hint: str) -> Any:
    """The parsed YAML file at ``path`` (``{}`` when empty); a one-line KitError naming ``what`` if it is
    missing (ending with ``hint``) or not valid YAML."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{what} '{path}' not found; {hint}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)  # where the parser stopped: line and column, 1-based
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise KitError(f"{what} '{path}' is not valid YAML ({where}{problem}); fix the file") from None
