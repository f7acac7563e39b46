"""Datasets: the registry, deterministic splits and transforms (see ``registry.build_datasets``), the
offline sets (``offline``, ``uc_merced`` with its shipped copy under ``bundled/``), image folders, the
papers' datasets and ``prepare`` (checksummed archives, split files).

May import: ``core``.
"""

from .registry import DATASETS, DatasetSpec, DataSplits, build_datasets, dataset_names, get_spec

__all__ = ["DATASETS", "DataSplits", "DatasetSpec", "build_datasets", "dataset_names", "get_spec"]
