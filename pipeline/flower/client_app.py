"""Flower ClientApp: one hospital. Trains locally (DP-SGD), sends an encoded update, evaluates.

A hospital keeps its copy of the global model, the round it belongs to, its server-optimizer
state and its privacy ledger in its own state file (:mod:`.hospital_state`). Each aggregate it
receives is decoded (decrypted with the hospitals' secret key when encryption is on), turned into
the round's mean update and applied with the strategy's server optimizer. It never sends
anything decrypted back, only metrics (no decryption reaches the party holding the ciphertext).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from omegaconf import DictConfig

from pipeline.flower import faults
from pipeline.flower import messages as M
from pipeline.flower.context import (
    SECRET_CONTEXT_KEY,
    STATE_DIR_KEY,
    experiment,
    hospital_id,
    own_data_root,
    with_defaults,
)
from pipeline.flower.hospital_state import HospitalState
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.plan import plan_for_run
from pipeline.secagg.wire import Payload
from pipeline.task import training
from pipeline.task.model import build_model, get_flat, set_flat
from pipeline.task.sites import HospitalData, hospital_data, own_hospital_data
from strategies.server_optimizers import ServerOptimizer

log = logging.getLogger(__name__)


class OutOfSync(RuntimeError):
    """The hospital missed an aggregate and cannot rebuild the current global model."""


class HospitalClient:
    """Everything one hospital does for one message; its state lives in its own state file."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.cfg: DictConfig = experiment(context)
        self.id = hospital_id(context)
        root = own_data_root(context)
        self.data: HospitalData = own_hospital_data(self.cfg, root) if root else hospital_data(self.cfg, self.id)
        self.device = training.resolve_device(str(self.cfg.device))
        self.state = HospitalState.load(self._state_file())

    # --- state ---------------------------------------------------------------------------
    def _state_file(self) -> Path:
        """Where this hospital keeps its state between messages (node config ``state-dir``)."""
        folder = str(self.context.node_config.get(STATE_DIR_KEY, ""))
        if not folder:
            raise ValueError(f"hospital {self.id} has no node config {STATE_DIR_KEY}: it needs a folder for its state")
        return Path(folder) / f"hospital_{self.id}.npz"

    @property
    def model_round(self) -> int:
        """The round of the global model this hospital holds (0: the initial weights)."""
        return self.state.model_round

    def global_weights(self) -> np.ndarray:
        """This hospital's copy of the global model as a flat vector."""
        if self.state.weights is not None:
            return self.state.weights
        return get_flat(self.new_model())  # round 0: the public, seeded initial weights

    def ledger(self) -> PrivacyLedger:
        return PrivacyLedger.from_json(self.state.ledger, str(self.cfg.privacy.accountant))

    # --- helpers -------------------------------------------------------------------------
    def new_model(self):
        d = self.data
        return build_model(self.cfg, d.channels, d.num_classes, d.image_size)

    def codec(self):
        """The hospital's encoder/decoder: plaintext, or CKKS with the hospitals' secret key.

        Imported here, not at module level: the key handling loads only in the hospital's own
        process, never in a simulation driver that merely holds this app.
        """
        from pipeline.secagg.codec import CkksCodec, PlainCodec

        if not self.cfg.encryption.enabled:
            return PlainCodec()
        path = str(self.context.node_config.get(SECRET_CONTEXT_KEY, ""))
        if not path:
            raise ValueError("encryption is on but this hospital has no secret context (node config secret-context)")
        from pipeline.secagg.keys import load_secret_context

        ctx, server_bytes = load_secret_context(path)
        return CkksCodec(ctx, server_bytes, self.cfg.encryption, int(self.cfg.federation.num_hospitals))

    def sync(self, content: RecordDict) -> None:
        """Apply the aggregate in ``content`` (if any) to this hospital's copy of the global model."""
        payload = Payload.get(content)
        if payload is None:
            return
        conf = content[M.CONFIG]
        agg_round = int(conf[M.AGG_ROUND])
        if agg_round == self.model_round:
            return
        if agg_round != self.model_round + 1:
            raise OutOfSync(f"holds the model of round {self.model_round}, got the aggregate of round {agg_round}")
        current = self.global_weights()
        summed = self.codec().decode(payload, int(conf[M.COUNT]), len(current))
        optimizer = ServerOptimizer.from_spec(json.loads(str(conf.get(M.SERVER_OPTIMIZER) or "{}")))
        updated, opt_state = optimizer.step(current, summed / float(conf[M.TOTAL_WEIGHT]), self.state.optimizer)
        if not np.all(np.isfinite(updated)):
            raise ValueError(f"the aggregate of round {agg_round} decodes to non-finite weights")
        self.state.weights = updated.astype(np.float32)
        self.state.optimizer = opt_state
        self.state.model_round = agg_round
        self.state.save()

    # --- message handlers ----------------------------------------------------------------
    def query(self) -> RecordDict:
        """Data size and shape, nothing else."""
        d = self.data
        return RecordDict(
            {
                M.CONFIG: ConfigRecord(
                    {
                        M.HOSPITAL: self.id,
                        M.NUM_TRAIN: d.num_train,
                        M.NUM_VAL: len(d.val),
                        M.CHANNELS: d.channels,
                        M.NUM_CLASSES: d.num_classes,
                        M.IMAGE_SIZE: d.image_size,
                        M.NUM_PARAMS: len(self.global_weights()),
                    }
                )
            }
        )

    def train(self, content: RecordDict) -> RecordDict:
        """Catch up with the last aggregate, train one round, reply with the encoded weighted update."""
        conf = content[M.CONFIG]
        rnd = int(conf[M.ROUND])
        self.sync(content)
        if self.model_round != rnd - 1:
            raise OutOfSync(f"holds the model of round {self.model_round}, round {rnd} needs round {rnd - 1}")
        plan = plan_for_run(self.cfg, self.data.num_train)
        ledger = self.ledger() if plan else None
        reply = {M.ROUND: rnd, M.NUM_TRAIN: self.data.num_train, M.OUT_OF_BUDGET: False}
        if plan is not None and not ledger.can_afford_round(plan):
            eps = ledger.epsilon(plan.delta)
            log.warning(
                "hospital %d: out of privacy budget (epsilon %.3f of %.3f); not training",
                self.id,
                eps,
                plan.target_epsilon,
            )
            reply.update({M.OUT_OF_BUDGET: True, M.EPSILON: eps})
            return RecordDict({M.CONFIG: ConfigRecord(reply)})
        start = self.global_weights()
        model = self.new_model()
        set_flat(model, start)
        seed = training.round_seed(int(self.cfg.seed), self.id, rnd)
        epochs = int(self.cfg.train.local_epochs)
        mu = float(conf.get(M.PROXIMAL_MU, 0.0))
        stats = training.train_round(self.cfg, model, self.data.train, epochs, self.device, plan, ledger, seed, mu)
        if ledger is not None:  # charged as soon as it trained, whatever happens to the update next
            self.state.ledger = ledger.to_json()
            self.state.save()
        change = get_flat(model).astype(np.float64) - start
        if not np.all(np.isfinite(change)):
            raise ValueError("local training produced non-finite weights; lower train.optimizer.lr")
        weight = self.data.num_train / float(conf[M.N_REF])
        update = weight * change
        t0 = time.perf_counter()
        codec = self.codec()
        payload = codec.encode(update, np.random.default_rng(seed))
        encode_seconds = time.perf_counter() - t0
        from pipeline.secagg.codec import clipped_fraction

        eps = ledger.epsilon(plan.delta) if ledger is not None else 0.0
        reply.update({M.WEIGHT: weight, M.EPSILON: eps})
        content_out = RecordDict(
            {
                M.CONFIG: ConfigRecord(reply),
                M.METRICS: MetricRecord(
                    {
                        M.TRAIN_LOSS: float(stats["train_loss"]),
                        M.TRAIN_SECONDS: float(stats["train_seconds"]),
                        M.ENCODE_SECONDS: encode_seconds,
                        M.CLIPPED_FRACTION: clipped_fraction(update, self.cfg.encryption),
                    }
                ),
            }
        )
        payload.put(content_out)
        return content_out

    def evaluate(self, content: RecordDict) -> RecordDict:
        """Apply the new aggregate and report validation metrics on the local held-out share."""
        t0 = time.perf_counter()
        self.sync(content)
        decode_seconds = time.perf_counter() - t0
        model = self.new_model()
        set_flat(model, self.global_weights())
        m = training.evaluate(model, self.data.val, self.device)
        plan = plan_for_run(self.cfg, self.data.num_train)
        # the spending so far, also when a train reply of this hospital was lost or dropped
        epsilon = self.ledger().epsilon(plan.delta) if plan is not None else 0.0
        conf = {M.ROUND: int(content[M.CONFIG][M.ROUND]), M.MODEL_ROUND: self.model_round, M.EPSILON: epsilon}
        return RecordDict(
            {
                M.CONFIG: ConfigRecord(conf),
                M.METRICS: MetricRecord(
                    {
                        "val_loss": m["loss"],
                        "val_auc": m["auc"],
                        "val_accuracy": m["accuracy"],
                        "val_mcc": m["mcc"],
                        M.DECODE_SECONDS: decode_seconds,
                        M.NUM_VAL: len(self.data.val),
                    }
                ),
            }
        )


def _reply(msg: Message, context: Context, handler: str) -> Message:
    client = HospitalClient(context)
    try:
        content = client.query() if handler == M.QUERY else getattr(client, handler)(msg.content)
    except OutOfSync as err:
        content = RecordDict({M.CONFIG: ConfigRecord({M.PROBLEM: f"out of sync: {err}"})})
    return Message(content=content, reply_to=msg)


def make_app(run_config: dict | None = None, node_config: dict | None = None) -> ClientApp:
    """The hospital ClientApp; a simulation binds the run config and per-site settings here.

    With ``FEDMED_FAULTS`` set, the fault-injection mod (:mod:`.faults`) wraps every handler.
    """
    client_app = ClientApp(mods=faults.mods())

    @client_app.query()
    def query(msg: Message, context: Context) -> Message:
        """Report data size and shape (no data leaves the hospital)."""
        return _reply(msg, with_defaults(context, run_config, node_config), M.QUERY)

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        """Apply the last aggregate, train one round, reply with the encoded weighted update."""
        return _reply(msg, with_defaults(context, run_config, node_config), M.TRAIN)

    @client_app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        """Apply the new aggregate and evaluate it on the local validation share."""
        return _reply(msg, with_defaults(context, run_config, node_config), M.EVALUATE)

    return client_app


# Entry point for `flwr run` (pyproject [tool.flwr.app.components]).
app = make_app()
