"""Encrypted inference in one process: the compiled network, the two parties and their contexts (real TenSEAL)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import tenseal as ts
import torch
from conftest import compose_cfg, make_run
from torch import nn

from models.he_cnn import ScaledSquare, he_cnn
from pipeline.errors import ConfigError, DataError
from pipeline.inference.clear import input_tensors, load_run, predict_logits, read_split
from pipeline.inference.encrypted import (
    IM2COL,
    SLOTS,
    CkksParams,
    DataOwner,
    ModelOwner,
    he_network,
    pack,
    rescale_factors,
    seal_decrypt,
    seal_primes,
    unpack,
)
from pipeline.task.data import ImageDataset, make_synthetic
from pipeline.task.model import build_model

# Encrypted logits of a briefly trained he_cnn (logits of several units) match plaintext within this.
LOGIT_TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly trained default he_cnn, 3 real test images (preprocessed) and their plaintext logits."""
    run = load_run(make_run(tmp_path_factory.mktemp("he_run"), train_epochs=2))
    x = input_tensors(run, read_split(run, "test").head(3))
    return run, x.double().numpy(), predict_logits(run, x).double().numpy()


@pytest.fixture(scope="module")
def parties(trained):
    """The data owner (its own secret context) and the model owner (the evaluation context only)."""
    run, x, _ = trained
    network = he_network(run.model, run.channels, run.image_size)
    data_owner = DataOwner(network.spec)
    return data_owner, ModelOwner(network, data_owner.evaluation_context())


@pytest.fixture(scope="module")
def exchanged(trained, parties):
    """Queries for 2 real test images (im2col) and the model owner's encrypted results."""
    _, x, _ = trained
    data_owner, model_owner = parties
    queries = [data_owner.encrypt(x[i : i + 1]) for i in range(2)]
    return queries, [model_owner.evaluate(q) for q in queries]


def test_compiled_network_reproduces_the_model(trained):
    # Prepare
    run, x, plain = trained

    # Execute
    network = he_network(run.model, run.channels, run.image_size)

    # Assert: the square factors folded into the linear layers change nothing
    np.testing.assert_allclose(network.plain(x), plain, rtol=1e-4, atol=1e-4)
    assert network.spec.depth == 5 and network.spec.windows == 64
    assert np.abs(plain).max() > 1.0  # trained: logits large enough for scale errors to show


def test_encrypted_logits_match_plaintext_on_real_test_images(trained, parties, exchanged):
    # Prepare
    _, _, plain = trained
    data_owner, _ = parties
    _, results = exchanged

    # Execute
    logits = np.concatenate([data_owner.decrypt(r) for r in results])

    # Assert
    np.testing.assert_allclose(logits, plain[:2], atol=LOGIT_TOLERANCE, rtol=0)
    assert (logits.argmax(1) == plain[:2].argmax(1)).all()


def test_model_owner_holds_no_secret_key_and_cannot_decrypt(parties, exchanged):
    # Prepare
    data_owner, model_owner = parties
    queries, results = exchanged

    # Execute / Assert
    assert data_owner.context.has_secret_key()
    assert not model_owner.context.has_secret_key()
    assert model_owner.context is not data_owner.context
    for message in (queries[0], results[0]):
        _, blobs = unpack(message)
        assert np.isfinite(seal_decrypt(data_owner.context, blobs[0])).all()  # the data owner can
        with pytest.raises(ValueError, match="Secret key"):
            seal_decrypt(model_owner.context, blobs[0])


def test_batch_query_holds_several_images_and_matches_plaintext():
    # Prepare: a small network on 12x12 images (the slots layout costs one ciphertext per pixel),
    # trained briefly so that its logits are not tiny
    s = make_synthetic(200, 2, 12, 1, seed=0)
    data = ImageDataset(s.train_x, s.train_y, 0.5, 0.5)
    torch.manual_seed(0)
    model = he_cnn(1, 2, 12, conv_channels=2, kernel_size=4, stride=4, hidden=4)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.x), data.y).backward()
        opt.step()
    x = data.x[:5].double().numpy()
    with torch.no_grad():
        plain = model(data.x[:5]).double().numpy()
    network = he_network(model, 1, 12)
    data_owner = DataOwner(network.spec, layout=SLOTS, batch=5)
    model_owner = ModelOwner(network, data_owner.evaluation_context())

    # Execute
    query = data_owner.encrypt(x)
    logits = data_owner.decrypt(model_owner.evaluate(query))

    # Assert: one query, one ciphertext per pixel, every image's logits
    header, blobs = unpack(query)
    assert header == {"layout": SLOTS, "count": 5} and len(blobs) == 12 * 12
    assert np.abs(plain).max() > 1.0
    np.testing.assert_allclose(logits, plain, atol=LOGIT_TOLERANCE, rtol=0)
    assert not data_owner.context.has_galois_keys()  # no rotations in this layout


def test_model_owner_refuses_a_context_with_the_secret_key(trained):
    # Prepare
    run, _, _ = trained
    network = he_network(run.model, run.channels, run.image_size)
    data_owner = DataOwner(network.spec)
    leaked = pack({"ckks": asdict(CkksParams())}, [data_owner.context.serialize(save_secret_key=True)])

    # Execute / Assert
    with pytest.raises(ConfigError, match="secret key"):
        ModelOwner(network, leaked)


def test_default_cnn_is_refused_naming_its_layers():
    # Prepare
    model = build_model(compose_cfg("model=cnn", "data=synthetic"), 1, 2, 28)

    # Execute
    with pytest.raises(ConfigError) as err:
        he_network(model, 1, 28)

    # Assert: one line naming both kinds CKKS cannot evaluate, and the way out
    message = str(err.value)
    assert "GroupNorm" in message and "ReLU" in message and "model=he_cnn" in message
    assert "\n" not in message


def test_relu_in_an_otherwise_friendly_network_is_refused():
    # Prepare
    model = he_cnn(1, 2, 28)
    model[1] = nn.ReLU()

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"ReLU \(layer '1'\)"):
        he_network(model, 1, 28)


class _Residual(nn.Module):
    """Friendly layers, but a forward pass that is not their chain."""

    def __init__(self) -> None:
        super().__init__()
        self.body = he_cnn(1, 2, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x.mean()


def test_a_forward_pass_that_is_not_the_layer_chain_is_refused():
    with pytest.raises(ConfigError, match="not the chain"):
        he_network(_Residual(), 1, 28)


def test_padded_convolution_is_refused():
    # Prepare
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), ScaledSquare(), nn.Flatten(), nn.Linear(2 * 28 * 28, 2))

    # Execute / Assert
    with pytest.raises(ConfigError, match="unpadded"):
        he_network(model, 1, 28)


def test_seal_primes_are_the_context_modulus_chain():
    # Prepare
    params = CkksParams()
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree, coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes)
    )
    ctx.global_scale = 2.0**params.scale_bits

    # Execute
    primes = seal_primes(params.poly_modulus_degree, params.coeff_mod_bit_sizes)
    factors = rescale_factors(ctx, params)

    # Assert: every prime is 1 mod 2N with the asked bit size; a fresh value times 1.0 picks up factors[0]
    assert [p.bit_length() for p in primes] == list(params.coeff_mod_bit_sizes)
    assert all(p % (2 * params.poly_modulus_degree) == 1 for p in primes)
    drift = ts.ckks_vector(ctx, [1.0]) * 1.0
    assert drift.decrypt()[0] == pytest.approx(factors[0], abs=1e-4)
    assert abs(factors[0] - 1) > 5e-4  # the drift calibration undoes is real
    other = CkksParams(8192, (31, 26, 26, 26, 26, 26, 27, 30), 26)
    with pytest.raises(ConfigError, match="modulus chain"):
        rescale_factors(ctx, other)


def test_parameters_that_cannot_hold_the_network_are_refused(trained):
    # Prepare
    run, x, _ = trained
    spec = he_network(run.model, run.channels, run.image_size).spec

    # Execute / Assert
    with pytest.raises(ConfigError, match="needs 5 multiplicative levels"):
        DataOwner(spec, CkksParams(8192, (40, 30, 30, 30, 40), 30))
    with pytest.raises(ConfigError, match="slots"):
        DataOwner(spec, CkksParams(4096, (31, 26, 26, 26, 26, 26, 26, 31), 26))
    with pytest.raises(ConfigError, match="1..4096"):
        DataOwner(spec, layout=SLOTS, batch=5000)
    with pytest.raises(DataError, match="shape"):
        DataOwner(spec, layout=IM2COL).encrypt(x[:, :, :27, :27])
    odd = he_network(he_cnn(1, 2, 28, stride=2), 1, 28).spec  # 11x11 windows: the block sums need a power of two
    with pytest.raises(ConfigError, match="power-of-two number of convolution windows.*11x11=121"):
        DataOwner(odd)
