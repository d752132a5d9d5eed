"""Command-line typos stop in one line with a "did you mean"; CKKS errors name settings that work."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT, compose_cfg

from pipeline.config.suggest import override_problem
from pipeline.errors import ConfigError

TYPOS = [
    (
        "federation.num_hospitlas=3",
        "unknown config key federation.num_hospitlas (did you mean federation.num_hospitals?)",
    ),
    ("privcy.epsilon=3", "unknown config key privcy.epsilon (did you mean privacy.epsilon?)"),
    ("seeed=1", "unknown config key seeed (did you mean seed?)"),
    ("train.optimizer.lrr=0.1", "did you mean train.optimizer.lr?"),
    ("~federation.num_hospitlas", "did you mean federation.num_hospitals?"),
    (
        "model=resnet",
        "model=resnet is not an option of conf/model/ (did you mean resnet18? options: cnn, densenet121, he_cnn, "
        "resnet18, scatter_cnn)",
    ),
    ("privacy=eps2", "privacy=eps2 is not an option of conf/privacy/"),
    ("experiment=quik", "experiment=quik is not an option of conf/experiment/ (did you mean quick?"),
    ("data.test_root=/x", "it is a key of data=folder"),
    ("deployment.port=5", "it is a key of deployment=local"),
]


@pytest.mark.parametrize(("override", "expected"), TYPOS, ids=[o for o, _ in TYPOS])
def test_a_typo_names_the_closest_key_or_option(override, expected):
    # Execute
    problem = override_problem([override])

    # Assert
    assert problem is not None and expected in problem
    assert "\n" not in problem


def test_an_unknown_option_in_a_group_sweep_is_named():
    # Execute
    problem = override_problem(["-m", "model=cnn,resnt18"])

    # Assert
    assert problem is not None and "model=resnt18" in problem and "did you mean resnet18?" in problem


VALID = [
    ["federation.num_hospitals=3", "privacy.epsilon=3", "seed=1"],
    ["data=folder", "data.test_root=/tmp/test"],
    ["deployment=local", "deployment.port=9092"],
    ["experiment=quick"],
    ["experiment=quick", "data.num_samples=50"],
    ["+new.key=1"],
    ["+new.key=1", "new.key=2"],
    ["-m", "federation.num_hospitals=3,4"],
    ["--multirun", "model=cnn,resnet18", "model.dropout=0.1"],
    ["hydra.run.dir=/tmp/x", "hydra/launcher=basic"],
    ["resume=/tmp/a_run"],
    ["data.root='/data/a=b'", 'run_dir="/tmp/with space"'],
    ["~logger", "seed=3"],
    ["deployment=null"],  # Hydra refuses it in its own words (a group is deselected with ~deployment)
    ["--config-name", "other", "seeed=1"],
    ["model=("],
]


@pytest.mark.parametrize("argv", VALID, ids=[" ".join(a) for a in VALID])
def test_overrides_hydra_accepts_or_judges_itself_are_not_refused(argv):
    # Execute / Assert
    assert override_problem(argv) is None


def _suggested(message: str) -> list[str]:
    """The ``key=value`` overrides after the message's last ``use``."""
    return re.findall(r"\b(?:encryption|federation)\.\w+=\S+", message.rsplit("use ", 1)[1])


@pytest.mark.parametrize(
    "overrides",
    [
        ["federation.num_hospitals=500"],
        ["federation.num_hospitals=500", "encryption.global_scale_bits=40"],
        [f"federation.num_hospitals={2**22}"],
    ],
    ids=["500_hospitals", "500_hospitals_scale_40", "4M_hospitals"],
)
def test_a_packing_that_does_not_fit_names_overrides_that_validate(overrides):
    # Prepare
    with pytest.raises(ConfigError) as err:
        compose_cfg(*overrides)
    suggested = _suggested(str(err.value))

    # Execute: applied as printed, the config validates
    cfg = compose_cfg(*overrides, *suggested)

    # Assert
    assert any(s.startswith("encryption.fields_per_slot=") for s in suggested)
    assert cfg.encryption.fields_per_slot == int(dict(s.split("=") for s in suggested)["encryption.fields_per_slot"])


def test_insecure_moduli_name_a_degree_that_holds_them():
    # Execute
    with pytest.raises(ConfigError) as err:
        compose_cfg("encryption.coeff_mod_bit_sizes=[60,60]")

    # Assert: 120 bits fit the 218-bit limit of degree 8192
    assert "use encryption.poly_modulus_degree=8192" in str(err.value)
    compose_cfg("encryption.coeff_mod_bit_sizes=[60,60]", "encryption.poly_modulus_degree=8192")


def test_the_cli_stops_a_typo_in_one_line_before_hydra():
    # Execute
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "federation.num_hospitlas=3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Assert
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "did you mean federation.num_hospitals" in done.stderr
