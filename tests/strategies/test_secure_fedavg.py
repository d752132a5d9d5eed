"""SecureFedAvg's round loop against a fake Grid: every reply kind, the weight and count it sends,
the budget stop, pauses, checkpoints and resume, and Flower's own loop driving its hooks.

The fake hospitals are functions from a message to a reply, so each test states exactly what the
hospitals answer; the strategy, the running sums and the aggregate files are the real ones.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from fakes import FakeGrid, Hospital
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from pipeline.errors import RunFailed
from pipeline.flower import messages as M
from pipeline.reporting.recorder import RunRecorder, read_metrics
from pipeline.secagg import aggregates
from pipeline.secagg.aggregates import Aggregate
from pipeline.secagg.wire import Payload
from strategies import SecureFedAdam, SecureFedAvg, SecureFedProx
from strategies.server_optimizers import ServerOptimizer

SIZE = 12


class PlainHospital:
    """A hospital that answers like the real one with a fixed plaintext update per round."""

    def __init__(self, hospital: int, num_train: int, update: float, epsilon_per_round: float = 1.0) -> None:
        self.hospital, self.num_train, self.update, self.eps_step = hospital, num_train, update, epsilon_per_round
        self.model_round = 0
        self.epsilon = 0.0
        self.received: list[tuple[int, float, int]] = []  # (aggregate round, total weight, count)

    def _sync(self, conf: ConfigRecord) -> None:
        if M.AGG_ROUND in conf:
            self.received.append((int(conf[M.AGG_ROUND]), float(conf[M.TOTAL_WEIGHT]), int(conf[M.COUNT])))
            self.model_round = int(conf[M.AGG_ROUND])

    def __call__(self, msg: Message) -> RecordDict:
        conf = msg.content[M.CONFIG]
        kind = msg.metadata.message_type
        if kind == M.QUERY:
            facts = {M.HOSPITAL: self.hospital, M.NUM_TRAIN: self.num_train, M.NUM_VAL: 10, M.NUM_PARAMS: SIZE}
            facts.update({M.CHANNELS: 1, M.NUM_CLASSES: 2, M.IMAGE_SIZE: 28})
            return RecordDict({M.CONFIG: ConfigRecord(facts)})
        self._sync(conf)
        if kind == M.EVALUATE:
            metrics = {"val_loss": 0.5, "val_auc": 0.8, "val_accuracy": 0.7, "val_mcc": 0.4}
            metrics.update({M.DECODE_SECONDS: 0.0, M.NUM_VAL: 10})
            reply = {M.ROUND: int(conf[M.ROUND]), M.MODEL_ROUND: self.model_round, M.EPSILON: self.epsilon}
            return RecordDict({M.CONFIG: ConfigRecord(reply), M.METRICS: MetricRecord(metrics)})
        self.epsilon += self.eps_step
        weight = self.num_train / float(conf[M.N_REF])
        reply = {M.ROUND: int(conf[M.ROUND]), M.NUM_TRAIN: self.num_train, M.OUT_OF_BUDGET: False}
        reply.update({M.WEIGHT: weight, M.EPSILON: self.epsilon})
        metrics = {M.TRAIN_LOSS: 0.3, M.TRAIN_SECONDS: 0.0, M.ENCODE_SECONDS: 0.0, M.CLIPPED_FRACTION: 0.0}
        out = RecordDict({M.CONFIG: ConfigRecord(reply), M.METRICS: MetricRecord(metrics)})
        Payload(values=np.full(SIZE, weight * self.update, np.float32)).put(out)
        return out


def three_hospitals() -> dict[int, PlainHospital]:
    return {10: PlainHospital(0, 100, 0.1), 11: PlainHospital(1, 50, 0.4), 12: PlainHospital(2, 100, -0.2)}


def replace_train_reply(hospital: PlainHospital, rnd: int, answer) -> Hospital:
    """``hospital``, except that in training round ``rnd`` it answers ``answer(msg, honest_reply)``."""

    def respond(msg: Message):
        honest = hospital(msg)
        if msg.metadata.message_type == M.TRAIN and int(msg.content[M.CONFIG][M.ROUND]) == rnd:
            return answer(msg, honest)
        return honest

    return respond


# --- one round ---------------------------------------------------------------------------------
def test_a_round_sends_the_sum_its_total_weight_and_count_to_every_hospital():
    # Prepare
    hospitals = three_hospitals()
    grid = FakeGrid(hospitals)
    strategy = SecureFedAvg(num_hospitals=3, min_hospitals=2)

    # Execute
    result = strategy.start(grid, num_rounds=1, timeout=5)

    # Assert: FedAvg weighted by examples: (100*0.1 + 50*0.4 + 100*-0.2) / 250
    agg = Aggregate.from_record(result.arrays)
    weights = [1.0, 0.5, 1.0]
    assert agg.count == 3 and agg.total_weight == pytest.approx(sum(weights))
    np.testing.assert_allclose(agg.payload.values / agg.total_weight, (10 + 20 - 20) / 250, rtol=1e-6)
    for h in hospitals.values():
        assert h.received == [(1, pytest.approx(2.5), 3)]
    assert strategy.status == "completed" and strategy.rows[0]["hospitals"] == 3


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (
            lambda msg, honest: Error(code=1, reason="Traceback...\nRuntimeError: boom"),
            "it failed (RuntimeError: boom)",
        ),
        (
            lambda msg, honest: RecordDict({M.CONFIG: ConfigRecord({M.PROBLEM: "out of sync: holds round 0"})}),
            "out of sync",
        ),
        (lambda msg, honest: _with(honest, **{M.ROUND: 0}), "stale round number 0 (current 1)"),
        (lambda msg, honest: _without_payload(honest), "no update attached"),
        (lambda msg, honest: _with_values(honest, np.ones(SIZE + 1, np.float32)), "update has shape (13,)"),
        (lambda msg, honest: _with_values(honest, np.full(SIZE, np.nan, np.float32)), "NaN"),
    ],
    ids=["error", "problem", "stale", "no-payload", "wrong-size", "nan"],
)
def test_a_bad_reply_is_dropped_named_and_left_out_of_the_sum(answer, why, caplog):
    # Prepare
    hospitals = three_hospitals()
    grid = FakeGrid({**hospitals, 11: replace_train_reply(hospitals[11], 1, answer)})
    strategy = SecureFedAvg(num_hospitals=3, min_hospitals=2)

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedmed.server"):
        result = strategy.start(grid, num_rounds=1, timeout=5)

    # Assert: hospital 1's reply is not in the sum, and the log names it and the cause
    agg = Aggregate.from_record(result.arrays)
    assert agg.count == 2 and agg.total_weight == pytest.approx(2.0)
    np.testing.assert_allclose(agg.payload.values / agg.total_weight, (0.1 - 0.2) / 2, rtol=1e-6)
    assert strategy.rows[0]["dropped"] == 1
    assert any("round 1: dropped the reply of hospital 1" in r.message and why in r.message for r in caplog.records)


def test_the_spending_of_a_hospital_whose_update_was_dropped_still_counts():
    # Prepare: hospital 1 trains (spends budget) but its reply is stale, so the update is dropped
    hospitals = three_hospitals()
    grid = FakeGrid({**hospitals, 11: replace_train_reply(hospitals[11], 1, lambda m, h: _with(h, **{M.ROUND: 0}))})
    strategy = SecureFedAvg(num_hospitals=3, min_hospitals=2)

    # Execute
    strategy.start(grid, num_rounds=1, timeout=5)

    # Assert: its evaluation reply reported the epsilon it spent
    assert strategy.run_summary(0.0)["epsilon"]["1"] == pytest.approx(1.0)
    assert strategy.rows[0]["epsilon_max"] == pytest.approx(1.0)


def test_a_duplicate_and_an_unknown_node_are_dropped():
    # Prepare
    hospitals = three_hospitals()
    strategy = SecureFedAvg(num_hospitals=3, min_hospitals=2)
    grid = FakeGrid(hospitals)
    strategy.query(grid, timeout=5)
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    stranger = PlainHospital(9, 100, 5.0)
    msg = Message(
        content=RecordDict({M.CONFIG: ConfigRecord({M.ROUND: 1, M.N_REF: 100})}), message_type=M.TRAIN, dst_node_id=99
    )
    msg.metadata.__dict__["_message_id"] = "x"

    # Execute: each reply once, hospital 0's twice, and a reply from a node that never joined
    strategy.add_train_reply(99, Message(content=stranger(msg), reply_to=msg))
    arrays, metrics = strategy.aggregate_train(1, [*replies, replies[0]])

    # Assert
    agg = Aggregate.from_record(arrays)
    assert agg.count == 3 and metrics["dropped"] == 2
    np.testing.assert_allclose(agg.payload.values / agg.total_weight, (10 + 20 - 20) / 250, rtol=1e-6)


def test_a_hospital_that_does_not_answer_is_left_out_after_the_timeout():
    # Prepare
    hospitals = three_hospitals()
    grid = FakeGrid({**hospitals, 12: replace_train_reply(hospitals[12], 1, lambda msg, honest: None)})
    strategy = SecureFedAvg(num_hospitals=3, min_hospitals=2)

    # Execute
    result = strategy.start(grid, num_rounds=1, timeout=0.3)

    # Assert
    assert Aggregate.from_record(result.arrays).count == 2


# --- across rounds ---------------------------------------------------------------------------
def test_only_hospitals_that_missed_the_evaluation_get_the_aggregate_with_the_next_train_message():
    # Prepare: hospital 2 fails to evaluate in round 1 (it never applied aggregate 1)
    hospitals = three_hospitals()

    def no_evaluate_in_round_1(msg):
        if msg.metadata.message_type == M.EVALUATE and int(msg.content[M.CONFIG][M.ROUND]) == 1:
            return Error(code=1, reason="evaluation crashed")
        return hospitals[12](msg)

    grid = FakeGrid({**hospitals, 12: no_evaluate_in_round_1})
    strategy = SecureFedAvg(num_hospitals=3, min_hospitals=2)

    # Execute
    strategy.start(grid, num_rounds=2, timeout=5)

    # Assert
    carrying = {m.metadata.dst_node_id for m in grid.sent_of(M.TRAIN, 2) if M.AGG_ROUND in m.content[M.CONFIG]}
    assert carrying == {12}
    assert [r for r, _, _ in hospitals[12].received] == [1, 2]


def test_hospitals_out_of_budget_stop_the_run_with_the_last_good_model():
    # Prepare: in round 2 two hospitals report that their budget is spent
    hospitals = three_hospitals()

    def spent(msg, honest):
        conf = dict(honest[M.CONFIG])
        conf[M.OUT_OF_BUDGET] = True
        return RecordDict({M.CONFIG: ConfigRecord(conf)})

    grid = FakeGrid(
        {
            10: hospitals[10],
            11: replace_train_reply(hospitals[11], 2, spent),
            12: replace_train_reply(hospitals[12], 2, spent),
        }
    )
    strategy = SecureFedAvg(num_hospitals=3, min_hospitals=2)

    # Execute
    result = strategy.start(grid, num_rounds=3, timeout=5)

    # Assert
    assert strategy.status == "stopped_early" and len(strategy.rows) == 1
    assert "round 2: 1 usable update(s), fewer than federation.min_hospitals=2" in strategy.stop_reason
    assert "(2 hospital(s) out of privacy budget)" in strategy.stop_reason
    assert Aggregate.from_record(result.arrays).round == 1


def test_a_first_round_without_enough_updates_fails_the_run():
    hospitals = three_hospitals()
    crash = lambda msg, honest: Error(code=1, reason="crash")  # noqa: E731
    grid = FakeGrid(
        {
            10: hospitals[10],
            11: replace_train_reply(hospitals[11], 1, crash),
            12: replace_train_reply(hospitals[12], 1, crash),
        }
    )

    with pytest.raises(RunFailed, match="round 1: 1 usable update"):
        SecureFedAvg(num_hospitals=3, min_hospitals=2).start(grid, num_rounds=2, timeout=5)


def test_pause_checkpoint_and_resume_give_the_rounds_of_an_uninterrupted_run(tmp_path):
    # Prepare
    full = SecureFedAvg(num_hospitals=3, min_hospitals=2)
    full.start(FakeGrid(three_hospitals()), num_rounds=3, timeout=5, recorder=RunRecorder(tmp_path / "full"))
    part_dir = tmp_path / "part"
    hospitals = three_hospitals()
    paused = SecureFedAvg(num_hospitals=3, min_hospitals=2)
    paused.start(FakeGrid(hospitals), num_rounds=3, timeout=5, recorder=RunRecorder(part_dir), stop_after=1)

    # Execute: a new server process resumes; the hospitals keep their state
    resumed = SecureFedAvg(num_hospitals=3, min_hospitals=2)
    resumed.start(FakeGrid(hospitals), num_rounds=3, timeout=5, recorder=RunRecorder(part_dir), resume=True)

    # Assert
    assert paused.status == "paused" and resumed.status == "completed"
    assert json.loads((part_dir / "checkpoint.json").read_text())["completed_round"] == 3
    assert [r["round"] for r in read_metrics(part_dir / "metrics.csv")] == [1, 2, 3]
    a, b = aggregates.load_all(tmp_path / "full"), aggregates.load_all(part_dir)
    assert [x.count for x in a] == [y.count for y in b] == [3, 3, 3]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.payload.values, y.payload.values)


def test_strategies_tell_the_hospitals_their_step_and_term():
    # Prepare
    grid_prox, grid_adam = FakeGrid(three_hospitals()), FakeGrid(three_hospitals())

    # Execute
    SecureFedProx(proximal_mu=0.05, num_hospitals=3).start(grid_prox, num_rounds=1, timeout=5)
    adam = SecureFedAdam(eta=0.02, num_hospitals=3)
    result = adam.start(grid_adam, num_rounds=1, timeout=5)

    # Assert
    assert all(m.content[M.CONFIG][M.PROXIMAL_MU] == 0.05 for m in grid_prox.sent_of(M.TRAIN))
    for m in grid_adam.sent_of(M.TRAIN) + grid_adam.sent_of(M.EVALUATE):
        assert json.loads(m.content[M.CONFIG][M.SERVER_OPTIMIZER]) == ServerOptimizer("fedadam", lr=0.02).spec()
    assert Aggregate.from_record(result.arrays).server_optimizer["name"] == "fedadam"


def test_flowers_own_loop_drives_the_hooks():
    """The hooks keep Flower's contract: the base class's start() runs rounds with them."""
    # Prepare
    hospitals = three_hospitals()
    grid = FakeGrid(hospitals)
    strategy = SecureFedAvg(num_hospitals=3, min_hospitals=2)
    strategy.query(grid, timeout=5)

    # Execute
    result = Strategy.start(strategy, grid, ArrayRecord(), num_rounds=2, timeout=5)

    # Assert
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    assert result.evaluate_metrics_clientapp[2]["val_auc"] == pytest.approx(0.8)
    assert Aggregate.from_record(result.arrays).round == 2
    assert all([r for r, _, _ in h.received] == [1, 2] for h in hospitals.values())


def _with(content: RecordDict, **conf) -> RecordDict:
    content[M.CONFIG] = ConfigRecord({**dict(content[M.CONFIG]), **conf})
    return content


def _without_payload(content: RecordDict) -> RecordDict:
    return RecordDict({M.CONFIG: content[M.CONFIG], M.METRICS: content[M.METRICS]})


def _with_values(content: RecordDict, values: np.ndarray) -> RecordDict:
    out = _without_payload(content)
    Payload(values=values).put(out)
    return out


def test_the_progress_hook_hears_each_phase_start_and_each_reply_and_the_summary_names_the_devices():
    strategy = SecureFedAvg(num_hospitals=3, min_hospitals=3)
    heard: list[tuple[int, str, int, int]] = []
    strategy.progress = lambda *event: heard.append(event)

    strategy.start(FakeGrid(three_hospitals()), num_rounds=2, timeout=5)

    assert heard[:4] == [(0, "query", 0, 3), (0, "query", 1, 3), (0, "query", 2, 3), (0, "query", 3, 3)]
    for rnd in (1, 2):
        for phase in ("train", "evaluate"):
            assert [e[2:] for e in heard if e[:2] == (rnd, phase)] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    # the fake hospitals do not say where they trained: the summary records that they did not
    assert strategy.run_summary(1.0)["devices"] == {"hospital 0": "", "hospital 1": "", "hospital 2": ""}
