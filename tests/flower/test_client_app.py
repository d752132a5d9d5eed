"""The hospital ClientApp's handlers, driven directly with a Flower Context (no Ray): fast checks of
what a hospital sends, what it refuses to send, and how it keeps its state and privacy ledger."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_cfg
from fakes import hospital_contexts, roster_config
from flwr.app import ConfigRecord, Context, RecordDict

from pipeline.flower import messages as M
from pipeline.flower.context import STATE_DIR_KEY
from pipeline.flower.hospital import HospitalClient, OutOfSync
from pipeline.flower.hospital_state import HospitalState
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.secagg.aggregates import Aggregate
from pipeline.secagg.codec import CkksCodec
from pipeline.secagg.wire import Payload, digest
from strategies.server_optimizers import ServerOptimizer


def make_cfg(*overrides: str):
    return compose_cfg(
        "data=synthetic",
        "data.num_samples=300",
        "federation.rounds=2",
        "train.local_epochs=1",
        "train.batch_size=32",
        *overrides,
    )


def make_context(cfg, tmp_path, hospital: int = 0) -> Context:
    """Hospital ``hospital`` of ``cfg``'s federation (shared CKKS key, own signing key, the roster)."""
    return hospital_contexts(cfg, tmp_path)[hospital]


def train_message(rnd: int = 1, n_ref: int = 100, roster: dict | None = None, attempt: int = 0) -> RecordDict:
    return RecordDict({M.CONFIG: ConfigRecord({M.ROUND: rnd, M.ATTEMPT: attempt, M.N_REF: n_ref, **(roster or {})})})


def encrypted_hospital(cfg, tmp_path, hospital: int = 0) -> tuple[HospitalClient, dict]:
    """A hospital of an encrypted federation and the roster a train message carries."""
    contexts = hospital_contexts(cfg, tmp_path)
    roster = roster_config(contexts)  # each hospital's query reply: it makes its agreement key then
    return HospitalClient(contexts[hospital]), roster


def aggregate_message(rnd: int, values: np.ndarray, total_weight: float, count: int, opt: dict | None = None):
    conf = {M.ROUND: rnd, M.AGG_ROUND: rnd, M.TOTAL_WEIGHT: total_weight, M.COUNT: count}
    if opt is not None:
        conf[M.SERVER_OPTIMIZER] = json.dumps(opt)
    content = RecordDict({M.CONFIG: ConfigRecord(conf)})
    Payload(values=values.astype(np.float32)).put(content)
    return content


def test_query_reports_sizes_only(tmp_path):
    client = HospitalClient(make_context(make_cfg("encryption=none"), tmp_path))

    reply = client.query()[M.CONFIG]

    assert reply[M.NUM_TRAIN] == client.data.num_train > 0
    assert reply[M.NUM_PARAMS] == 111458  # the default ScatterNet + CNN
    assert set(reply.keys()) == {
        M.HOSPITAL,
        M.NUM_TRAIN,
        M.NUM_VAL,
        M.CHANNELS,
        M.NUM_CLASSES,
        M.IMAGE_SIZE,
        M.NUM_PARAMS,
        M.MODEL_ROUND,  # public: the server counts the aggregates it sent (a returning hospital catches up)
    }


def test_encrypted_train_reply_carries_ciphertexts_and_epsilon(tmp_path):
    cfg = make_cfg()  # default: DP-SGD + CKKS
    client, roster = encrypted_hospital(cfg, tmp_path)
    context = client.context

    reply = client.train(train_message(n_ref=client.data.num_train, roster=roster))

    payload = Payload.get(reply)
    conf = reply[M.CONFIG]
    assert payload.values is None and len(payload.chunks) == 11  # 111458 values / 5 per slot / 2048 slots
    assert payload.digest == digest(payload.chunks)
    assert 0 < conf[M.EPSILON] <= 8.0 and conf[M.OUT_OF_BUDGET] is False
    assert conf[M.WEIGHT] == pytest.approx(1.0)
    saved = HospitalState.load(client._state_file())
    assert PrivacyLedger.from_json(saved.ledger, cfg.privacy.accountant).steps > 0
    assert len(context.state) == 0, "nothing of the hospital's state travels in Flower's context"


def test_hospital_out_of_budget_does_not_train(tmp_path):
    cfg = make_cfg("encryption=none")
    spent = PrivacyLedger(cfg.privacy.accountant, history=[(1.0, 1 / 12, 300)])  # epsilon about 10, beyond 8
    client = HospitalClient(make_context(cfg, tmp_path))
    HospitalState(client._state_file(), ledger=spent.to_json()).save()
    client = HospitalClient(make_context(cfg, tmp_path))

    reply = client.train(train_message(n_ref=client.data.num_train))

    assert reply[M.CONFIG][M.OUT_OF_BUDGET] is True
    assert Payload.get(reply) is None
    assert reply[M.CONFIG][M.EPSILON] > 8.0


def test_non_finite_update_is_refused_before_encrypting(tmp_path, monkeypatch):
    # Prepare: the default private path (DP-SGD + CKKS); training leaves NaN in the weights
    cfg = make_cfg()
    client, roster = encrypted_hospital(cfg, tmp_path)
    real_train = __import__("pipeline.task.training", fromlist=["train_round"]).train_round
    encrypted: list[int] = []

    def poisoned(cfg, model, *args, **kwargs):
        stats = real_train(cfg, model, *args, **kwargs)
        next(model.parameters()).data.view(-1)[0] = float("nan")
        return stats

    def recording_encode(self, update, rng):
        encrypted.append(len(update))
        raise AssertionError("a non-finite update reached the encoder")

    monkeypatch.setattr("pipeline.task.training.train_round", poisoned)
    monkeypatch.setattr(CkksCodec, "encode", recording_encode)

    # Execute / Assert
    with pytest.raises(ValueError, match="non-finite"):
        client.train(train_message(n_ref=client.data.num_train, roster=roster))
    assert encrypted == []
    # it trained on its data, so the round is charged to its budget all the same (conservative)
    saved = HospitalState.load(client._state_file())
    assert PrivacyLedger.from_json(saved.ledger, cfg.privacy.accountant).steps > 0


def test_hospital_applies_an_aggregate_once_and_detects_a_gap(tmp_path):
    cfg = make_cfg("encryption=none", "privacy=none")
    client = HospitalClient(make_context(cfg, tmp_path))
    start = client.global_weights().astype(np.float64)
    step = np.full_like(start, 0.01)

    client.sync(aggregate_message(1, 2.0 * step, total_weight=2.0, count=2))
    client.sync(aggregate_message(1, 2.0 * step, total_weight=2.0, count=2))  # the same again: no change

    np.testing.assert_allclose(client.global_weights(), start + step, atol=1e-6)
    assert client.model_round == 1
    with pytest.raises(OutOfSync):
        client.sync(aggregate_message(3, step, total_weight=1.0, count=1))


def test_state_survives_a_restart_of_the_hospital_process(tmp_path):
    # Prepare: apply one aggregate and train, then forget everything in memory
    cfg = make_cfg("encryption=none")
    client = HospitalClient(make_context(cfg, tmp_path))
    start = client.global_weights().astype(np.float64)
    client.sync(aggregate_message(1, np.full_like(start, 0.02), total_weight=1.0, count=1))
    client.train(train_message(rnd=2, n_ref=client.data.num_train))
    before = HospitalState.load(client._state_file())
    from pipeline.flower import hospital_state

    hospital_state._CACHE.clear()  # a new process has no cache

    # Execute
    restarted = HospitalClient(make_context(cfg, tmp_path))

    # Assert
    assert restarted.model_round == 1
    np.testing.assert_array_equal(restarted.global_weights(), before.weights)
    np.testing.assert_allclose(restarted.global_weights(), start + 0.02, atol=1e-6)
    assert restarted.ledger().steps == PrivacyLedger.from_json(before.ledger, cfg.privacy.accountant).steps > 0


def test_hospital_applies_the_strategy_server_optimizer_and_keeps_its_state(tmp_path):
    # Prepare
    cfg = make_cfg("encryption=none", "privacy=none")
    client = HospitalClient(make_context(cfg, tmp_path))
    w0 = client.global_weights().astype(np.float64)
    adam = ServerOptimizer("fedadam", lr=0.05)
    rng = np.random.default_rng(0)
    deltas = [rng.normal(0, 0.01, len(w0)) for _ in range(2)]

    # Execute: two rounds' aggregates (weight 2: the hospital divides the sum by it)
    for rnd, delta in enumerate(deltas, start=1):
        client.sync(aggregate_message(rnd, 2.0 * delta, total_weight=2.0, count=2, opt=adam.spec()))

    # Assert: the same as two Adam steps from w0 (float32 copies, so float32 tolerance)
    expected, state = w0, {}
    for delta in deltas:
        expected, state = adam.step(expected, (2.0 * delta).astype(np.float32).astype(np.float64) / 2.0, state)
    np.testing.assert_allclose(client.global_weights(), expected, rtol=0, atol=1e-6)
    saved = HospitalState.load(client._state_file())
    assert set(saved.optimizer) == {"m", "v", "t"} and int(saved.optimizer["t"][0]) == 2


def test_missing_state_dir_is_refused_with_its_name(tmp_path):
    cfg = make_cfg("encryption=none")
    context = make_context(cfg, tmp_path)
    del context.node_config[STATE_DIR_KEY]

    with pytest.raises(ValueError, match=STATE_DIR_KEY):
        HospitalClient(context)


def test_evaluate_reply_holds_metrics_only(tmp_path):
    # Prepare: a hospital that applies an aggregate, then evaluates
    cfg = make_cfg("encryption=none")
    client = HospitalClient(make_context(cfg, tmp_path))
    trained = client.train(train_message(n_ref=client.data.num_train))
    content = RecordDict({M.CONFIG: ConfigRecord({M.ROUND: 1, M.AGG_ROUND: 1, M.TOTAL_WEIGHT: 1.0, M.COUNT: 1})})
    Payload.get(trained).put(content)

    # Execute
    reply = client.evaluate(content)

    # Assert: no arrays, no ciphertext, no decrypted vector goes back to the server
    assert set(reply.keys()) == {M.CONFIG, M.METRICS}
    assert len(reply.array_records) == 0
    assert set(reply[M.CONFIG].keys()) == {M.ROUND, M.MODEL_ROUND, M.EPSILON}
    assert 0 < reply[M.CONFIG][M.EPSILON] <= 8.0  # its spending so far, also if a train reply got lost
    assert set(reply[M.METRICS].keys()) == {*M.VAL_METRICS, M.DECODE_SECONDS, M.NUM_VAL}
    assert client.model_round == 1


def _update(tmp_path, name: str, *overrides: str) -> np.ndarray:
    cfg = make_cfg("encryption=none", *overrides)
    client = HospitalClient(make_context(cfg, tmp_path / name))
    return Payload.get(client.train(train_message(n_ref=client.data.num_train))).values


@pytest.mark.parametrize("overrides", [(), ("privacy.secure_mode=false",)], ids=["secure", "unpredictable"])
def test_two_trainings_of_one_config_release_different_updates(tmp_path, overrides):
    first, second = _update(tmp_path, "a", *overrides), _update(tmp_path, "b", *overrides)

    assert not np.array_equal(first, second)


def test_reproducible_trainings_of_one_config_release_the_same_update(tmp_path):
    flags = ("privacy.reproducible=true", "privacy.secure_mode=false")
    first, second = _update(tmp_path, "a", *flags), _update(tmp_path, "b", *flags)

    np.testing.assert_array_equal(first, second)


def test_a_retried_round_trains_afresh_even_in_the_reproducible_mode(tmp_path):
    # the retry trap: the same update under a second set of masks would let a key holder subtract
    # the two; a retry must therefore release another update (new batches, new noise)
    cfg = make_cfg("encryption=none", "privacy.reproducible=true", "privacy.secure_mode=false")
    first = HospitalClient(make_context(cfg, tmp_path / "a"))
    retry = HospitalClient(make_context(cfg, tmp_path / "b"))

    update = Payload.get(first.train(train_message(n_ref=first.data.num_train))).values
    retried = Payload.get(retry.train(train_message(n_ref=retry.data.num_train, attempt=1))).values

    assert update.shape == retried.shape and not np.allclose(update, retried)


def test_the_train_reply_carries_the_dp_report(tmp_path):
    cfg = make_cfg("encryption=none")
    client = HospitalClient(make_context(cfg, tmp_path))

    conf = client.train(train_message(n_ref=client.data.num_train))[M.CONFIG]

    report = json.loads(conf[M.DP_REPORT])
    assert report["randomness"] == "secure" and report["accountant"] == cfg.privacy.accountant
    assert report["num_train"] == client.data.num_train and report["max_grad_norm"] == cfg.privacy.max_grad_norm
    acc = __import__("opacus.accountants", fromlist=["create_accountant"]).create_accountant(report["accountant"])
    acc.history = [tuple(h) for h in report["history"]]
    assert acc.get_epsilon(delta=report["delta"]) == pytest.approx(conf[M.EPSILON])
    assert report["lifetime_epsilon"] == pytest.approx(conf[M.EPSILON])  # its first study


def test_a_hospital_capped_at_ten_takes_one_epsilon_8_study_and_refuses_a_second(tmp_path):
    # Prepare: a hospital with its own lifetime cap (node config), the same folders for both studies
    def hospital(study: str) -> HospitalClient:
        cfg = make_cfg("encryption=none", f"study_id={study}", "federation.rounds=1")
        context = make_context(cfg, tmp_path)
        context.node_config["max-lifetime-epsilon"] = 10.0
        return HospitalClient(context)

    # Execute: the first study joins and trains its one round (spending epsilon 8); the second asks to join
    first = hospital("study-one")
    joined = first.query()[M.CONFIG]
    trained = first.train(train_message(n_ref=first.data.num_train))[M.CONFIG]
    refused = hospital("study-two").query()[M.CONFIG]

    # Assert
    assert M.PROBLEM not in joined and trained[M.OUT_OF_BUDGET] is False
    assert 7.5 < trained[M.EPSILON] <= 8.0
    problem = refused[M.PROBLEM]
    assert "hospital 0 refuses" in problem and "max-lifetime-epsilon=10" in problem
    left = 10.0 - trained[M.EPSILON]
    assert f"budget left: {left:.3f} of 10" in problem


def test_one_hospital_takes_part_in_two_studies_each_with_its_own_state_and_one_lifetime_ledger(tmp_path):
    # Prepare: the same hospital (same state folder) in two studies
    def hospital(study: str) -> HospitalClient:
        return HospitalClient(make_context(make_cfg("encryption=none", f"study_id={study}"), tmp_path))

    # Execute: study one trains round 1 and applies its aggregate; study two then starts
    first = hospital("study-one")
    first.train(train_message(n_ref=first.data.num_train))
    first.evaluate(aggregate_message(1, np.full(len(first.global_weights()), 0.01), 1.0, 1))
    second = hospital("study-two")
    second_reply = second.train(train_message(n_ref=second.data.num_train))[M.CONFIG]

    # Assert: study two starts from round 0 (not out of sync with study one's round 1); one file each;
    # the lifetime ledger holds both studies' spending
    assert hospital("study-one").model_round == 1 and second_reply[M.MODEL_ROUND] == 0
    states = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("hospital_0.npz"))
    assert [Path(p).parent.name for p in states] == ["study-one", "study-two"]
    assert sorted(e.study for e in second.lifetime().entries) == ["study-one", "study-two"]


def test_a_hospital_back_from_an_outage_applies_the_chain_of_missed_aggregates_in_order(tmp_path):
    # Prepare: it holds round 1; the message carries rounds 2 and 3 as a catch-up chain, then round 4
    cfg = make_cfg("encryption=none", "privacy=none", "strategy=fedavgm")
    client = HospitalClient(make_context(cfg, tmp_path))
    start = client.global_weights().astype(np.float64)
    opt = {"name": "fedavgm", "lr": 1.0, "momentum": 0.5}
    steps = [np.full_like(start, 0.01 * r) for r in range(1, 5)]
    client.sync(aggregate_message(1, steps[0], total_weight=1.0, count=1, opt=opt))
    content = aggregate_message(4, steps[3], total_weight=1.0, count=1, opt=opt)
    for rnd in (3, 2):  # the record names order them, not their insertion
        earlier = RecordDict()
        Payload(values=steps[rnd - 1].astype(np.float32)).put(earlier)
        content[M.catch_up_key(rnd)] = Aggregate(rnd, Payload.get(earlier), 1.0, 1, opt).to_record()

    # Execute
    client.sync(content)

    # Assert: the same weights as applying the four aggregates one by one (momentum makes order matter)
    expected, state = start, {}
    for step in steps:
        expected, state = ServerOptimizer.from_spec(opt).step(expected, step, state)
    assert client.model_round == 4
    np.testing.assert_allclose(client.global_weights(), expected, atol=1e-5)


def test_a_round_asked_again_is_answered_with_the_saved_reply_and_not_charged_twice(tmp_path):
    # Prepare: an encrypted private hospital trains round 1 (attempt 0)
    cfg = make_cfg()
    client, roster = encrypted_hospital(cfg, tmp_path)
    message = train_message(n_ref=client.data.num_train, roster=roster)
    first = client.train(message)
    steps = PrivacyLedger.from_json(HospitalState.load(client._state_file()).ledger, cfg.privacy.accountant).steps

    # Execute: a resumed server asks for the same round and attempt (a new process: a new client)
    again = HospitalClient(client.context).train(message)

    # Assert: byte-identical ciphertexts and masks, no second charge; another attempt trains afresh
    assert Payload.get(again).chunks == Payload.get(first).chunks
    assert again[M.CONFIG][M.SELF_COMMIT] == first[M.CONFIG][M.SELF_COMMIT]
    saved = HospitalState.load(client._state_file())
    assert PrivacyLedger.from_json(saved.ledger, cfg.privacy.accountant).steps == steps > 0
    retried = HospitalClient(client.context).train(train_message(n_ref=client.data.num_train, roster=roster, attempt=1))
    assert Payload.get(retried).chunks != Payload.get(first).chunks
    after = HospitalState.load(client._state_file())
    assert PrivacyLedger.from_json(after.ledger, cfg.privacy.accountant).steps == 2 * steps
