"""Where a result came from: the kit's git commit, the package versions and the command line.

Written into every run's ``summary.json`` (key ``provenance``) and named in the READMEs that studies
write beside their tables, so a number can be traced to the code that produced it.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Optional

PACKAGES = ("torch", "torchvision", "timm", "numpy")


def _git(*args: str) -> Optional[str]:
    try:
        done = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@lru_cache(maxsize=1)
def code_version() -> dict:
    """``{"git_commit", "git_dirty", "kit", "python", "cuda", <package>: version}``; git keys are None outside a checkout."""
    import torch

    from .. import __version__

    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".")  # the package only: tables are not code
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "kit": __version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        **versions,
    }


def provenance() -> dict:
    """:func:`code_version` and the command line of this process."""
    return {**code_version(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None}


def one_line() -> str:
    """The code version as one Markdown line for a results README."""
    v = code_version()
    commit = (v["git_commit"] or "unknown")[:12] + (" (with uncommitted changes)" if v["git_dirty"] else "")
    return (
        f"Code: commit `{commit}`, kit {v['kit']}, Python {v['python']}, torch {v['torch']}, "
        f"torchvision {v['torchvision']}, timm {v['timm']}, CUDA {v['cuda'] or 'none'}."
    )
