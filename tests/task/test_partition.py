"""Dividing the training split among hospitals (flwr-datasets partitioners from conf/partition/)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose_cfg

from pipeline.errors import ConfigError
from pipeline.task.partition import partition_indices, train_val_split


def _labels(n: int = 1000, positive: float = 0.5, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < positive).astype(np.int64)


def _partition(labels: np.ndarray, *overrides: str, seed: int = 0) -> list[np.ndarray]:
    cfg = compose_cfg("data=synthetic", f"seed={seed}", *overrides)
    return partition_indices(labels, cfg.partition, seed)


def _assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n, "sizes must sum to the number of images"
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))


def test_iid_is_a_disjoint_cover_of_near_equal_size():
    # Prepare
    labels = _labels(1003)

    # Execute
    parts = _partition(labels, "partition=iid", "federation.num_hospitals=4")

    # Assert
    assert len(parts) == 4
    _assert_disjoint_cover(parts, len(labels))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(p.dtype == np.int64 for p in parts)


def test_iid_is_seeded():
    # Prepare
    labels = _labels(600)

    # Execute
    a = _partition(labels, "partition=iid", "federation.num_hospitals=3", seed=1)
    b = _partition(labels, "partition=iid", "federation.num_hospitals=3", seed=1)
    c = _partition(labels, "partition=iid", "federation.num_hospitals=3", seed=2)

    # Assert
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(np.sort(x), np.sort(z)) for x, z in zip(a, c, strict=True))


def test_iid_shards_are_shuffled_not_contiguous():
    # Prepare: sorted labels, as a data set often comes (all class 0, then all class 1)
    labels = np.repeat([0, 1], 300)

    # Execute
    parts = _partition(labels, "partition=iid", "federation.num_hospitals=3")

    # Assert: every hospital sees about half positives
    fractions = [labels[p].mean() for p in parts]
    np.testing.assert_allclose(fractions, 0.5, atol=0.1)


def test_dirichlet_small_alpha_skews_labels_more_than_large_alpha():
    # Prepare
    labels = _labels(1000)
    common = ("partition=dirichlet", "federation.num_hospitals=4", "partition.min_partition_size=5")

    # Execute
    skewed = _partition(labels, *common, "partition.alpha=0.1")
    even = _partition(labels, *common, "partition.alpha=100")

    # Assert
    _assert_disjoint_cover(skewed, len(labels))
    _assert_disjoint_cover(even, len(labels))
    spread_skewed = np.std([labels[p].mean() for p in skewed])
    spread_even = np.std([labels[p].mean() for p in even])
    assert spread_skewed > 0.2
    assert spread_even < 0.05
    assert spread_skewed > 4 * spread_even


def test_dirichlet_is_seeded():
    # Prepare
    labels = _labels(800)

    # Execute
    a = _partition(labels, "partition=dirichlet", "federation.num_hospitals=3", seed=4)
    b = _partition(labels, "partition=dirichlet", "federation.num_hospitals=3", seed=4)

    # Assert
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_linear_partitioner_gives_increasing_sizes():
    # Prepare
    labels = _labels(1000)

    # Execute
    parts = _partition(labels, "partition=linear", "federation.num_hospitals=4")

    # Assert: shares proportional to 1, 2, 3, 4
    _assert_disjoint_cover(parts, len(labels))
    sizes = np.array([len(p) for p in parts])
    assert np.all(np.diff(sizes) > 0)
    np.testing.assert_allclose(sizes / sizes.sum(), np.arange(1, 5) / 10, atol=0.01)


def test_exponential_partitioner_gives_strong_quantity_skew():
    # Prepare
    labels = _labels(1000)

    # Execute
    parts = _partition(labels, "partition=exponential", "federation.num_hospitals=3")

    # Assert
    _assert_disjoint_cover(parts, len(labels))
    sizes = np.array([len(p) for p in parts])
    assert np.all(np.diff(sizes) > 0)
    assert sizes[-1] > 3 * sizes[0]


def test_more_hospitals_than_images_is_refused():
    # Prepare
    labels = _labels(10)
    cfg = compose_cfg("data=synthetic", "federation.num_hospitals=20", "encryption=none")

    # Execute
    with pytest.raises(ConfigError) as err:
        partition_indices(labels, cfg.partition, 0)

    # Assert
    assert "federation.num_hospitals=20" in str(err.value)


def test_hospital_with_under_two_images_is_refused():
    # Prepare: 6 hospitals share 10 images, so some get a single one
    labels = _labels(10)
    cfg = compose_cfg("data=synthetic", "federation.num_hospitals=6")

    # Execute
    with pytest.raises(ConfigError) as err:
        partition_indices(labels, cfg.partition, 0)

    # Assert
    assert "fewer hospitals" in str(err.value)


def test_unknown_partitioner_target_is_a_config_error():
    # Prepare
    cfg = compose_cfg("data=synthetic", "partition._target_=flwr_datasets.partitioner.NoSuchPartitioner")

    # Execute / Assert
    with pytest.raises(ConfigError, match="NoSuchPartitioner"):
        partition_indices(_labels(100), cfg.partition, 0)


def test_train_val_split_is_disjoint_and_about_val_fraction():
    # Prepare
    labels = _labels(2000, positive=0.3)
    indices = np.random.default_rng(1).choice(2000, size=500, replace=False)

    # Execute
    train, val = train_val_split(indices, labels, val_fraction=0.1, seed=0)

    # Assert
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.sort(indices))
    assert abs(len(val) - 50) <= 2
    assert abs(labels[val].mean() - labels[indices].mean()) < 0.03


def test_train_val_split_is_seeded():
    # Prepare
    labels = _labels(400)
    indices = np.arange(100, 300)

    # Execute
    a = train_val_split(indices, labels, 0.2, seed=3)
    b = train_val_split(indices, labels, 0.2, seed=3)

    # Assert
    np.testing.assert_array_equal(a[1], b[1])
    assert set(a[1]) <= set(indices)
