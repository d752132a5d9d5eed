"""One hospital's work for one message: trains locally (DP-SGD), sends an encoded update, evaluates.

A hospital keeps its copy of the global model, the round it belongs to, its server-optimizer
state and its privacy ledger in its own state file (:mod:`.hospital_state`). Each aggregate it
receives is decoded (decrypted with the hospitals' secret key when encryption is on), turned into
the round's mean update and applied with the strategy's server optimizer. It never sends
anything decrypted back, only metrics (no decryption reaches the party holding the ciphertext).

:func:`answer` runs one handler; the ClientApp (:mod:`.client_app`) calls it in its own process or
relays the message to the hospital's long-running service (:mod:`.hospital_service`), which
imports this module, MONAI, Opacus and TenSEAL once instead of once per message.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ConfigRecord, Context, MetricRecord, RecordDict
from omegaconf import DictConfig

from pipeline.config.trust import check_targets
from pipeline.errors import ConfigError
from pipeline.flower import messages as M
from pipeline.flower.context import (
    LIFETIME_DIR_KEY,
    MAX_LIFETIME_KEY,
    ROSTER_KEY,
    SECRET_CONTEXT_KEY,
    SIGNING_DIR_KEY,
    SIGNING_KEY_KEY,
    STATE_DIR_KEY,
    experiment,
    hospital_id,
    own_data_root,
)
from pipeline.flower.hospital_state import HospitalState
from pipeline.privacy.ledger import BUDGET_SLACK, PrivacyLedger
from pipeline.privacy.lifetime import LifetimeLedger, lifetime_file
from pipeline.privacy.plan import DPPlan, plan_for_run
from pipeline.privacy.randomness import REPRODUCIBLE, MechanismRandomness, round_randomness
from pipeline.reporting.timing import Stopwatch
from pipeline.secagg.masks import round_check
from pipeline.secagg.params import share_threshold
from pipeline.secagg.wire import Payload
from pipeline.task import training
from pipeline.task.clinical import validation_metrics
from pipeline.task.model import build_model, get_flat, set_flat
from pipeline.task.sites import HospitalData, hospital_data, own_hospital_data
from strategies.server_optimizers import ServerOptimizer

if TYPE_CHECKING:  # the key handling loads only in the hospital's process (see HospitalClient.codec)
    from pipeline.secagg.protocol import RoundMasks

log = logging.getLogger(__name__)


class OutOfSync(RuntimeError):
    """The hospital missed an aggregate and cannot rebuild the current global model."""


class HospitalClient:
    """Everything one hospital does for one message; its state lives in its own state file."""

    def __init__(self, context: Context, watch: Stopwatch | None = None) -> None:
        self.context = context
        self.watch = watch if watch is not None else Stopwatch()  # this message's phases (sent back)
        self.cfg: DictConfig = experiment(context)
        self.id = hospital_id(context)
        check_targets(self.cfg, f"hospital {self.id}")  # before anything is built from the server's config
        root = own_data_root(context)
        self.data: HospitalData = own_hospital_data(self.cfg, root) if root else hospital_data(self.cfg, self.id)
        self.device = training.resolve_device(str(self.cfg.device))
        self.state = HospitalState.load(self._state_file())

    # --- state ---------------------------------------------------------------------------
    @property
    def study(self) -> str:
        """The study this run belongs to (the config's ``study_id``; Flower's run id if it has none)."""
        return str(self.cfg.get("study_id") or f"run-{self.context.run_id}")

    def _state_dir(self) -> Path:
        folder = str(self.context.node_config.get(STATE_DIR_KEY, ""))
        if not folder:
            raise ValueError(f"hospital {self.id} has no node config {STATE_DIR_KEY}: it needs a folder for its state")
        return Path(folder)

    def _state_file(self) -> Path:
        """Where this hospital keeps its state for this study (node config ``state-dir``, one folder a study)."""
        return self._state_dir() / self.study / f"hospital_{self.id}.npz"

    def lifetime(self) -> LifetimeLedger:
        """This hospital's spending over all its studies (node config ``lifetime-dir``, else ``state-dir``)."""
        folder = str(self.context.node_config.get(LIFETIME_DIR_KEY, "") or self._state_dir())
        return LifetimeLedger.load(lifetime_file(folder, self.id))

    @property
    def max_lifetime_epsilon(self) -> float | None:
        """The hospital's own cap on its lifetime spending (node config ``max-lifetime-epsilon``)."""
        cap = self.context.node_config.get(MAX_LIFETIME_KEY)
        return None if cap in (None, "") else float(cap)

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

    def protocol(self):
        """This hospital's part of the secure-aggregation protocol (a ``HospitalProtocol``)."""
        from pipeline.secagg.protocol import HospitalProtocol

        node = self.context.node_config
        signing = str(node.get(SIGNING_KEY_KEY, "") or "")
        if not signing and node.get(SIGNING_DIR_KEY):
            signing = str(Path(str(node[SIGNING_DIR_KEY])) / f"hospital_{self.id}.key")
        roster = str(node.get(ROSTER_KEY, "") or "")
        if not signing or not roster:
            raise ValueError(
                f"encryption is on but hospital {self.id} has no node config {SIGNING_KEY_KEY} (or {SIGNING_DIR_KEY}) "
                f"and {ROSTER_KEY}: it needs its signing key and the roster of the hospitals' public keys"
            )
        m = int(self.cfg.federation.min_hospitals)
        return HospitalProtocol(
            self.id, self.study, Path(signing), Path(roster), m, share_threshold(m), self.state.secagg
        )

    def _keep(self, protocol) -> None:
        self.state.secagg = protocol.dumps()
        self.state.save()

    def sync(self, content: RecordDict) -> float:
        """Apply the aggregates in ``content`` (a catch-up chain, then the latest) to this hospital's model.

        Aggregates of rounds it already holds are skipped; each other must be the next round.
        Returns the seconds spent decoding them (decrypting, unmasking, checking).

        Raises:
            OutOfSync: an aggregate is not the next round (nothing more is applied).
            AggregateRefused: an aggregate fails its checks (nothing more is applied).
        """
        from pipeline.secagg.aggregates import Aggregate

        earlier = sorted(k for k in content if k.startswith(M.CATCH_UP_PREFIX))
        chain = [Aggregate.from_record(content[k]) for k in earlier]
        payload = Payload.get(content)
        if payload is not None:
            conf = content[M.CONFIG]
            chain.append(
                Aggregate(
                    int(conf[M.AGG_ROUND]),
                    payload,
                    float(conf[M.TOTAL_WEIGHT]),
                    int(conf[M.COUNT]),
                    json.loads(str(conf.get(M.SERVER_OPTIMIZER) or "{}")),
                    json.loads(str(conf.get(M.UNMASK_INFO) or "{}")),
                )
            )
        return sum(self._apply(agg) for agg in chain if agg.round > self.model_round)

    def _apply(self, agg) -> float:
        """Decode one aggregate (the next round's) and step the model with it; the decoding seconds."""
        if agg.round != self.model_round + 1:
            raise OutOfSync(f"holds the model of round {self.model_round}, got the aggregate of round {agg.round}")
        current = self.global_weights()
        minimum = int(self.cfg.federation.min_hospitals)
        t0 = time.perf_counter()
        summed = self.codec().open_aggregate(
            agg.payload, agg.count, len(current), agg.unmask, self.study, agg.round, minimum
        )
        seconds = time.perf_counter() - t0
        optimizer = ServerOptimizer.from_spec(agg.server_optimizer)
        updated, opt_state = optimizer.step(current, summed / agg.total_weight, self.state.optimizer)
        if not np.all(np.isfinite(updated)):
            raise ValueError(f"the aggregate of round {agg.round} decodes to non-finite weights")
        self.state.weights = updated.astype(np.float32)
        self.state.optimizer = opt_state
        self.state.model_round = agg.round
        self.state.save()
        return seconds

    # --- message handlers ----------------------------------------------------------------
    def _lifetime_problem(self, plan: DPPlan, history: list) -> str | None:
        """Why ``history`` (this study's spending, planned or so far) would break the lifetime cap; None if not."""
        cap = self.max_lifetime_epsilon
        if cap is None:
            return None
        lifetime = self.lifetime()
        would = lifetime.epsilon_with(self.study, history, plan.delta, plan.accountant)
        if would <= cap * (1 + BUDGET_SLACK):
            return None
        spent = lifetime.epsilon(plan.delta, plan.accountant)
        return (
            f"hospital {self.id} refuses: this study would take its lifetime epsilon to {would:.3f}, above its "
            f"{MAX_LIFETIME_KEY}={cap:g} (budget left: {max(cap - spent, 0.0):.3f} of {cap:g})"
        )

    def query(self) -> RecordDict:
        """Data size and shape, nothing else; a refusal when the study does not fit the lifetime budget."""
        plan = plan_for_run(self.cfg, self.data.num_train)
        if plan is not None:  # this study's spending so far plus what its plan still has to spend
            ledger = self.ledger()
            remaining = max(plan.total_steps - ledger.steps, 0)
            planned = ledger.accountant.history + [(plan.noise_multiplier, plan.sample_rate, remaining)]
            problem = self._lifetime_problem(plan, planned)
            if problem:
                log.warning("%s", problem)
                return RecordDict({M.CONFIG: ConfigRecord({M.PROBLEM: problem, M.HOSPITAL: self.id})})
        d = self.data
        facts = {
            M.HOSPITAL: self.id,
            M.NUM_TRAIN: d.num_train,
            M.NUM_VAL: len(d.val),
            M.CHANNELS: d.channels,
            M.NUM_CLASSES: d.num_classes,
            M.IMAGE_SIZE: d.image_size,
            M.NUM_PARAMS: len(self.global_weights()),
            M.MODEL_ROUND: self.model_round,
        }
        if self.cfg.encryption.enabled:  # this run's signed key agreement key (secure aggregation)
            protocol = self.protocol()
            public, signature = protocol.advert()
            facts[M.AGREE_KEY], facts[M.AGREE_SIG] = public.decode(), signature
            self._keep(protocol)
        return RecordDict({M.CONFIG: ConfigRecord(facts)})

    def train(self, content: RecordDict) -> RecordDict:
        """Catch up with the last aggregate, train one round, reply with the encoded weighted update."""
        conf = content[M.CONFIG]
        rnd = int(conf[M.ROUND])
        with self.watch.phase("decode"):
            self.sync(content)
        # the same request again (a resumed server): the saved reply, neither trained nor charged twice
        asked = f"{rnd}:{int(conf.get(M.ATTEMPT, 0))}:{self.model_round}"
        if self.state.sent and self.state.sent_for == asked:
            log.info("hospital %d: round %s was trained already; re-sending the saved reply", self.id, asked)
            return M.from_bytes(self.state.sent)
        if self.model_round != rnd - 1:
            raise OutOfSync(f"holds the model of round {self.model_round}, round {rnd} needs round {rnd - 1}")
        plan = plan_for_run(self.cfg, self.data.num_train)
        ledger = self.ledger() if plan else None
        reply = {
            M.ROUND: rnd,
            M.MODEL_ROUND: self.model_round,
            M.NUM_TRAIN: self.data.num_train,
            M.OUT_OF_BUDGET: False,
            M.DEVICE: str(self.device),
        }
        if plan is not None:
            this_round = ledger.accountant.history + [(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)]
            lifetime_problem = self._lifetime_problem(plan, this_round)
            if not ledger.can_afford_round(plan) or lifetime_problem:
                eps = ledger.epsilon(plan.delta)
                why = lifetime_problem or f"epsilon {eps:.3f} of {plan.target_epsilon:g} spent, a round more overspends"
                log.warning("hospital %d: out of privacy budget (%s); not training", self.id, why)
                reply.update({M.OUT_OF_BUDGET: True, M.EPSILON: eps})
                return RecordDict({M.CONFIG: ConfigRecord(reply)})
        start = self.global_weights()
        model = self.new_model()
        set_flat(model, start)
        # a retried round (attempt > 0) trains afresh: the same update under other masks would let a
        # key holder subtract the two tries
        attempt = int(conf.get(M.ATTEMPT, 0))
        seed = training.round_seed(int(self.cfg.seed), self.id, rnd, attempt)
        randomness = round_randomness(self.cfg.privacy, int(self.cfg.seed), self.id, rnd, attempt)
        epochs = int(self.cfg.train.local_epochs)
        mu = float(conf.get(M.PROXIMAL_MU, 0.0))
        with self.watch.phase("train"):
            stats = training.train_round(
                self.cfg, model, self.data.train, epochs, self.device, plan, ledger, seed, mu, randomness
            )
        self.watch.move("train", "dp", stats.get("dp_seconds", 0.0))
        change = get_flat(model).astype(np.float64) - start
        if not np.all(np.isfinite(change)):  # the failure itself depends on the data: charged all the same
            self._charge(plan, ledger)
            self.state.save()
            raise ValueError("local training produced non-finite weights; lower train.optimizer.lr")
        weight = self.data.num_train / float(conf[M.N_REF])
        update = weight * change
        t0 = time.perf_counter()
        with self.watch.phase("encode"):
            payload, round_masks = self._encode(update, conf, seed, randomness)
        encode_seconds = time.perf_counter() - t0
        from pipeline.secagg.codec import clipped_fraction

        self._charge(plan, ledger)
        eps = ledger.epsilon(plan.delta) if ledger is not None else 0.0
        reply.update({M.WEIGHT: weight, M.EPSILON: eps})
        if plan is not None:
            reply[M.DP_REPORT] = json.dumps(self._dp_report(plan, ledger, eps, randomness.kind))
        if round_masks is not None:
            reply[M.SHARES_TO] = sorted(round_masks.shares)
            reply[M.SHARES] = [round_masks.shares[j] for j in sorted(round_masks.shares)]
            reply[M.SELF_COMMIT] = round_masks.commitment
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
        # charged and kept in one write, before the reply leaves: a kill before it released nothing
        # (the round is trained afresh), a kill after it re-sends this very reply
        self.state.sent, self.state.sent_for = M.to_bytes(content_out), asked
        self.state.save()
        return content_out

    def _charge(self, plan: DPPlan | None, ledger: PrivacyLedger | None) -> None:
        """Put the round's spending in the state (saved by the caller) and the lifetime ledger.

        The lifetime ledger holds each study's whole history, so recording it again after a kill
        (the round trained afresh) replaces the entry rather than adding to it.
        """
        if ledger is None:
            return
        self.state.ledger = ledger.to_json()
        self.lifetime().record(self.study, ledger.accountant.history, plan.delta, plan.accountant)

    def _encode(
        self, update: np.ndarray, conf: ConfigRecord, seed: int, randomness: MechanismRandomness
    ) -> tuple[Payload, RoundMasks | None]:
        """The round's payload of ``update`` (masked and encrypted when encryption is on) and its masks."""
        rnd, attempt = int(conf[M.ROUND]), int(conf.get(M.ATTEMPT, 0))
        codec = self.codec()
        round_masks = None
        if self.cfg.encryption.enabled:
            protocol = self.protocol()
            keys = protocol.pairwise_keys(_adverts(conf))
            round_masks = protocol.round_masks(rnd, attempt, keys)
            self._keep(protocol)
        # stochastic rounding: seeded only in reproducible runs, fresh OS entropy otherwise
        rng = np.random.default_rng(seed if randomness.kind == REPRODUCIBLE else None)
        masking = round_masks.masking if round_masks else None
        return codec.encode(update, rng, masking, round_check(self.study, rnd, attempt)), round_masks

    def _dp_report(self, plan: DPPlan, ledger: PrivacyLedger, epsilon: float, randomness: str) -> dict:
        """What privacy.json records for this hospital: enough to recompute epsilon with any accountant."""
        return {
            "num_train": self.data.num_train,
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
            "max_grad_norm": plan.max_grad_norm,
            "steps_per_round": plan.steps_per_round,
            "rounds_planned": plan.rounds,
            "accountant": plan.accountant,
            "delta": plan.delta,
            "target_epsilon": plan.target_epsilon,
            "randomness": randomness,
            "history": [list(h) for h in ledger.accountant.history],
            "epsilon": epsilon,
            "lifetime_epsilon": self.lifetime().epsilon(plan.delta, plan.accountant),
            "max_lifetime_epsilon": self.max_lifetime_epsilon,
        }

    def unmask(self, content: RecordDict) -> RecordDict:
        """Reveal what removes this round's masks (see :mod:`pipeline.secagg.protocol`) and check one reply's key."""
        conf = content[M.CONFIG]
        rnd, attempt = int(conf[M.ROUND]), int(conf.get(M.ATTEMPT, 0))
        with self.watch.phase("decode"):  # removing the sum's masks is part of decoding it
            self_shares, pair, verdict = self._unmask(conf, rnd, attempt)
        reply = {
            M.ROUND: rnd,
            M.ATTEMPT: attempt,
            M.SELF_SHARES_OF: sorted(self_shares),
            M.SELF_SHARES: [self_shares[k] for k in sorted(self_shares)],
            M.PAIR_WITH: sorted(pair),
            M.PAIR_SEEDS: [pair[d] for d in sorted(pair)],
            M.VERIFY_HOSPITAL: int(conf.get(M.VERIFY_HOSPITAL, -1)),
            M.VERDICT: verdict,
        }
        return RecordDict({M.CONFIG: ConfigRecord(reply)})

    def _unmask(self, conf: ConfigRecord, rnd: int, attempt: int) -> tuple[dict, dict, str]:
        """Its shares of the survivors' self-mask seeds, its pair seeds with the dropped, the key verdict."""
        protocol = self.protocol()
        keys = protocol.pairwise_keys(_adverts(conf))
        shares_from = dict(zip(list(conf[M.SHARES_FROM]), list(conf[M.SHARES]), strict=True))
        try:
            self_shares, pair = protocol.unmask(
                rnd, attempt, list(conf[M.SURVIVORS]), list(conf[M.DROPPED]), shares_from, keys
            )
        finally:
            self._keep(protocol)  # the answer is on record before it leaves
        verdict = ""
        if M.VERIFY_CHUNK in conf:
            verdict = self.codec().key_check(bytes(conf[M.VERIFY_CHUNK]), int(conf[M.VERIFY_SLOT])) or ""
        return self_shares, pair, verdict

    def evaluate(self, content: RecordDict) -> RecordDict:
        """Apply the new aggregate and report validation metrics on the local held-out share (and,
        for binary data, the Youden threshold there: the test split's operating point)."""
        with self.watch.phase("decode"):
            decode_seconds = self.sync(content)
        with self.watch.phase("evaluate"):
            model = self.new_model()
            set_flat(model, self.global_weights())
            m = validation_metrics(model, self.data.val, self.device)
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
                        # binary single-label data only (None otherwise: left out, not NaN)
                        **({"val_threshold": m["threshold"]} if m["threshold"] is not None else {}),
                        M.DECODE_SECONDS: decode_seconds,
                        M.NUM_VAL: len(self.data.val),
                    }
                ),
            }
        )


def _adverts(conf: ConfigRecord) -> dict[int, tuple[bytes, bytes]]:
    """The participants' signed agreement keys relayed by the server."""
    ids, keys, sigs = list(conf[M.ROSTER_IDS]), list(conf[M.ROSTER_KEYS]), list(conf[M.ROSTER_SIGS])
    return {int(h): (str(k).encode(), bytes(s)) for h, k, s in zip(ids, keys, sigs, strict=True)}


def answer(content: RecordDict, context: Context, handler: str) -> RecordDict:
    """The reply to one message for handler ``query``, ``train``, ``unmask`` or ``evaluate``.

    A refusal the server should see (out of sync, a broken protocol rule, a bad aggregate)
    becomes a reply naming it, not an error. The reply carries the handler's phase timings.
    """
    from pipeline.secagg.codec import AggregateRefused
    from pipeline.secagg.protocol import ProtocolRefused

    watch = Stopwatch()
    client = None
    try:
        with watch.phase("setup"):
            client = HospitalClient(context, watch)
        reply = client.query() if handler == M.QUERY else getattr(client, handler)(content)
    except OutOfSync as err:  # with the round it holds: the server sends the missing aggregates next time
        held = {M.MODEL_ROUND: client.model_round} if client is not None else {}
        reply = RecordDict({M.CONFIG: ConfigRecord({M.PROBLEM: f"out of sync: {err}", **held})})
    except AggregateRefused as err:
        problem = f"refused the aggregate: {err}"
        log.warning("%s", problem)
        reply = RecordDict({M.CONFIG: ConfigRecord({M.PROBLEM: problem, M.REFUSED: True})})
    except (ProtocolRefused, ConfigError) as err:
        reply = RecordDict({M.CONFIG: ConfigRecord({M.PROBLEM: str(err)})})
    reply[M.TIMING] = MetricRecord(watch.report())
    return reply
