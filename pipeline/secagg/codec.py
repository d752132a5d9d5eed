"""Hospital side of an update: encode (quantise, pack, mask, encrypt) and decode a verified aggregate.

Each hospital sends ``u_k = (n_k / n_ref) * (w_k - w_global)``: its weighted model change. The
server adds the u_k of whoever replied and the weights n_k / n_ref; a hospital decodes the sum
and divides by the total weight, giving FedAvg's sum_k n_k w_k / sum_k n_k for any set of replies.
:class:`PlainCodec` sends float32 as it is; :class:`CkksCodec` quantises, packs, adds the pairwise
and self masks (:mod:`pipeline.secagg.masks`) and encrypts, and refuses to decode an aggregate
whose check slots do not show the contributions it claims (:class:`AggregateRefused`).
"""

from __future__ import annotations

import numpy as np
import tenseal as ts
from omegaconf import DictConfig

from pipeline.secagg import masks, quantize
from pipeline.secagg.masks import Masking, round_check
from pipeline.secagg.params import layout, slot_bits, slots_per_chunk, value_bits
from pipeline.secagg.wire import Payload, digest, fingerprint


class AggregateRefused(ValueError):
    """An aggregate fails its checks (forged, replayed, under another key, or short of contributions)."""


class PlainCodec:
    """``encryption=none``: the update travels as a float32 vector."""

    def encode(
        self,
        update: np.ndarray,
        rng: np.random.Generator,
        masking: Masking | None = None,
        check: np.ndarray | None = None,
    ) -> Payload:
        """The update as it is (float32)."""
        return Payload(values=update.astype(np.float32))

    def decode(
        self,
        aggregate: Payload,
        count: int,
        size: int | None = None,
        correction: np.ndarray | None = None,
        check: np.ndarray | None = None,
    ) -> np.ndarray:
        """The summed updates; ``count``, ``correction`` and ``check`` only matter to the encrypted codec."""
        if aggregate.values is None:
            raise ValueError("expected a plaintext aggregate, got ciphertexts (encryption settings differ)")
        return aggregate.values.astype(np.float64)[:size]

    def open_aggregate(
        self, aggregate: Payload, count: int, size: int, unmask: dict, study: str, rnd: int, min_hospitals: int
    ) -> np.ndarray:
        """The summed updates of round ``rnd``'s aggregate (plaintext: nothing to check)."""
        return self.decode(aggregate, count, size)


class CkksCodec:
    """``encryption=ckks``: quantise (stochastic rounding), pack, mask, encrypt with the hospitals' secret key."""

    def __init__(self, secret_context: ts.Context, server_bytes: bytes, enc: DictConfig, num_hospitals: int) -> None:
        if not secret_context.has_secret_key():
            raise ValueError("CkksCodec needs the hospitals' secret context")
        self.ctx = secret_context
        self.enc = enc
        self.bits = value_bits(enc, num_hospitals)
        self.slot_bits = slot_bits(enc)
        self.fingerprint = fingerprint(server_bytes)

    def _fields(self) -> tuple[int, int]:
        return int(self.enc.fields_per_slot), int(self.enc.field_bits)

    def packed(
        self,
        update: np.ndarray,
        rng: np.random.Generator,
        masking: Masking | None = None,
        check: np.ndarray | None = None,
    ) -> np.ndarray:
        """The slot vector of ``update``: data and round-check slots (both masked), then the key-check slot.

        ``check``: this round's :func:`round_check` fields (those of an empty tag when None).
        """
        fields, field_bits = self._fields()
        check = round_check() if check is None else check
        ints = quantize.quantize(update, float(self.enc.clip), self.bits, rng)
        masked = np.concatenate([quantize.pack(ints, fields, field_bits), quantize.pack(check, fields, field_bits)])
        if masking is not None:
            masked = masks.add_masks(masked, self.slot_bits, masking.me, masking.self_seed, masking.pair_seeds)
        return np.concatenate([masked, quantize.pack(np.ones(fields, dtype=np.int64), fields, field_bits)])

    def encrypt(self, slots: np.ndarray) -> Payload:
        """Encrypt a slot vector as one ciphertext per ``degree / 2`` slots."""
        n = slots_per_chunk(self.enc)
        values = slots.astype(np.float64)
        chunks = [ts.ckks_vector(self.ctx, values[i : i + n].tolist()).serialize() for i in range(0, len(values), n)]
        return Payload(chunks=chunks, digest=digest(chunks), fingerprint=self.fingerprint)

    def encode(
        self,
        update: np.ndarray,
        rng: np.random.Generator,
        masking: Masking | None = None,
        check: np.ndarray | None = None,
    ) -> Payload:
        """Quantise, pack, mask and encrypt ``update`` into ciphertext chunks."""
        return self.encrypt(self.packed(update, rng, masking, check))

    def decrypt(self, chunks: list[bytes]) -> np.ndarray:
        """The slots of ``chunks`` as exact integers (uint64)."""
        values = [np.asarray(ts.ckks_vector_from(self.ctx, c).decrypt(), dtype=np.float64) for c in chunks]
        return quantize.rounded(np.concatenate(values))

    def decode(
        self,
        aggregate: Payload,
        count: int,
        size: int | None = None,
        correction: np.ndarray | None = None,
        check: np.ndarray | None = None,
    ) -> np.ndarray:
        """Decrypt, unmask (``correction``), check and dequantise the sum of ``count`` updates (``size`` values).

        ``check``: the :func:`round_check` fields of the round the aggregate claims to be.

        Raises:
            AggregateRefused: the check slots do not show ``count`` contributions of this round under this key.
        """
        if aggregate.chunks is None:
            raise ValueError("expected ciphertexts, got a plaintext aggregate (encryption settings differ)")
        if size is None:
            raise ValueError("decoding an encrypted aggregate needs the update size")
        fields, field_bits = self._fields()
        check = round_check() if check is None else check
        slots = self.decrypt(aggregate.chunks)
        n = int(size)
        shape = layout(n, self.enc)
        if len(slots) < shape.total_slots:
            raise AggregateRefused(f"the aggregate holds {len(slots)} slots, an update of {n} values needs more")
        masked = slots[: shape.masked_slots]
        plain = masks.unmask(masked, self.slot_bits, correction if correction is not None else np.zeros_like(masked))
        counted = quantize.unpack(plain[shape.check], len(check), fields, field_bits)
        keyed = quantize.unpack(
            slots[shape.key_slot : shape.key_slot + 1] & self._slot_mask(), fields, fields, field_bits
        )
        if not np.array_equal(counted, count * check):
            raise AggregateRefused(
                f"its round check shows {int(counted[0])} contribution(s) and "
                f"{'the' if np.array_equal(counted[1:], int(counted[0]) * check[1:]) else 'another'} round tag "
                f"where {count} contribution(s) of this round were claimed: forged, replayed, incomplete or "
                "encrypted under another key"
            )
        if not np.all(keyed == count):
            raise AggregateRefused(
                f"its key check shows {keyed.tolist()} where {count} contribution(s) were claimed: "
                "encrypted under another key or forged"
            )
        ints = quantize.unpack(plain[: shape.data_slots], n, fields, field_bits)
        return quantize.dequantize_sum(ints, count, float(self.enc.clip), self.bits)

    def open_aggregate(
        self, aggregate: Payload, count: int, size: int, unmask: dict, study: str, rnd: int, min_hospitals: int
    ) -> np.ndarray:
        """The summed updates of round ``rnd``'s aggregate after every check a key holder makes.

        ``unmask``: the aggregate's unmask information (:func:`pipeline.secagg.masks.unmask_info`).

        Raises:
            AggregateRefused: fewer than ``min_hospitals`` contributions, survivors that do not match
                the count, or check slots that do not show this round's contributions under this key.
        """
        if count < min_hospitals:
            raise AggregateRefused(
                f"it claims {count} contribution(s), fewer than federation.min_hospitals={min_hospitals}"
            )
        survivors = list(unmask.get("survivors") or [])
        if len(survivors) != count:
            raise AggregateRefused(f"it claims {count} contribution(s) but names the survivors {survivors}")
        correction = masks.correction_from(unmask, layout(size, self.enc).masked_slots, self.slot_bits)
        check = round_check(study, rnd, int(unmask.get("attempt", 0)))
        return self.decode(aggregate, count, size, correction, check)

    def _slot_mask(self) -> np.uint64:
        return np.uint64((1 << self.slot_bits) - 1)

    def key_check(self, chunk: bytes, slot_in_chunk: int) -> str | None:
        """Why one reply's chunk does not decrypt under the hospitals' key (its key-check slot); None if it does."""
        fields, field_bits = self._fields()
        try:
            slots = self.decrypt([chunk])
        except Exception as err:  # SEAL raises several types for malformed data
            return f"its ciphertext does not load ({str(err).splitlines()[0]})"
        keyed = quantize.unpack(
            slots[slot_in_chunk : slot_in_chunk + 1] & self._slot_mask(), fields, fields, field_bits
        )
        if slots[slot_in_chunk] >= (1 << self.slot_bits) or not np.all(keyed == 1):
            return "it does not decrypt under the hospitals' key (its key-check slot is garbage): another key?"
        return None


def clipped_fraction(update: np.ndarray, enc: DictConfig) -> float:
    """Share of update values beyond the quantiser's range (a sign that encryption.clip is too small)."""
    return float(np.mean(np.abs(update) > float(enc.clip))) if enc.enabled else 0.0
