"""Flower ServerApp: runs the rounds, adds the hospitals' (encrypted) updates, records the run.

The server sees, per hospital and round: the ciphertext (or, with encryption off, the plaintext
update), the example weight, epsilon spent and metrics. It adds ciphertexts with a context that
holds no key; it never opens the hospitals' secret context file and imports nothing that could.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pipeline import aggregates
from pipeline import records as R
from pipeline.aggregates import Aggregate
from pipeline.errors import DataError, RunFailed
from pipeline.results import RunRecorder
from pipeline.settings import PUBLIC_CONTEXT_KEY, RUN_DIR_KEY, experiment, with_defaults

log = logging.getLogger("fedmed.server")
POLL_SECONDS = 0.05


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


@dataclass
class RoundResult:
    aggregate: Aggregate | None
    row: dict[str, Any] = field(default_factory=dict)
    out_of_budget: int = 0


class RoundLoop:
    """The federated run: query sizes, then rounds of train -> add -> evaluate."""

    def __init__(self, grid: Grid, cfg: DictConfig, run_dir: str | Path, server_context: bytes | None) -> None:
        self.grid = grid
        self.cfg = cfg
        self.recorder = RunRecorder(run_dir)
        self.run_dir = Path(run_dir)
        self.server_context = server_context
        self.strategy = instantiate(cfg.strategy)
        self.sites: dict[int, Site] = {}
        self.global_weights: np.ndarray | None = None  # plaintext mode only
        self.server_eval = None

    # --- messaging -------------------------------------------------------------------
    def _exchange(self, contents: dict[int, RecordDict], message_type: str, on_reply) -> list[int]:
        """Send one message per node; call ``on_reply(node_id, reply)`` as replies arrive.

        Returns the node ids that did not answer within ``federation.round_timeout``.
        """
        messages = [Message(content=c, message_type=message_type, dst_node_id=n) for n, c in contents.items()]
        pending = {
            mid: msg.metadata.dst_node_id for mid, msg in zip(self.grid.push_messages(messages), messages, strict=True)
        }
        deadline = time.monotonic() + float(self.cfg.federation.round_timeout)
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                node = pending.pop(reply.metadata.reply_to_message_id, None)
                if node is not None:
                    on_reply(node, reply)
            if pending:
                time.sleep(POLL_SECONDS)
        for node in pending.values():
            log.warning(
                "%s did not reply within %gs; carrying on without it",
                self._name(node),
                self.cfg.federation.round_timeout,
            )
        return list(pending.values())

    def _name(self, node: int) -> str:
        site = self.sites.get(node)
        return f"hospital {site.hospital} (node {node})" if site else f"node {node}"

    def _wait_for_nodes(self) -> list[int]:
        want = int(self.cfg.federation.num_hospitals)
        deadline = time.monotonic() + float(self.cfg.federation.round_timeout)
        nodes = list(self.grid.get_node_ids())
        while len(nodes) < want and time.monotonic() < deadline:
            time.sleep(0.5)
            nodes = list(self.grid.get_node_ids())
        if len(nodes) < int(self.cfg.federation.min_hospitals):
            raise RunFailed(
                f"only {len(nodes)} hospital(s) connected; federation.min_hospitals={self.cfg.federation.min_hospitals}"
            )
        return nodes[:want] if len(nodes) >= want else nodes

    # --- phases ----------------------------------------------------------------------
    def query(self) -> None:
        """Learn each hospital's training-set size and the model size (no data leave)."""

        def on_reply(node: int, reply: Message) -> None:
            if reply.has_error():
                log.warning("node %d failed the size query: %s", node, reply.error.reason)
                return
            c = reply.content[R.CONFIG]
            self.sites[node] = Site(node, int(c[R.HOSPITAL]), int(c[R.NUM_TRAIN]), int(c[R.NUM_PARAMS]))
            self.shape = (int(c[R.CHANNELS]), int(c[R.NUM_CLASSES]), int(c[R.IMAGE_SIZE]))

        nodes = self._wait_for_nodes()
        self._exchange({n: RecordDict({R.CONFIG: ConfigRecord({})}) for n in nodes}, R.QUERY, on_reply)
        if len(self.sites) < int(self.cfg.federation.min_hospitals):
            raise RunFailed(f"only {len(self.sites)} hospital(s) answered the size query")
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

    def _num_chunks(self) -> int:
        enc = self.cfg.encryption
        slots = -(-self.num_params // int(enc.fields_per_slot))
        return -(-slots // (int(enc.poly_modulus_degree) // 2))

    def _with_aggregate(self, conf: dict, agg: Aggregate | None) -> RecordDict:
        content = RecordDict({R.CONFIG: ConfigRecord(conf)})
        if agg is not None:
            content[R.CONFIG][R.AGG_ROUND] = agg.round
            content[R.CONFIG][R.TOTAL_WEIGHT] = agg.total_weight
            content[R.CONFIG][R.COUNT] = agg.count
            agg.payload.put(content)
        return content

    def train_round(self, rnd: int, previous: Aggregate | None) -> RoundResult:
        """Send round ``rnd``'s training instructions; add the valid replies as they come in."""
        total = self.strategy.new_sum(
            size=self.num_params,
            server_context=self.server_context,
            num_chunks=self._num_chunks() if self.server_context else 0,
        )
        conf = {R.ROUND: rnd, R.N_REF: self.n_ref, R.PROXIMAL_MU: self.strategy.proximal_mu}
        contents, down = {}, []
        for node, site in self.sites.items():
            # Hospitals that already applied the last aggregate (during evaluation) need no payload.
            agg = previous if previous is not None and site.synced_round < previous.round else None
            contents[node] = self._with_aggregate(dict(conf), agg)
            down.append(agg.payload.nbytes if agg else 0)
        state = {"weight": 0.0, "count": 0, "seen": set(), "loss": [], "up": [], "enc": [], "budget": 0, "dropped": []}
        t_agg = [0.0]

        def drop(node: int, why: str) -> None:
            log.warning("round %d: dropped the reply of %s: %s", rnd, self._name(node), why)
            state["dropped"].append(node)

        def on_reply(node: int, reply: Message) -> None:
            if reply.has_error():
                return drop(
                    node,
                    f"it failed ({reply.error.reason.strip().splitlines()[-1] if reply.error.reason else 'error'})",
                )
            c = reply.content[R.CONFIG]
            if R.PROBLEM in c:
                return drop(node, str(c[R.PROBLEM]))
            if node not in self.sites:
                return drop(node, "unknown node")
            if node in state["seen"]:
                return drop(node, "duplicate reply")
            if int(c[R.ROUND]) != rnd:
                return drop(node, f"stale round number {c[R.ROUND]} (current {rnd})")
            state["seen"].add(node)
            site = self.sites[node]
            site.epsilon = float(c.get(R.EPSILON, 0.0))
            if bool(c[R.OUT_OF_BUDGET]):
                site.out_of_budget = True
                state["budget"] += 1
                log.info("round %d: %s is out of privacy budget (epsilon %.3f)", rnd, self._name(node), site.epsilon)
                return None
            payload = R.Payload.get(reply.content)
            problem = "no update attached" if payload is None else total.problem(payload)
            if problem:
                return drop(node, problem)
            t0 = time.perf_counter()
            total.add(payload)
            t_agg[0] += time.perf_counter() - t0
            state["weight"] += float(c[R.WEIGHT])
            state["count"] += 1
            m = reply.content[R.METRICS]
            state["loss"].append((float(m["train_loss"]), site.num_train))
            state["up"].append(payload.nbytes)
            state["enc"].append(float(m["encode_seconds"]))
            return None

        self._exchange(contents, "train", on_reply)
        row = {
            "round": rnd,
            "hospitals": state["count"],
            "train_loss": _weighted(state["loss"]),
            "bytes_up": float(np.mean(state["up"])) if state["up"] else 0.0,
            "bytes_down": float(np.mean(down)),
            "aggregate_seconds": t_agg[0],
            "encode_seconds": float(np.mean(state["enc"])) if state["enc"] else 0.0,
            "dropped": len(state["dropped"]),
            "epsilon_max": max((s.epsilon for s in self.sites.values()), default=0.0),
        }
        if state["count"] == 0:
            return RoundResult(None, row, state["budget"])
        agg = Aggregate(rnd, total.result(), state["weight"], state["count"])
        return RoundResult(agg, row, state["budget"])

    def evaluate_round(self, agg: Aggregate, row: dict[str, Any]) -> None:
        """Send the new aggregate; hospitals apply it and report validation metrics only."""
        conf = {R.ROUND: agg.round}
        contents = {node: self._with_aggregate(dict(conf), agg) for node in self.sites}
        results: list[tuple[dict, int]] = []
        dec: list[float] = []

        def on_reply(node: int, reply: Message) -> None:
            if reply.has_error():
                log.warning("round %d: %s failed to evaluate: %s", agg.round, self._name(node), reply.error.reason)
                return
            c = reply.content[R.CONFIG]
            if R.PROBLEM in c:
                log.warning("round %d: %s: %s", agg.round, self._name(node), c[R.PROBLEM])
                return
            self.sites[node].synced_round = int(c[R.MODEL_ROUND])
            m = dict(reply.content[R.METRICS])
            results.append((m, int(m[R.NUM_VAL])))
            dec.append(float(m["decode_seconds"]))

        self._exchange(contents, "evaluate", on_reply)
        row["bytes_down"] = row["bytes_down"] + agg.payload.nbytes
        row["decode_seconds"] = float(np.mean(dec)) if dec else 0.0
        for key in ("val_loss", "val_auc", "val_accuracy", "val_mcc"):
            row[key] = _weighted([(m[key], n) for m, n in results])

    def _server_side_test(self, agg: Aggregate, row: dict[str, Any]) -> None:
        """Plaintext mode only: the server can rebuild the model, so it evaluates it on the test split."""
        from pipeline.hospital import build_model, set_flat, test_dataset
        from pipeline.training import evaluate, resolve_device

        if self.global_weights is None:
            from pipeline.hospital import get_flat

            self.global_weights = get_flat(build_model(self.cfg, *self.shape)).astype(np.float64)
        self.global_weights = self.global_weights + agg.payload.values.astype(np.float64) / agg.total_weight
        if self.server_eval is None:
            try:
                self.server_eval = test_dataset(self.cfg)
            except DataError as err:
                log.info("no server-side test evaluation: %s", err)
                self.server_eval = False
        if self.server_eval is False:
            return
        model = build_model(self.cfg, *self.shape)
        set_flat(model, self.global_weights.astype(np.float32))
        m = evaluate(model, self.server_eval, resolve_device(str(self.cfg.device)))
        row["test_auc"], row["test_accuracy"] = m["auc"], m["accuracy"]
        self.final_test = m
        self.final_model = model

    def _resume(self) -> tuple[int, Aggregate | None]:
        """Continue after the last completed round of an existing run folder."""
        done = int(self.recorder.read_checkpoint()["completed_round"])
        aggs = aggregates.load_all(self.run_dir)[:done]
        if len(aggs) < done:
            raise RunFailed(f"{self.run_dir}: the checkpoint says round {done}, but only {len(aggs)} aggregates exist")
        self.recorder.load_rows(done)
        if self.server_context is None:  # plaintext: the server may rebuild the model it evaluates
            for agg in aggs:
                self._server_side_test(agg, {})
        log.info("resuming %s after round %d", self.run_dir, done)
        return done + 1, aggs[-1]

    def run(self) -> dict[str, Any]:
        """All rounds; returns (and writes) the summary."""
        started = time.perf_counter()
        self.strategy.summary()
        self.final_test: dict | None = None
        self.final_model = None
        self.query()
        rounds = int(self.cfg.federation.rounds)
        first, previous = self._resume() if self.cfg.resume else (1, None)
        stop_reason, status = "", "completed"
        for rnd in range(first, rounds + 1):
            t0 = time.perf_counter()
            result = self.train_round(rnd, previous)
            usable = result.row["hospitals"]
            if usable < int(self.cfg.federation.min_hospitals):
                minimum = self.cfg.federation.min_hospitals
                why = f"round {rnd}: {usable} usable update(s), fewer than federation.min_hospitals={minimum}"
                if result.out_of_budget:
                    why += f" ({result.out_of_budget} hospital(s) out of privacy budget)"
                if previous is None:
                    raise RunFailed(why)
                stop_reason = why
                log.warning("stopping early: %s", why)
                break
            agg = result.aggregate
            aggregates.save(self.run_dir, agg)
            self.evaluate_round(agg, result.row)
            if self.server_context is None:
                self._server_side_test(agg, result.row)
            result.row["seconds"] = time.perf_counter() - t0
            self.recorder.add_round(result.row)
            self.recorder.write_checkpoint({"completed_round": rnd, "rounds": rounds, "num_params": self.num_params})
            previous = agg
            log.info(progress_line(result.row, rounds))
            if self.cfg.federation.stop_after == rnd and rnd < rounds:
                status = "paused"
                log.warning("paused after round %d; continue with: python -m pipeline.run resume=%s", rnd, self.run_dir)
                break
        if stop_reason:
            status = "stopped_early"
        summary = self._summary(previous, status, stop_reason, time.perf_counter() - started)
        self.recorder.write_summary(summary)
        self.recorder.plot(f"{self.cfg.model._target_.split('.')[-1]}, {len(self.sites)} hospitals")
        if self.final_model is not None and status != "paused":
            import torch

            torch.save(self.final_model.state_dict(), self.run_dir / "model.pt")
        return summary

    def _summary(self, last: Aggregate | None, status: str, stop_reason: str, seconds: float) -> dict[str, Any]:
        rows = self.recorder.rows
        up = [r["bytes_up"] for r in rows]
        down = [r["bytes_down"] for r in rows]
        privacy = self.cfg.privacy
        return {
            "status": status,
            "stop_reason": stop_reason,
            "mode": "federated",
            "encrypted": self.server_context is not None,
            "run_dir": str(self.run_dir),
            "num_hospitals": len(self.sites),
            "rounds_planned": int(self.cfg.federation.rounds),
            "rounds_completed": len(rows),
            "num_params": self.num_params,
            # plaintext: server-side; encrypted: filled by the consortium; paused: not yet
            "test": self.final_test if status != "paused" else None,
            "final_validation": {k: rows[-1][k] for k in ("val_loss", "val_auc", "val_accuracy", "val_mcc")}
            if rows
            else None,
            "epsilon": {str(s.hospital): s.epsilon for s in self.sites.values()} if privacy.enabled else {},
            "epsilon_target": float(privacy.epsilon) if privacy.enabled else None,
            "delta": float(privacy.delta) if privacy.enabled else None,
            "bytes_up_total": float(sum(up)) * len(self.sites),
            "bytes_down_total": float(sum(down)) * len(self.sites),
            "bytes_per_param_up": float(np.mean(up)) / self.num_params if up else None,
            "bytes_per_param_down": float(np.mean(down)) / self.num_params / 1.0 if down else None,
            "seconds": seconds,
            "last_aggregate_round": last.round if last else 0,
        }


def _weighted(pairs: list[tuple[float, int]]) -> float:
    pairs = [(float(v), n) for v, n in pairs if v is not None and np.isfinite(float(v)) and n > 0]
    if not pairs:
        return float("nan")
    return float(sum(v * n for v, n in pairs) / sum(n for _, n in pairs))


def progress_line(row: dict[str, Any], rounds: int) -> str:
    """One console line for a finished round (a metrics.csv row)."""
    parts = [f"round {row['round']}/{rounds}", f"{row['hospitals']} hospitals", f"train loss {row['train_loss']:.4f}"]
    parts.append(f"val AUC {row.get('val_auc', float('nan')):.4f}")
    if row.get("test_auc") not in (None, ""):
        parts.append(f"test AUC {row['test_auc']:.4f}")
    if row.get("epsilon_max"):
        parts.append(f"epsilon max {row['epsilon_max']:.3f}")
    parts.append(f"{row.get('seconds', 0):.1f}s")
    return " | ".join(parts)


def make_app(run_config: dict | None = None) -> ServerApp:
    """The ServerApp; a simulation binds the run config (experiment, run folder, server context)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        context = with_defaults(context, run_config, None)
        cfg = experiment(context)
        run_dir = str(context.run_config.get(RUN_DIR_KEY) or ".")
        saved = Path(run_dir) / "config.yaml"
        if not saved.exists():  # started by `flwr run` directly, not through pipeline.run
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(OmegaConf.to_yaml(cfg))
        server_context = None
        if cfg.encryption.enabled:
            path = str(context.run_config.get(PUBLIC_CONTEXT_KEY, ""))
            if not path:
                raise RunFailed("encryption is on but the run config has no public-context file for the server")
            server_context = Path(path).read_bytes()
        RoundLoop(grid, cfg, run_dir, server_context).run()

    return server_app


# Entry point for `flwr run` (pyproject [tool.flwr.app.components]).
app = make_app()
