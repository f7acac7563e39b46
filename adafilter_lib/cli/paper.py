"""CLI subcommands for paper-scale work: ``prepare`` (datasets) and ``sweep`` (grids of runs)."""

from __future__ import annotations

from .args import add_set_option

DATASETS_HELP = "paper datasets: stanford_dogs mit_indoor67 caltech256_30 caltech256_60 fgvc_aircraft ucf101 omniglot_decathlon uc_merced_full dtd"


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="download or unpack a paper dataset and write its split list",
        description="Get a paper dataset ready under --root. " + DATASETS_HELP,
    )
    p.add_argument("dataset", help="dataset name (see `list`)")
    p.add_argument("--root", default="data", help="data root (default: data)")

    p = sub.add_parser(
        "sweep",
        help="run a grid of datasets x methods x seeds (resumable, shardable), then the table",
        description="Run every (dataset, method, seed); finished runs are skipped, unfinished ones resume. "
        "Each dataset's config comes from <config-dir>/<dataset>.yaml (the paper protocol shipped "
        "with the kit by default); a dataset without one is an error unless --config names one file for all.",
    )
    p.add_argument("--datasets", nargs="+", required=True)
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--runs", dest="runs_root", default="runs/paper", help="runs root (default: runs/paper)")
    p.add_argument("--out", default="results/paper", help="table folder (default: results/paper)")
    p.add_argument(
        "--config-dir", help="folder of per-dataset configs <dataset>.yaml (default: the packaged adafilter_lib/configs/paper)"
    )
    p.add_argument("--config", help="one config for every dataset instead: a YAML file, or 'defaults' for the library defaults")
    add_set_option(p, "overrides for every run")
    p.add_argument("--shard", default="1/1", help="run only shard i of n, e.g. 2/4 (default: 1/1)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs per run (default: all visible; >1 uses torchrun)")
    p.add_argument("--dry-run", action="store_true", help="print the plan with status and estimated GPU-hours")
    p.add_argument("--no-progress", action="store_true")


def cmd_prepare(args) -> int:
    from ..data.prepare import prepare

    print(f"split list written: {prepare(args.dataset, args.root)}")
    return 0


def cmd_sweep(args) -> int:
    from ..studies.sweep import parse_shard, plan, run_sweep, shard

    index, count = parse_shard(args.shard)
    grid = shard(
        plan(args.datasets, args.methods, args.seeds, args.runs_root, args.config_dir, args.set, args.config), index, count
    )
    run_sweep(grid, args.out, dry_run=args.dry_run, gpus=args.gpus, progress=not args.no_progress, method_order=args.methods)
    return 0


COMMANDS = {"prepare": cmd_prepare, "sweep": cmd_sweep}
