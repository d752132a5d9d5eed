"""One hospital's cumulative privacy spending: the Opacus accountant's state, serialisable.

The ledger travels with the hospital's state (Flower's node context and its state file) from
round to round, so epsilon is cumulative over the whole run and never resets; it refuses a round
that would take epsilon above the target.
"""

from __future__ import annotations

import copy
import json

from opacus.accountants import create_accountant

from pipeline.errors import ConfigError
from pipeline.privacy.plan import DPPlan

# Accept an epsilon this far above target as "within budget" (floating-point slack only).
BUDGET_SLACK = 1e-6


class PrivacyLedger:
    """One hospital's cumulative privacy spending: the Opacus accountant's state, serialisable."""

    def __init__(self, accountant: str, history: list | None = None) -> None:
        self.accountant = create_accountant(accountant)
        self.accountant.history = [tuple(h) for h in (history or [])]

    @classmethod
    def from_json(cls, text: str | None, accountant: str) -> PrivacyLedger:
        """Restore from :meth:`to_json` output; ``None`` or empty gives a fresh ledger."""
        if not text:
            return cls(accountant)
        state = json.loads(text)
        if state["mechanism"] != accountant:
            raise ConfigError(f"saved privacy state uses accountant {state['mechanism']!r}, config says {accountant!r}")
        return cls(accountant, state["history"])

    def to_json(self) -> str:
        return json.dumps({"mechanism": self.accountant.mechanism(), "history": self.accountant.history})

    @property
    def steps(self) -> int:
        return int(sum(h[2] for h in self.accountant.history))

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far (0 before any step)."""
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=delta))

    def epsilon_after_round(self, plan: DPPlan) -> float:
        """Epsilon this hospital would have spent after one more round of ``plan``."""
        trial = copy.deepcopy(self.accountant)
        trial.history.append((plan.noise_multiplier, plan.sample_rate, plan.steps_per_round))
        return float(trial.get_epsilon(delta=plan.delta))

    def can_afford_round(self, plan: DPPlan) -> bool:
        """False when the next round would take epsilon above the target."""
        return self.epsilon_after_round(plan) <= plan.target_epsilon * (1 + BUDGET_SLACK)
