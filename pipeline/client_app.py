"""Flower ClientApp: one hospital. Trains locally (DP-SGD), sends an encoded update, evaluates.

A hospital keeps, in its node state, its copy of the global model and the round it belongs to,
and its privacy ledger. Each aggregate it receives is decoded (decrypted with the hospitals'
secret key when encryption is on) and applied to that copy; it never sends anything decrypted
back, only metrics (no decryption reaches the party holding the ciphertext).
"""

from __future__ import annotations

import functools
import io
import logging
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from omegaconf import DictConfig

from pipeline import crypto, faults
from pipeline import records as R
from pipeline.codec import CkksCodec, PlainCodec, clipped_fraction
from pipeline.hospital import (
    HospitalData,
    build_model,
    dp_plan,
    get_flat,
    hospital_data,
    own_hospital_data,
    set_flat,
    train_round,
)
from pipeline.privacy import PrivacyLedger
from pipeline.results import write_atomic
from pipeline.settings import SECRET_CONTEXT_KEY, STATE_DIR_KEY, experiment, hospital_id, own_data_root, with_defaults
from pipeline.training import evaluate, resolve_device

log = logging.getLogger(__name__)

STATE = "hospital"  # ConfigRecord in context.state
GLOBAL = "global"  # ArrayRecord in context.state


class OutOfSync(RuntimeError):
    """The hospital missed an aggregate and cannot rebuild the current global model."""


@functools.lru_cache(maxsize=2)
def _secret_context(path: str) -> tuple:
    data = Path(path).read_bytes()
    ctx = crypto.load_context(data)
    if not ctx.has_secret_key():
        raise ValueError(f"{path} holds no secret key: hospitals need the secret context file")
    return ctx, crypto.server_context_bytes(ctx)


class HospitalClient:
    """Everything one hospital does for one message, with its state in ``context.state``."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.cfg: DictConfig = experiment(context)
        self.id = hospital_id(context)
        root = own_data_root(context)
        self.data: HospitalData = own_hospital_data(self.cfg, root) if root else hospital_data(self.cfg, self.id)
        self.device = resolve_device(str(self.cfg.device))
        self._restore()

    # --- state ---------------------------------------------------------------------------
    def _state_file(self) -> Path | None:
        """Where this hospital persists its state between processes (node config ``state-dir``)."""
        folder = str(self.context.node_config.get(STATE_DIR_KEY, ""))
        return Path(folder) / f"hospital_{self.id}.npz" if folder else None

    def _restore(self) -> None:
        """After a restart (or a resumed run), reload the state this hospital saved last."""
        path = self._state_file()
        if STATE in self.context.state or path is None or not path.exists():
            return
        with np.load(path) as saved:
            self.context.state[STATE] = ConfigRecord(
                {R.MODEL_ROUND: int(saved["model_round"]), "ledger": str(saved["ledger"])}
            )
            if "global" in saved:
                self.context.state[GLOBAL] = ArrayRecord(array_dict={"values": Array(saved["global"])})

    def _persist(self) -> None:
        path = self._state_file()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"model_round": np.int64(self.model_round), "ledger": np.array(str(self._state()["ledger"]))}
        if GLOBAL in self.context.state:
            arrays["global"] = self.context.state[GLOBAL]["values"].numpy()
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_atomic(path, buf.getvalue())

    def _state(self) -> ConfigRecord:
        if STATE not in self.context.state:
            self.context.state[STATE] = ConfigRecord({R.MODEL_ROUND: 0, "ledger": ""})
        return self.context.state[STATE]

    @property
    def model_round(self) -> int:
        return int(self._state()[R.MODEL_ROUND])

    def global_weights(self) -> np.ndarray:
        if GLOBAL in self.context.state:
            return self.context.state[GLOBAL]["values"].numpy()
        return get_flat(self.new_model())  # round 0: the public, seeded initial weights

    def _store_global(self, flat: np.ndarray, model_round: int) -> None:
        self.context.state[GLOBAL] = ArrayRecord(array_dict={"values": Array(flat.astype(np.float32))})
        self._state()[R.MODEL_ROUND] = model_round

    def ledger(self) -> PrivacyLedger:
        return PrivacyLedger.from_json(str(self._state()["ledger"]), str(self.cfg.privacy.accountant))

    # --- helpers -------------------------------------------------------------------------
    def new_model(self):
        d = self.data
        return build_model(self.cfg, d.channels, d.num_classes, d.image_size)

    def codec(self) -> PlainCodec | CkksCodec:
        if not self.cfg.encryption.enabled:
            return PlainCodec()
        path = str(self.context.node_config.get(SECRET_CONTEXT_KEY, ""))
        if not path:
            raise ValueError("encryption is on but this hospital has no secret context (node config secret-context)")
        ctx, server_bytes = _secret_context(path)
        return CkksCodec(ctx, server_bytes, self.cfg.encryption, int(self.cfg.federation.num_hospitals))

    def sync(self, content: RecordDict) -> None:
        """Apply the aggregate in ``content`` (if any) to this hospital's copy of the global model."""
        payload = R.Payload.get(content)
        if payload is None:
            return
        conf = content[R.CONFIG]
        agg_round = int(conf[R.AGG_ROUND])
        if agg_round == self.model_round:
            return
        if agg_round != self.model_round + 1:
            raise OutOfSync(f"holds the model of round {self.model_round}, got the aggregate of round {agg_round}")
        current = self.global_weights()
        summed = self.codec().decode(payload, int(conf[R.COUNT]), len(current))
        updated = current + summed / float(conf[R.TOTAL_WEIGHT])
        if not np.all(np.isfinite(updated)):
            raise ValueError(f"the aggregate of round {agg_round} decodes to non-finite weights")
        self._store_global(updated, agg_round)
        self._persist()

    # --- message handlers ----------------------------------------------------------------
    def query(self) -> RecordDict:
        d = self.data
        return RecordDict(
            {
                R.CONFIG: ConfigRecord(
                    {
                        R.HOSPITAL: self.id,
                        R.NUM_TRAIN: d.num_train,
                        R.NUM_VAL: len(d.val),
                        R.CHANNELS: d.channels,
                        R.NUM_CLASSES: d.num_classes,
                        R.IMAGE_SIZE: d.image_size,
                        R.NUM_PARAMS: len(self.global_weights()),
                    }
                )
            }
        )

    def train(self, content: RecordDict) -> RecordDict:
        conf = content[R.CONFIG]
        rnd = int(conf[R.ROUND])
        self.sync(content)
        if self.model_round != rnd - 1:
            raise OutOfSync(f"holds the model of round {self.model_round}, round {rnd} needs round {rnd - 1}")
        epochs = int(self.cfg.train.local_epochs)
        plan = dp_plan(self.cfg, self.data.num_train, epochs, int(self.cfg.federation.rounds))
        ledger = self.ledger() if plan else None
        reply = {R.ROUND: rnd, R.NUM_TRAIN: self.data.num_train, R.OUT_OF_BUDGET: False}
        if plan is not None and not ledger.can_afford_round(plan):
            eps = ledger.epsilon(plan.delta)
            log.warning(
                "hospital %d: out of privacy budget (epsilon %.3f of %.3f); not training",
                self.id,
                eps,
                plan.target_epsilon,
            )
            reply.update({R.OUT_OF_BUDGET: True, R.EPSILON: eps})
            return RecordDict({R.CONFIG: ConfigRecord(reply)})
        injected = faults.planned(self.id, rnd)
        if "crash" in injected:
            raise faults.InjectedFault(f"hospital {self.id} crashes in round {rnd} (fault injection)")
        start = self.global_weights()
        model = self.new_model()
        set_flat(model, start)
        seed = int(np.random.SeedSequence([int(self.cfg.seed), self.id, rnd]).generate_state(1)[0])
        stats = train_round(
            self.cfg, model, self.data, epochs, self.device, plan, ledger, seed, float(conf.get(R.PROXIMAL_MU, 0.0))
        )
        change = get_flat(model).astype(np.float64) - start
        if "nan" in injected:
            change[::7] = np.nan
        if not np.all(np.isfinite(change)):
            raise ValueError("local training produced non-finite weights; lower train.optimizer.lr")
        weight = self.data.num_train / float(conf[R.N_REF])
        update = weight * change
        t0 = time.perf_counter()
        payload = self.codec().encode(update, np.random.default_rng(seed))
        encode_seconds = time.perf_counter() - t0
        if "corrupt" in injected and payload.chunks:
            first = bytearray(payload.chunks[0])
            first[len(first) // 2] ^= 0xFF
            payload.chunks[0] = bytes(first)
        if "stale" in injected:
            reply[R.ROUND] = rnd - 1
        eps = 0.0
        if ledger is not None:
            self._state()["ledger"] = ledger.to_json()
            self._persist()
            eps = ledger.epsilon(plan.delta)
        reply.update({R.WEIGHT: weight, R.EPSILON: eps})
        content_out = RecordDict(
            {
                R.CONFIG: ConfigRecord(reply),
                R.METRICS: MetricRecord(
                    {
                        "train_loss": float(stats["train_loss"]),
                        "train_seconds": float(stats["train_seconds"]),
                        "encode_seconds": encode_seconds,
                        "clipped_fraction": clipped_fraction(update, self.cfg.encryption),
                    }
                ),
            }
        )
        payload.put(content_out)
        return content_out

    def evaluate(self, content: RecordDict) -> RecordDict:
        t0 = time.perf_counter()
        self.sync(content)
        decode_seconds = time.perf_counter() - t0
        model = self.new_model()
        set_flat(model, self.global_weights())
        m = evaluate(model, self.data.val, self.device)
        return RecordDict(
            {
                R.CONFIG: ConfigRecord({R.ROUND: int(content[R.CONFIG][R.ROUND]), R.MODEL_ROUND: self.model_round}),
                R.METRICS: MetricRecord(
                    {
                        "val_loss": m["loss"],
                        "val_auc": m["auc"],
                        "val_accuracy": m["accuracy"],
                        "val_mcc": m["mcc"],
                        "decode_seconds": decode_seconds,
                        R.NUM_VAL: len(self.data.val),
                    }
                ),
            }
        )


def _reply(msg: Message, context: Context, handler: str) -> Message:
    client = HospitalClient(context)
    try:
        content = client.query() if handler == "query" else getattr(client, handler)(msg.content)
    except OutOfSync as err:
        content = RecordDict({R.CONFIG: ConfigRecord({R.PROBLEM: f"out of sync: {err}"})})
    return Message(content=content, reply_to=msg)


def make_app(run_config: dict | None = None, node_config: dict | None = None) -> ClientApp:
    """The hospital ClientApp; a simulation binds the run config and per-site settings here."""
    client_app = ClientApp()

    @client_app.query()
    def query(msg: Message, context: Context) -> Message:
        """Report data size and shape (no data leaves the hospital)."""
        return _reply(msg, with_defaults(context, run_config, node_config), "query")

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        """Apply the last aggregate, train one round, reply with the encoded weighted update."""
        return _reply(msg, with_defaults(context, run_config, node_config), "train")

    @client_app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        """Apply the new aggregate and evaluate it on the local validation share."""
        return _reply(msg, with_defaults(context, run_config, node_config), "evaluate")

    return client_app


# Entry point for `flwr run` (pyproject [tool.flwr.app.components]).
app = make_app()
