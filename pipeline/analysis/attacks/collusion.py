"""The collusion setting: the server plus one hospital that shares the CKKS key.

The colluding hospital holds the same secret key as every other hospital, so it can decrypt
another hospital's reply that the server hands it. What comes out is the victim's packed update
plus its masks (:mod:`pipeline.secagg.masks`): the self mask and one pair mask per other hospital.
The attack is the strongest this pair can mount after the round: the server learnt the victim's
self-mask seed when the survivors revealed it (the victim survived), and the colluder knows its
own pair mask with the victim; both are removed. What is left is the victim's pair masks with the
honest hospitals. The rest is read as an update, as an unmasked one would be (each field taken
modulo the value range, so that the estimate is a centred update); the inversion runs on that.

The victim's reply is made by the real protocol (:class:`pipeline.secagg.protocol.HospitalProtocol`
with signing keys, signed agreement keys and Shamir shares, for a round of ``num_hospitals``) and
the real codec, under a fresh key (the run's key was deleted after the run).
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
from omegaconf import DictConfig

VICTIM, COLLUDER = 0, 1


def colluder_estimate(
    update: np.ndarray, enc: DictConfig, num_hospitals: int, seed: int = 0
) -> tuple[np.ndarray, dict]:
    """What the colluding hospital reads from the victim's real masked reply, and the facts of it.

    Returns the estimate of the victim's weighted update (laid out like ``update``) and a dict for
    the report: masks the colluder could and could not remove, how far the estimate is from the
    truth and its correlation with it.
    """
    from pipeline.secagg import keys as ckks_keys
    from pipeline.secagg import masks, quantize
    from pipeline.secagg.codec import CkksCodec
    from pipeline.secagg.params import layout, slot_bits, value_bits
    from pipeline.secagg.protocol import fresh_parties

    if num_hospitals < 3:
        raise ValueError(f"collusion needs a third hospital to hide behind; the run has {num_hospitals}")
    study = "attack-collusion"
    with tempfile.TemporaryDirectory() as folder:
        hospitals = fresh_parties(folder, num_hospitals, study, 2)
        adverts = {h.me: h.advert() for h in hospitals}
        victim_keys = hospitals[VICTIM].pairwise_keys(adverts)
        round_masks = hospitals[VICTIM].round_masks(1, 0, victim_keys)
        colluder_keys = hospitals[COLLUDER].pairwise_keys(adverts)
    secret = ckks_keys.make_secret_context(enc)
    codec = CkksCodec(secret, ckks_keys.server_context_bytes(secret), enc, num_hospitals)
    reply = codec.encode(update, np.random.default_rng(seed), round_masks.masking, masks.round_check(study, 1, 0))

    # the colluder's side: decrypt with the shared key; strip the victim's self mask (its seed was
    # revealed to the server at unmasking) and the pair mask the colluder shares with the victim
    shape, bits = layout(len(update), enc), slot_bits(enc)
    slots = codec.decrypt(reply.chunks)[: shape.masked_slots]
    known = masks.pair_seed(colluder_keys[VICTIM], study, "1.0", VICTIM, COLLUDER)
    revealed = round_masks.masking.self_seed
    stripped = masks.unmask(slots, bits, masks.correction(len(slots), bits, [revealed], [(VICTIM, COLLUDER, known)]))
    fields, field_bits = int(enc.fields_per_slot), int(enc.field_bits)
    ints = quantize.unpack(stripped[: shape.data_slots], len(update), fields, field_bits)
    v_bits, clip = value_bits(enc, num_hospitals), float(enc.clip)
    # read as a decoder expecting one in-range update would: each field modulo the value range
    estimate = quantize.dequantize_sum(ints % (1 << v_bits), 1, clip, v_bits)
    truth = np.clip(update, -clip, clip)
    facts: dict[str, Any] = {
        "hospitals": num_hospitals,
        "masks_removed": ["self mask (seed revealed at unmasking)", "pair mask colluder-victim"],
        "masks_left": [f"pair mask victim-hospital {h}" for h in range(num_hospitals) if h not in (VICTIM, COLLUDER)],
        "estimate_max_abs_error": float(np.max(np.abs(estimate - truth))),
        "estimate_correlation": float(np.corrcoef(estimate, truth)[0, 1]) if np.std(truth) > 0 else 0.0,
        "values_outside_quantiser_range": float(np.mean(ints > (1 << v_bits) - 1)),
    }
    return estimate, facts


def no_information_estimate(size: int, enc: DictConfig, seed: int = 0) -> np.ndarray:
    """An estimate that carries nothing of any update: uniform in ``[-clip, clip]``, what a reply whose
    masks nobody can remove decodes to. Inverting it gives the attack's no-information level."""
    clip = float(enc.clip)
    return np.random.default_rng(seed).uniform(-clip, clip, int(size))
