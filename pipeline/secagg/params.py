"""CKKS parameter rules, the packed layout of an update and the key files' names (no key, no TenSEAL).

Both sides use it: the server to know how many ciphertext chunks a reply must have, the
hospitals to quantise, pack and mask, and :func:`pipeline.config.validate` to refuse parameter
sets that are insecure or would overflow before anything starts. A slot packs
``fields_per_slot`` fields of ``field_bits``; pairwise masks make every masked slot uniform below
``2^slot_bits``, so the sum of the hospitals' slots needs ``log2(hospitals)`` bits above that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# The two files pipeline.secagg.keys writes: the hospitals' secret context, the server's parameters.
SECRET_FILE = "hospitals_secret.ctx"
SERVER_FILE = "server_public.ctx"
# ... and for the pairwise masks: the hospitals' signing keys and the roster of their public halves.
SIGNING_DIR = "signing"
ROSTER_FILE = "roster.json"
# HE standard (homomorphicencryption.org, 2018), 128-bit classical security:
# largest total coefficient-modulus bits for each polynomial modulus degree.
HE_STANDARD_MAX_BITS = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
# Below this scale the CKKS noise of a sum of many ciphertexts reaches half an integer step
# (measured: scale 2^15 keeps the error of 100 summed symmetric ciphertexts under 0.2).
CKKS_MIN_SCALE_BITS = 14
# Decrypted slots come back as float64: a sum of masked slots must stay an exact integer.
FLOAT_EXACT_BITS = 52


def required_min_hospitals(num_hospitals: int, colluders: int) -> int:
    """The smallest ``min_hospitals`` that keeps updates hidden from the server and ``colluders`` hospitals.

    An honest hospital reveals, per round and per other hospital, either its share of that
    hospital's self mask or their pair seed, never both. Unmasking one reply then needs the server
    to rebuild its self mask from ``t = min_hospitals - 1`` shares while also holding every pair
    seed, which it can only get when ``t + min_hospitals <= num_hospitals + colluders`` (it lies to
    honest hospitals about who dropped out). So: ``2 m - 1 > n + c``.
    """
    return min(num_hospitals, (num_hospitals + colluders + 1) // 2 + 1)


def withstands(num_hospitals: int, min_hospitals: int, colluders: int) -> bool:
    """Whether aggregates of at least ``min_hospitals`` hide every update from the server and ``colluders``."""
    return colluders == 0 or 2 * min_hospitals - 1 > num_hospitals + colluders


def share_threshold(min_hospitals: int) -> int:
    """Shamir threshold ``t`` of the self masks: ``min_hospitals`` survivors (the owner's own share
    included) rebuild a seed, the server with fewer than ``t`` hospitals cannot."""
    return max(1, int(min_hospitals))


def value_bits(enc: Any, num_hospitals: int) -> int:
    """Bits each quantised value keeps: the field minus headroom for summing ``num_hospitals`` of them.

    The unmasked sum of every field must fit its field (the masks are removed modulo the whole
    slot, so a field that overflowed would carry into its neighbour).
    """
    return int(enc.field_bits) - headroom_bits(num_hospitals)


def headroom_bits(num_hospitals: int) -> int:
    """Bits a sum of ``num_hospitals`` values needs beyond one value (at least 1)."""
    return max(1, math.ceil(math.log2(max(num_hospitals, 1))))


def slot_bits(enc: Any) -> int:
    """Bits of one packed slot: ``fields_per_slot x field_bits``; masks are added modulo 2^slot_bits."""
    return int(enc.fields_per_slot) * int(enc.field_bits)


def slots_per_chunk(enc: Any) -> int:
    """CKKS slots of one ciphertext: half the polynomial modulus degree."""
    return int(enc.poly_modulus_degree) // 2


# The slots after an update's data slots. First the round check (masked): its first field counts
# the contributions (each adds 1), the next TAG_FIELDS fields hold a tag of the study, round and
# attempt (TAG_FIELD_BITS each), so only this round's unmasked sum shows count x tag. Then the key
# check (not masked): every field holds 1, so any one reply decrypted with the right key shows it.
TAG_FIELDS, TAG_FIELD_BITS = 8, 4
CHECK_FIELDS = 1 + TAG_FIELDS


@dataclass(frozen=True)
class Layout:
    """Where an update's values and its check slots lie in the packed slot vector."""

    data_slots: int
    check_slots: int

    @property
    def check(self) -> slice:
        """The round-check slots (masked)."""
        return slice(self.data_slots, self.data_slots + self.check_slots)

    @property
    def key_slot(self) -> int:
        return self.data_slots + self.check_slots

    @property
    def masked_slots(self) -> int:
        """Data and round-check slots: the part the pairwise and self masks cover."""
        return self.data_slots + self.check_slots

    @property
    def total_slots(self) -> int:
        return self.masked_slots + 1


def layout(num_values: int, enc: Any) -> Layout:
    """The packed layout of an update of ``num_values`` values."""
    fields = int(enc.fields_per_slot)
    return Layout(-(-int(num_values) // fields), -(-CHECK_FIELDS // fields))


def num_chunks(num_values: int, enc: Any) -> int:
    """Ciphertexts an update of ``num_values`` values takes once packed (its check slots included)."""
    return -(-layout(num_values, enc).total_slots // slots_per_chunk(enc))


def packing_fits(fields: int, bits: int, scale_bits: int, first_bits: int, num_hospitals: int) -> bool:
    """Whether ``fields`` x ``bits``-bit fields sum exactly over ``num_hospitals`` at ``2^scale_bits``.

    Each masked slot is uniform below 2^slot_bits; their sum needs headroom bits on top, and times
    the scale it must stay below half the first modulus (a fresh ciphertext lives modulo the first
    prime; the last one is the special prime) and exact in float64.
    """
    need = fields * bits + headroom_bits(num_hospitals)
    return need + scale_bits <= first_bits - 1 and need <= FLOAT_EXACT_BITS


def fitting_packings(
    enc: Any, num_hospitals: int, min_value_bits: int = 4, scale_bits: int | None = None
) -> list[tuple[int, int]]:
    """(fields_per_slot, field_bits) pairs that fit the first modulus for ``num_hospitals``, best first.

    Best: most values per slot (fewest bytes per parameter), then most bits per value. The scale
    is ``enc.global_scale_bits`` unless ``scale_bits`` is given.
    """
    first = int(enc.coeff_mod_bit_sizes[0])
    scale = int(enc.global_scale_bits) if scale_bits is None else scale_bits
    least = min_value_bits + headroom_bits(num_hospitals)
    options = []
    for fields in range(8, 0, -1):
        widest = [
            b for b in range(FLOAT_EXACT_BITS, least - 1, -1) if packing_fits(fields, b, scale, first, num_hospitals)
        ]
        options += [(fields, widest[0])] if widest else []
    return options


def fitting_settings(enc: Any, num_hospitals: int) -> str:
    """The overrides to copy that let ``enc`` sum ``num_hospitals`` updates exactly, as ``use ...``.

    The best packing at the current global scale, else at the largest smaller scale that has one,
    else the most hospitals any packing of this first modulus can sum.
    """
    current = max(int(enc.global_scale_bits), CKKS_MIN_SCALE_BITS)
    for scale in range(current, CKKS_MIN_SCALE_BITS - 1, -1):
        options = fitting_packings(enc, num_hospitals, scale_bits=scale)
        if options:
            fields, bits = options[0]
            rescale = f" encryption.global_scale_bits={scale}" if scale != int(enc.global_scale_bits) else ""
            return f"use encryption.fields_per_slot={fields} encryption.field_bits={bits}{rescale}"
    most = max(
        (2**h for h in range(FLOAT_EXACT_BITS) if fitting_packings(enc, 2**h, scale_bits=CKKS_MIN_SCALE_BITS)),
        default=0,
    )
    if not most:  # one field of 4-bit values: 4 + 2 x headroom bits, times the smallest scale, below the first prime
        least = 4 + 2 * headroom_bits(num_hospitals) + CKKS_MIN_SCALE_BITS + 1
        return f"use a first modulus of at least {least} bits (encryption.coeff_mod_bit_sizes[0])"
    return f"use federation.num_hospitals={most} (the most these moduli can sum) with {fitting_settings(enc, most)[4:]}"


def parameter_problems(enc: Any, num_hospitals: int) -> list[str]:
    """Why ``enc`` (the encryption group) is insecure or cannot sum ``num_hospitals`` masked updates exactly.

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
            f"limit of {limit} bits for poly_modulus_degree={degree}; " + _secure_degree_hint(degree, bits)
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
    need = slot_bits(enc) + headroom_bits(num_hospitals)
    fits = packing_fits(
        int(enc.fields_per_slot), int(enc.field_bits), int(enc.global_scale_bits), bits[0], num_hospitals
    )
    if not fits or value_bits(enc, num_hospitals) < 4:
        hint = fitting_settings(enc, num_hospitals)
        if not fits:
            problems.append(
                f"encryption: {enc.fields_per_slot} x {enc.field_bits}-bit fields per slot, summed over "
                f"{num_hospitals} hospitals ({need} bits) + global_scale_bits ({enc.global_scale_bits}) do not fit "
                f"the first modulus ({bits[0]} bits, at most {bits[0] - 1}) and float64 ({FLOAT_EXACT_BITS} bits); "
                + hint
            )
        else:
            problems.append(
                f"encryption.field_bits={enc.field_bits} leaves {value_bits(enc, num_hospitals)} bits per value for "
                f"{num_hospitals} hospitals (need >= 4); " + hint
            )
    return problems


def _secure_degree_hint(degree: int, bits: list[int]) -> str:
    """What makes moduli ``bits`` secure: the smallest degree whose limit they fit, or this degree's limit."""
    larger = [d for d in sorted(HE_STANDARD_MAX_BITS) if d > degree and HE_STANDARD_MAX_BITS[d] >= sum(bits)]
    within = f"moduli totalling <= {HE_STANDARD_MAX_BITS[degree]} bits"
    return f"use encryption.poly_modulus_degree={larger[0]} or {within}" if larger else f"use {within}"
