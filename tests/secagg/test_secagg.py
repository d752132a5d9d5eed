"""CKKS secure aggregation: quantisation and packing, encrypted sums, reply checks, key separation."""

from __future__ import annotations

import stat

import numpy as np
import pytest
import tenseal as ts
from conftest import compose_cfg
from flwr.app import RecordDict

from pipeline.secagg import keys as crypto
from pipeline.secagg import quantize as packing
from pipeline.secagg.codec import CkksCodec, PlainCodec, clipped_fraction
from pipeline.secagg.params import value_bits
from pipeline.secagg.server_sum import CiphertextSum
from pipeline.secagg.wire import Payload, digest, fingerprint

TEN_HOSPITALS = ("encryption.fields_per_slot=4", "encryption.field_bits=10", "encryption.global_scale_bits=14")


def _enc(hospitals: int = 3, *extra: str):
    return compose_cfg(
        "data=synthetic",
        f"federation.num_hospitals={hospitals}",
        f"federation.min_hospitals={hospitals}",
        "encryption.colluders=0",
        *extra,
    ).encryption


@pytest.fixture(scope="module")
def keys():
    """The default CKKS parameters: (encryption config, hospitals' secret context, server bytes)."""
    enc = _enc(3)
    secret = crypto.make_secret_context(enc)
    return enc, secret, crypto.server_context_bytes(secret)


def _num_chunks(size: int, enc) -> int:
    slots = -(-size // int(enc.fields_per_slot))
    return -(-slots // (int(enc.poly_modulus_degree) // 2))


def _over_the_wire(payload: Payload) -> Payload:
    """Serialise into a Flower RecordDict and read back, as a message does."""
    content = RecordDict()
    payload.put(content)
    return Payload.get(content)


# ---------------------------------------------------------------- quantisation and packing (numpy)


@pytest.mark.parametrize(("fields", "field_bits"), [(5, 9), (4, 11), (1, 20), (3, 17)])
def test_pack_unpack_round_trip_is_exact_up_to_the_field_max(fields, field_bits):
    # Prepare: random integers, with the largest one a field can hold in every position
    rng = np.random.default_rng(0)
    top = (1 << field_bits) - 1
    ints = rng.integers(0, top + 1, size=1001)
    ints[: 3 * fields] = top

    # Execute
    slots = packing.pack(ints, fields, field_bits)
    back = packing.unpack(slots, len(ints), fields, field_bits)

    # Assert
    assert slots.dtype == np.uint64 and len(slots) == -(-len(ints) // fields)
    np.testing.assert_array_equal(back, ints)
    padded = np.zeros(len(slots) * fields, dtype=object)
    padded[: len(ints)] = ints
    reference = [sum(int(padded[i * fields + j]) << (field_bits * j) for j in range(fields)) for i in range(len(slots))]
    assert [int(v) for v in slots] == reference


def test_rounding_tolerates_ckks_noise_below_half_a_step():
    # Prepare: decrypted slots are the packed integers plus CKKS noise
    rng = np.random.default_rng(1)
    ints = rng.integers(0, 256, size=500)
    slots = packing.pack(ints, 5, 8)
    noisy = slots.astype(np.float64) + rng.uniform(-0.4, 0.4, size=slots.shape)

    # Execute
    back = packing.unpack(packing.rounded(noisy), len(ints), 5, 8)

    # Assert
    np.testing.assert_array_equal(back, ints)


def test_quantize_stays_in_range_and_clips():
    # Prepare
    values = np.array([-1.0, -0.05, -0.02, 0.0, 0.031, 0.05, 3.0])

    # Execute
    q = packing.quantize(values, clip=0.05, bits=7, rng=np.random.default_rng(0))

    # Assert
    assert q.dtype == np.int64
    assert q.min() >= 0 and q.max() <= 127
    assert q[0] == q[1] == 0
    assert q[-1] == q[-2] == 127


def test_quantize_is_unbiased():
    # Prepare: one value between two levels, drawn many times
    clip, bits, value = 0.05, 7, 0.0123
    step = 2 * clip / ((1 << bits) - 1)
    draws = np.full(200_000, value)

    # Execute
    q = packing.quantize(draws, clip, bits, np.random.default_rng(2))
    decoded = packing.dequantize_sum(q, 1, clip, bits)

    # Assert: only the two neighbouring levels, and their mean is the value
    assert np.ptp(decoded) == pytest.approx(step)
    assert abs(decoded.mean() - value) < step / 100


def test_dequantize_sum_inverts_a_sum_of_quantised_values():
    # Prepare
    rng = np.random.default_rng(3)
    clip, bits, k = 0.05, 7, 3
    updates = rng.uniform(-clip, clip, size=(k, 400))
    step = 2 * clip / ((1 << bits) - 1)

    # Execute
    ints = sum(packing.quantize(u, clip, bits, rng) for u in updates)
    got = packing.dequantize_sum(ints, k, clip, bits)

    # Assert
    np.testing.assert_allclose(got, updates.sum(axis=0), rtol=0, atol=k * step)


# ---------------------------------------------------------------- encrypted aggregation


@pytest.mark.parametrize(
    ("hospitals", "extra"), [(1, ()), (3, ()), (10, TEN_HOSPITALS)], ids=["1-hospital", "3-hospitals", "10-hospitals"]
)
def test_encrypted_sum_equals_the_plaintext_sum(hospitals, extra):
    # Prepare
    enc = _enc(hospitals, *extra)
    secret = crypto.make_secret_context(enc)
    server = crypto.server_context_bytes(secret)
    codec = CkksCodec(secret, server, enc, hospitals)
    bits, clip = value_bits(enc, hospitals), float(enc.clip)
    size = 2500  # > one ciphertext of 2048 slots x fields values: several chunks
    rng = np.random.default_rng(hospitals)
    updates = [rng.uniform(-clip, clip, size) for _ in range(hospitals)]
    for u in updates:  # exactly at the clip bounds, and beyond (clipped)
        u[:6] = [clip, -clip, 2 * clip, -3 * clip, 0.0, clip]
    total = CiphertextSum(server_context=server, num_chunks=_num_chunks(size, enc))

    # Execute
    for k, u in enumerate(updates):
        payload = _over_the_wire(codec.encode(u, np.random.default_rng(100 + k)))
        assert total.problem(payload) is None
        total.add(payload)
    got = codec.decode(_over_the_wire(total.result()), count=hospitals, size=size)

    # Assert: exactly the sum of the quantised integers ...
    ints = sum(packing.quantize(u, clip, bits, np.random.default_rng(100 + k)) for k, u in enumerate(updates))
    np.testing.assert_allclose(got, packing.dequantize_sum(ints, hospitals, clip, bits), rtol=0, atol=1e-9)
    # ... and so within one quantisation step per hospital of the sum of the clipped values
    step = 2 * clip / ((1 << bits) - 1)
    np.testing.assert_allclose(got, np.clip(updates, -clip, clip).sum(axis=0), rtol=0, atol=hospitals * step)
    np.testing.assert_allclose(got[:2], [hospitals * clip, -hospitals * clip], atol=1e-9)


@pytest.mark.parametrize(
    ("hospitals", "extra"), [(1, ()), (3, ()), (10, TEN_HOSPITALS)], ids=["1-hospital", "3-hospitals", "10-hospitals"]
)
def test_encrypted_sum_of_updates_all_at_the_clip_bound(hospitals, extra):
    """Every field at its largest value: the biggest slot a hospital can encode must still encrypt and sum."""
    # Prepare
    enc = _enc(hospitals, *extra)
    secret = crypto.make_secret_context(enc)
    server = crypto.server_context_bytes(secret)
    codec = CkksCodec(secret, server, enc, hospitals)
    clip, size = float(enc.clip), 1000
    total = CiphertextSum(server_context=server, num_chunks=_num_chunks(size, enc))

    # Execute
    for k in range(hospitals):
        total.add(codec.encode(np.full(size, 2 * clip), np.random.default_rng(k)))
    got = codec.decode(total.result(), count=hospitals, size=size)

    # Assert
    np.testing.assert_allclose(got, hospitals * clip, rtol=0, atol=1e-9)


def test_plain_codec_round_trip_is_float32():
    # Prepare
    update = np.random.default_rng(0).normal(size=100)

    # Execute
    payload = _over_the_wire(PlainCodec().encode(update, np.random.default_rng(0)))
    back = PlainCodec().decode(payload, count=1, size=100)

    # Assert
    np.testing.assert_allclose(back, update.astype(np.float32), rtol=0, atol=0)


def test_codecs_refuse_the_other_kind_of_aggregate(keys):
    # Prepare
    enc, secret, server = keys
    codec = CkksCodec(secret, server, enc, 3)

    # Execute / Assert
    with pytest.raises(ValueError, match="ciphertexts"):
        PlainCodec().decode(Payload(chunks=[b"x"]), count=1)
    with pytest.raises(ValueError, match="plaintext"):
        codec.decode(Payload(values=np.zeros(3, np.float32)), count=1)
    with pytest.raises(ValueError, match="secret"):
        CkksCodec(ts.context_from(server), server, enc, 3)


def test_clipped_fraction_counts_values_beyond_clip(keys):
    # Prepare
    enc, _, _ = keys
    update = np.array([0.0, 0.01, -0.06, 0.2])

    # Execute / Assert
    assert clipped_fraction(update, enc) == pytest.approx(0.5)


def test_ckks_payload_costs_at_most_8_bytes_per_parameter(keys):
    # Prepare: the default model's parameter count (ScatterNet + CNN)
    enc, secret, server = keys
    size = 111458
    update = np.random.default_rng(0).uniform(-0.05, 0.05, size)

    # Execute
    payload = CkksCodec(secret, server, enc, 3).encode(update, np.random.default_rng(1))

    # Assert
    assert len(payload.chunks) == _num_chunks(size, enc)
    assert payload.nbytes / size <= 8


# ---------------------------------------------------------------- the server holds no key


def test_server_context_holds_no_secret_key_and_cannot_decrypt(keys):
    # Prepare
    _, secret, server = keys
    chunk = ts.ckks_vector(secret, [1.0, 2.0, 3.0]).serialize()
    server_ctx = ts.context_from(server)

    # Execute
    vector = ts.ckks_vector_from(server_ctx, chunk)

    # Assert
    assert secret.has_secret_key()
    assert not server_ctx.has_secret_key()
    with pytest.raises(ValueError, match="secret"):
        vector.decrypt()
    np.testing.assert_allclose(ts.ckks_vector_from(secret, chunk).decrypt(), [1.0, 2.0, 3.0], atol=0.1)


def test_ciphertext_sum_refuses_a_context_with_a_secret_key(keys):
    # Prepare
    _, secret, _ = keys

    # Execute / Assert
    with pytest.raises(ValueError, match="secret key"):
        CiphertextSum(server_context=crypto.secret_context_bytes(secret), num_chunks=1)


def test_ciphertext_sum_refuses_zero_chunks(keys):
    # Execute / Assert
    with pytest.raises(ValueError, match="chunks"):
        CiphertextSum(server_context=keys[2], num_chunks=0)


def test_fingerprint_identifies_the_parameters(keys):
    # Prepare: the same parameters under a fresh key, and other parameters
    enc, _, server = keys
    same_parameters = crypto.server_context_bytes(crypto.make_secret_context(enc))
    other = crypto.server_context_bytes(crypto.make_secret_context(_enc(3, "encryption.poly_modulus_degree=8192")))
    other_scale = crypto.server_context_bytes(
        crypto.make_secret_context(_enc(3, "encryption.global_scale_bits=15", "encryption.fields_per_slot=4"))
    )

    # Execute
    prints = [fingerprint(b) for b in (server, same_parameters, other, other_scale)]

    # Assert: it names the parameters (not the key: that is checked by decrypting), 16 hex digits
    assert prints[0] == prints[1]
    assert len({prints[0], prints[2], prints[3]}) == 3
    assert all(len(p) == 16 and int(p, 16) >= 0 for p in prints)


# ---------------------------------------------------------------- reply checks


@pytest.fixture(scope="module")
def good_reply(keys):
    enc, secret, server = keys
    size = 15000  # 3000 slots: two ciphertexts of 2048 slots
    payload = CkksCodec(secret, server, enc, 3).encode(np.zeros(size), np.random.default_rng(0))
    return payload, CiphertextSum(server_context=server, num_chunks=_num_chunks(size, enc))


def test_good_reply_has_no_problem(good_reply):
    # Prepare
    payload, total = good_reply

    # Execute / Assert
    assert total.problem(payload) is None
    assert len(payload.chunks) == total.num_chunks == 2


def test_reply_made_with_other_parameters_is_refused(good_reply):
    # Prepare: degree 8192 instead of the server's 4096
    _, total = good_reply
    enc = _enc(3, "encryption.poly_modulus_degree=8192")
    secret = crypto.make_secret_context(enc)
    payload = CkksCodec(secret, crypto.server_context_bytes(secret), enc, 3).encode(
        np.zeros(15000), np.random.default_rng(0)
    )

    # Execute
    problem = total.problem(payload)

    # Assert
    assert problem is not None and "encryption parameters" in problem


def test_reply_with_other_parameters_but_a_copied_fingerprint_does_not_load(good_reply):
    # Prepare
    good, total = good_reply
    enc = _enc(3, "encryption.poly_modulus_degree=8192")
    secret = crypto.make_secret_context(enc)
    chunks = [ts.ckks_vector(secret, [0.0] * 4).serialize()] * total.num_chunks
    payload = Payload(chunks=chunks, digest=digest(chunks), fingerprint=good.fingerprint)

    # Execute
    problem = total.problem(payload)

    # Assert
    assert problem is not None and "does not load" in problem


def test_truncated_chunk_is_refused(good_reply):
    # Prepare
    good, total = good_reply
    chunks = [good.chunks[0][: len(good.chunks[0]) // 2], *good.chunks[1:]]

    # Execute
    in_transit = total.problem(Payload(chunks=chunks, digest=good.digest, fingerprint=good.fingerprint))
    at_source = total.problem(Payload(chunks=chunks, digest=digest(chunks), fingerprint=good.fingerprint))

    # Assert: caught by the digest, and (with a matching digest) by the ciphertext parser
    assert in_transit is not None and "digest mismatch" in in_transit
    assert at_source is not None and "does not load" in at_source


def test_altered_byte_is_a_digest_mismatch(good_reply):
    # Prepare
    good, total = good_reply
    altered = bytearray(good.chunks[1])
    altered[len(altered) // 2] ^= 0x01
    chunks = [good.chunks[0], bytes(altered)]

    # Execute
    problem = total.problem(Payload(chunks=chunks, digest=good.digest, fingerprint=good.fingerprint))

    # Assert
    assert problem is not None and "digest mismatch" in problem


def test_wrong_chunk_count_is_refused(good_reply):
    # Prepare
    good, total = good_reply
    chunks = good.chunks[:1]

    # Execute
    problem = total.problem(Payload(chunks=chunks, digest=digest(chunks), fingerprint=good.fingerprint))

    # Assert
    assert problem is not None and "expected 2" in problem


def test_plaintext_reply_to_an_encrypted_sum_is_refused(good_reply):
    # Prepare
    _, total = good_reply

    # Execute
    problem = total.problem(Payload(values=np.zeros(15000, np.float32)))

    # Assert
    assert problem is not None and "plaintext" in problem


def test_digest_depends_on_chunk_boundaries():
    # Execute / Assert: moving a byte between chunks changes the digest
    assert digest([b"ab", b"c"]) != digest([b"a", b"bc"])
    assert digest([b"ab", b"c"]) == digest([b"ab", b"c"])


# ---------------------------------------------------------------- server code never touches the secret key


def test_write_key_files_makes_private_files_and_a_keyless_server_file(keys, tmp_path):
    # Prepare
    enc, _, _ = keys

    # Execute
    secret_path, server_path = crypto.write_key_files(enc, tmp_path / "keys")

    # Assert
    for path in (secret_path, server_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret_path.name == crypto.SECRET_FILE and server_path.name == crypto.SERVER_FILE
    assert ts.context_from(secret_path.read_bytes()).has_secret_key()
    assert not ts.context_from(server_path.read_bytes()).has_secret_key()
    # the two files belong together: same parameters
    from_secret = crypto.server_context_bytes(ts.context_from(secret_path.read_bytes()))
    assert fingerprint(from_secret) == fingerprint(server_path.read_bytes())


def test_write_key_files_overwrites_with_fresh_keys(keys, tmp_path):
    # Prepare
    enc, _, _ = keys
    first, _ = crypto.write_key_files(enc, tmp_path)
    old = first.read_bytes()

    # Execute
    second, _ = crypto.write_key_files(enc, tmp_path)

    # Assert
    assert second == first
    assert second.read_bytes() != old
    assert stat.S_IMODE(second.stat().st_mode) == 0o600
