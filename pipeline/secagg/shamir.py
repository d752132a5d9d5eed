"""Rebuilding a secret from Flower's Shamir shares, fast enough for a hundred hospitals.

Shares are made by Flower's ``create_shares`` (pycryptodome's ``Shamir.split`` over GF(2^128), one
polynomial per 16-byte chunk of the PKCS#7-padded secret; a share is a 4-byte little-endian index
followed by one 16-byte value per chunk). :func:`combine` is the inverse of ``create_shares`` and
gives what Flower's ``combine_shares`` gives, with the same field and encoding.

Why not Flower's ``combine_shares``: pycryptodome multiplies in GF(2^128) bit by bit with
string-built masks and inverts one element per share, per chunk: 0.9 s to rebuild one seed at
threshold 100, so the server of a 100-hospital round spent about 100 s rebuilding the survivors'
self-mask seeds. Here the Lagrange coefficients are computed once per seed (shared by its chunks)
with a single field inversion. Constant time buys nothing on this path: the seeds rebuilt are
published with the aggregate (:func:`pipeline.secagg.masks.unmask_info`).
"""

from __future__ import annotations

from Crypto.Util.Padding import unpad

_BITS = 128
_MASK = (1 << _BITS) - 1
_CHUNK = 16
_INDEX = 4


def _reduce(r: int) -> int:
    """``r`` (a carry-less product, under 2^255) modulo pycryptodome's field polynomial
    x^128 + x^7 + x^2 + x + 1: the bits above 128 fold back as x^7 + x^2 + x + 1."""
    while r >> _BITS:
        hi = r >> _BITS
        r = (r & _MASK) ^ hi ^ (hi << 1) ^ (hi << 2) ^ (hi << 7)
    return r


def mul(a: int, b: int) -> int:
    """The product of two GF(2^128) elements (128-bit integers, bit i = coefficient of x^i)."""
    if a < b:
        a, b = b, a
    r = 0
    while b:
        if b & 1:
            r ^= a
        a <<= 1
        b >>= 1
    return _reduce(r)


def inverse(a: int) -> int:
    """``a^-1`` in GF(2^128), as ``a^(2^128 - 2)``; ValueError for 0."""
    if a == 0:
        raise ValueError("zero has no inverse")
    result, power = 1, a
    exponent = (1 << _BITS) - 2
    while exponent:
        if exponent & 1:
            result = mul(result, power)
        power = mul(power, power)
        exponent >>= 1
    return result


def lagrange_at_zero(xs: list[int]) -> list[int]:
    """The coefficients ``l_j = prod_{m != j} x_m / (x_j + x_m)`` that give ``p(0) = sum_j l_j p(x_j)``."""
    if len(set(xs)) != len(xs) or 0 in xs:
        raise ValueError("share indices must be distinct and non-zero")
    numerators, denominators = [], []
    for j, xj in enumerate(xs):
        num = den = 1
        for m, xm in enumerate(xs):
            if m != j:
                num = mul(num, xm)
                den = mul(den, xj ^ xm)
        numerators.append(num)
        denominators.append(den)
    # one inversion for all denominators (prefix products, then back again)
    prefix = [1]
    for d in denominators:
        prefix.append(mul(prefix[-1], d))
    back = inverse(prefix[-1])
    inverses = [0] * len(xs)
    for j in range(len(xs) - 1, -1, -1):
        inverses[j] = mul(back, prefix[j])
        back = mul(back, denominators[j])
    return [mul(n, i) for n, i in zip(numerators, inverses, strict=True)]


def combine(shares: list[bytes]) -> bytes:
    """The secret that ``shares`` (from Flower's ``create_shares``, at least its threshold) rebuild.

    Raises:
        ValueError: the shares are malformed, of different lengths, share an index, or do not
            rebuild a padded secret (too few or wrong shares usually do not).
    """
    if not shares:
        raise ValueError("no shares to combine")
    size = len(shares[0])
    if size <= _INDEX or (size - _INDEX) % _CHUNK or any(len(s) != size for s in shares):
        lengths = sorted({len(s) for s in shares})
        raise ValueError(f"shares must all be {_INDEX} + 16k bytes long; got lengths {lengths}")
    xs = [int.from_bytes(s[:_INDEX], "little") for s in shares]
    weights = lagrange_at_zero(xs)
    secret = bytearray()
    for start in range(_INDEX, size, _CHUNK):
        value = 0
        for w, s in zip(weights, shares, strict=True):
            value ^= mul(w, int.from_bytes(s[start : start + _CHUNK], "big"))
        secret += value.to_bytes(_CHUNK, "big")
    try:
        return unpad(bytes(secret), _CHUNK)
    except ValueError:
        raise ValueError("the shares do not rebuild a padded secret") from None
