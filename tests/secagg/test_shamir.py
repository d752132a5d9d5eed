"""The server's fast Shamir reconstruction agrees with Flower's shares and pycryptodome's field."""

from __future__ import annotations

import os
import random

import pytest
from Crypto.Protocol.SecretSharing import _Element
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares

from pipeline.secagg import shamir


def test_field_multiplication_and_inverse_match_pycryptodome() -> None:
    rng = random.Random(0)
    values = [0, 1, 2, 0x87, (1 << 128) - 1, *(rng.getrandbits(128) for _ in range(40))]
    for a in values:
        for b in rng.sample(values, 8):
            assert shamir.mul(a, b) == int(_Element(a) * _Element(b)), (a, b)
        if a:
            assert shamir.mul(a, shamir.inverse(a)) == 1
            assert shamir.inverse(a) == int(_Element(a).inverse())
    with pytest.raises(ValueError, match="zero"):
        shamir.inverse(0)


@pytest.mark.parametrize(("threshold", "num"), [(1, 1), (1, 4), (2, 3), (3, 5), (7, 12), (40, 40)])
def test_any_threshold_of_flowers_shares_rebuilds_the_secret(threshold: int, num: int) -> None:
    rng = random.Random(threshold * 100 + num)
    secret = os.urandom(32)
    shares = create_shares(secret, threshold, num)
    for _ in range(3):
        subset = rng.sample(shares, threshold)
        assert shamir.combine(subset) == secret == combine_shares(subset)
    # more shares than the threshold lie on the same polynomial: they rebuild it too
    assert shamir.combine(rng.sample(shares, num)) == secret


def test_too_few_or_altered_shares_do_not_rebuild_the_secret() -> None:
    secret = os.urandom(32)
    shares = create_shares(secret, 5, 8)
    for bad in (shares[:4], [*shares[:4], shares[4][:-1] + bytes([shares[4][-1] ^ 1])]):
        try:
            assert shamir.combine(bad) != secret
        except ValueError:
            pass  # usually: the rebuilt chunk is not a padded secret


@pytest.mark.parametrize(
    ("shares", "message"),
    [
        ([], "no shares"),
        ([b"\x01\x00\x00\x00" + bytes(15)], "4 \\+ 16k bytes"),
        ([b"\x01\x00\x00\x00" + bytes(16), b"\x02\x00\x00\x00" + bytes(32)], "lengths \\[20, 36\\]"),
        ([b"\x01\x00\x00\x00" + bytes(16)] * 2, "distinct"),
        ([b"\x00\x00\x00\x00" + bytes(16)], "non-zero"),
    ],
)
def test_malformed_shares_are_refused(shares: list[bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        shamir.combine(shares)
