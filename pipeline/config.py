"""Typed schemas for every config group and the checks that run before anything starts.

Hydra already refuses overrides of keys that do not exist (struct mode). :func:`validate` adds
types (``federation.num_hospitals=abc``), ranges (``federation.num_hospitals=0``) and
cross-group rules (a budget that needs a hospital count, secure CKKS parameters), and turns every
problem into one :class:`~pipeline.errors.ConfigError` line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.errors import ConfigError

DATA_KINDS = ("medmnist", "folder", "synthetic")
MODES = ("federated", "centralized", "local")
ACCOUNTANTS = ("rdp", "prv")
GRAD_SAMPLE_MODES = ("ghost", "hooks", "functorch", "bk")
BATCHNORM_POLICIES = ("refuse", "convert")
# HE standard (homomorphicencryption.org, 2018), 128-bit classical security:
# largest total coefficient-modulus bits for each polynomial modulus degree.
HE_STANDARD_MAX_BITS = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
# Below this scale the CKKS noise of a sum of many ciphertexts reaches half an integer step
# (measured: scale 2^15 keeps the error of 100 summed symmetric ciphertexts under 0.2).
CKKS_MIN_SCALE_BITS = 14


@dataclass
class DataConfig:
    kind: str = "medmnist"
    flag: str = "pneumoniamnist"
    root: str = "data"
    download: bool = False
    size: int = 28
    channels: int = 1
    test_root: str | None = None
    test_fraction: float = 0.2
    image_size: int = 28
    num_samples: int = 600
    num_classes: int = 2
    limit: int | None = None
    mean: float = 0.5
    std: float = 0.5
    augment: bool = False


@dataclass
class TrainConfig:
    local_epochs: int = 2
    batch_size: int = 128
    optimizer: Any = field(default_factory=dict)
    threads: int = 1
    workers: int = 0


@dataclass
class FederationConfig:
    mode: str = "federated"
    num_hospitals: int = 3
    rounds: int = 5
    val_fraction: float = 0.1
    min_hospitals: int = 2
    round_timeout: float = 600.0
    stop_after: int | None = None
    hospital_dir: str = "hospitals"
    cpus_per_hospital: float = 1.0
    gpus_per_hospital: float = 0.0


@dataclass
class PrivacyConfig:
    enabled: bool = False
    epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    secure_mode: bool = False
    grad_sample_mode: str = "bk"
    batchnorm: str = "refuse"


@dataclass
class EncryptionConfig:
    enabled: bool = False
    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: list[int] = field(default_factory=lambda: [60, 49])
    global_scale_bits: int = 14
    fields_per_slot: int = 5
    field_bits: int = 9
    clip: float = 0.05


@dataclass
class LoggerConfig:
    backend: str = "none"
    tracking_uri: str | None = None
    experiment_name: str = "fedmed"


@dataclass
class DeploymentConfig:
    host: str = "127.0.0.1"
    port: int = 0
    insecure: bool = False
    workspace: str | None = None
    keep_workspace: bool = False
    startup_timeout: float = 60.0
    run_timeout: float = 7200.0


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _typed(schema: type, node: Any, group: str) -> Any:
    """Merge ``node`` onto ``schema``'s defaults, so that types are checked and gaps filled."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as err:
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{group}: {msg}") from None
    return merged


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def complete(cfg: DictConfig) -> DictConfig:
    """Return ``cfg`` with each typed group merged onto its schema (types checked, defaults filled)."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key, schema in (
        ("data", DataConfig),
        ("train", TrainConfig),
        ("federation", FederationConfig),
        ("privacy", PrivacyConfig),
        ("encryption", EncryptionConfig),
        ("logger", LoggerConfig),
    ):
        cfg[key] = _typed(schema, cfg.get(key, {}), key)
    if cfg.get("deployment") is not None:
        cfg.deployment = _typed(DeploymentConfig, cfg.deployment, "deployment")
    return cfg


def validate(cfg: DictConfig) -> DictConfig:
    """Check every value a run depends on; return the completed config or raise ConfigError."""
    cfg = complete(cfg)
    data, train, fed = cfg.data, cfg.train, cfg.federation
    _check(data.kind in DATA_KINDS, f"data.kind={data.kind!r} is unknown; use one of {DATA_KINDS}")
    _check(data.channels in (1, 3), f"data.channels={data.channels} must be 1 (greyscale) or 3 (RGB)")
    _check(data.limit is None or data.limit > 0, f"data.limit={data.limit} must be a positive count or null")
    _check(data.std > 0, f"data.std={data.std} must be > 0")
    _check(0 < data.test_fraction < 1, f"data.test_fraction={data.test_fraction} must be in (0, 1)")
    _check(fed.mode in MODES, f"federation.mode={fed.mode!r} is unknown; use one of {MODES}")
    _check(fed.num_hospitals >= 1, f"federation.num_hospitals={fed.num_hospitals} must be >= 1")
    _check(fed.rounds >= 1, f"federation.rounds={fed.rounds} must be >= 1")
    _check(0 < fed.val_fraction < 1, f"federation.val_fraction={fed.val_fraction} must be in (0, 1)")
    _check(
        1 <= fed.min_hospitals <= fed.num_hospitals,
        f"federation.min_hospitals={fed.min_hospitals} must be between 1 and "
        f"federation.num_hospitals={fed.num_hospitals}",
    )
    _check(
        fed.stop_after is None or 1 <= fed.stop_after <= fed.rounds,
        f"federation.stop_after={fed.stop_after} must be between 1 and federation.rounds={fed.rounds} (or null)",
    )
    _check(fed.round_timeout > 0, f"federation.round_timeout={fed.round_timeout} must be > 0 seconds")
    _check(fed.cpus_per_hospital > 0, f"federation.cpus_per_hospital={fed.cpus_per_hospital} must be > 0")
    _check(train.local_epochs >= 1, f"train.local_epochs={train.local_epochs} must be >= 1")
    _check(train.batch_size >= 1, f"train.batch_size={train.batch_size} must be >= 1")
    _check(train.threads >= 1, f"train.threads={train.threads} must be >= 1")
    _check(
        fed.mode != "federated" or train.threads <= math.ceil(fed.cpus_per_hospital),
        f"train.threads={train.threads} exceeds federation.cpus_per_hospital={fed.cpus_per_hospital}: concurrent "
        "hospitals would oversubscribe the cores; raise cpus_per_hospital too",
    )
    _check(
        isinstance(train.optimizer, DictConfig) and "_target_" in train.optimizer,
        "train.optimizer needs a _target_ (e.g. torch.optim.Adam) and _partial_: true",
    )
    lr = train.optimizer.get("lr", 1e-3)
    _check(isinstance(lr, (int, float)) and lr > 0, f"train.optimizer.lr={lr} must be a positive number")
    _check(
        str(cfg.device) == "auto" or str(cfg.device).split(":")[0] in ("cpu", "cuda", "mps"),
        f"device={cfg.device!r} is unknown; use auto, cpu, cuda or cuda:N",
    )
    _check(
        cfg.logger.backend in ("none", "mlflow"),
        f"logger.backend={cfg.logger.backend!r} is unknown; use logger=none or logger=mlflow",
    )
    _validate_privacy(cfg.privacy)
    _validate_encryption(cfg.encryption, fed.num_hospitals)
    if cfg.get("deployment") is not None:
        _validate_deployment(cfg)
    return cfg


def _validate_deployment(cfg: DictConfig) -> None:
    dep = cfg.deployment
    _check(
        dep.host in LOOPBACK,
        f"deployment.host={dep.host!r}: the local deployment binds loopback only; use one of {LOOPBACK}",
    )
    _check(0 <= dep.port <= 65535, f"deployment.port={dep.port} must be 0 (any free port) or 1..65535")
    _check(
        cfg.federation.mode == "federated",
        f"deployment=local runs federated experiments; federation.mode={cfg.federation.mode!r} runs without it",
    )
    _check(
        cfg.data.kind == "medmnist",
        f"deployment=local cuts each hospital's file from a MedMNIST data set; data.kind={cfg.data.kind!r} is not",
    )
    _check(dep.startup_timeout > 0 and dep.run_timeout > 0, "deployment timeouts must be > 0 seconds")


def _validate_privacy(p: DictConfig) -> None:
    if not p.enabled:
        return
    _check(p.epsilon > 0, f"privacy.epsilon={p.epsilon} must be > 0")
    _check(0 < p.delta < 1, f"privacy.delta={p.delta} must be in (0, 1)")
    _check(p.max_grad_norm > 0, f"privacy.max_grad_norm={p.max_grad_norm} must be > 0")
    _check(p.accountant in ACCOUNTANTS, f"privacy.accountant={p.accountant!r} is unknown; use {ACCOUNTANTS}")
    _check(
        p.grad_sample_mode in GRAD_SAMPLE_MODES,
        f"privacy.grad_sample_mode={p.grad_sample_mode!r} is unknown; use one of {GRAD_SAMPLE_MODES}",
    )
    _check(
        p.batchnorm in BATCHNORM_POLICIES,
        f"privacy.batchnorm={p.batchnorm!r} is unknown; use one of {BATCHNORM_POLICIES}",
    )


def value_bits(enc: DictConfig | Any, num_hospitals: int) -> int:
    """Bits each quantised value keeps: the field minus headroom for summing ``num_hospitals``.

    At least one bit of headroom always: SEAL's encoder refuses a full top field at the scale limit.
    """
    return int(enc.field_bits) - max(1, math.ceil(math.log2(max(num_hospitals, 1))))


def _validate_encryption(e: DictConfig, num_hospitals: int) -> None:
    if not e.enabled:
        return
    degree, bits = e.poly_modulus_degree, list(e.coeff_mod_bit_sizes)
    _check(
        degree in HE_STANDARD_MAX_BITS,
        f"encryption.poly_modulus_degree={degree} is not supported; use one of {sorted(HE_STANDARD_MAX_BITS)}",
    )
    _check(len(bits) >= 2, f"encryption.coeff_mod_bit_sizes={bits} needs at least two moduli")
    limit = HE_STANDARD_MAX_BITS[degree]
    _check(
        sum(bits) <= limit,
        f"encryption.coeff_mod_bit_sizes={bits} total {sum(bits)} bits, above the 128-bit security "
        f"limit of {limit} bits for poly_modulus_degree={degree}",
    )
    _check(
        e.global_scale_bits >= CKKS_MIN_SCALE_BITS,
        f"encryption.global_scale_bits={e.global_scale_bits} is too small for exact sums; use >= {CKKS_MIN_SCALE_BITS}",
    )
    _check(e.clip > 0, f"encryption.clip={e.clip} must be > 0")
    _check(e.fields_per_slot >= 1, f"encryption.fields_per_slot={e.fields_per_slot} must be >= 1")
    slot_bits = e.fields_per_slot * e.field_bits
    # A fresh ciphertext lives modulo the first prime only (the last one is the special prime), so the
    # packed slot times the scale must stay below half of it.
    _check(
        slot_bits + e.global_scale_bits <= bits[0] - 1,
        f"encryption: fields_per_slot x field_bits ({slot_bits} bits) + global_scale_bits ({e.global_scale_bits}) "
        f"would overflow the first modulus ({bits[0]} bits); keep their sum <= {bits[0] - 1}",
    )
    _check(
        value_bits(e, num_hospitals) >= 4,
        f"encryption.field_bits={e.field_bits} leaves {value_bits(e, num_hospitals)} bits per value for "
        f"{num_hospitals} hospitals (need >= 4): lower encryption.fields_per_slot and raise field_bits",
    )
