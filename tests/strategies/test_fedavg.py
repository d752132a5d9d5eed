"""FedAvg: the numpy reference, the server's running sums, and the hospitals' encode/decode path."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose_cfg
from hydra.utils import instantiate

from pipeline.secagg import keys as crypto
from pipeline.secagg.codec import CkksCodec, PlainCodec
from pipeline.secagg.params import num_chunks, value_bits
from pipeline.secagg.server_sum import CiphertextSum, PlainSum, new_sum
from pipeline.secagg.wire import Payload
from strategies import SecureFedAvg, SecureFedProx
from strategies.aggregation import weighted_average


def _hospital_models(k: int, size: int, seed: int, spread: float) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """A global model w0, k local models within ``spread`` of it, and k training-set sizes."""
    rng = np.random.default_rng(seed)
    w0 = rng.normal(0, 1, size)
    models = [w0 + rng.uniform(-spread, spread, size) for _ in range(k)]
    counts = [int(c) for c in rng.integers(50, 500, size=k)]
    return w0, models, counts


def _federated_round(codec, total, w0, models, counts, seed: int = 0) -> np.ndarray:
    """One round as the pipeline runs it: encode u_k, add on the server, decode, divide by the total weight."""
    n_ref = max(counts)
    weights = [n / n_ref for n in counts]
    rng = np.random.default_rng(seed)
    for w_k, weight in zip(models, weights, strict=True):
        payload = codec.encode(weight * (w_k - w0), rng)
        assert total.problem(payload) is None
        total.add(payload)
    summed = codec.decode(total.result(), count=len(models), size=len(w0))
    return w0 + summed / sum(weights)


def test_weighted_average_equals_a_hand_computation():
    # Prepare
    a, b, c = np.array([1.0, 2.0]), np.array([3.0, 6.0]), np.array([0.0, -4.0])
    weights = [1, 3, 0]

    # Execute
    got = weighted_average([a, b, c], weights)

    # Assert: (1*a + 3*b + 0*c) / 4
    np.testing.assert_allclose(got, [2.5, 5.0])
    assert got.dtype == np.float64


def test_weighted_average_of_equal_weights_is_the_mean():
    # Prepare
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(3, 4)) for _ in range(5)]

    # Execute
    got = weighted_average(arrays, [2.0] * 5)

    # Assert
    np.testing.assert_allclose(got, np.mean(arrays, axis=0), rtol=1e-12)


@pytest.mark.parametrize(
    "weights",
    [[-1.0, 2.0], [0.0, 0.0], [1.0], [], [[1.0, 2.0]]],
    ids=["negative", "zero-total", "too-few", "empty", "2d"],
)
def test_weighted_average_refuses_bad_weights(weights):
    # Prepare
    arrays = [np.zeros(3), np.ones(3)]

    # Execute / Assert
    with pytest.raises(ValueError, match="non-negative"):
        weighted_average(arrays, weights)


def test_negative_proximal_mu_is_refused():
    # Execute / Assert
    with pytest.raises(ValueError, match="proximal_mu"):
        SecureFedProx(proximal_mu=-0.1)


@pytest.mark.parametrize(("option", "cls"), [("fedavg", SecureFedAvg), ("fedprox", SecureFedProx)])
def test_strategy_config_instantiates_the_strategy(option, cls):
    # Prepare
    cfg = compose_cfg(f"strategy={option}", "data=synthetic")

    # Execute
    strategy = instantiate(cfg.strategy)

    # Assert
    assert type(strategy) is cls
    assert getattr(strategy, "proximal_mu", 0.0) == pytest.approx(0.01 if option == "fedprox" else 0.0)


def test_new_sum_is_plain_without_a_server_context():
    # Execute
    total = new_sum(size=7, server_context=None)

    # Assert
    assert isinstance(total, PlainSum) and total.size == 7


def test_new_sum_is_encrypted_with_a_server_context():
    # Prepare
    enc = compose_cfg("data=synthetic").encryption
    server = crypto.server_context_bytes(crypto.make_secret_context(enc))

    # Execute
    total = new_sum(size=7, server_context=server, num_chunks=1)

    # Assert
    assert isinstance(total, CiphertextSum) and total.num_chunks == 1


def test_plain_sum_then_division_reproduces_weighted_average():
    # Prepare
    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=257).astype(np.float32) for _ in range(4)]
    counts = [10, 250, 33, 71]
    total = new_sum(size=257, server_context=None)

    # Execute
    for a, n in zip(arrays, counts, strict=True):
        payload = Payload(values=(n * a.astype(np.float64)).astype(np.float32))
        assert total.problem(payload) is None
        total.add(payload)
    got = total.result().values.astype(np.float64) / sum(counts)

    # Assert
    np.testing.assert_allclose(got, weighted_average(arrays, counts), rtol=1e-5, atol=1e-5)


def test_plain_sum_reports_bad_replies():
    # Prepare
    total = PlainSum(size=3)

    # Execute
    problems = [
        total.problem(Payload(chunks=[b"x"])),
        total.problem(Payload(values=np.zeros(4, np.float32))),
        total.problem(Payload(values=np.array([0.0, np.nan, 1.0], np.float32))),
        total.problem(Payload(values=np.zeros(3, np.float32))),
    ]

    # Assert
    assert "ciphertexts" in problems[0]
    assert "shape" in problems[1]
    assert "NaN" in problems[2]
    assert problems[3] is None


def test_empty_sums_refuse_to_give_a_result():
    # Execute / Assert
    with pytest.raises(ValueError, match="nothing was added"):
        PlainSum(size=2).result()
    with pytest.raises(ValueError):
        PlainSum(size=0)


def test_plaintext_codec_round_equals_weighted_average():
    # Prepare
    w0, models, counts = _hospital_models(k=3, size=500, seed=2, spread=0.5)

    # Execute
    got = _federated_round(PlainCodec(), PlainSum(size=500), w0, models, counts)

    # Assert: float32 on the wire, otherwise exact
    np.testing.assert_allclose(got, weighted_average(models, counts), rtol=0, atol=1e-6)


def _packing(k: int) -> tuple[str, ...]:
    return ("encryption.colluders=0",) if k < 3 else ()  # 2 hospitals cannot withstand a colluder


@pytest.mark.parametrize("k", [2, 3])
def test_ckks_codec_round_equals_weighted_average_within_quantisation(k):
    # Prepare
    cfg = compose_cfg("data=synthetic", f"federation.num_hospitals={k}", f"federation.min_hospitals={k}", *_packing(k))
    enc = cfg.encryption
    secret = crypto.make_secret_context(enc)
    server = crypto.server_context_bytes(secret)
    size = 3000
    codec = CkksCodec(secret, server, enc, k)
    total = new_sum(size=size, server_context=server, num_chunks=num_chunks(size, enc))
    w0, models, counts = _hospital_models(k=k, size=size, seed=3, spread=0.9 * enc.clip)

    # Execute
    got = _federated_round(codec, total, w0, models, counts, seed=4)

    # Assert: each summand is off by at most one quantisation step
    step = 2 * enc.clip / ((1 << value_bits(enc, k)) - 1)
    reference = weighted_average(models, counts)
    np.testing.assert_allclose(got, reference, rtol=0, atol=k * step)
    # stochastic rounding is unbiased: the errors average out
    assert abs(np.mean(got - reference)) < step / 10
