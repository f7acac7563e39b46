"""Datasets: the registry, deterministic splits and transforms (see ``registry.build_datasets``)."""

from .registry import DATASETS, DatasetSpec, DataSplits, build_datasets, dataset_names, get_spec

__all__ = ["DATASETS", "DataSplits", "DatasetSpec", "build_datasets", "dataset_names", "get_spec"]
