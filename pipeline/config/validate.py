"""The checks that run before anything starts: types, ranges and cross-group rules.

Hydra already refuses overrides of keys that do not exist (struct mode). :func:`validate` merges
each group onto its schema (:mod:`pipeline.config.schema`: types, and the keys its YAML must
set), then checks ranges (``federation.num_hospitals=0``) and cross-group rules (a budget that
needs a hospital count, secure CKKS parameters), and turns every problem into one
:class:`~pipeline.errors.ConfigError` line.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config.schema import GROUP_SCHEMAS, OPTIONAL_GROUP_SCHEMAS
from pipeline.errors import ConfigError
from pipeline.secagg.params import parameter_problems, required_min_hospitals, withstands

DATA_KINDS = ("medmnist", "folder", "manifest", "synthetic")
CACHE_MODES = ("none", "persistent", "memory")
BAD_FILE_POLICIES = ("refuse", "skip")
MODES = ("federated", "centralized", "local")
ACCOUNTANTS = ("rdp", "prv")
GRAD_SAMPLE_MODES = ("ghost", "hooks", "functorch", "bk")
BATCHNORM_POLICIES = ("refuse", "convert")
LOGGERS = ("none", "mlflow", "tensorboard")
LOG_LEVELS = ("warning", "info", "debug")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _typed(schema: type, node: Any, group: str) -> Any:
    """Merge ``node`` onto ``schema``: wrong types and unknown keys raise ConfigError."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as err:
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{group}: {msg}") from None
    return merged


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _missing_keys(node: DictConfig, group: str) -> list[str]:
    return [f"{group}.{k}" for k in node if OmegaConf.is_missing(node, k)]


def complete(cfg: DictConfig) -> DictConfig:
    """Return ``cfg`` resolved, with each group merged onto its schema (types checked).

    Raises:
        ConfigError: a value of the wrong type, or a key the group's YAML file must set but does not.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    groups = dict(GROUP_SCHEMAS)
    groups.update({k: v for k, v in OPTIONAL_GROUP_SCHEMAS.items() if cfg.get(k) is not None})
    for key, schema in groups.items():
        cfg[key] = _typed(schema, cfg.get(key, {}), key)
        missing = _missing_keys(cfg[key], key)
        if missing:
            raise ConfigError(
                f"{', '.join(missing)} not set: give it on the command line ({missing[0]}=...) "
                f"or in the conf/{key}/ option in use"
            )
    return cfg


def validate(cfg: DictConfig) -> DictConfig:
    """Check every value a run depends on; return the completed config or raise ConfigError."""
    cfg = complete(cfg)
    data, train, fed = cfg.data, cfg.train, cfg.federation
    _check(data.kind in DATA_KINDS, f"data.kind={data.kind!r} is unknown; use one of {DATA_KINDS}")
    _check(data.channels in (1, 3), f"data.channels={data.channels} must be 1 (greyscale) or 3 (RGB)")
    _check(data.limit is None or data.limit > 0, f"data.limit={data.limit} must be a positive count or null")
    _check(data.std > 0, f"data.std={data.std} must be > 0")
    _check(fed.mode in MODES, f"federation.mode={fed.mode!r} is unknown; use one of {MODES}")
    _check(fed.num_hospitals >= 1, f"federation.num_hospitals={fed.num_hospitals} must be >= 1")
    _check(fed.rounds >= 1, f"federation.rounds={fed.rounds} must be >= 1")
    _check(0 < fed.val_fraction < 1, f"federation.val_fraction={fed.val_fraction} must be in (0, 1)")
    _validate_min_hospitals(cfg)
    _check(
        fed.stop_after is None or 1 <= fed.stop_after <= fed.rounds,
        f"federation.stop_after={fed.stop_after} must be between 1 and federation.rounds={fed.rounds} (or null)",
    )
    _check(fed.round_timeout > 0, f"federation.round_timeout={fed.round_timeout} must be > 0 seconds")
    _check(fed.cpus_per_hospital > 0, f"federation.cpus_per_hospital={fed.cpus_per_hospital} must be > 0")
    gpus = fed.gpus_per_hospital
    _check(
        gpus == "auto" or (isinstance(gpus, (int, float)) and not isinstance(gpus, bool) and gpus >= 0),
        f"federation.gpus_per_hospital={gpus!r} must be auto or a number >= 0",
    )
    _check(train.local_epochs >= 1, f"train.local_epochs={train.local_epochs} must be >= 1")
    _check(train.batch_size >= 1, f"train.batch_size={train.batch_size} must be >= 1")
    _check(train.threads >= 1, f"train.threads={train.threads} must be >= 1")
    views = 1 if train.augmentation_multiplicity is None else train.augmentation_multiplicity
    _check(views >= 1, f"train.augmentation_multiplicity={views} must be >= 1 (1 = one view per sample)")
    _check(
        views == 1 or bool(cfg.data.get("augment")),
        f"train.augmentation_multiplicity={views} needs data.augment (the views of a sample would be identical); "
        "use data.augment=true or train.augmentation_multiplicity=1",
    )
    _check(
        views == 1 or not cfg.privacy.enabled or cfg.privacy.grad_sample_mode == "bk",
        f"train.augmentation_multiplicity={views} needs privacy.grad_sample_mode=bk (not "
        f"{cfg.privacy.get('grad_sample_mode')}): only bk clips a sample's views as one",
    )
    _check(
        fed.mode != "federated" or train.threads <= math.ceil(fed.cpus_per_hospital),
        f"train.threads={train.threads} exceeds federation.cpus_per_hospital={fed.cpus_per_hospital}: concurrent "
        f"hospitals would oversubscribe the cores; use federation.cpus_per_hospital={train.threads} too, "
        f"or train.threads={math.ceil(fed.cpus_per_hospital)}",
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
        cfg.logger.backend in LOGGERS,
        f"logger.backend={cfg.logger.backend!r} is unknown; use logger=none, logger=mlflow or logger=tensorboard",
    )
    _check(cfg.log.level in LOG_LEVELS, f"log.level={cfg.log.level!r} is unknown; use one of {', '.join(LOG_LEVELS)}")
    _validate_eval(cfg.eval)
    _validate_data(data)
    _validate_privacy(cfg.privacy)
    if cfg.encryption.enabled:
        problems = parameter_problems(cfg.encryption, fed.num_hospitals)
        _check(not problems, problems[0] if problems else "")
    if cfg.get("deployment") is not None:
        _validate_deployment(cfg)
    return cfg


def _validate_eval(ev: DictConfig) -> None:
    threshold = ev.threshold
    number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
    _check(
        threshold == "youden" or (number and 0 < threshold < 1),
        f"eval.threshold={threshold!r} must be youden or a probability in (0, 1)",
    )
    _check(ev.bootstrap >= 0, f"eval.bootstrap={ev.bootstrap} must be >= 0 resamples (0 = no interval)")
    _check(ev.calibration_bins >= 2, f"eval.calibration_bins={ev.calibration_bins} must be >= 2")


# Keys each data kind needs (beyond the ones every kind has).
_FILE_KEYS = ("image_size", "test_fraction", "spatial_dims", "intensity", "cache", "on_bad_file")
DATA_KEYS = {
    "medmnist": ("root", "flag", "download", "size"),
    "folder": ("root", *_FILE_KEYS),
    "manifest": ("manifest", "image_column", "label_column", "multi_label", "label_separator", *_FILE_KEYS),
    "synthetic": ("num_samples", "num_classes", "image_size"),
}


def _is_window(value: Any) -> bool:
    """Two numbers, low < high."""
    if not isinstance(value, ListConfig) or len(value) != 2:
        return False
    low, high = value
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    return numbers and low < high


def _validate_data(data: DictConfig) -> None:
    unset = [f"data.{k}" for k in DATA_KEYS.get(data.kind, ()) if data.get(k) is None]
    _check(not unset, f"data.kind={data.kind} needs {', '.join(unset)}; set it (e.g. {unset[0]}=...)" if unset else "")
    if data.test_fraction is not None:
        _check(0 < data.test_fraction < 1, f"data.test_fraction={data.test_fraction} must be in (0, 1)")
    if data.image_size is not None:
        _check(data.image_size >= 4, f"data.image_size={data.image_size} must be >= 4 pixels")
    dims = data.spatial_dims if data.spatial_dims is not None else 2
    _check(dims in (2, 3), f"data.spatial_dims={dims} must be 2 (images) or 3 (volumes)")
    _check(
        dims == 2 or data.kind in ("folder", "manifest"),
        f"data.spatial_dims=3 needs volumes from files (data=manifest or data=folder); data.kind={data.kind} is 2D",
    )
    _check(
        data.cache is None or data.cache in CACHE_MODES,
        f"data.cache={data.cache!r} is unknown; use one of {CACHE_MODES}",
    )
    _check(
        data.cache != "persistent" or bool(data.cache_dir),
        "data.cache=persistent needs data.cache_dir (a folder only this user can read)",
    )
    _check(
        data.cache != "memory" or (data.cache_memory is not None and data.cache_memory > 0),
        f"data.cache=memory needs data.cache_memory > 0 (MiB per data set), not {data.cache_memory}",
    )
    _check(
        data.on_bad_file is None or data.on_bad_file in BAD_FILE_POLICIES,
        f"data.on_bad_file={data.on_bad_file!r} is unknown; use one of {BAD_FILE_POLICIES}",
    )
    _check(
        not data.multi_label or data.kind == "manifest",
        f"data.multi_label=true needs a manifest listing several findings per image (data=manifest), "
        f"not data.kind={data.kind}",
    )
    if data.classes is not None:
        names = [str(c) for c in data.classes]
        _check(
            len(names) >= 1 and len(set(names)) == len(names) and all(n.strip() for n in names),
            f"data.classes={names} must list distinct, non-empty class names",
        )
        _check(
            data.multi_label or len(names) >= 2,
            f"data.classes={names} names one class; a classifier needs at least two",
        )
    _check(
        data.intensity is None or data.intensity == "minmax" or _is_window(data.intensity),
        f"data.intensity={data.intensity} must be minmax (per image) or a window [low, high] with low < high",
    )
    augment = data.augment
    _check(
        isinstance(augment, bool)
        or (isinstance(augment, ListConfig) and all(isinstance(t, DictConfig) and "_target_" in t for t in augment)),
        f"data.augment={augment} must be true (light random affine), false, or a list of MONAI transforms "
        "by _target_ (e.g. [{_target_: monai.transforms.RandFlip, prob: 0.5, spatial_axis: 1}])",
    )


def _validate_min_hospitals(cfg: DictConfig) -> None:
    """Fill ``federation.min_hospitals`` (null) and check it against ``encryption.colluders``."""
    fed, enc = cfg.federation, cfg.encryption
    n, colluders = int(fed.num_hospitals), int(enc.colluders)
    _check(colluders >= 0, f"encryption.colluders={colluders} must be >= 0")
    explicit = fed.min_hospitals is not None
    if not explicit:  # the same with and without encryption: twins differ only in encryption
        fed.min_hospitals = required_min_hospitals(n, colluders)
    m = int(fed.min_hospitals)
    _check(1 <= m <= n, f"federation.min_hospitals={m} must be between 1 and federation.num_hospitals={n}")
    if not (bool(enc.enabled) and fed.mode == "federated") or withstands(n, m, colluders):
        return
    need = required_min_hospitals(n, colluders)
    if explicit and withstands(n, need, colluders):
        raise ConfigError(
            f"federation.min_hospitals={m} with {n} hospitals lets the server colluding with {colluders} "
            f"hospital(s) unmask an individual update; use federation.min_hospitals >= {need}, or "
            "encryption.colluders=0 to accept that"
        )
    raise ConfigError(
        f"with {n} hospitals no aggregate can hide an update from the server colluding with {colluders} "
        f"hospital(s) (the sum of the others reveals it); use federation.num_hospitals={colluders + 2} or more, "
        "or encryption.colluders=0"
    )


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
        f"deployment=local cuts each hospital's file from a MedMNIST data set; data.kind={cfg.data.kind!r} is not "
        "(use data=pneumoniamnist or data=medmnist)",
    )
    _check(
        dep.startup_timeout > 0 and dep.run_timeout > 0,
        f"deployment.startup_timeout={dep.startup_timeout} and deployment.run_timeout={dep.run_timeout} must both be "
        "> 0 seconds",
    )


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
    _check(
        not (p.reproducible and p.secure_mode),
        "privacy.reproducible=true seeds the DP noise from the config, privacy.secure_mode=true draws it from the "
        "OS CSPRNG: choose one (privacy.secure_mode=false for a reproducible test run)",
    )
    cap = p.max_lifetime_epsilon
    _check(
        cap is None or cap >= p.epsilon,
        f"privacy.max_lifetime_epsilon={cap} is below privacy.epsilon={p.epsilon}: no hospital could take part; "
        f"use a cap >= {p.epsilon} or null",
    )
