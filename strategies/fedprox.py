"""SecureFedProx: SecureFedAvg whose hospitals add FedProx's proximal term (Li et al. 2020).

Aggregation is FedAvg's; each hospital minimises its loss plus (mu/2)||w - w_global||^2, with mu
sent in every train message as Flower's FedProx does. Plain training only: the proximal term is
not per-sample, so a DP-SGD run refuses it before starting.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.flower import messages as M
from strategies.secure_fedavg import SecureFedAvg

log = logging.getLogger("fedmed.server")


class SecureFedProx(SecureFedAvg):
    """SecureFedAvg plus the proximal term at the hospitals.

    Args:
        proximal_mu: weight of (mu/2)||w - w_global||^2 in each hospital's loss; must be >= 0.
        **kwargs: :class:`SecureFedAvg`'s.
    """

    def __init__(self, *, proximal_mu: float = 0.01, **kwargs: Any) -> None:
        if proximal_mu < 0:
            raise ValueError("The proximal term weight proximal_mu should be >= 0.")
        super().__init__(**kwargs)
        self.proximal_mu = float(proximal_mu)

    def summary(self) -> None:
        super().summary()
        log.info("FedProx proximal_mu=%g", self.proximal_mu)

    def train_config(self, server_round: int) -> dict[str, Any]:
        return {**super().train_config(server_round), M.PROXIMAL_MU: self.proximal_mu}
