"""Server optimizers that work under encryption: the step every key holder applies after decrypting.

Reddi et al. 2021, "Adaptive Federated Optimization" (FedAdam, FedYogi), and Hsu et al. 2019
(FedAvgM). The server cannot apply them: it only ever holds the encrypted sum. So each hospital
(and the consortium, when it rebuilds the final model) decrypts the round's mean update
``delta = sum_k n_k u_k / sum_k n_k`` and applies the same deterministic step to its copy of the
global model, keeping the optimizer state (momentum, second moments) next to that copy. Every
key holder starts from the same public weights and applies the same steps to the same aggregates,
so all copies stay identical.

Pure numpy: the maths follows Flower's ``FedAvgM``, ``FedAdam`` (including its bias correction
with ``round + 1``) and ``FedYogi``, which the tests use as the reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi")
State = dict[str, np.ndarray]


@dataclass(frozen=True)
class ServerOptimizer:
    """One server-optimizer step: ``w <- step(w, delta)``, with its state carried between rounds.

    Args:
        name: ``fedavg`` (w + delta), ``fedavgm``, ``fedadam`` or ``fedyogi``.
        lr: server learning rate (``eta`` in Reddi et al.; FedAvgM's ``server_learning_rate``).
        momentum: FedAvgM's server momentum.
        beta_1: first-moment decay (FedAdam, FedYogi).
        beta_2: second-moment decay (FedAdam, FedYogi).
        tau: adaptivity (FedAdam, FedYogi): added to the root of the second moment.
    """

    name: str = "fedavg"
    lr: float = 1.0
    momentum: float = 0.0
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"server optimizer {self.name!r} is unknown; use one of {OPTIMIZERS}")
        if self.lr <= 0:
            raise ValueError(f"The server learning rate should be positive (got {self.lr}).")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"The server momentum should be in [0, 1) (got {self.momentum}).")
        if not (0 <= self.beta_1 < 1 and 0 <= self.beta_2 < 1):
            raise ValueError(f"beta_1 and beta_2 should be in [0, 1) (got {self.beta_1}, {self.beta_2}).")
        if self.tau <= 0:
            raise ValueError(f"tau should be positive (got {self.tau}).")

    def spec(self) -> dict:
        """A JSON-ready description (sent to hospitals, stored in aggregate files)."""
        return asdict(self)

    @classmethod
    def from_spec(cls, spec: dict | None) -> ServerOptimizer:
        """The optimizer a :meth:`spec` describes; FedAvg's plain step for an empty one."""
        return cls(**(spec or {}))

    def step(self, weights: np.ndarray, delta: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """The new weights after one round's mean update ``delta``, and the new state.

        ``state`` is not modified; an empty state starts the optimizer (round 1).
        """
        if self.name == "fedavg":
            return weights + delta, state
        t = int(state["t"][0]) + 1 if "t" in state else 1
        if self.name == "fedavgm":
            m = delta if "m" not in state else self.momentum * state["m"] + delta
            return weights + self.lr * m, {"m": m, "t": np.array([t])}
        m_prev = state.get("m", np.zeros_like(delta))
        v_prev = state.get("v", np.zeros_like(delta))
        m = self.beta_1 * m_prev + (1 - self.beta_1) * delta
        d2 = delta * delta
        if self.name == "fedadam":
            v = self.beta_2 * v_prev + (1 - self.beta_2) * d2
            # Flower's FedAdam corrects the bias with the exponent (round + 1)
            lr = self.lr * np.sqrt(1 - self.beta_2 ** (t + 1.0)) / (1 - self.beta_1 ** (t + 1.0))
        else:  # fedyogi
            v = v_prev - (1 - self.beta_2) * d2 * np.sign(v_prev - d2)
            lr = self.lr
        return weights + lr * m / (np.sqrt(v) + self.tau), {"m": m, "v": v, "t": np.array([t])}


def replay(weights: np.ndarray, deltas: list[np.ndarray], optimizer: ServerOptimizer) -> tuple[np.ndarray, State]:
    """Apply ``deltas`` (one mean update per round) in order from ``weights``; returns weights and state."""
    state: State = {}
    for delta in deltas:
        weights, state = optimizer.step(weights, delta, state)
    return weights, state
