"""One hospital's cumulative privacy spending: the Opacus accountant's state, serialisable.

The ledger travels with the hospital's state (Flower's node context and its state file) from
round to round, so epsilon is cumulative over the whole run and never resets; it refuses a round
that would take epsilon above the target.
"""

from __future__ import annotations

import json

from opacus.accountants import create_accountant

from pipeline.errors import ConfigError
from pipeline.privacy.accounting import history_epsilon, known_epsilons, remember
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
        ledger = cls(accountant, state["history"])
        for delta, eps in state.get("epsilon", []):  # what this hospital computed for this history
            remember(ledger.accountant.history, delta, accountant, eps)
        return ledger

    def to_json(self) -> str:
        """The accountant's history, with the epsilons computed for it so far ([delta, epsilon] pairs)."""
        mechanism, history = self.accountant.mechanism(), self.accountant.history
        known = sorted(known_epsilons(history, mechanism).items())
        return json.dumps({"mechanism": mechanism, "history": history, "epsilon": [list(p) for p in known]})

    @property
    def steps(self) -> int:
        return int(sum(h[2] for h in self.accountant.history))

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far (0 before any step)."""
        return history_epsilon(self.accountant.history, delta, self.accountant.mechanism())

    def epsilon_after_round(self, plan: DPPlan) -> float:
        """Epsilon this hospital would have spent after one more round of ``plan``."""
        trial = [*self.accountant.history, (plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)]
        return history_epsilon(trial, plan.delta, self.accountant.mechanism())

    def can_afford_round(self, plan: DPPlan) -> bool:
        """False when the next round would take epsilon above the target."""
        return self.epsilon_after_round(plan) <= plan.target_epsilon * (1 + BUDGET_SLACK)
