"""Pairwise masks inside the encrypted domain (Bonawitz et al. 2017): they cancel exactly in the sum,
a single reply decrypted with the key is uniform, the hospitals' protocol rules hold, the server
rebuilds only what the rules let it, and every key holder refuses forged, replayed and wrong-key
aggregates."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import compose_cfg
from scipy import stats

from pipeline.flower import messages as M
from pipeline.secagg import aggregates, agreement, masks
from pipeline.secagg import keys as crypto
from pipeline.secagg import quantize as packing
from pipeline.secagg.codec import AggregateRefused, CkksCodec
from pipeline.secagg.masks import Masking, round_check
from pipeline.secagg.params import layout, num_chunks, slot_bits, value_bits
from pipeline.secagg.protocol import HospitalProtocol, ProtocolRefused, fresh_parties
from pipeline.secagg.recovery import RecoveryFailed, RoundSecrets, recover, unmask_requests
from pipeline.secagg.server_sum import CiphertextSum

TEN_HOSPITALS = ("encryption.fields_per_slot=4", "encryption.field_bits=10", "encryption.global_scale_bits=14")
STUDY = "study-under-test"


def _enc(hospitals: int, *extra: str):
    overrides = TEN_HOSPITALS if hospitals > 8 else ()
    if hospitals < 3:  # two hospitals: each learns the other's update from the sum whatever the masks
        overrides = ("encryption.colluders=0",)
    return compose_cfg("data=synthetic", f"federation.num_hospitals={hospitals}", *overrides, *extra).encryption


def _maskings(n: int, tag: str = "1.0") -> list[Masking]:
    """Each hospital's masking of one round, the pair seeds from real ECDH agreement keys."""
    pairs = {h: agreement.new_agreement_key() for h in range(n)}
    adverts = {h: (public, b"") for h, (_, public) in pairs.items()}
    out = []
    for h, (private, _) in pairs.items():
        shared = agreement.shared_keys(private, h, adverts)
        seeds = {o: masks.pair_seed(key, STUDY, tag, h, o) for o, key in shared.items()}
        out.append(Masking(h, os.urandom(masks.SEED_BYTES), seeds))
    return out


def _updates_at_the_limits(n: int, size: int, clip: float) -> list[np.ndarray]:
    """Random updates, the first all at +clip (the quantiser's top), the second all at -clip (its bottom)."""
    rng = np.random.default_rng(n)
    updates = [rng.uniform(-clip, clip, size) for _ in range(n)]
    updates[0][:] = clip
    if n > 1:
        updates[1][:] = -clip
    return updates


@pytest.fixture(scope="module")
def three():
    """The default parameters for 3 hospitals: (encryption config, codec, server context bytes)."""
    enc = _enc(3)
    secret = crypto.make_secret_context(enc)
    server = crypto.server_context_bytes(secret)
    return enc, CkksCodec(secret, server, enc, 3), server


# ---------------------------------------------------------------- the masks cancel, and only in the sum


@pytest.mark.parametrize("n", [2, 3, 10])
def test_masks_cancel_exactly_in_the_modular_sum_also_at_the_quantisers_limits(n):
    # Prepare
    enc = _enc(n)
    codec = CkksCodec(crypto.make_secret_context(enc), b"", enc, n)
    size, bits = 3000, slot_bits(enc)
    updates = _updates_at_the_limits(n, size, float(enc.clip))
    maskings = _maskings(n)
    check = round_check(STUDY, 1, 0)

    # Execute
    masked = [
        codec.packed(u, np.random.default_rng(k), m, check)
        for k, (u, m) in enumerate(zip(updates, maskings, strict=True))
    ]
    plain = [codec.packed(u, np.random.default_rng(k), None, check) for k, u in enumerate(updates)]
    total = np.zeros_like(masked[0])
    for slots in masked:
        total = (total + slots) & np.uint64((1 << bits) - 1)
    correction = masks.correction(len(total), bits, [m.self_seed for m in maskings], [])

    # Assert: every slot of the unmasked sum is exactly the sum of the unmasked slots
    shape = layout(size, enc)
    unmasked = masks.unmask(total[: shape.masked_slots], bits, correction[: shape.masked_slots])
    np.testing.assert_array_equal(unmasked, sum(p[: shape.masked_slots] for p in plain))
    ints = packing.unpack(unmasked[: shape.data_slots], size, int(enc.fields_per_slot), int(enc.field_bits))
    quantised = [packing.quantize(u, float(enc.clip), value_bits(enc, n), np.random.default_rng(k)) for k, u in
                 enumerate(updates)]  # fmt: skip
    np.testing.assert_array_equal(ints, sum(quantised))
    assert np.all(quantised[0] == (1 << value_bits(enc, n)) - 1) and np.all(quantised[1] == 0)  # the limits
    # and no single hospital's masked slots equal its plain ones
    assert all(
        np.mean(m[: shape.masked_slots] == p[: shape.masked_slots]) < 0.01 for m, p in zip(masked, plain, strict=True)
    )


@pytest.mark.parametrize("n", [3, 10])
def test_masked_replies_encrypted_summed_and_unmasked_give_the_plain_sum(n):
    # Prepare
    enc = _enc(n)
    secret = crypto.make_secret_context(enc)
    server = crypto.server_context_bytes(secret)
    codec = CkksCodec(secret, server, enc, n)
    size, clip, bits = 2500, float(enc.clip), value_bits(enc, n)
    updates = _updates_at_the_limits(n, size, clip)
    maskings = _maskings(n)
    total = CiphertextSum(server_context=server, num_chunks=num_chunks(size, enc))

    # Execute
    for k, (u, m) in enumerate(zip(updates, maskings, strict=True)):
        total.add(codec.encode(u, np.random.default_rng(k), m, round_check(STUDY, 1, 0)))
    info = masks.unmask_info(list(range(n)), {m.me: m.self_seed for m in maskings}, [])
    got = codec.open_aggregate(total.result(), n, size, info, STUDY, 1, n)

    # Assert: exactly the dequantised sum of the quantised integers
    ints = sum(packing.quantize(u, clip, bits, np.random.default_rng(k)) for k, u in enumerate(updates))
    np.testing.assert_allclose(got, packing.dequantize_sum(ints, n, clip, bits), rtol=0, atol=1e-9)


def test_the_sum_of_survivors_unmasks_with_their_self_seeds_and_the_dangling_pair_seeds():
    # Prepare: hospital 2 of 4 agreed its masks and dropped out before its reply reached the sum
    enc = _enc(4)
    codec = CkksCodec(crypto.make_secret_context(enc), b"", enc, 4)
    bits, size = slot_bits(enc), 500
    updates = _updates_at_the_limits(4, size, float(enc.clip))
    maskings = _maskings(4)
    survivors, dropped = [0, 1, 3], 2
    slots = {k: codec.packed(updates[k], np.random.default_rng(k), maskings[k]) for k in survivors}
    total = sum(slots.values()) & np.uint64((1 << bits) - 1)

    # Execute
    dangling = [(k, dropped, maskings[k].pair_seeds[dropped]) for k in survivors]
    without = masks.correction(len(total), bits, [maskings[k].self_seed for k in survivors], [])
    fixed = masks.correction(len(total), bits, [maskings[k].self_seed for k in survivors], dangling)

    # Assert: only with the dangling pairs removed does the sum come out
    expected = sum(codec.packed(updates[k], np.random.default_rng(k), None) for k in survivors)
    n = layout(size, enc).masked_slots
    np.testing.assert_array_equal(masks.unmask(total[:n], bits, fixed[:n]), expected[:n])
    assert np.mean(masks.unmask(total[:n], bits, without[:n]) == expected[:n]) < 0.01


# ---------------------------------------------------------------- one reply says nothing


def _field_values(slots: np.ndarray, enc) -> np.ndarray:
    return packing.unpack(slots, len(slots) * int(enc.fields_per_slot), int(enc.fields_per_slot), int(enc.field_bits))


def test_a_single_reply_decrypted_with_the_key_is_indistinguishable_from_uniform(three):
    # Prepare: a highly structured update (a ramp), masked as one of three hospitals
    enc, codec, _ = three
    size = 20_000
    update = np.linspace(-float(enc.clip), float(enc.clip), size)
    masking = _maskings(3)[1]
    data_slots = layout(size, enc).data_slots
    bins = 1 << int(enc.field_bits)

    # Execute: what a key holder sees of this one reply
    seen = codec.decrypt(codec.encode(update, np.random.default_rng(0), masking).chunks)[:data_slots]
    unmasked = codec.decrypt(codec.encode(update, np.random.default_rng(0)).chunks)[:data_slots]

    # Assert: every field uniform on [0, 2^field_bits) (chi-square), whole slots uniform on
    # [0, 2^slot_bits) (Kolmogorov-Smirnov), nothing correlated with the update
    fields = _field_values(seen, enc)
    assert stats.chisquare(np.bincount(fields, minlength=bins)).pvalue > 1e-3
    assert stats.kstest(seen / float(1 << slot_bits(enc)), "uniform").pvalue > 1e-3
    values = packing.unpack(seen, size, int(enc.fields_per_slot), int(enc.field_bits))
    assert abs(np.corrcoef(values, update)[0, 1]) < 0.05
    # after the round the server knows this survivor's self seed, and a colluding hospital 0 its pair
    # mask with it: without both, the pair mask with the honest hospital 2 still hides the update
    shape, bits = layout(size, enc), slot_bits(enc)
    full = codec.decrypt(codec.encode(update, np.random.default_rng(0), masking).chunks)[: shape.masked_slots]
    known = masks.correction(len(full), bits, [masking.self_seed], [(1, 0, masking.pair_seeds[0])])
    stripped = masks.unmask(full, bits, known)[:data_slots]
    assert stats.chisquare(np.bincount(_field_values(stripped, enc), minlength=bins)).pvalue > 1e-3
    left = packing.unpack(stripped, size, int(enc.fields_per_slot), int(enc.field_bits))
    assert abs(np.corrcoef(left, update)[0, 1]) < 0.05
    # the same tests tell the unmasked reply apart at once
    assert stats.chisquare(np.bincount(_field_values(unmasked, enc), minlength=bins)).pvalue < 1e-12
    plain_values = packing.unpack(unmasked, size, int(enc.fields_per_slot), int(enc.field_bits))
    assert np.corrcoef(plain_values, update)[0, 1] > 0.99


# ---------------------------------------------------------------- the hospitals' protocol rules


@pytest.fixture
def protocols(tmp_path):
    """Three hospitals' protocol states (min_hospitals 2, threshold 2) with real signing keys and roster."""
    hospitals = fresh_parties(tmp_path, 3, STUDY, 2)
    adverts = {h.me: h.advert() for h in hospitals}
    return hospitals, adverts, tmp_path


def _round(hospitals, adverts, rnd: int = 1, attempt: int = 0):
    keys = {h.me: h.pairwise_keys(adverts) for h in hospitals}
    rounds = {h.me: h.round_masks(rnd, attempt, keys[h.me]) for h in hospitals}
    return keys, rounds


def test_pairwise_seeds_agree_and_differ_per_round_attempt_and_study(protocols):
    hospitals, adverts, _ = protocols
    keys, first = _round(hospitals, adverts, 1, 0)
    _, retry = _round(hospitals, adverts, 1, 1)

    assert first[0].masking.pair_seeds[1] == first[1].masking.pair_seeds[0]
    assert first[0].masking.pair_seeds[1] != retry[0].masking.pair_seeds[1]
    assert first[0].masking.self_seed != retry[0].masking.self_seed
    other_study = masks.pair_seed(keys[0][1], "another-study", "1.0", 0, 1)
    assert other_study != first[0].masking.pair_seeds[1]


def test_an_agreement_key_not_signed_by_its_registered_hospital_is_refused(protocols, tmp_path):
    # Prepare: the server stands in the middle for hospital 1 with a key of its own, signed by
    # hospital 2's signing key (or by a key outside the roster)
    hospitals, adverts, folder = protocols
    public = agreement.new_agreement_key()[1]
    by_hospital_2 = agreement.sign_advert(
        agreement.load_signing_key(agreement.signing_key_file(folder / "signing", 2)), STUDY, 1, public
    )
    forged = {**adverts, 1: (public, by_hospital_2)}
    other_study = {**adverts, 1: (adverts[1][0], agreement.sign_advert(
        agreement.load_signing_key(agreement.signing_key_file(folder / "signing", 1)), "another-study", 1, adverts[1][0]
    ))}  # fmt: skip

    # Execute / Assert
    with pytest.raises(ProtocolRefused, match="hospital 1 is not signed by its registered signing key"):
        hospitals[0].pairwise_keys(forged)
    with pytest.raises(ProtocolRefused, match="hospital 1 is not signed"):
        hospitals[0].pairwise_keys(other_study)
    with pytest.raises(ProtocolRefused, match="another agreement key for hospital 0"):
        hospitals[0].pairwise_keys({**adverts, 0: adverts[1]})
    with pytest.raises(ProtocolRefused, match="hospital 0 is not among the participants"):
        hospitals[0].pairwise_keys({h: a for h, a in adverts.items() if h != 0})


def _unmask(hospital, rounds, keys, survivors, rnd=1, attempt=0):
    tag = f"{rnd}.{attempt}"
    shares = {frm: rounds[frm].shares[hospital.me] for frm in survivors if frm != hospital.me}
    dropped = [h for h in keys[hospital.me] if h not in survivors]
    return hospital.unmask(rnd, attempt, survivors, dropped, shares, keys[hospital.me]), tag


def test_a_hospital_answers_one_survivor_set_per_round_attempt_and_never_both_halves(protocols):
    # Prepare
    hospitals, adverts, _ = protocols
    keys, rounds = _round(hospitals, adverts)

    # Execute: the honest answer for survivors {0, 1, 2}, then the server asks again with 2 "dropped"
    (self_shares, pair), _ = _unmask(hospitals[0], rounds, keys, [0, 1, 2])
    again, _ = _unmask(hospitals[0], rounds, keys, [0, 1, 2])

    # Assert: shares of every survivor's self seed (its own included), no pair seed ...
    assert sorted(self_shares) == [0, 1, 2] and pair == {}
    assert again[0] == self_shares  # the same question gets the same answer
    # ... and a second survivor set (which would reveal hospital 2's pair seeds too) is refused
    with pytest.raises(ProtocolRefused, match=r"already unmasked round 1 \(attempt 0\) for survivors \[0, 1, 2\]"):
        _unmask(hospitals[0], rounds, keys, [0, 1])
    # the rule survives a restart: it lives in the state the hospital keeps
    restarted = HospitalProtocol(0, STUDY, hospitals[0].signing_key, hospitals[0].roster, 2, 2, hospitals[0].dumps())
    with pytest.raises(ProtocolRefused, match="already unmasked"):
        _unmask(restarted, rounds, keys, [0, 1])


def test_a_hospital_refuses_to_unmask_too_few_survivors_or_a_set_without_it(protocols):
    hospitals, adverts, _ = protocols
    keys, rounds = _round(hospitals, adverts)

    with pytest.raises(ProtocolRefused, match="1 survivor"):
        hospitals[0].unmask(1, 0, [0], [1, 2], {}, keys[0])
    with pytest.raises(ProtocolRefused, match="not among the survivors"):
        hospitals[0].unmask(1, 0, [1, 2], [0], {}, keys[0])
    with pytest.raises(ProtocolRefused, match="are not the participants"):
        hospitals[0].unmask(1, 0, [0, 1], [], {1: rounds[1].shares[0]}, keys[0])
    with pytest.raises(ProtocolRefused, match="did not survive"):
        hospitals[0].unmask(1, 0, [0, 1], [2], {2: rounds[2].shares[0]}, keys[0])


def test_the_server_rebuilds_the_survivors_self_seeds_and_the_dangling_pairs_and_nothing_of_the_dropped(protocols):
    # Prepare: hospital 2 drops after the masks were agreed (its reply never arrives)
    hospitals, adverts, _ = protocols
    keys, rounds = _round(hospitals, adverts)
    secrets = RoundSecrets()
    for h in (0, 1):
        conf = {
            M.SHARES_TO: sorted(rounds[h].shares),
            M.SHARES: [rounds[h].shares[k] for k in sorted(rounds[h].shares)],
            M.SELF_COMMIT: rounds[h].commitment,
        }
        secrets.keep(h, conf, b"")

    # Execute: the server's requests, the hospitals' answers, the server's recovery
    requests = unmask_requests([0, 1], [0, 1, 2], secrets, key_slot=0)
    answers = {}
    for h in (0, 1):
        r = requests[h]
        shares_from = dict(zip(r[M.SHARES_FROM], r[M.SHARES], strict=True))
        self_shares, pair = hospitals[h].unmask(1, 0, r[M.SURVIVORS], r[M.DROPPED], shares_from, keys[h])
        answers[h] = {
            M.SELF_SHARES_OF: sorted(self_shares),
            M.SELF_SHARES: [self_shares[k] for k in sorted(self_shares)],
            M.PAIR_WITH: sorted(pair),
            M.PAIR_SEEDS: [pair[d] for d in sorted(pair)],
        }
    info = recover([0, 1], [0, 1, 2], answers, secrets, threshold=2)

    # Assert: the survivors' self seeds and their pair seeds with hospital 2, nothing else
    assert info["self_seeds"] == {str(h): rounds[h].masking.self_seed.hex() for h in (0, 1)}
    assert sorted((k, d) for k, d, _ in info["dangling"]) == [(0, 2), (1, 2)]
    assert {bytes.fromhex(s) for _, _, s in info["dangling"]} == {rounds[2].masking.pair_seeds[k] for k in (0, 1)}
    revealed = [of for a in answers.values() for of in a[M.SELF_SHARES_OF]]
    assert 2 not in revealed  # hospital 2's self seed stays hidden: a late reply of it cannot be unmasked
    # one answer short of the threshold: the seed cannot be rebuilt and the server says so
    with pytest.raises(RecoveryFailed, match="needs 2 share"):
        recover([0, 1], [0, 1, 2], {0: answers[0]}, secrets, threshold=2)
    # a share that does not rebuild the committed seed is caught
    tampered = dict(secrets.commits)
    secrets.commits[0] = masks.commitment(b"x" * 32)
    with pytest.raises(RecoveryFailed, match="hospital 0's self mask"):
        recover([0, 1], [0, 1, 2], answers, secrets, threshold=2)
    secrets.commits.update(tampered)


# ---------------------------------------------------------------- every key holder refuses a bad aggregate


@pytest.fixture(scope="module")
def honest_round(three):
    """One round of three masked replies: (replies, their sum, the unmask info, the updates)."""
    enc, codec, server = three
    size = 3000
    updates = _updates_at_the_limits(3, size, float(enc.clip))
    maskings = _maskings(3)
    replies = [
        codec.encode(u, np.random.default_rng(k), m, round_check(STUDY, 1, 0))
        for k, (u, m) in enumerate(zip(updates, maskings, strict=True))
    ]
    total = CiphertextSum(server_context=server, num_chunks=num_chunks(size, enc))
    for r in replies:
        total.add(r)
    info = masks.unmask_info([0, 1, 2], {m.me: m.self_seed for m in maskings}, [])
    return replies, total.result(), info, size


def test_the_honest_aggregate_opens(three, honest_round):
    _, codec, _ = three
    _, summed, info, size = honest_round
    assert codec.open_aggregate(summed, 3, size, info, STUDY, 1, 3).shape == (size,)


def _forged_cases(three, honest_round):
    enc, codec, server = three
    replies, summed, info, size = honest_round
    tripled = CiphertextSum(server_context=server, num_chunks=len(replies[0].chunks))
    for _ in range(3):  # one reply added three times: the key check counts 3, the round check does not
        tripled.add(replies[0])
    return {
        "one reply as the aggregate (count 1)": (replies[0], 1, info, 1, "fewer than federation.min_hospitals=3"),
        "one reply claiming the round's count": (replies[0], 3, info, 1, "round check shows"),
        "one reply added three times": (tripled.result(), 3, info, 1, "round check shows"),
        "round 1's aggregate replayed as round 2": (summed, 3, info, 2, "another round tag"),
        "another attempt's aggregate": (summed, 3, {**info, "attempt": 1}, 1, "another round tag"),
        "survivors that do not match the count": (summed, 3, {**info, "survivors": [0, 1]}, 1, "names the survivors"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "one reply as the aggregate (count 1)",
        "one reply claiming the round's count",
        "one reply added three times",
        "round 1's aggregate replayed as round 2",
        "another attempt's aggregate",
        "survivors that do not match the count",
    ],
)
def test_a_forged_or_replayed_aggregate_is_refused_by_the_hospitals(three, honest_round, case):
    _, codec, _ = three
    payload, count, info, rnd, why = _forged_cases(three, honest_round)[case]
    size = honest_round[3]
    with pytest.raises(AggregateRefused, match=why):
        codec.open_aggregate(payload, count, size, info, STUDY, rnd, 3)


def test_a_reply_under_another_key_is_named_by_the_key_check_and_spoils_the_aggregate(three, honest_round):
    # Prepare: hospital 2 encrypts under a fresh key with the same parameters
    enc, codec, server = three
    replies, _, info, size = honest_round
    other = CkksCodec(crypto.make_secret_context(enc), server, enc, 3)
    slots = codec.decrypt(replies[2].chunks)  # (the test peeks at the honest slots to re-encrypt them)
    wrong = other.encrypt(slots[: layout(size, enc).total_slots])
    total = CiphertextSum(server_context=server, num_chunks=len(wrong.chunks))
    for r in (replies[0], replies[1], wrong):
        assert total.problem(r) is None  # the server cannot tell: same parameters, same fingerprint
        total.add(r)
    key_slot = layout(size, enc).key_slot - (len(wrong.chunks) - 1) * (int(enc.poly_modulus_degree) // 2)

    # Execute / Assert
    assert codec.key_check(replies[0].chunks[-1], key_slot) is None
    assert "another key" in codec.key_check(wrong.chunks[-1], key_slot)
    with pytest.raises(AggregateRefused, match="another key"):
        codec.open_aggregate(total.result(), 3, size, info, STUDY, 1, 3)


def test_the_consortium_refuses_to_replay_a_forged_aggregate_and_writes_nothing(tmp_path):
    # Prepare: a run folder whose round-1 aggregate is one hospital's reply claiming three
    from pipeline.secagg import consortium
    from pipeline.task.model import build_model, get_flat

    cfg = compose_cfg("data=synthetic", "data.num_samples=120", "privacy=none")
    cfg.study_id = STUDY
    secret = crypto.make_secret_context(cfg.encryption)
    codec = CkksCodec(secret, crypto.server_context_bytes(secret), cfg.encryption, 3)
    size = len(get_flat(build_model(cfg, 1, 2, 28)))
    maskings = _maskings(3)
    reply = codec.encode(np.zeros(size), np.random.default_rng(0), maskings[0], round_check(STUDY, 1, 0))
    info = masks.unmask_info([0, 1, 2], {m.me: m.self_seed for m in maskings}, [])
    aggs = [aggregates.Aggregate(1, reply, 3.0, 3, {}, info)]

    # Execute / Assert
    with pytest.raises(AggregateRefused, match="round 1: its round check shows"):
        consortium.rebuild(cfg, aggs, codec)
