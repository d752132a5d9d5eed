"""Where the DP mechanism's randomness comes from: never the config's seed, unless asked for and marked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose_cfg
from scipy import stats

from pipeline.errors import ConfigError
from pipeline.privacy.randomness import (
    REPRODUCIBLE,
    SECURE,
    UNPREDICTABLE,
    PoissonBatchSampler,
    SecureRandomness,
    mechanism_randomness,
    poisson_loader,
    randomness_kind,
)


def test_the_config_chooses_the_source():
    assert randomness_kind(compose_cfg().privacy) == SECURE  # the default
    assert randomness_kind(compose_cfg("privacy.secure_mode=false").privacy) == UNPREDICTABLE
    reproducible = compose_cfg("privacy.reproducible=true", "privacy.secure_mode=false").privacy
    assert randomness_kind(reproducible) == REPRODUCIBLE


def test_reproducible_and_secure_together_are_refused():
    with pytest.raises(ConfigError, match="privacy.reproducible=true"):
        compose_cfg("privacy.reproducible=true")


@pytest.mark.parametrize("kind", [SECURE, UNPREDICTABLE])
def test_two_sources_for_the_same_seed_hospital_and_round_differ(kind):
    a, b = (mechanism_randomness(kind, 42, 0, 1) for _ in range(2))

    assert not torch.equal(a.uniform(1000), b.uniform(1000))
    shape = torch.Size([500])
    assert not torch.equal(
        a.normal(shape, 1.0, torch.float32, torch.device("cpu")),
        b.normal(shape, 1.0, torch.float32, torch.device("cpu")),
    )


def test_reproducible_sources_repeat_for_the_same_seed_hospital_and_round_only():
    same = [mechanism_randomness(REPRODUCIBLE, 42, 0, 1).uniform(100) for _ in range(2)]
    others = [mechanism_randomness(REPRODUCIBLE, *args).uniform(100) for args in ((43, 0, 1), (42, 1, 1), (42, 0, 2))]

    assert torch.equal(*same)
    assert all(not torch.equal(same[0], o) for o in others)


@pytest.mark.parametrize("kind", [SECURE, UNPREDICTABLE, REPRODUCIBLE])
def test_uniforms_and_gaussians_have_their_distributions(kind):
    source = mechanism_randomness(kind, 1, 0, 1)
    u = source.uniform(200_000).numpy()
    z = source.normal(torch.Size([200_000]), 2.5, torch.float64, torch.device("cpu")).numpy()

    assert u.min() >= 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert stats.kstest(z / 2.5, "norm").pvalue > 1e-3
    assert np.std(z) == pytest.approx(2.5, rel=0.01)


def test_secure_gaussians_are_the_hardened_sum_of_four_draws():
    assert SecureRandomness.HARDENING_DRAWS == 4
    z = SecureRandomness().normal(torch.Size([4, 5]), 1.0, torch.float32, torch.device("cpu"))
    assert z.shape == (4, 5) and z.dtype == torch.float32


def test_poisson_batches_include_each_sample_with_the_sample_rate():
    sampler = PoissonBatchSampler(1000, 0.1, 200, mechanism_randomness(UNPREDICTABLE, 0, 0, 0))

    sizes = [len(batch) for batch in sampler]

    assert len(sizes) == len(sampler) == 200
    assert np.mean(sizes) == pytest.approx(100, rel=0.05)  # Binomial(1000, 0.1)
    assert np.std(sizes) == pytest.approx(np.sqrt(1000 * 0.1 * 0.9), rel=0.25)


def test_the_poisson_loader_keeps_the_shape_of_an_empty_batch():
    data = torch.utils.data.TensorDataset(torch.zeros(3, 1, 4, 4), torch.zeros(3, dtype=torch.int64))
    loader = poisson_loader(data, 1e-9 + 1 / 2, mechanism_randomness(REPRODUCIBLE, 0, 0, 0))
    sampler = PoissonBatchSampler(3, 1e-6, 1, mechanism_randomness(UNPREDICTABLE, 0, 0, 0))
    empty = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=loader.collate_fn)

    ((x, y),) = list(empty)

    assert len(loader) == 2
    assert x.shape == (0, 1, 4, 4) and y.shape == (0,)


def test_the_secure_stream_never_runs_out_whatever_the_os_entropy(monkeypatch):
    # all-ones entropy is the worst nonce: with the block counter taken from it, 2^32 - 1, the
    # ChaCha20 stream would overflow after one 64-byte block (a deployed round failed so)
    monkeypatch.setattr("pipeline.privacy.randomness.os.urandom", lambda n: b"\xff" * n)
    source = SecureRandomness()

    z = source.normal(torch.Size([100_000]), 1.0, torch.float64, torch.device("cpu"))

    assert z.shape == (100_000,) and np.isfinite(z.numpy()).all()
