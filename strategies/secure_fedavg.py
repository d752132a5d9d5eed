"""SecureFedAvg: FedAvg (McMahan et al. 2017) in which the server only ever adds (encrypted) updates.

The maths is the example-weighted mean ``sum_k n_k w_k / sum_k n_k``, but the server never
computes it. Each hospital sends its weighted change ``u_k = (n_k / n_ref)(w_k - w)``, CKKS-
encrypted by default; the server checks each reply and adds it to a running sum as it arrives
(:mod:`pipeline.secagg.server_sum`), adds the plaintext weights, and sends the sum back. Every
hospital decrypts it, divides by the total weight and applies the step of the strategy's server
optimizer (plain ``w + delta`` here; see :mod:`strategies.fedopt`), so dropouts need no special
case and the server never holds a model, a key or an individual update in the clear.

The Flower hooks (``configure_train``, ``aggregate_train``, ``configure_evaluate``,
``aggregate_evaluate``, ``summary``) follow :class:`flwr.serverapp.strategy.Strategy`; ``start``
is overridden for what Flower's loop lacks: the hospitals' size query, adding replies in place
as they arrive, a checkpoint after every round, resume, pause and early stop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from pipeline.errors import RunFailed
from pipeline.flower import messages as M
from pipeline.reporting.console import progress_line
from pipeline.reporting.recorder import CHECKPOINT_FILE, PRIVACY_FILE, RunRecorder, write_json
from pipeline.reporting.timing import ExchangeTime, round_phases, run_phases
from pipeline.secagg import aggregates
from pipeline.secagg.aggregates import Aggregate
from pipeline.secagg.params import layout, num_chunks, share_threshold, slots_per_chunk
from pipeline.secagg.recovery import RecoveryFailed, RoundSecrets, recover, unmask_requests
from pipeline.secagg.server_sum import CiphertextSum, PlainSum, new_sum
from pipeline.secagg.wire import Payload
from strategies.aggregation import weighted_mean
from strategies.server_optimizers import ServerOptimizer

log = logging.getLogger("fedmed.server")
POLL_SECONDS = 0.05
MAX_ATTEMPTS = 2  # a round whose checks fail is tried once more, afresh, before the run stops
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]
# (round, phase, replies so far, replies expected): called as an exchange starts and as each reply
# arrives; round 0 is the size query. For progress displays (pipeline.reporting.console.LiveProgress).
ProgressHook = Callable[[int, str, int, int], None]


@dataclass
class Site:
    """What the server knows about one hospital's node."""

    node_id: int
    hospital: int
    num_train: int
    num_params: int
    synced_round: int = 0
    epsilon: float = 0.0
    out_of_budget: bool = False
    dp_reports: list[dict[str, Any]] = field(default_factory=list)  # per round trained: plan, history, epsilon
    device: str = ""  # where the hospital says it trained (cpu, cuda, cuda:1, ...)
    agree_key: str = ""  # secure aggregation: this run's signed agreement key, relayed to the others
    agree_sig: bytes = b""


def _hospital(site: Site) -> int:
    return site.hospital


@dataclass
class RoundTally:
    """One training round as the replies come in: the running sum and what the metrics need."""

    round: int
    total: PlainSum | CiphertextSum
    weight: float = 0.0
    count: int = 0
    seen: set[int] = field(default_factory=set)
    losses: list[tuple[float, int]] = field(default_factory=list)
    bytes_up: list[int] = field(default_factory=list)
    encode_seconds: list[float] = field(default_factory=list)
    clipped: list[float] = field(default_factory=list)
    out_of_budget: int = 0
    dropped: list[int] = field(default_factory=list)
    aggregate_seconds: float = 0.0
    bytes_down: list[int] = field(default_factory=list)
    attempt: int = 0
    contributors: list[int] = field(default_factory=list)  # hospital ids whose updates are in the sum
    secrets: RoundSecrets = field(default_factory=RoundSecrets)


class SecureFedAvg(Strategy):
    """Example-weighted FedAvg over (CKKS-encrypted) updates, added in place as they arrive.

    Args:
        num_hospitals: hospitals the run waits for at start.
        min_hospitals: usable updates a round needs; with fewer the run stops with the last good model.
        server_context: the parameters-only CKKS context (no key); ``None`` for plaintext updates.
        encryption: the ``encryption`` config group (packing layout), with ``server_context``.
    """

    def __init__(
        self,
        *,
        num_hospitals: int = 3,
        min_hospitals: int = 2,
        server_context: bytes | None = None,
        encryption: Any = None,
    ) -> None:
        if min_hospitals < 1 or num_hospitals < min_hospitals:
            raise ValueError("min_hospitals should be between 1 and num_hospitals.")
        if server_context is not None and encryption is None:
            raise ValueError("An encrypted aggregation needs the encryption settings (packing layout).")
        self.num_hospitals = int(num_hospitals)
        self.min_hospitals = int(min_hospitals)
        self.server_context = server_context
        self.encryption = encryption
        self.server_optimizer = ServerOptimizer()
        self.sites: dict[int, Site] = {}
        self.num_params = 0
        self.n_ref = 0
        self.shape: tuple[int, int, int] | None = None
        self.status, self.stop_reason = "completed", ""
        self.rows: list[dict[str, Any]] = []
        self._tally: RoundTally | None = None
        self._refusals: list[str] = []
        self.attempt = 0  # of the current round: a round abandoned by the checks is retried afresh
        self.progress: ProgressHook | None = None
        self.exchanges: list[ExchangeTime] = []  # of the current round (and the size query before round 1)
        self.query_seconds = 0.0
        self.accepted: dict[int, Aggregate] = {}  # every aggregate the hospitals accepted, for catch-ups

    # --- Flower's hooks --------------------------------------------------------------------
    def summary(self) -> None:
        """Log the strategy's settings."""
        log.info(
            "%s: example-weighted FedAvg over %s updates, added in place; server step %s; min_hospitals=%d",
            type(self).__name__,
            "CKKS-encrypted" if self.server_context is not None else "plaintext",
            self.server_optimizer.spec(),
            self.min_hospitals,
        )

    def train_config(self, server_round: int) -> dict[str, Any]:
        """What every hospital is told for training round ``server_round`` (subclasses add to it)."""
        conf = {
            M.ROUND: server_round,
            M.ATTEMPT: self.attempt,
            M.N_REF: self.n_ref,
            M.SERVER_OPTIMIZER: json.dumps(self.server_optimizer.spec()),
        }
        if self.server_context is not None:
            conf.update(self._roster())
        return conf

    def _roster(self) -> dict[str, Any]:
        """The participants' signed agreement keys, relayed to every hospital (it checks the signatures)."""
        sites = sorted(self.sites.values(), key=lambda s: s.hospital)
        return {
            M.ROSTER_IDS: [s.hospital for s in sites],
            M.ROSTER_KEYS: [s.agree_key for s in sites],
            M.ROSTER_SIGS: [s.agree_sig for s in sites],
        }

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One train message per hospital; those that missed the last aggregate get it attached.

        ``arrays`` is the last aggregate as :meth:`aggregate_train` returned it (empty in round 1).
        """
        previous = Aggregate.from_record(arrays) if len(arrays) else None
        chunks = num_chunks(self.num_params, self.encryption) if self.server_context is not None else 0
        self._tally = RoundTally(
            server_round,
            new_sum(size=self.num_params, server_context=self.server_context, num_chunks=chunks),
            attempt=self.attempt,
        )
        conf = {**dict(config), **self.train_config(server_round)}
        out = []
        for node, site in self.sites.items():
            # Hospitals that already applied the last aggregate (during evaluation) need no payload;
            # one that missed rounds gets the chain of aggregates it lacks.
            chain = self.catch_up(site, previous)
            out.append(Message(content=self._content(conf, chain), message_type=M.TRAIN, dst_node_id=node))
            self._tally.bytes_down.append(sum(a.payload.nbytes for a in chain))
        return out

    def catch_up(self, site: Site, latest: Aggregate | None) -> list[Aggregate]:
        """The aggregates ``site`` lacks up to ``latest``, oldest first (empty when it holds ``latest``).

        The server learns a hospital's model round from its replies (query, train, evaluate), so a
        hospital back from any outage gets every aggregate it missed, from the ones the
        hospitals accepted; it applies them in order and takes part in the same round.
        """
        if latest is None or site.synced_round >= latest.round:
            return []
        missed = [self.accepted.get(r) for r in range(site.synced_round + 1, latest.round)]
        if any(a is None for a in missed):  # not kept (cannot happen in one run): the hospital says out of sync
            return [latest]
        return [*missed, latest]

    def add_train_reply(self, node: int, reply: Message) -> None:
        """Check one training reply and add its update to the round's sum (or drop it, naming why)."""
        tally = self._tally
        if tally is None:
            raise RuntimeError("configure_train must run before replies are added")
        problem = self._train_reply_problem(node, reply, tally)
        if problem:
            log.warning("round %d: dropped the reply of %s: %s", tally.round, self._name(node), problem)
            tally.dropped.append(node)
            return
        c = reply.content[M.CONFIG]
        tally.seen.add(node)
        site = self.sites[node]
        site.synced_round = int(c.get(M.MODEL_ROUND, tally.round - 1))
        site.epsilon = float(c.get(M.EPSILON, 0.0))
        site.device = str(c.get(M.DEVICE, site.device))
        if M.DP_REPORT in c:
            site.dp_reports.append({"round": tally.round, **json.loads(str(c[M.DP_REPORT]))})
        if bool(c[M.OUT_OF_BUDGET]):
            site.out_of_budget = True
            tally.out_of_budget += 1
            log.info(
                "round %d: %s is out of privacy budget (epsilon %.3f)", tally.round, self._name(node), site.epsilon
            )
            return
        payload = Payload.get(reply.content)
        problem = "no update attached" if payload is None else tally.total.problem(payload)
        if problem:
            log.warning("round %d: dropped the reply of %s: %s", tally.round, self._name(node), problem)
            tally.dropped.append(node)
            return
        if payload.chunks is not None and M.SELF_COMMIT not in c:
            log.warning("round %d: dropped the reply of %s: it is not masked", tally.round, self._name(node))
            tally.dropped.append(node)
            return
        t0 = time.perf_counter()
        tally.total.add(payload)
        tally.aggregate_seconds += time.perf_counter() - t0
        tally.weight += float(c[M.WEIGHT])
        tally.count += 1
        tally.contributors.append(site.hospital)
        if payload.chunks is not None:
            tally.secrets.keep(site.hospital, c, payload.chunks[-1])
        m = reply.content[M.METRICS]
        tally.losses.append((float(m[M.TRAIN_LOSS]), site.num_train))
        tally.bytes_up.append(payload.nbytes)
        tally.encode_seconds.append(float(m[M.ENCODE_SECONDS]))
        tally.clipped.append(float(m.get(M.CLIPPED_FRACTION, 0.0)))

    def _train_reply_problem(self, node: int, reply: Message, tally: RoundTally) -> str | None:
        if reply.has_error():
            reason = reply.error.reason.strip().splitlines()[-1] if reply.error.reason else "error"
            return f"it failed ({reason})"
        c = reply.content[M.CONFIG]
        if node in self.sites and M.MODEL_ROUND in c:  # also an out-of-sync hospital says what it holds
            self.sites[node].synced_round = int(c[M.MODEL_ROUND])
        if M.PROBLEM in c:
            return str(c[M.PROBLEM])
        if node not in self.sites:
            return "unknown node"
        if node in tally.seen:
            return "duplicate reply"
        if int(c[M.ROUND]) != tally.round:
            return f"stale round number {c[M.ROUND]} (current {tally.round})"
        if int(c.get(M.ATTEMPT, tally.attempt)) != tally.attempt:
            return f"stale attempt {c.get(M.ATTEMPT)} of round {tally.round} (current {tally.attempt})"
        return None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Add any replies not yet added, then return the round's sum and its training metrics.

        The sum comes back as an ArrayRecord (:meth:`Aggregate.to_record`): ciphertexts with
        encryption on, never anything the server could read otherwise. ``None`` when no update
        was usable.
        """
        tally = self._tally
        if tally is None or tally.round != server_round:
            raise RuntimeError(f"configure_train was not called for round {server_round}")
        for reply in replies:
            self.add_train_reply(reply.metadata.src_node_id, reply)
        metrics = MetricRecord(
            {
                "hospitals": tally.count,
                "train_loss": weighted_mean(tally.losses),
                "bytes_up": float(np.mean(tally.bytes_up)) if tally.bytes_up else 0.0,
                "bytes_down": float(np.mean(tally.bytes_down)) if tally.bytes_down else 0.0,
                "aggregate_seconds": tally.aggregate_seconds,
                "encode_seconds": float(np.mean(tally.encode_seconds)) if tally.encode_seconds else 0.0,
                "clipped_fraction": float(np.mean(tally.clipped)) if tally.clipped else 0.0,
                "dropped": len(tally.dropped),
                "out_of_budget": tally.out_of_budget,
                "epsilon_max": max((s.epsilon for s in self.sites.values()), default=0.0),
            }
        )
        if tally.count == 0:
            return None, metrics
        agg = Aggregate(server_round, tally.total.result(), tally.weight, tally.count, self.server_optimizer.spec())
        return agg.to_record(), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the round's new aggregate to every hospital: each applies it and evaluates locally."""
        agg = Aggregate.from_record(arrays)
        conf = {**dict(config), M.ROUND: server_round, M.SERVER_OPTIMIZER: json.dumps(agg.server_optimizer)}
        return [
            Message(
                content=self._content(conf, self.catch_up(site, agg) or [agg]),
                message_type=M.EVALUATE,
                dst_node_id=node,
            )
            for node, site in self.sites.items()
        ]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Validation metrics weighted by each hospital's validation-set size; notes each hospital's model round."""
        results: list[tuple[dict, int]] = []
        decode: list[float] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("round %d: %s failed to evaluate: %s", server_round, self._name(node), reply.error.reason)
                continue
            c = reply.content[M.CONFIG]
            if node in self.sites and M.MODEL_ROUND in c:
                self.sites[node].synced_round = int(c[M.MODEL_ROUND])
            if M.PROBLEM in c:
                log.warning("round %d: %s: %s", server_round, self._name(node), c[M.PROBLEM])
                if bool(c.get(M.REFUSED, False)):
                    self._refusals.append(f"{self._name(node)} {c[M.PROBLEM]}")
                continue
            if node in self.sites:
                self.sites[node].synced_round = int(c[M.MODEL_ROUND])
                self.sites[node].epsilon = max(self.sites[node].epsilon, float(c.get(M.EPSILON, 0.0)))
            m = dict(reply.content[M.METRICS])
            results.append((m, int(m[M.NUM_VAL])))
            decode.append(float(m[M.DECODE_SECONDS]))
        if not results:
            return None
        # a metric no hospital reports (val_threshold of non-binary data) stays out of the row
        out = {
            key: weighted_mean([(m.get(key), n) for m, n in results])
            for key in M.VAL_METRICS
            if any(key in m for m, _ in results)
        }
        out[M.DECODE_SECONDS] = float(np.mean(decode))
        return MetricRecord(out)

    # --- the loop --------------------------------------------------------------------------
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
        *,
        recorder: RunRecorder | None = None,
        resume: bool = False,
        stop_after: int | None = None,
    ) -> Result:
        """Query the hospitals, then rounds of train -> add -> evaluate, with a checkpoint after each.

        Args:
            grid: Flower's grid (simulation or deployment).
            initial_arrays: ignored: round 1 starts from the public initial weights every hospital builds.
            num_rounds: rounds of the whole run (a resumed run continues to this round).
            timeout: seconds to wait for the replies of each exchange.
            train_config: extra keys for every train message.
            evaluate_config: extra keys for every evaluate message.
            evaluate_fn: server-side evaluation of each round's aggregate (plaintext runs only).
            recorder: the run folder: each round's aggregate, metrics row and checkpoint go there.
            resume: continue after the recorder's last checkpoint.
            stop_after: pause after this round (``status: paused``).
        """
        self.summary()
        train_config = train_config or ConfigRecord()
        evaluate_config = evaluate_config or ConfigRecord()
        result = Result()
        t0 = time.perf_counter()
        self.query(grid, timeout)
        self.query_seconds = time.perf_counter() - t0
        first, arrays, pending = 1, ArrayRecord(), None
        if resume:
            if recorder is None:
                raise ValueError("resume needs the run folder's recorder")
            first, arrays, pending = self._resume(recorder, evaluate_fn)
        rnd = first
        while rnd <= num_rounds:
            t0 = time.perf_counter()
            self._refusals, self.exchanges = [], []
            server_evaluate = 0.0
            if pending is not None:  # resumed while evaluating: the round's sum is saved, only its evaluation is left
                agg_arrays, row, pending = pending[0].to_record(), pending[1], None
            else:
                self._note_progress(recorder, rnd, num_rounds)
                messages = self.configure_train(rnd, arrays, train_config, grid)
                self._exchange(grid, messages, timeout, self.add_train_reply, phase="train")
                agg_arrays, train_metrics = self.aggregate_train(rnd, [])
                row = {"round": rnd, **dict(train_metrics or {})}
                if agg_arrays is None or row["hospitals"] < self.min_hospitals:
                    why = f"round {rnd}: {row['hospitals']} usable update(s), fewer than federation.min_hospitals"
                    why += f"={self.min_hospitals}"
                    if row["out_of_budget"]:
                        why += f" ({row['out_of_budget']} hospital(s) out of privacy budget)"
                    if not len(arrays):
                        raise RunFailed(why)
                    self.status, self.stop_reason = "stopped_early", why
                    log.warning("stopping early: %s", why)
                    break
                if self.server_context is not None:
                    try:
                        agg_arrays = self.unmask(grid, timeout, agg_arrays)
                    except RecoveryFailed as err:
                        if self._abandon(rnd, str(err)):
                            break
                        continue
                if recorder is not None:  # saved before any hospital applies it: a kill from here on resumes here
                    aggregates.save(recorder.dir, Aggregate.from_record(agg_arrays))
                    self._note_progress(recorder, rnd, num_rounds, row)
            agg = Aggregate.from_record(agg_arrays)
            messages = self.configure_evaluate(rnd, agg_arrays, evaluate_config, grid)
            replies = self._exchange(grid, messages, timeout, phase="evaluate")
            evaluated = self.aggregate_evaluate(rnd, replies)
            if self._refusals:
                if recorder is not None:  # only aggregates the hospitals accepted stay in the run folder
                    aggregates.remove(recorder.dir, rnd)
                if self._abandon(rnd, "; ".join(self._refusals)):
                    break
                continue
            self.accepted[rnd] = agg
            result.arrays, result.train_metrics_clientapp[rnd] = (
                agg_arrays,
                MetricRecord({k: v for k, v in row.items() if k != "round"}),
            )
            if evaluated is not None:
                result.evaluate_metrics_clientapp[rnd] = evaluated
                row.update(dict(evaluated))
            row["bytes_down"] += agg.payload.nbytes
            row["epsilon_max"] = max((s.epsilon for s in self.sites.values()), default=0.0)  # evaluation reports too
            if evaluate_fn is not None:
                t_eval = time.perf_counter()
                server_metrics = evaluate_fn(rnd, agg_arrays)
                server_evaluate = time.perf_counter() - t_eval
                if server_metrics is not None:
                    result.evaluate_metrics_serverapp[rnd] = server_metrics
                    row.update(dict(server_metrics))
            row["seconds"] = time.perf_counter() - t0
            row.update(round_phases(row["seconds"], self.exchanges, row["aggregate_seconds"], server_evaluate))
            self.rows.append(row)
            if recorder is not None:
                recorder.add_round(row)
                write_json(recorder.dir / PRIVACY_FILE, self.privacy_report())
                recorder.write_checkpoint(self._checkpoint(rnd, num_rounds))
            arrays = agg_arrays
            log.info(progress_line(row, num_rounds))
            self.attempt = 0
            if stop_after == rnd and rnd < num_rounds:
                self.status = "paused"
                break
            rnd += 1
        return result

    def _checkpoint(self, done: int, num_rounds: int, **in_progress: Any) -> dict[str, Any]:
        state = {"completed_round": done, "rounds": num_rounds, "num_params": self.num_params}
        if in_progress:
            state["in_progress"] = in_progress
        return state

    def _note_progress(
        self, recorder: RunRecorder | None, rnd: int, num_rounds: int, row: dict[str, Any] | None = None
    ) -> None:
        """Record in the checkpoint which attempt of round ``rnd`` is under way (and, once its sum is
        saved, its training row): a resumed run asks for that very attempt, so every hospital that
        trained it re-sends its saved reply instead of training (and paying) again."""
        if recorder is None:
            return
        progress: dict[str, Any] = {"round": rnd, "attempt": self.attempt}
        if row is not None:
            progress["evaluating"] = True
            progress["row"] = row
            write_json(recorder.dir / PRIVACY_FILE, self.privacy_report())  # this round's spending too
        recorder.write_checkpoint(self._checkpoint(rnd - 1, num_rounds, **progress))

    def _abandon(self, rnd: int, why: str) -> bool:
        """Give up this attempt at round ``rnd`` (nothing is applied or saved); True when the run must stop.

        The round is tried again with fresh training and fresh masks (never the same update under
        other masks); after :data:`MAX_ATTEMPTS` failed attempts the run stops with the last good model.
        """
        log.warning("round %d (attempt %d) abandoned, no model update applied: %s", rnd, self.attempt + 1, why)
        self.attempt += 1
        if self.attempt < MAX_ATTEMPTS:
            return False
        self.status = "stopped_early"
        self.stop_reason = f"round {rnd}: {self.attempt} attempts abandoned; last: {why}"
        log.warning("stopping early: %s", self.stop_reason)
        return True

    def query(self, grid: Grid, timeout: float) -> None:
        """Learn each hospital's training-set size, data shape and model size (no data leave)."""
        nodes = self._wait_for_nodes(grid, timeout)
        messages = [
            Message(content=RecordDict({M.CONFIG: ConfigRecord({})}), message_type=M.QUERY, dst_node_id=n)
            for n in nodes
        ]
        refusals = []
        for reply in self._exchange(grid, messages, timeout, phase="query"):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("node %d failed the size query: %s", node, reply.error.reason)
                continue
            c = reply.content[M.CONFIG]
            if M.PROBLEM in c:  # e.g. the study does not fit the hospital's lifetime privacy budget
                log.warning("node %d does not join: %s", node, c[M.PROBLEM])
                refusals.append(str(c[M.PROBLEM]))
                continue
            self.sites[node] = Site(node, int(c[M.HOSPITAL]), int(c[M.NUM_TRAIN]), int(c[M.NUM_PARAMS]))
            self.sites[node].synced_round = int(c.get(M.MODEL_ROUND, 0))
            if M.AGREE_KEY in c:
                self.sites[node].agree_key, self.sites[node].agree_sig = str(c[M.AGREE_KEY]), bytes(c[M.AGREE_SIG])
            self.shape = (int(c[M.CHANNELS]), int(c[M.NUM_CLASSES]), int(c[M.IMAGE_SIZE]))
        if len(self.sites) < self.min_hospitals:
            why = f"only {len(self.sites)} hospital(s) joined, fewer than federation.min_hospitals={self.min_hospitals}"
            raise RunFailed(why + (f"; {'; '.join(refusals)}" if refusals else ""))
        sizes = {s.num_params for s in self.sites.values()}
        if len(sizes) != 1:
            raise RunFailed(f"hospitals disagree on the model size {sorted(sizes)}: they run different configs")
        self.num_params = sizes.pop()
        self.n_ref = max(s.num_train for s in self.sites.values())
        log.info(
            "%d hospitals, training images %s, model %d parameters",
            len(self.sites),
            [s.num_train for s in self.sites.values()],
            self.num_params,
        )

    def privacy_report(self) -> dict[str, Any]:
        """privacy.json: per hospital, its DP plan, accountant history and epsilon after each round trained.

        Enough to recompute every epsilon with another accountant (the histories are the
        (noise multiplier, sample rate, steps) entries the hospital's accountant composed).
        """
        hospitals: dict[str, Any] = {}
        for site in sorted(self.sites.values(), key=lambda s: s.hospital):
            if not site.dp_reports:
                continue
            last = {k: v for k, v in site.dp_reports[-1].items() if k != "round"}
            last["rounds_trained"] = len(site.dp_reports)
            last["epsilon_per_round"] = [{"round": r["round"], "epsilon": r["epsilon"]} for r in site.dp_reports]
            hospitals[str(site.hospital)] = last
        kinds = sorted({h["randomness"] for h in hospitals.values()})
        return {"hospitals": hospitals, "randomness": kinds}

    def run_summary(self, seconds: float) -> dict[str, Any]:
        """The federated facts of the run for summary.json (the ServerApp adds the config's)."""
        rows = self.rows
        up = [r["bytes_up"] for r in rows]
        down = [r["bytes_down"] for r in rows]
        return {
            "status": self.status,
            "stop_reason": self.stop_reason,
            "num_hospitals": len(self.sites),
            "rounds_completed": len(rows),
            "num_params": self.num_params,
            "final_validation": {k: rows[-1].get(k) for k in M.VAL_METRICS} if rows else None,
            "epsilon": {str(s.hospital): s.epsilon for s in self.sites.values()},
            "bytes_up_total": float(sum(up)) * len(self.sites),
            "bytes_down_total": float(sum(down)) * len(self.sites),
            "bytes_per_param_up": float(np.mean(up)) / self.num_params if up else None,
            "bytes_per_param_down": float(np.mean(down)) / self.num_params if down else None,
            "seconds": seconds,
            "last_aggregate_round": int(rows[-1]["round"]) if rows else 0,
            "server_optimizer": self.server_optimizer.spec(),
            "devices": {f"hospital {s.hospital}": s.device for s in sorted(self.sites.values(), key=_hospital)},
            "timing": run_phases(self.query_seconds, rows),
        }

    # --- helpers ---------------------------------------------------------------------------
    def _content(self, conf: dict[str, Any], chain: list[Aggregate]) -> RecordDict:
        """A message's content: ``conf`` and the aggregates of ``chain`` (the last one in the usual
        place, the earlier ones of a catch-up as ArrayRecords :func:`.messages.catch_up_key`)."""
        content = RecordDict({M.CONFIG: ConfigRecord(dict(conf))})
        for earlier in chain[:-1]:
            content[M.catch_up_key(earlier.round)] = earlier.to_record()
        agg = chain[-1] if chain else None
        if agg is not None:
            content[M.CONFIG][M.AGG_ROUND] = agg.round
            content[M.CONFIG][M.TOTAL_WEIGHT] = agg.total_weight
            content[M.CONFIG][M.COUNT] = agg.count
            if agg.unmask:
                content[M.CONFIG][M.UNMASK_INFO] = json.dumps(agg.unmask)
            agg.payload.put(content)
        return content

    def unmask(self, grid: Grid, timeout: float, agg_arrays: ArrayRecord) -> ArrayRecord:
        """Ask the survivors what removes the masks of the round's sum; the aggregate with that information.

        Raises:
            RecoveryFailed: the masks cannot be removed (a reply under another key, missing answers).
        """
        tally = self._tally
        participants = sorted(s.hospital for s in self.sites.values())
        node_of = {s.hospital: node for node, s in self.sites.items()}
        shape = layout(self.num_params, self.encryption)
        last = num_chunks(self.num_params, self.encryption) - 1
        key_slot = shape.key_slot - last * slots_per_chunk(self.encryption)
        requests = unmask_requests(tally.contributors, participants, tally.secrets, key_slot)
        base = {M.ROUND: tally.round, M.ATTEMPT: tally.attempt, **self._roster()}
        messages = [
            Message(
                content=RecordDict({M.CONFIG: ConfigRecord({**base, **request})}),
                message_type=M.UNMASK,
                dst_node_id=node_of[hospital],
            )
            for hospital, request in requests.items()
        ]
        for i, node in enumerate(self.sites):
            tally.bytes_down[i] += len(requests.get(self.sites[node].hospital, {}).get(M.VERIFY_CHUNK, b""))
        answers = {}
        for reply in self._exchange(grid, messages, timeout, phase="unmask"):
            hospital = self.sites[reply.metadata.src_node_id].hospital
            if reply.has_error():
                log.warning("round %d: hospital %d failed to unmask: %s", tally.round, hospital, reply.error.reason)
            elif M.PROBLEM in reply.content[M.CONFIG]:
                why = reply.content[M.CONFIG][M.PROBLEM]
                log.warning("round %d: hospital %d refuses to unmask: %s", tally.round, hospital, why)
            else:
                answers[hospital] = dict(reply.content[M.CONFIG])
        info = recover(
            tally.contributors, participants, answers, tally.secrets, share_threshold(self.min_hospitals), tally.attempt
        )
        agg = Aggregate.from_record(agg_arrays)
        agg.unmask = info
        return agg.to_record()

    def _name(self, node: int) -> str:
        site = self.sites.get(node)
        return f"hospital {site.hospital} (node {node})" if site else f"node {node}"

    def _wait_for_nodes(self, grid: Grid, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        nodes = list(grid.get_node_ids())
        while len(nodes) < self.num_hospitals and time.monotonic() < deadline:
            time.sleep(0.5)
            nodes = list(grid.get_node_ids())
        if len(nodes) < self.min_hospitals:
            raise RunFailed(f"only {len(nodes)} hospital(s) connected; federation.min_hospitals={self.min_hospitals}")
        return nodes[: self.num_hospitals]

    def _exchange(
        self,
        grid: Grid,
        messages: Iterable[Message],
        timeout: float,
        on_reply: Callable[[int, Message], None] | None = None,
        phase: str = "",
    ) -> list[Message]:
        """Send ``messages``; hand each reply to ``on_reply(node, reply)`` as it arrives; return all replies.

        Nodes that do not answer within ``timeout`` seconds are named in the log and left out. The
        :attr:`progress` hook hears of the exchange (``phase``) as it starts and of each reply.
        """
        messages = list(messages)
        rnd = self._tally.round if self._tally is not None else 0
        self._report(rnd, phase, 0, len(messages))
        started = time.perf_counter()
        ids = grid.push_messages(messages)
        pending = {mid: msg.metadata.dst_node_id for mid, msg in zip(ids, messages, strict=True)}
        replies: list[Message] = []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for reply in grid.pull_messages(list(pending)):
                node = pending.pop(reply.metadata.reply_to_message_id, None)
                if node is None:
                    continue
                replies.append(reply)
                if on_reply is not None:
                    on_reply(node, reply)
                self._report(rnd, phase, len(replies), len(messages))
            if pending:
                time.sleep(POLL_SECONDS)
        for node in pending.values():
            log.warning("%s did not reply within %gs; carrying on without it", self._name(node), timeout)
        last = replies[-1] if replies else None
        critical = dict(last.content[M.TIMING]) if last and not last.has_error() and M.TIMING in last.content else {}
        self.exchanges.append(ExchangeTime(time.perf_counter() - started, critical))
        log.debug("round %d %s exchange: %.2fs, last reply's handler %s", rnd, phase, self.exchanges[-1].wall, critical)
        return replies

    def _report(self, rnd: int, phase: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(rnd, phase, done, total)

    def _restore_privacy_report(self, recorder: RunRecorder, done: int) -> None:
        """Take back the DP reports of the rounds up to ``done`` (hospitals are matched by their number)."""
        path = recorder.dir / PRIVACY_FILE
        if not path.exists():
            return
        saved = json.loads(path.read_text())["hospitals"]
        for site in self.sites.values():
            entry = saved.get(str(site.hospital))
            if entry:
                base = {k: v for k, v in entry.items() if k not in ("rounds_trained", "epsilon_per_round")}
                site.dp_reports = [{**base, **r} for r in entry["epsilon_per_round"] if r["round"] <= done]
                if site.dp_reports:
                    site.epsilon = max(site.epsilon, float(site.dp_reports[-1]["epsilon"]))

    def _resume(
        self, recorder: RunRecorder, evaluate_fn: EvaluateFn | None
    ) -> tuple[int, ArrayRecord, tuple[Aggregate, dict[str, Any]] | None]:
        """Continue the recorder's run folder where it stopped: the round, its last aggregate, and
        the saved sum and training row of a round that was being evaluated (else None).

        The checkpoint names the attempt under way; the round resumes at that attempt, so the
        hospitals that already trained it re-send their saved replies (no budget charged twice).
        """
        # no checkpoint: killed before round 1 started, so no hospital trained anything yet
        checkpoint = recorder.read_checkpoint() if (recorder.dir / CHECKPOINT_FILE).exists() else {}
        done = int(checkpoint.get("completed_round", 0))
        saved = aggregates.load_all(recorder.dir)
        if len(saved) < done:
            raise RunFailed(f"{recorder.dir}: the checkpoint says round {done}, but only {len(saved)} aggregates exist")
        aggs = saved[:done]
        self.accepted = {a.round: a for a in aggs}
        recorder.load_rows(done)
        self.rows = list(recorder.rows)
        progress = checkpoint.get("in_progress") or {}
        pending = None
        if int(progress.get("round", -1)) == done + 1:
            self.attempt = int(progress.get("attempt", 0))
            if progress.get("evaluating") and len(saved) > done:
                pending = (saved[done], dict(progress["row"]))
        self._restore_privacy_report(recorder, done + 1 if pending else done)
        if evaluate_fn is not None:  # plaintext: the server-side evaluation catches up with the saved rounds
            for agg in aggs:
                evaluate_fn(agg.round, agg.to_record())
        log.info(
            "resuming %s after round %d%s",
            recorder.dir,
            done,
            f" (round {done + 1}, attempt {self.attempt + 1}: {'evaluating' if pending else 'training'})"
            if progress
            else "",
        )
        return done + 1, (aggs[-1].to_record() if aggs else ArrayRecord()), pending
