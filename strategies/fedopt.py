"""Server optimizers under encryption: SecureFedAvgM, SecureFedAdam, SecureFedYogi (Reddi et al. 2021).

Flower's FedOpt strategies apply the optimizer at the server, to the plaintext aggregate; NVIDIA
FLARE documents that FedOpt does not work with homomorphic encryption. Here the server adds
ciphertexts exactly as in :class:`SecureFedAvg` and only names the optimizer: every hospital
applies the step after decrypting (:mod:`strategies.server_optimizers`), keeping the optimizer
state with its copy of the model, and the consortium replays the same steps. Plaintext runs take
the same path. Parameter names and defaults follow Flower's ``FedAvgM``, ``FedAdam``, ``FedYogi``.
"""

from __future__ import annotations

from typing import Any

from strategies.secure_fedavg import SecureFedAvg
from strategies.server_optimizers import ServerOptimizer


class SecureFedAvgM(SecureFedAvg):
    """FedAvg with server momentum (Hsu et al. 2019), applied by the hospitals.

    Args:
        server_learning_rate: step size of the server update.
        server_momentum: momentum of the server update, in [0, 1).
        **kwargs: :class:`SecureFedAvg`'s.
    """

    def __init__(self, *, server_learning_rate: float = 1.0, server_momentum: float = 0.9, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server_optimizer = ServerOptimizer("fedavgm", lr=server_learning_rate, momentum=server_momentum)


class SecureFedAdam(SecureFedAvg):
    """FedAdam (Reddi et al. 2021), applied by the hospitals.

    Args:
        eta: server learning rate.
        beta_1: first-moment decay.
        beta_2: second-moment decay.
        tau: adaptivity added to the root of the second moment.
        **kwargs: :class:`SecureFedAvg`'s.
    """

    rule = "fedadam"

    def __init__(
        self, *, eta: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.server_optimizer = ServerOptimizer(self.rule, lr=eta, beta_1=beta_1, beta_2=beta_2, tau=tau)


class SecureFedYogi(SecureFedAdam):
    """FedYogi (Reddi et al. 2021), applied by the hospitals: FedAdam's settings, Yogi's second moment.

    Args:
        eta: server learning rate (Flower's FedYogi default, 0.01).
        **kwargs: :class:`SecureFedAdam`'s other settings and :class:`SecureFedAvg`'s.
    """

    rule = "fedyogi"

    def __init__(self, *, eta: float = 0.01, **kwargs: Any) -> None:
        super().__init__(eta=eta, **kwargs)
