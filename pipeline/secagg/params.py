"""CKKS parameter rules, the packed layout of an update and the key files' names (no key, no TenSEAL).

Both sides use it: the server to know how many ciphertext chunks a reply must have, the
hospitals to quantise and pack, and :func:`pipeline.config.validate` to refuse parameter sets
that are insecure or would overflow before anything starts.
"""

from __future__ import annotations

import math
from typing import Any

# The two files pipeline.secagg.keys writes: the hospitals' secret context, the server's parameters.
SECRET_FILE = "hospitals_secret.ctx"
SERVER_FILE = "server_public.ctx"
# HE standard (homomorphicencryption.org, 2018), 128-bit classical security:
# largest total coefficient-modulus bits for each polynomial modulus degree.
HE_STANDARD_MAX_BITS = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
# Below this scale the CKKS noise of a sum of many ciphertexts reaches half an integer step
# (measured: scale 2^15 keeps the error of 100 summed symmetric ciphertexts under 0.2).
CKKS_MIN_SCALE_BITS = 14


def value_bits(enc: Any, num_hospitals: int) -> int:
    """Bits each quantised value keeps: the field minus headroom for summing ``num_hospitals``.

    At least one bit of headroom always: SEAL's encoder refuses a full top field at the scale limit.
    """
    return int(enc.field_bits) - max(1, math.ceil(math.log2(max(num_hospitals, 1))))


def slots_per_chunk(enc: Any) -> int:
    """CKKS slots of one ciphertext: half the polynomial modulus degree."""
    return int(enc.poly_modulus_degree) // 2


def num_chunks(num_values: int, enc: Any) -> int:
    """Ciphertexts an update of ``num_values`` values takes once packed ``fields_per_slot`` to a slot."""
    slots = -(-int(num_values) // int(enc.fields_per_slot))
    return -(-slots // slots_per_chunk(enc))


def parameter_problems(enc: Any, num_hospitals: int) -> list[str]:
    """Why ``enc`` (the encryption group) is insecure or cannot sum ``num_hospitals`` updates exactly.

    Empty when the parameters are fine. Each entry names the value and what would be right.
    """
    degree, bits = int(enc.poly_modulus_degree), [int(b) for b in enc.coeff_mod_bit_sizes]
    if degree not in HE_STANDARD_MAX_BITS:
        return [f"encryption.poly_modulus_degree={degree} is not supported; use one of {sorted(HE_STANDARD_MAX_BITS)}"]
    if len(bits) < 2:
        return [f"encryption.coeff_mod_bit_sizes={bits} needs at least two moduli"]
    problems = []
    limit = HE_STANDARD_MAX_BITS[degree]
    if sum(bits) > limit:
        problems.append(
            f"encryption.coeff_mod_bit_sizes={bits} total {sum(bits)} bits, above the 128-bit security "
            f"limit of {limit} bits for poly_modulus_degree={degree}"
        )
    if enc.global_scale_bits < CKKS_MIN_SCALE_BITS:
        problems.append(
            f"encryption.global_scale_bits={enc.global_scale_bits} is too small for exact sums; "
            f"use >= {CKKS_MIN_SCALE_BITS}"
        )
    if enc.clip <= 0:
        problems.append(f"encryption.clip={enc.clip} must be > 0")
    if enc.fields_per_slot < 1:
        problems.append(f"encryption.fields_per_slot={enc.fields_per_slot} must be >= 1")
        return problems
    slot_bits = enc.fields_per_slot * enc.field_bits
    # A fresh ciphertext lives modulo the first prime only (the last one is the special prime), so the
    # packed slot times the scale must stay below half of it.
    if slot_bits + enc.global_scale_bits > bits[0] - 1:
        problems.append(
            f"encryption: fields_per_slot x field_bits ({slot_bits} bits) + global_scale_bits "
            f"({enc.global_scale_bits}) would overflow the first modulus ({bits[0]} bits); keep their sum <= "
            f"{bits[0] - 1}"
        )
    if value_bits(enc, num_hospitals) < 4:
        problems.append(
            f"encryption.field_bits={enc.field_bits} leaves {value_bits(enc, num_hospitals)} bits per value for "
            f"{num_hospitals} hospitals (need >= 4): lower encryption.fields_per_slot and raise field_bits"
        )
    return problems
