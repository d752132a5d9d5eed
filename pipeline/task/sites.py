"""Each hospital's data: its share of the training split, its own files, the pooled and test sets.

Used by the Flower ClientApp, the centralized/local baselines, the consortium and the local
deployment (which cuts the simulated shares into per-hospital files) alike, so that every mode
sees exactly the same images.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from pipeline.errors import ConfigError
from pipeline.task.data import (
    SiteImages,
    Splits,
    load_site,
    load_splits,
    make_dataset,
    medmnist_path,
    save_medmnist_layout,
    stratified_split,
)
from pipeline.task.partition import partition_indices, train_val_split

# The config keys a hospital's share depends on.
SHARE_KEYS = ("data", "partition", "federation", "seed")


@dataclass
class HospitalData:
    """A hospital's local training and validation sets and the data shape.

    ``train`` and ``val`` are :class:`~pipeline.task.data.ImageDataset` (in-memory data) or
    :class:`~pipeline.task.data.FileDataset` (files read lazily).
    """

    train: Dataset
    val: Dataset
    channels: int
    num_classes: int
    image_size: int

    @property
    def num_train(self) -> int:
        return len(self.train)


@functools.lru_cache(maxsize=4)
def _splits(data_yaml: str, seed: int) -> Splits:
    return load_splits(OmegaConf.create(data_yaml), seed)


def splits(cfg: DictConfig) -> Splits:
    """The run's data set (cached per process: hospitals in one worker load it once)."""
    return _splits(OmegaConf.to_yaml(cfg.data), int(cfg.seed))


@functools.lru_cache(maxsize=4)
def _shares(cfg_yaml: str) -> list[tuple[np.ndarray, np.ndarray]]:
    cfg = OmegaConf.create(cfg_yaml)
    s = splits(cfg)
    parts = partition_indices(s.train_y, cfg.partition, int(cfg.seed))  # labels only: no pixel is read
    return [
        train_val_split(idx, s.train_y, float(cfg.federation.val_fraction), int(cfg.seed) + i)
        for i, idx in enumerate(parts)
    ]


def _share_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, list(SHARE_KEYS)))


def hospital_shares(cfg: DictConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, validation indices) of every hospital, seeded."""
    return _shares(_share_yaml(cfg))


def _site(cfg: DictConfig, s: Splits, train_idx: np.ndarray, val_idx: np.ndarray) -> HospitalData:
    """Training (augmented if configured) and validation sets from indices into the train split."""
    return HospitalData(
        make_dataset(cfg.data, s.train_x[train_idx], s.train_y[train_idx], True, s.class_names),
        make_dataset(cfg.data, s.train_x[val_idx], s.train_y[val_idx], False, s.class_names),
        s.channels,
        s.num_classes,
        s.image_size,
    )


@functools.lru_cache(maxsize=16)
def _hospital(share_yaml: str, hospital: int) -> HospitalData:
    cfg = OmegaConf.create(share_yaml)
    train_idx, val_idx = hospital_shares(cfg)[hospital]
    return _site(cfg, splits(cfg), train_idx, val_idx)


def hospital_data(cfg: DictConfig, hospital: int) -> HospitalData:
    """Hospital ``hospital``'s share of the training split (0-based).

    Built once per process and config: a hospital's datasets (and their in-memory cache, with
    ``data.cache=memory``) persist from one round's message to the next.
    """
    n = int(cfg.federation.num_hospitals)
    if not 0 <= hospital < n:
        raise ValueError(f"hospital id {hospital} is outside 0..{n - 1}")
    return _hospital(_share_yaml(cfg), hospital)


@functools.lru_cache(maxsize=2)
def _site_images(data_yaml: str) -> SiteImages:
    return load_site(OmegaConf.create(data_yaml))


def own_hospital_data(cfg: DictConfig, root: str) -> HospitalData:
    """A real hospital's own data at ``root`` (node config ``data-root``), taken whole, not partitioned.

    Its validation share is the file's ``val`` split when it has one (as :func:`export_hospital_files`
    writes), else a seeded stratified ``federation.val_fraction`` of its training images.
    """
    site = _site_images(OmegaConf.to_yaml(OmegaConf.merge(cfg.data, {"root": str(root)})))
    train_x, train_y, val_x, val_y = site.train_x, site.train_y, site.val_x, site.val_y
    if val_x is None:
        keep, held = stratified_split(train_y, float(cfg.federation.val_fraction), int(cfg.seed))
        train_x, train_y, val_x, val_y = train_x[keep], train_y[keep], train_x[held], train_y[held]
    return HospitalData(
        make_dataset(cfg.data, train_x, train_y, True, site.class_names),
        make_dataset(cfg.data, val_x, val_y, False, site.class_names),
        int(train_x.shape[1]),
        len(site.class_names),
        int(train_x.shape[-1]),
    )


def export_hospital_files(cfg: DictConfig, out: str | Path) -> list[Path]:
    """Cut each hospital's simulated share into its own MedMNIST-layout file, ``out/hospital_<i>/``.

    Hospital ``i`` reading its file with :func:`own_hospital_data` gets exactly the training and
    validation images that :func:`hospital_data` gives it in a simulation of the same config, so a
    deployment and a simulation of one experiment can be compared like for like.
    """
    if cfg.data.kind != "medmnist":
        raise ConfigError(f"data.kind={cfg.data.kind!r}: only MedMNIST data can be cut into hospital files")
    s = splits(cfg)
    paths = []
    for i, (train_idx, val_idx) in enumerate(hospital_shares(cfg)):
        path = medmnist_path(OmegaConf.merge(cfg.data, {"root": str(Path(out) / f"hospital_{i}")}))
        save_medmnist_layout(
            path, (s.train_x[train_idx], s.train_y[train_idx]), (s.train_x[val_idx], s.train_y[val_idx])
        )
        paths.append(path)
    return paths


def pooled_data(cfg: DictConfig) -> HospitalData:
    """All hospitals' training and validation shares together (the centralized baseline)."""
    shares = hospital_shares(cfg)
    train_idx = np.concatenate([t for t, _ in shares])
    val_idx = np.concatenate([v for _, v in shares])
    return _site(cfg, splits(cfg), train_idx, val_idx)


@functools.lru_cache(maxsize=4)
def _test_set(data_yaml: str, seed: int) -> Dataset:
    s = _splits(data_yaml, seed)
    return make_dataset(OmegaConf.create(data_yaml), s.test_x, s.test_y, False, s.class_names)


def test_dataset(cfg: DictConfig) -> Dataset:
    """The held-out test split (never used for training or model selection); built once per process."""
    return _test_set(OmegaConf.to_yaml(cfg.data), int(cfg.seed))
