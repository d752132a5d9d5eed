"""Dividing the training split among hospitals with flwr-datasets' partitioners.

The partitioner comes from ``conf/partition/`` through ``_target_`` (IID, Dirichlet label skew,
linear/exponential quantity skew). The data are shuffled once with the run's seed first, because
flwr-datasets' IID and size partitioners cut contiguous shards. Only labels are used (no pixel
is read); multi-label data are partitioned by :func:`~pipeline.task.data.label_strata`.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from hydra.utils import instantiate
from omegaconf import DictConfig

from pipeline.errors import ConfigError
from pipeline.task.data import label_strata, stratified_split


def partition_indices(labels: np.ndarray, partition: DictConfig, seed: int) -> list[np.ndarray]:
    """Indices into ``labels`` (class indices, or multi-hot rows) held by each hospital; disjoint, seeded."""
    order = np.random.default_rng(seed).permutation(len(labels))
    table = Dataset.from_dict({"label": label_strata(labels)[order].tolist(), "index": order.tolist()})
    try:
        partitioner = instantiate(partition)
    except Exception as err:
        raise ConfigError(f"partition: cannot build {partition.get('_target_')}: {err}") from None
    n = int(partition.num_partitions)  # flwr-datasets' getter needs the data set first
    if n > len(labels):
        raise ConfigError(f"federation.num_hospitals={n} exceeds the {len(labels)} training images")
    partitioner.dataset = table
    try:
        parts = [np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64) for i in range(n)]
    except ValueError as err:
        raise ConfigError(f"partition: {err}") from None
    for i, idx in enumerate(parts):
        if len(idx) < 2:
            raise ConfigError(f"partition gave hospital {i} only {len(idx)} image(s); use fewer hospitals")
    return parts


def train_val_split(
    indices: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split one hospital's indices into local training and validation, stratified by label."""
    local_train, local_val = stratified_split(labels[indices], val_fraction, seed)
    return indices[local_train], indices[local_val]
