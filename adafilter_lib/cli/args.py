"""Options shared by the commands that train one run (``train``, ``prune``) and the config they build."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence


def add_run_options(
    p: argparse.ArgumentParser, methods: Optional[Sequence[str]] = None, method_default: Optional[str] = None, epochs: bool = True
) -> None:
    """``--config``, the shortcut flags, ``--set``, ``--resume``, ``--force`` and ``--no-progress``.

    Args:
        methods: the method names the command accepts (None: any, checked by the config).
        epochs: offer ``--epochs`` (commands whose method sets its own schedule leave it out).
    """
    p.add_argument("--config", help="YAML config file, or a config shipped with the kit: demo, paper/<dataset>")
    p.add_argument("--dataset", help="dataset name or folder:PATH (see `list`)")
    p.add_argument("--method", default=method_default, choices=methods, help="method name (see `list`)")
    p.add_argument("--backbone", help="backbone name (see `list`)")
    if epochs:
        p.add_argument("--epochs", type=int, help="number of training epochs")
    p.add_argument("--seed", type=int, help="run seed (the data split uses data.split_seed)")
    p.add_argument("--runs", dest="runs_root", help="folder that holds run directories (default: runs)")
    add_set_option(p, "config overrides, e.g. optim.lr=0.01")
    p.add_argument(
        "--resume", action="store_true", help="continue an unfinished run (finished epochs, rounds and trials are kept)"
    )
    p.add_argument("--force", action="store_true", help="discard an existing run of the same name and start over")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars and per-epoch lines")


def add_set_option(p: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE ...``: config overrides; repeated flags add up in order (a later key wins)."""
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help=f"{help} (repeatable)")


def config_from_args(args: argparse.Namespace):
    """The RunConfig of defaults, ``--config``, the shortcut flags, then ``--set`` (in that order)."""
    from ..core.config import load_config
    from ..core.config_files import resolve_config

    shortcuts = {
        "data.dataset": args.dataset,
        "method.name": args.method,
        "model.backbone": args.backbone,
        "optim.epochs": getattr(args, "epochs", None),
        "seed": args.seed,
        "runs_root": args.runs_root,
    }
    config = resolve_config(args.config) if args.config else None  # a file, or a packaged name such as paper/dtd
    return load_config(config, [f"{k}={v}" for k, v in shortcuts.items() if v is not None] + list(args.set))
