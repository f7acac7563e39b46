"""What notebook 06 shows of a pruning study: the front at fixed budgets, the channel-pruned models' cost, the
per-stage sparsity of the chosen models, and the exported sparse files loaded back and measured.

The tables come from the study's run records, as ``tune`` writes them (``front.csv``, ``structured.csv``,
``sparsity_by_stage.csv``); the exported-model table measures each chosen unstructured run's sparse file again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from ..analysis.pruning_front import pruning_tables
from ..pruning.sparse_file import SPARSE_BEST, sparse_round_trip
from .demo import demo_config_path
from .pruning_bench import SMOKE_OVERRIDES
from .recipe import Row, Study, check_study
from .tune import chosen_so_far, selection_runs


def smoke_front_study(runs_root: str, out_dir: str = "") -> Study:
    """A short pruning study (notebook 06's SMOKE mode and its test): dense fine-tuning, Fine-Pruning and gradual
    magnitude pruning at 2x compression, channel pruning at 2x fewer MACs; 2 seeds, 4 digits per class, a random
    ResNet-18."""
    rows = [Row("finetune", "finetune")]
    # prune_after_finetune is left out: with the smoke schedule's empty ramp it is gradual_magnitude run for run
    rows += [Row(f"{m}_2x", m, ("method.fine_pruning.target_compression=2",)) for m in ("fine_pruning", "gradual_magnitude")]
    rows.append(Row("channel_pruning_2x", "channel_pruning", ("method.fine_pruning.target_macs_ratio=2",)))
    study = Study(demo_config_path(), SMOKE_OVERRIDES, {"digits": 4}, (0, 1), "first", "finetune", runs_root, out_dir, rows)
    check_study(study)
    return study


def front_tables(study: Study) -> dict[str, Optional[pd.DataFrame]]:
    """The study's finished runs as tables: ``records`` (every run), ``front``, ``structured``, ``sparsity`` (each
    None when the study has no such rows, or nothing finished) and ``exported`` (per chosen unstructured run:
    ``row, seed`` and :func:`~adafilter_lib.pruning.sparse_file.sparse_round_trip`)."""
    records = pd.DataFrame(selection_runs(study, chosen_so_far(study)))
    if records.empty:
        return dict.fromkeys(("records", "front", "structured", "sparsity", "exported"))
    chosen = records[records["chosen"] & (records["status"] == "finished")]
    exported = [
        {"row": r.row, "seed": r.seed, **sparse_round_trip(r.run_dir)}
        for r in chosen.itertuples()
        if (Path(r.run_dir) / SPARSE_BEST).is_file()
    ]
    return {
        "records": records,
        **pruning_tables(records, study.reference or "finetune"),
        "exported": pd.DataFrame(exported) if exported else None,
    }
