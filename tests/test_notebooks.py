"""Every notebook in notebooks/ runs top to bottom in SMOKE mode, in order, and is committed clean.

SMOKE notebooks train tiny runs (4 digits per class, random ResNet-18, 1 epoch, CPU) into a temporary
runs root shared by the session, so analysis notebooks read what the training notebooks wrote and the
widget/browser tests reuse the same AdaFilter run. They run in one kernel, each after ``%reset -f``
(see the ``kernel`` fixture). Notebooks added later (e.g. ``06_*.ipynb``) are picked up automatically;
they receive the parameters ``SMOKE`` and ``RUNS_ROOT`` and must not write outside ``RUNS_ROOT``.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
_executed: set[str] = set()


def _ids(paths):
    return [p.stem for p in paths]


def test_the_study_notebooks_exist():
    names = {p.stem for p in NOTEBOOKS}
    assert {"01_baseline_finetuning", "02_adafilter_training", "03_gate_usage", "04_error_tables", "05_gate_inspector"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_clean_with_purpose_and_parameters_cells(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them (make clean-notebooks) before committing"
    assert "widgets" not in nb.metadata, f"{path.name} holds saved widget state; make clean-notebooks removes it"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "first cell: a markdown purpose cell"
    params = nb.cells[1]
    assert params.cell_type == "code" and "parameters" in params.metadata.get("tags", []), (
        "second cell: a code cell tagged 'parameters'"
    )
    assert re.search(r"^SMOKE\s*=\s*False\b", params.source, re.M), "the parameters cell sets SMOKE = False"
    assert re.search(r"^RUNS_ROOT\s*=", params.source, re.M), "the parameters cell sets RUNS_ROOT"
    # Thin notebooks: the library holds the code.
    assert not any(re.search(r"^\s*class\s+\w+", c.source, re.M) for c in code), "no class definitions in notebooks"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "smoke_runs"


@pytest.fixture(scope="module")
def kernel():
    """One python3 kernel (the venv's) for every notebook; each notebook starts with ``%reset -f``.

    A fresh namespace per notebook, as in a new kernel, but torch, seaborn and the kit are imported once:
    on 2 cores that is ~15 s per notebook saved. A failed notebook gets the next one a restarted kernel.
    """
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    km = AsyncKernelManager(kernel_name="python3")
    try:
        yield km
    finally:
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=True)


def _execute(path: Path, runs_root: Path, out_dir: Path, km) -> None:
    import papermill
    from jupyter_core.utils import run_sync

    out_dir.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))  # forget the previous notebook's names
    source = out_dir / f"input_{path.name}"
    nbformat.write(nb, source)
    try:
        papermill.execute_notebook(
            str(source),
            str(out_dir / path.name),
            parameters={"SMOKE": True, "RUNS_ROOT": str(runs_root)},
            kernel_name="python3",
            km=km,
            cwd=str(NOTEBOOK_DIR),
            progress_bar=False,
            log_output=False,
            execution_timeout=300,
        )
    except BaseException:
        if km.has_kernel:
            run_sync(km.restart_kernel)(now=True)  # e.g. a cell still running after a timeout
        raise
    _executed.add(path.name)


def _snapshot(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_in_smoke_mode(path, smoke_root, kernel, tmp_path_factory):
    out_dir = tmp_path_factory.getbasetemp() / "executed_notebooks"
    before = _snapshot(ROOT / "results")
    for earlier in NOTEBOOKS[: NOTEBOOKS.index(path)]:  # analysis notebooks read what earlier ones trained
        if earlier.name not in _executed:
            _execute(earlier, smoke_root, out_dir, kernel)
    _execute(path, smoke_root, out_dir, kernel)
    executed = nbformat.read(out_dir / path.name, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert _snapshot(ROOT / "results") == before, "SMOKE runs must not write into the repository's results/"


@pytest.mark.slow
def test_smoke_notebooks_wrote_their_figures_and_tables(smoke_root, kernel, tmp_path_factory):
    """After 01-04: the figures and the three table files, from the runs the notebooks trained."""
    for path in NOTEBOOKS:
        if path.name[:2] in {"01", "02", "03", "04"} and path.name not in _executed:
            _execute(path, smoke_root, tmp_path_factory.getbasetemp() / "executed_notebooks", kernel)
    out = smoke_root / "smoke_results"
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert {
        "01_baselines_top1_err.png",
        "02_adafilter_top1_err.png",
        "03_layer_usage.png",
        "03_layer_class_heatmap.png",
        "03_filter_frequency.png",
        "03_usage_over_epochs.png",
        "04_error_bars.png",
    } <= figures
    csv = (out / "tables" / "error_table.csv").read_text()
    assert {"finetune", "linear_probe", "adafilter"} <= {line.split(",")[0] for line in csv.splitlines()[1:]}
    assert (out / "tables" / "error_table.md").is_file() and (out / "tables" / "error_table.tex").is_file()
