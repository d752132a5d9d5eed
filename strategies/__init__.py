"""The round algorithm as Flower strategies (``flwr.serverapp.strategy.Strategy`` subclasses).

* :class:`SecureFedAvg` (:mod:`.secure_fedavg`): FedAvg whose server adds (encrypted) updates in
  place and never sees a model; the base of the others.
* :class:`SecureFedProx` (:mod:`.fedprox`): FedProx's proximal term at the hospitals.
* :class:`SecureFedAvgM`, :class:`SecureFedAdam`, :class:`SecureFedYogi` (:mod:`.fedopt`): server
  optimizers that work under encryption, applied by the hospitals after decryption.

Pure maths beside them: :mod:`.aggregation` (reference FedAvg, metric means) and
:mod:`.server_optimizers` (the optimizer steps, also imported by the hospitals). Nothing here
imports code that can load a secret key.
"""

from __future__ import annotations

import importlib
from typing import Any

# Strategy class -> its module. Loaded on first use, so that the pure maths modules (imported by
# the hospitals and the run's aggregate files) do not pull in the server loop.
_EXPORTS = {
    "SecureFedAvg": "strategies.secure_fedavg",
    "SecureFedProx": "strategies.fedprox",
    "SecureFedAvgM": "strategies.fedopt",
    "SecureFedAdam": "strategies.fedopt",
    "SecureFedYogi": "strategies.fedopt",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'strategies' has no attribute {name!r}")
