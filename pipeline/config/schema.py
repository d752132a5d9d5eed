"""Typed schemas of the config groups: the types every value must have.

The defaults are not here: they live in the YAML files under ``conf/`` (one source). A field
marked ``MISSING`` must be set by the group's YAML file; a field defaulting to ``None`` applies
to some options of its group only (``data.flag`` to MedMNIST data, ``data.test_root`` to folder
exports) and stays unset for the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING


@dataclass
class DataConfig:
    kind: str = MISSING
    root: str | None = None
    channels: int = MISSING
    limit: int | None = None
    mean: float = MISSING
    std: float = MISSING
    # true | false | a list of MONAI array transforms by _target_
    augment: Any = MISSING
    # medmnist
    flag: str | None = None
    download: bool | None = None
    size: int | None = None
    # folder
    test_root: str | None = None
    # folder and manifest
    test_fraction: float | None = None
    classes: list[str] | None = None
    spatial_dims: int | None = None
    # minmax | [low, high]
    intensity: Any = None
    cache: str | None = None
    cache_dir: str | None = None
    cache_memory: float | None = None
    on_bad_file: str | None = None
    # manifest
    manifest: str | None = None
    test_manifest: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    multi_label: bool | None = None
    label_separator: str | None = None
    # folder, manifest and synthetic
    image_size: int | None = None
    # synthetic
    num_samples: int | None = None
    num_classes: int | None = None


@dataclass
class TrainConfig:
    local_epochs: int = MISSING
    batch_size: int = MISSING
    optimizer: Any = MISSING
    threads: int = MISSING
    augmentation_multiplicity: int | None = None  # null (a config from before the key): 1


@dataclass
class FederationConfig:
    mode: str = MISSING
    num_hospitals: int = MISSING
    rounds: int = MISSING
    val_fraction: float = MISSING
    min_hospitals: int | None = None
    round_timeout: float = MISSING
    stop_after: int | None = None
    hospital_dir: str = MISSING
    cpus_per_hospital: float = MISSING
    gpus_per_hospital: Any = MISSING  # a number >= 0, or "auto" (pipeline.engines.simulation.gpu_share)


@dataclass
class PrivacyConfig:
    enabled: bool = MISSING
    epsilon: float = MISSING
    delta: float = MISSING
    max_grad_norm: float = MISSING
    accountant: str = MISSING
    secure_mode: bool = MISSING
    reproducible: bool = MISSING
    grad_sample_mode: str = MISSING
    batchnorm: str = MISSING
    max_lifetime_epsilon: float | None = None
    lifetime_dir: str | None = None


@dataclass
class EncryptionConfig:
    enabled: bool = MISSING
    poly_modulus_degree: int = MISSING
    coeff_mod_bit_sizes: list[int] = MISSING
    global_scale_bits: int = MISSING
    fields_per_slot: int = MISSING
    field_bits: int = MISSING
    clip: float = MISSING
    colluders: int = MISSING


@dataclass
class LoggerConfig:
    backend: str = MISSING
    tracking_uri: str | None = None
    experiment_name: str = MISSING


@dataclass
class LogConfig:
    level: str = MISSING


@dataclass
class EvalConfig:
    # "youden" or a probability in (0, 1)
    threshold: Any = MISSING
    bootstrap: int = MISSING
    calibration_bins: int = MISSING


@dataclass
class DeploymentConfig:
    host: str = MISSING
    port: int = MISSING
    insecure: bool = MISSING
    workspace: str | None = None
    keep_workspace: bool = MISSING
    startup_timeout: float = MISSING
    run_timeout: float = MISSING
    hospital_service: bool = MISSING


@dataclass
class PathsConfig:
    data: str = MISSING
    outputs: str = MISSING
    multirun: str = MISSING
    hospitals: str = MISSING


# Group name -> schema; ``deployment`` is checked only when a deployment is configured.
GROUP_SCHEMAS: dict[str, type] = {
    "paths": PathsConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "federation": FederationConfig,
    "privacy": PrivacyConfig,
    "encryption": EncryptionConfig,
    "logger": LoggerConfig,
    "log": LogConfig,
    "eval": EvalConfig,
}
OPTIONAL_GROUP_SCHEMAS: dict[str, type] = {"deployment": DeploymentConfig}
