"""Whole encrypted rounds without Ray: the real server loop (``run_server``) and real hospitals
(real data, CNN, TenSEAL, key agreement, masks) behind an in-process Grid. What the server
receives, a hospital dropping after the masks were agreed, a forged aggregate, a reply under
another key, and a config naming code the hospitals do not trust."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import compose_cfg
from fakes import real_federation
from flwr.app import Message, RecordDict
from omegaconf import OmegaConf

from pipeline.flower import client_app, hospital
from pipeline.flower import messages as M
from pipeline.flower.context import EXPERIMENT_KEY
from pipeline.flower.server_app import run_server
from pipeline.reporting.recorder import CONFIG_FILE, METRICS_FILE, read_metrics
from pipeline.reporting.timing import PHASE_COLUMNS
from pipeline.secagg import aggregates, consortium, masks, protocol
from pipeline.secagg import keys as ckks_keys
from pipeline.secagg import quantize as packing
from pipeline.secagg.codec import CkksCodec
from pipeline.secagg.params import layout, slot_bits, value_bits
from pipeline.secagg.wire import CIPHER, Payload

SMALL = [
    "data=synthetic",
    "data.num_samples=240",
    "train.batch_size=32",
    "train.local_epochs=1",
    "privacy=none",
    "federation.rounds=2",
    "federation.round_timeout=3",
]


def _federation(tmp_path, *overrides: str):
    cfg = compose_cfg(*SMALL, *overrides)
    cfg.study_id = "study-" + tmp_path.name
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg))  # what pipeline.run writes first
    grid, contexts = real_federation(cfg, tmp_path / "site")
    server_bytes = (tmp_path / "site" / "keys" / ckks_keys.SERVER_FILE).read_bytes()
    return cfg, run_dir, grid, contexts, server_bytes


def _codec(cfg, tmp_path) -> CkksCodec:
    ctx, server = ckks_keys.load_secret_context(str(tmp_path / "site" / "keys" / ckks_keys.SECRET_FILE))
    return CkksCodec(ctx, server, cfg.encryption, int(cfg.federation.num_hospitals))


def test_an_encrypted_run_completes_and_the_server_receives_nothing_it_could_read(tmp_path):
    # Prepare: the default 3 hospitals (min_hospitals 3: one colluder withstood)
    cfg, run_dir, grid, contexts, server_bytes = _federation(tmp_path)

    # Execute
    summary = run_server(grid, cfg, run_dir, server_bytes)
    metrics = consortium.finalize(run_dir, _codec(cfg, tmp_path))

    # Assert: two rounds of three, replayable by the consortium into the hospitals' own model
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert [a.count for a in aggregates.load_all(run_dir)] == [3, 3]
    assert 0.0 <= metrics["auc"] <= 1.0
    assert summary["bytes_per_param_up"] <= 8.0 and summary["bytes_per_param_down"] <= 8.0
    # every reply holds ciphertexts, sizes, metrics: no float array of the model's size, no path of
    # a hospital's key, state or data, no key material other than signed public agreement keys
    secret_paths = [str(tmp_path / "site")]
    for reply in grid.received:
        assert not reply.has_error(), reply.error.reason
        content = reply.content
        for name in content.array_records:
            assert name == CIPHER
        text = repr({k: dict(v) for k, v in content.config_records.items()})
        assert not any(path in text for path in secret_paths)
        assert "PRIVATE KEY" not in text
    # and the Flower Context Ray would hand back to the driver carries nothing either
    assert all(len(c.state) == 0 for c in contexts)


def test_a_hospital_dropping_after_mask_agreement_leaves_the_round_complete_and_its_update_hidden(
    tmp_path, monkeypatch
):
    # Prepare: 5 hospitals (min_hospitals 4 withstands one colluder); hospital 4 trains and masks
    # round 1, then its reply is lost (it reached the server only too late, say)
    cfg, run_dir, grid, contexts, server_bytes = _federation(tmp_path, "federation.num_hospitals=5")
    assert cfg.federation.min_hospitals == 4
    node_4 = contexts[4].node_id
    real_4 = grid.hospitals[node_4]
    lost: dict[str, object] = {}

    def lose_round_1_reply(msg: Message):
        answer = real_4(msg)
        if msg.metadata.message_type == M.TRAIN and int(msg.content[M.CONFIG][M.ROUND]) == 1:
            lost["reply"] = answer
            return None
        return answer

    grid.hospitals[node_4] = lose_round_1_reply
    maskings = {}
    real_round_masks = protocol.HospitalProtocol.round_masks

    def recording(self, rnd, attempt, keys):  # the test (not the server) learns hospital 4's masks
        out = real_round_masks(self, rnd, attempt, keys)
        maskings[(self.me, rnd)] = out.masking
        return out

    monkeypatch.setattr(protocol.HospitalProtocol, "round_masks", recording)

    # Execute
    summary = run_server(grid, cfg, run_dir, server_bytes)

    # Assert: round 1 went on with the other four, round 2 with all five
    assert summary["status"] == "completed"
    first, second = aggregates.load_all(run_dir)
    assert (first.count, first.unmask["survivors"]) == (4, [0, 1, 2, 3]) and second.count == 5
    # the survivors revealed their pair seeds with hospital 4 and never a share of its self mask
    answers = [r.content[M.CONFIG] for r in grid.received if r.metadata.message_type == M.UNMASK]
    round_1 = [a for a in answers if int(a[M.ROUND]) == 1]
    assert len(round_1) == 4 and all(4 not in list(a[M.SELF_SHARES_OF]) for a in round_1)
    assert sorted({d for _, d, _ in first.unmask["dangling"]}) == [4]
    # the server, even with a colluding key holder, gets nothing from the lost reply: decrypted and
    # stripped of every mask revealed, it is still uniform, unrelated to the update ...
    codec = _codec(cfg, tmp_path)
    enc, size = cfg.encryption, len(hospital.HospitalClient(contexts[0]).global_weights())
    shape, bits = layout(size, enc), slot_bits(enc)
    seen = codec.decrypt(Payload.get(lost["reply"]).chunks)[: shape.masked_slots]
    pairs = [(4, int(k), bytes.fromhex(seed)) for k, _, seed in first.unmask["dangling"]]
    stripped = masks.unmask(seen, bits, masks.correction(shape.masked_slots, bits, [], pairs))
    # ... while the self seed, which only hospital 4 held, is what would open it
    own = maskings[(4, 1)]
    opened = masks.unmask(stripped, bits, masks.correction(shape.masked_slots, bits, [own.self_seed], []))
    fields, field_bits = int(enc.fields_per_slot), int(enc.field_bits)
    update = packing.unpack(opened[: shape.data_slots], size, fields, field_bits)
    hidden = packing.unpack(stripped[: shape.data_slots], size, fields, field_bits)
    assert update.max() < 1 << value_bits(enc, 5)  # a real quantised update
    outside = 1 - 2.0 ** (value_bits(enc, 5) - field_bits)  # uniform fields: this share lies beyond its range
    assert np.mean(hidden >= 1 << value_bits(enc, 5)) == pytest.approx(outside, abs=0.01)
    assert abs(np.corrcoef(hidden.astype(float), update.astype(float))[0, 1]) < 0.05


def test_a_forged_aggregate_is_refused_by_every_hospital_and_the_round_is_redone(tmp_path, monkeypatch, caplog):
    # Prepare: the server sends hospital 0's reply as round 1's aggregate
    monkeypatch.setenv("FEDMED_FAULTS", "server:1:forge")
    cfg, run_dir, grid, contexts, server_bytes = _federation(tmp_path)

    # Execute
    with caplog.at_level(logging.WARNING):
        summary = run_server(grid, cfg, run_dir, server_bytes)

    # Assert: refused by all three, named by round, nothing applied; the retry is honest
    log = caplog.text
    assert log.count("refused the aggregate: its round check shows") >= 3
    assert "round 1 (attempt 1) abandoned, no model update applied" in log
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert [a.unmask["attempt"] for a in aggregates.load_all(run_dir)] == [1, 0]
    consortium.finalize(run_dir, _codec(cfg, tmp_path))  # the saved chain is the honest one


def test_a_reply_under_another_key_is_named_and_the_round_is_redone(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FEDMED_FAULTS", "1:2:wrong_key")
    cfg, run_dir, grid, contexts, server_bytes = _federation(tmp_path)

    with caplog.at_level(logging.WARNING):
        summary = run_server(grid, cfg, run_dir, server_bytes)

    assert "the reply of hospital 1 fails the key check at hospital 0" in caplog.text
    assert "round 2 (attempt 1) abandoned" in caplog.text
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    weights = [hospital.HospitalClient(c).global_weights() for c in contexts]
    assert all(np.isfinite(w).all() and np.array_equal(w, weights[0]) for w in weights)


def test_a_hospital_refuses_a_run_config_naming_code_outside_its_allow_list(tmp_path):
    # Prepare: the server's config asks the hospital to build its "model" with os.system
    cfg = compose_cfg(*SMALL)
    grid, contexts = real_federation(cfg, tmp_path)
    marker = tmp_path / "pwned"
    evil = (
        contexts[0]
        .run_config[EXPERIMENT_KEY]
        .replace("_target_: models.builders.scatter_cnn", f"_target_: os.system\n  command: touch {marker}")
    )
    assert "os.system" in evil
    contexts[0].run_config[EXPERIMENT_KEY] = evil
    query = Message(content=RecordDict(), dst_node_id=contexts[0].node_id, message_type=M.QUERY)

    # Execute
    reply = client_app._reply(query, contexts[0], M.QUERY)

    # Assert
    problem = str(reply.content[M.CONFIG][M.PROBLEM])
    assert "hospital 0 refuses the run config: model._target_='os.system' is not in its allow-list" in problem
    assert not marker.exists()


def test_aggregates_refused_in_every_attempt_stop_the_run_with_the_last_good_model(tmp_path, caplog):
    # Prepare: every aggregate of round 2 reaches the hospitals with a tampered attempt number
    cfg, run_dir, grid, contexts, server_bytes = _federation(tmp_path, "federation.rounds=3")

    def tampering(real):
        def answer(msg: Message):
            conf = msg.content[M.CONFIG]
            if msg.metadata.message_type == M.EVALUATE and int(conf[M.ROUND]) == 2:
                info = json.loads(str(conf[M.UNMASK_INFO]))
                conf[M.UNMASK_INFO] = json.dumps({**info, "attempt": info["attempt"] + 5})
            return real(msg)

        return answer

    grid.hospitals = {node: tampering(real) for node, real in grid.hospitals.items()}

    # Execute
    with caplog.at_level(logging.WARNING):
        summary = run_server(grid, cfg, run_dir, server_bytes)

    # Assert: both attempts refused, the run ends with round 1's model, which every hospital holds
    assert summary["status"] == "stopped_early" and summary["rounds_completed"] == 1
    assert "round 2: 2 attempts abandoned" in summary["stop_reason"]
    assert "refused the aggregate" in summary["stop_reason"]
    assert len(aggregates.load_all(run_dir)) == 1
    assert all(hospital.HospitalClient(c).model_round == 1 for c in contexts)


def test_each_round_row_splits_its_seconds_into_phases_that_add_up(tmp_path):
    # Prepare: DP-SGD on (its own phase), CKKS on
    cfg, run_dir, grid, _, server_bytes = _federation(tmp_path, "privacy=dpsgd")

    # Execute
    summary = run_server(grid, cfg, run_dir, server_bytes)

    # Assert: every row's phases add up to its seconds, and the hospitals' work shows where it happened
    rows = read_metrics(run_dir / METRICS_FILE)
    assert len(rows) == 2
    for row in rows:
        phases = {c: float(row[c]) for c in PHASE_COLUMNS}
        assert sum(phases.values()) == pytest.approx(float(row["seconds"]), abs=1e-4)
        for name in ("phase_train", "phase_dp", "phase_encode", "phase_decode", "phase_evaluate"):
            assert phases[name] > 0, name
        # the fake grid answers one hospital after another: the others' handlers count as the last one's wait
        assert phases["phase_send_receive"] > 0 and phases["phase_aggregate"] > 0
    timing = summary["timing"]
    assert timing["rounds"] == pytest.approx(sum(float(r["seconds"]) for r in rows), abs=1e-3)  # csv: 6 digits
    assert timing["query"] > 0
    assert sum(timing["phases"].values()) == pytest.approx(timing["rounds"], abs=1e-3)
