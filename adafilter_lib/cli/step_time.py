"""The ``bench`` and ``bench-table`` commands: AdaFilter's step time against fine-tuning's (see
:mod:`adafilter_lib.studies.step_time`; the records and their table are in ``results/bench/``).

Hooked into :mod:`adafilter_lib.cli.app` by :func:`add_parsers` and ``COMMANDS``.
"""

from __future__ import annotations

from .args import add_set_option


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time AdaFilter against fine-tuning (training and evaluation steps, same process)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="backbone name (default: efficientnet_lite0)")
    p.add_argument("--res", type=int, default=64, help="input resolution in pixels (default: 64)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default: 32)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per model and kind (default: 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-channels-last", action="store_true", help="keep the default memory format")
    p.add_argument(
        "--out",
        default="runs/bench",
        help="folder for the JSON record (default: runs/bench; the committed records are in results/bench: name it to add one)",
    )
    p.add_argument(
        "--also",
        nargs="+",
        default=[],
        metavar="METHOD",
        help="more methods timed in the same interleaving, e.g. adafilter_all_finetuned (no gate network)",
    )
    add_set_option(p, "config overrides for every timed model, e.g. method.adafilter.bn_pretrained=frozen")


def _cmd_bench(args) -> int:
    from ..core.config import load_config
    from ..core.model import backbone_spec
    from ..methods import build_method
    from ..studies.step_time import format_bench, run_bench

    backbone_spec(args.backbone)  # unknown names fail here, with the valid ones listed
    command = (
        f"python -m adafilter_lib bench --backbone {args.backbone} --res {args.res} --batch {args.batch} "
        f"--steps {args.steps} --warmup {args.warmup} --device {args.device}"
        + (" --no-channels-last" if args.no_channels_last else "")
        + (f" --also {' '.join(args.also)}" if args.also else "")
        + (f" --set {' '.join(args.set)}" if args.set else "")
    )
    for name in args.also:  # unknown names fail before any model is built, with the valid ones listed
        build_method(load_config(None, [f"method.name={name}"]))
    load_config(None, list(args.set))  # and so do unknown keys or invalid values
    result = run_bench(
        args.backbone,
        args.res,
        args.batch,
        args.steps,
        args.warmup,
        args.device,
        channels_last=not args.no_channels_last,
        out_dir=args.out,
        command=command,
        also=args.also,
        overrides=args.set,
    )
    print(format_bench(result))
    return 0


def _add_bench_table(sub) -> None:
    p = sub.add_parser("bench-table", help="the markdown table of every bench record in a folder (what the README shows)")
    p.add_argument("--records", default="results/bench", help="folder of bench JSON records (default: results/bench)")


def _cmd_bench_table(args) -> int:
    from ..studies.step_time import bench_table

    print(bench_table(args.records))
    return 0


def add_parsers(sub) -> None:
    """Add ``bench`` and ``bench-table`` to the CLI's subparsers."""
    _add_bench(sub)
    _add_bench_table(sub)


COMMANDS = {"bench": _cmd_bench, "bench-table": _cmd_bench_table}
