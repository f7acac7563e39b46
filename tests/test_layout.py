"""The package's shape: subpackages import only the layers before them, no import cycle, no private names
taken from another module, and every subpackage says what it holds and what it may import."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import adafilter_lib

PACKAGE = Path(adafilter_lib.__file__).parent
# Each subpackage may import those before it (and itself); the top-level modules sit above everything.
LAYERS = ["core", "data", "adafilter", "methods", "training", "analysis", "pruning", "studies", "cli"]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """Every ``from X import names`` / ``import X`` in a module (function-level ones included), X absolute."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return [(t, n) for t, n in found if t == "adafilter_lib" or t.startswith("adafilter_lib.")]


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def _resolve(target: str, names: list[str], modules: dict[str, Path]) -> list[str]:
    """The modules an import statement depends on (``from pkg import mod`` names the submodule)."""
    resolved = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
    return resolved or [target]


def test_every_subpackage_imports_only_earlier_layers():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        for target, names in _imports(name, path):
            for dependency in _resolve(target, names, modules):
                if dependency == "adafilter_lib":
                    continue  # __version__ and the lazy re-exports
                if _layer(dependency) > _layer(name):
                    wrong.append(f"{name} imports {dependency}")
    assert not wrong, "layer order broken:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph = {
        name: {d for t, n in _imports(name, path) for d in _resolve(t, n, modules) if d in modules and d != name}
        for name, path in modules.items()
    }
    # a package __init__ that re-exports its own submodules is not a cycle with them
    for name in graph:
        graph[name] = {d for d in graph[name] if not (modules[d].name == "__init__.py" and name.startswith(d + "."))}
    state, cycles = {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_imports_a_private_name_of_another():
    modules = _modules()
    private = [
        f"{name}: {target}.{n}"
        for name, path in modules.items()
        for target, names in _imports(name, path)
        for n in names
        if n.startswith("_") and n != "__version__"
    ]
    assert not private, "private names imported:\n" + "\n".join(private)


def test_every_subpackage_says_what_it_holds_and_may_import():
    for layer in LAYERS:
        package = importlib.import_module(f"adafilter_lib.{layer}")
        assert package.__doc__ and "May import" in package.__doc__, layer


def test_the_checker_sees_a_backward_import(tmp_path):
    # the layer test must be able to fail: core importing analysis is out of order
    assert _layer("adafilter_lib.analysis.records") > _layer("adafilter_lib.core.config")
    module = tmp_path / "m.py"
    module.write_text("from ..analysis.records import as_runs\n")
    assert _imports("adafilter_lib.core.m", module) == [("adafilter_lib.analysis.records", ["as_runs"])]


def test_packaged_recipes_hold_valid_settings():
    from adafilter_lib.core.config import load_config
    from adafilter_lib.core.config_files import packaged_recipe
    from adafilter_lib.studies import notebook_grid, pruning_bench

    smoke = packaged_recipe("smoke")
    assert notebook_grid.SMOKE_OVERRIDES == tuple(smoke["set"]) and notebook_grid.SMOKE_DATASETS == (("digits", 4),)
    for settings in (
        notebook_grid.SMOKE_OVERRIDES,
        pruning_bench.BENCH_OVERRIDES,
        pruning_bench.SMOKE_OVERRIDES,
        pruning_bench.USAGE_PENALTY,
    ):
        load_config(None, list(settings))  # every key exists and every value is valid
    assert list(pruning_bench.BENCH_THRESHOLDS) == sorted(pruning_bench.BENCH_THRESHOLDS)


def test_the_generic_training_loop_does_not_import_adafilter():
    # methods own what they collect at evaluation (Method.eval_collector): the loop knows no method by name
    modules = _modules()
    for name in ("adafilter_lib.training.trainer", "adafilter_lib.training.setup", "adafilter_lib.core.engine"):
        imported = [t for t, _ in _imports(name, modules[name])]
        assert not [t for t in imported if t.startswith(("adafilter_lib.adafilter", "adafilter_lib.methods.adafilter"))], name
