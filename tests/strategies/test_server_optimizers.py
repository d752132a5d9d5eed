"""The server-optimizer steps the hospitals apply, pinned to Flower's own FedAvgM, FedAdam and FedYogi.

Flower applies these at the server to the plaintext average; here every hospital applies the same
maths after decrypting. Feeding Flower's strategies the same replies must give the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi
from flwr.supercore.task_identity import TaskIdentity

from strategies.server_optimizers import ServerOptimizer, replay


class _Nodes:
    def get_node_ids(self):
        return [1, 2]


def _flower_rounds(strategy, w0: np.ndarray, locals_per_round: list[list[np.ndarray]], counts: list[int]):
    """Run Flower's configure/aggregate for each round; return the weights after each round."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    arrays = ArrayRecord({"w": Array(w0)})
    out = []
    for rnd, local in enumerate(locals_per_round, start=1):
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(), _Nodes()))
        replies = []
        for msg, w, n in zip(messages, local, counts, strict=True):
            content = RecordDict({"arrays": ArrayRecord({"w": Array(w)}), "metrics": MetricRecord({"num-examples": n})})
            msg.metadata.__dict__["_message_id"] = f"m{rnd}{n}"
            replies.append(Message(content=content, reply_to=msg))
        arrays, _ = strategy.aggregate_train(rnd, replies)
        out.append(arrays["w"].numpy())
    return out


@pytest.mark.parametrize(
    ("flower", "ours"),
    [
        (FedAvgM(server_learning_rate=0.7, server_momentum=0.9), ServerOptimizer("fedavgm", lr=0.7, momentum=0.9)),
        (FedAdam(eta=0.05, beta_1=0.9, beta_2=0.99, tau=1e-3), ServerOptimizer("fedadam", lr=0.05, tau=1e-3)),
        (
            FedYogi(eta=0.02, beta_1=0.8, beta_2=0.95, tau=1e-2),
            ServerOptimizer("fedyogi", lr=0.02, beta_1=0.8, beta_2=0.95, tau=1e-2),
        ),
    ],
    ids=["fedavgm", "fedadam", "fedyogi"],
)
def test_steps_match_flowers_server_side_strategies(flower, ours):
    # Prepare: three rounds of two hospitals' local models
    rng = np.random.default_rng(0)
    w0 = rng.normal(0, 1, 50)
    counts = [30, 70]
    weights = w0.copy()
    locals_per_round = []
    for _ in range(3):
        locals_per_round.append([weights + rng.normal(0, 0.05, 50) for _ in counts])
        weights = locals_per_round[-1][0]  # any next starting point; Flower uses its own state
    flower_weights = _flower_rounds(flower, w0, locals_per_round, counts)

    # Execute: our step from the same mean updates, against Flower's weights of the previous round
    current, state, ours_weights = w0, {}, []
    for local, _ in zip(locals_per_round, flower_weights, strict=True):
        mean = sum(n * w for n, w in zip(counts, local, strict=True)) / sum(counts)
        current, state = ours.step(current, mean - current, state)
        ours_weights.append(current)

    # Assert
    for theirs, mine in zip(flower_weights, ours_weights, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-7)


def test_fedavg_step_is_the_plain_sum():
    w, delta = np.arange(4.0), np.full(4, 0.5)
    new, state = ServerOptimizer().step(w, delta, {})
    np.testing.assert_array_equal(new, w + delta)
    assert state == {}


def test_replay_applies_every_round_in_order():
    deltas = [np.full(3, 0.1), np.full(3, -0.3)]
    opt = ServerOptimizer("fedavgm", momentum=0.5)
    weights, state = replay(np.zeros(3), deltas, opt)
    # m1 = 0.1, w1 = 0.1; m2 = 0.5*0.1 - 0.3 = -0.25, w2 = -0.15
    np.testing.assert_allclose(weights, -0.15)
    assert int(state["t"][0]) == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"name": "sgd"}, {"lr": 0}, {"momentum": 1.0}, {"beta_1": 1.0}, {"tau": 0}],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        ServerOptimizer(**kwargs)
