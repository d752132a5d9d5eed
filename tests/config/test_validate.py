"""Hydra composition of every config group option, and validate()'s one-line errors for bad values."""

from __future__ import annotations

import math

import pytest
from conftest import CONF_DIR, compose_cfg, compose_raw
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from pipeline.config import validate
from pipeline.errors import ConfigError
from pipeline.secagg.params import HE_STANDARD_MAX_BITS, value_bits

# Options that need an override to compose (folder data has no default root).
NEEDS = {
    ("data", "folder"): ["data.root=/tmp/hospital_export"],
    ("data", "manifest"): ["data.manifest=/tmp/hospital_export/labels.csv"],
}
# Options the pipeline must ship; the parametrisation below also covers any newer file in conf/.
REQUIRED = {
    "data": {"pneumoniamnist", "medmnist", "folder", "manifest", "synthetic"},
    "partition": {"iid", "dirichlet", "linear", "exponential"},
    "model": {"cnn", "resnet18", "densenet121"},
    "strategy": {"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi"},
    "privacy": {"dpsgd", "none"},
    "encryption": {"ckks", "none"},
}
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
GROUP_OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def test_conf_folder_holds_every_required_option():
    # Execute
    on_disk = {g: {o for gg, o in GROUP_OPTIONS if gg == g} for g in GROUPS}

    # Assert
    for group, options in REQUIRED.items():
        assert options <= on_disk.get(group, set()), group


def _own_values(group: str, option: str) -> dict:
    """The plain values an option file sets itself (not interpolated, missing, or null = computed)."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"), resolve=False)
    raw.pop("defaults", None)
    return {k: v for k, v in raw.items() if v is not None and not (isinstance(v, str) and ("${" in v or v == "???"))}


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes_and_validates(group, option):
    # Prepare
    extra = NEEDS.get((group, option), [])
    global_package = group == "experiment"  # experiments are `# @package _global_` bundles
    expected = {} if global_package else _own_values(group, option)

    # Execute
    cfg = compose_cfg(f"{group}={option}", *extra)

    # Assert: validated, and the option's own keys made it into the config
    assert cfg.federation.num_hospitals >= 1
    for key, want in expected.items():
        got = cfg[group][key]
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == want, f"{group}.{key}"


def test_default_config_resolves_and_run_dir_is_null():
    # Execute
    cfg = compose_cfg()

    # Assert
    assert cfg.run_dir is None
    assert cfg.privacy.enabled is True and cfg.encryption.enabled is True
    assert cfg.partition.num_partitions == cfg.federation.num_hospitals == 3
    assert cfg.model._target_ == "models.builders.scatter_cnn"  # ScatterNet + CNN (issue 19)


def test_medmnist_group_inherits_pneumoniamnist_with_its_own_flag():
    # Execute
    cfg = compose_cfg("data=medmnist")

    # Assert
    assert cfg.data.flag == "breastmnist"
    assert cfg.data.kind == "medmnist"


def test_partition_follows_the_hospital_count_and_seed():
    # Execute
    cfg = compose_cfg("partition=dirichlet", "federation.num_hospitals=7", "seed=5")

    # Assert
    assert cfg.partition.num_partitions == 7
    assert cfg.partition.seed == 5


def test_fedprox_sets_a_positive_proximal_mu():
    # Execute
    fedavg = compose_cfg("strategy=fedavg")
    fedprox = compose_cfg("strategy=fedprox")

    # Assert
    assert "proximal_mu" not in fedavg.strategy
    assert fedprox.strategy._target_ == "strategies.SecureFedProx" and fedprox.strategy.proximal_mu > 0.0


def test_ten_hospital_ckks_settings_keep_usable_value_bits():
    # Execute: the setting conf/encryption/ckks.yaml recommends for 10-30 hospitals
    cfg = compose_cfg(
        "federation.num_hospitals=10",
        "encryption.fields_per_slot=4",
        "encryption.field_bits=10",
        "encryption.global_scale_bits=14",
    )

    # Assert: 6-bit values; and the automatic min_hospitals withstands one colluder (2m - 1 > n + 1)
    assert value_bits(cfg.encryption, 10) == 6
    assert sum(cfg.encryption.coeff_mod_bit_sizes) <= HE_STANDARD_MAX_BITS[cfg.encryption.poly_modulus_degree]
    assert cfg.federation.min_hospitals == 7


def test_a_setting_that_does_not_fit_names_one_that_does():
    # Execute
    with pytest.raises(ConfigError) as err:
        compose_cfg("federation.num_hospitals=10")

    # Assert: the suggestion, applied, validates
    message = str(err.value)
    suggestion = message.split("use ")[-1].split()
    assert suggestion[0].startswith("encryption.fields_per_slot=")
    assert suggestion[1].startswith("encryption.field_bits=")
    cfg = compose_cfg("federation.num_hospitals=10", *suggestion)
    assert value_bits(cfg.encryption, 10) >= 4


@pytest.mark.parametrize(
    ("field_bits", "hospitals", "expected"),
    [(9, 2, 8), (9, 3, 7), (9, 4, 7), (9, 5, 6), (11, 10, 7), (11, 16, 7), (11, 17, 6)],
)
def test_value_bits_reserves_log2_hospitals_of_headroom(field_bits, hospitals, expected):
    # Prepare
    enc = OmegaConf.create({"field_bits": field_bits})

    # Execute / Assert
    assert value_bits(enc, hospitals) == expected


def test_he_standard_table_grows_with_the_degree():
    # Prepare
    degrees = sorted(HE_STANDARD_MAX_BITS)

    # Execute
    bits = [HE_STANDARD_MAX_BITS[d] for d in degrees]

    # Assert: the default [60, 49] modulus exactly fits degree 4096
    assert bits == sorted(bits)
    assert HE_STANDARD_MAX_BITS[4096] == 60 + 49


TEN_HOSPITAL_CKKS = ("encryption.fields_per_slot=4", "encryption.field_bits=10", "encryption.global_scale_bits=14")


@pytest.mark.parametrize(
    ("hospitals", "extra"),
    [(1, ()), (2, ()), (3, ()), (1, TEN_HOSPITAL_CKKS), (2, TEN_HOSPITAL_CKKS), (10, TEN_HOSPITAL_CKKS)],
    ids=["1-default", "2-default", "3-default", "1-wide", "2-wide", "10-wide"],
)
def test_accepted_ckks_settings_fit_the_ckks_encoder(hospitals, extra):
    """SEAL's CKKS encoder refuses a slot once value x scale exceeds 2^(first modulus bits - 2).

    A masked slot is any integer below 2^slot_bits and the sum of the hospitals' slots needs
    log2(hospitals) more bits, so every configuration validate() accepts must keep both below the
    first modulus (and the sum an exact float64 integer).
    """
    # Prepare
    raw = compose_raw(f"federation.num_hospitals={hospitals}", "encryption.colluders=0", *extra)

    # Execute: every one of these shipped settings must be accepted
    cfg = validate(raw)

    # Assert
    e = cfg.encryption
    bits = e.fields_per_slot * e.field_bits
    assert bits + e.global_scale_bits <= e.coeff_mod_bit_sizes[0] - 2  # one masked slot encodes
    assert bits + max(1, math.ceil(math.log2(hospitals))) + e.global_scale_bits <= e.coeff_mod_bit_sizes[0] - 1
    assert bits + max(1, math.ceil(math.log2(hospitals))) <= 52


BAD_VALUES = [
    ("federation.num_hospitals=0", "federation.num_hospitals"),
    ("federation.rounds=0", "federation.rounds"),
    ("privacy.epsilon=0", "privacy.epsilon"),
    ("privacy.epsilon=-1", "privacy.epsilon"),
    ("privacy.delta=1.0", "privacy.delta"),
    ("privacy.accountant=foo", "privacy.accountant"),
    ("encryption.poly_modulus_degree=2048", "poly_modulus_degree=2048"),
    ("encryption.coeff_mod_bit_sizes=[60,60]", "encryption.coeff_mod_bit_sizes"),
    ("encryption.field_bits=12", "field_bits"),
    ("federation.mode=foo", "federation.mode"),
    ("device=tpu", "device"),
    ("federation.num_hospitals=abc", "federation"),
    ("federation.min_hospitals=4", "federation.min_hospitals"),
    ("federation.min_hospitals=2", "federation.min_hospitals=2 with 3 hospitals lets the server colluding with 1"),
    ("federation.num_hospitals=2", "with 2 hospitals no aggregate can hide an update"),
    ("encryption.colluders=-1", "encryption.colluders=-1"),
    ("encryption.global_scale_bits=10", "encryption.global_scale_bits"),
    ("encryption.poly_modulus_degree=3000", "encryption.poly_modulus_degree"),
    ("data.channels=2", "data.channels"),
    ("train.optimizer.lr=-0.1", "train.optimizer.lr"),
]


@pytest.mark.parametrize(("override", "key"), BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_value_raises_config_error_naming_the_key(override, key):
    # Prepare: Hydra itself accepts the value; validate() is what refuses it
    cfg = compose_raw(override)

    # Execute
    with pytest.raises(ConfigError) as err:
        validate(cfg)

    # Assert
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_insecure_degree_message_names_the_security_limit():
    # Execute
    with pytest.raises(ConfigError) as err:
        compose_cfg("encryption.poly_modulus_degree=2048")

    # Assert
    assert "109" in str(err.value) and str(HE_STANDARD_MAX_BITS[2048]) in str(err.value)


def test_field_overflow_message_states_the_first_modulus_limit():
    # Execute: 5 x 12 + 14 = 74 > 59
    with pytest.raises(ConfigError) as err:
        compose_cfg("encryption.field_bits=12")

    # Assert
    assert "60 bits" in str(err.value) and "59" in str(err.value)


def test_too_many_hospitals_for_the_field_bits_is_refused():
    # Execute: 9-bit fields with 64 hospitals leave 3 bits per value
    with pytest.raises(ConfigError) as err:
        compose_cfg("federation.num_hospitals=64")

    # Assert
    assert "encryption.field_bits" in str(err.value)


def test_privacy_values_are_not_checked_when_privacy_is_off():
    # Execute
    cfg = compose_cfg("privacy=none", "privacy.epsilon=-1")

    # Assert
    assert cfg.privacy.enabled is False


def test_encryption_values_are_not_checked_when_encryption_is_off():
    # Execute
    cfg = compose_cfg("encryption=none", "encryption.field_bits=40")

    # Assert
    assert cfg.encryption.enabled is False


def test_cuda_device_with_index_is_accepted():
    # Execute
    cfg = compose_cfg("device=cuda:1")

    # Assert
    assert cfg.device == "cuda:1"


def test_typo_in_a_key_is_refused_by_hydra():
    # Execute / Assert
    with pytest.raises(ConfigCompositionException) as err:
        compose_raw("federation.num_hospitlas=3")
    assert "num_hospitlas" in str(err.value)


def test_unknown_group_option_is_refused_by_hydra():
    # Execute / Assert
    with pytest.raises(ConfigCompositionException) as err:
        compose_raw("model=vgg")
    assert "model/vgg" in str(err.value)
