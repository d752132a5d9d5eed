"""The hospital ClientApp's handlers, driven directly with a Flower Context (no Ray): fast checks of
what a hospital sends, what it refuses to send, and how it keeps its privacy ledger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline import crypto
from pipeline import records as R
from pipeline.client_app import STATE, HospitalClient
from pipeline.config import validate
from pipeline.privacy import PrivacyLedger
from pipeline.settings import EXPERIMENT_KEY, SECRET_CONTEXT_KEY

ROOT = Path(__file__).resolve().parents[1]


def make_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "data=synthetic",
                "data.num_samples=300",
                "federation.rounds=2",
                "train.local_epochs=1",
                "train.batch_size=32",
                *overrides,
            ],
        )
    return validate(cfg)


def make_context(cfg, tmp_path, hospital: int = 0, state: RecordDict | None = None) -> Context:
    node = {"partition-id": hospital}
    if cfg.encryption.enabled:
        secret, _ = crypto.write_key_files(cfg.encryption, tmp_path / "keys")
        node[SECRET_CONTEXT_KEY] = str(secret)
    return Context(
        run_id=1,
        node_id=10 + hospital,
        node_config=node,
        state=state if state is not None else RecordDict(),
        run_config={EXPERIMENT_KEY: OmegaConf.to_yaml(cfg)},
    )


def train_message(rnd: int = 1, n_ref: int = 100) -> RecordDict:
    return RecordDict({R.CONFIG: ConfigRecord({R.ROUND: rnd, R.N_REF: n_ref, R.PROXIMAL_MU: 0.0})})


def test_query_reports_sizes_only(tmp_path):
    client = HospitalClient(make_context(make_cfg("encryption=none"), tmp_path))

    reply = client.query()[R.CONFIG]

    assert reply[R.NUM_TRAIN] == client.data.num_train > 0
    assert reply[R.NUM_PARAMS] == 97458
    assert set(reply.keys()) == {
        R.HOSPITAL,
        R.NUM_TRAIN,
        R.NUM_VAL,
        R.CHANNELS,
        R.NUM_CLASSES,
        R.IMAGE_SIZE,
        R.NUM_PARAMS,
    }


def test_encrypted_train_reply_carries_ciphertexts_and_epsilon(tmp_path):
    cfg = make_cfg()  # default: DP-SGD + CKKS
    client = HospitalClient(make_context(cfg, tmp_path))

    reply = client.train(train_message(n_ref=client.data.num_train))

    payload = R.Payload.get(reply)
    conf = reply[R.CONFIG]
    assert payload.values is None and len(payload.chunks) == 10  # 97458 values / 5 per slot / 2048 slots
    assert payload.digest == R.digest(payload.chunks)
    assert 0 < conf[R.EPSILON] <= 8.0 and conf[R.OUT_OF_BUDGET] is False
    assert conf[R.WEIGHT] == pytest.approx(1.0)
    assert PrivacyLedger.from_json(client._state()["ledger"], "rdp").steps > 0


def test_hospital_out_of_budget_does_not_train(tmp_path):
    cfg = make_cfg("encryption=none")
    spent = PrivacyLedger("rdp", history=[(0.5, 0.5, 1000)])  # far beyond epsilon 8
    state = RecordDict({STATE: ConfigRecord({R.MODEL_ROUND: 0, "ledger": spent.to_json()})})
    client = HospitalClient(make_context(cfg, tmp_path, state=state))

    reply = client.train(train_message(n_ref=client.data.num_train))

    assert reply[R.CONFIG][R.OUT_OF_BUDGET] is True
    assert R.Payload.get(reply) is None
    assert reply[R.CONFIG][R.EPSILON] > 8.0


def test_non_finite_update_is_refused_before_sending(tmp_path, monkeypatch):
    cfg = make_cfg("encryption=none", "privacy=none")
    client = HospitalClient(make_context(cfg, tmp_path))

    def poisoned(cfg, model, *args, **kwargs):
        for p in model.parameters():
            p.data.fill_(float("nan"))
        return {"train_loss": float("nan"), "train_seconds": 0.0}

    monkeypatch.setattr("pipeline.client_app.train_round", poisoned)

    with pytest.raises(ValueError, match="non-finite"):
        client.train(train_message(n_ref=client.data.num_train))


def test_hospital_applies_an_aggregate_once_and_detects_a_gap(tmp_path):
    cfg = make_cfg("encryption=none", "privacy=none")
    client = HospitalClient(make_context(cfg, tmp_path))
    start = client.global_weights().astype(np.float64)
    step = np.full_like(start, 0.01)
    agg = RecordDict({R.CONFIG: ConfigRecord({R.ROUND: 1, R.AGG_ROUND: 1, R.TOTAL_WEIGHT: 2.0, R.COUNT: 2})})
    R.Payload(values=(2.0 * step).astype(np.float32)).put(agg)

    client.sync(agg)
    client.sync(agg)  # idempotent: the same aggregate again changes nothing

    np.testing.assert_allclose(client.global_weights(), start + step, atol=1e-6)
    assert client.model_round == 1
    gap = RecordDict({R.CONFIG: ConfigRecord({R.ROUND: 3, R.AGG_ROUND: 3, R.TOTAL_WEIGHT: 1.0, R.COUNT: 1})})
    R.Payload(values=step.astype(np.float32)).put(gap)
    from pipeline.client_app import OutOfSync

    with pytest.raises(OutOfSync):
        client.sync(gap)
