"""A hospital's privacy spending across studies: the lifetime ledger and its cap.

DP composes across studies on the same patients: a hospital that takes part in two epsilon-8
studies has spent more than epsilon 8 on its patients. Each hospital keeps, in its own folder
(the SuperNode's ``state-dir``, or a simulated hospital's ``privacy.lifetime_dir``), one file with
the accountant history of every study it trained for. The lifetime epsilon is the accountant's
composition of all of them; ``max-lifetime-epsilon`` (node config, or ``privacy.max_lifetime_epsilon``
in a simulation) caps it: a hospital refuses a study whose planned spending would exceed what it
has left, and a round that would.

Spending is never forgotten: an entry only grows (a study's history that does not extend the
stored one is kept beside it, not in its place), so a server that reuses a study id cannot make
a hospital forget what it spent.

    python -m pipeline.privacy.lifetime <folder>     (a hospital's studies and its lifetime total)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pipeline.privacy.accounting import history_epsilon
from pipeline.reporting.atomic import write_atomic

FILE_SUFFIX = ".lifetime.json"
History = list[tuple[float, float, int]]


def lifetime_file(folder: str | Path, hospital: int) -> Path:
    """Where hospital ``hospital`` keeps its lifetime ledger in ``folder``."""
    return Path(folder) / f"hospital_{hospital}{FILE_SUFFIX}"


@dataclass
class StudySpending:
    """What one study cost: its accountant history (noise multiplier, sample rate, steps) and when."""

    study: str
    history: History
    delta: float
    accountant: str
    first: str = field(default_factory=lambda: _now())
    last: str = field(default_factory=lambda: _now())

    @property
    def steps(self) -> int:
        return int(sum(h[2] for h in self.history))

    @property
    def epsilon(self) -> float:
        """This study alone, at its own delta."""
        return history_epsilon(self.history, self.delta, self.accountant)


def _extends(new: History, old: History) -> bool:
    """Whether ``new`` is ``old`` plus more steps (an accountant merges repeated steps into its last entry)."""
    if not old:
        return True
    if len(new) < len(old) or new[: len(old) - 1] != old[:-1]:
        return False
    last, grown = old[-1], new[len(old) - 1]
    return tuple(grown[:2]) == tuple(last[:2]) and grown[2] >= last[2]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class LifetimeLedger:
    """One hospital's spending over all its studies (``path`` holds it as JSON, owner-only)."""

    path: Path
    entries: list[StudySpending] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> LifetimeLedger:
        """The ledger at ``path``; an empty one when the hospital never trained."""
        path = Path(path)
        if not path.exists():
            return cls(path)
        raw = json.loads(path.read_text())
        entries = [StudySpending(**{**e, "history": [tuple(h) for h in e["history"]]}) for e in raw["studies"]]
        return cls(path, entries)

    def save(self) -> None:
        data = {"studies": [asdict(e) for e in self.entries]}
        write_atomic(self.path, json.dumps(data, indent=2) + "\n", private=True)

    def spent_by(self, study: str) -> History:
        """The history recorded for ``study`` (its latest entry), empty if none."""
        mine = [e for e in self.entries if e.study == study]
        return list(mine[-1].history) if mine else []

    def others(self, study: str) -> History:
        """Every recorded step of every study but ``study``'s latest entry."""
        mine = [e for e in self.entries if e.study == study]
        latest = mine[-1] if mine else None
        return [h for e in self.entries if e is not latest for h in e.history]

    def record(self, study: str, history: History, delta: float, accountant: str) -> None:
        """Store ``study``'s whole history so far (and save): it replaces the study's entry only if it extends it."""
        history = [tuple(h) for h in history]
        mine = [e for e in self.entries if e.study == study]
        if mine and _extends(history, list(mine[-1].history)):
            mine[-1].history, mine[-1].last, mine[-1].delta = history, _now(), delta
        else:
            self.entries.append(StudySpending(study, history, delta, accountant))
        self.save()

    def epsilon(self, delta: float, accountant: str, extra: History = ()) -> float:
        """Lifetime epsilon at ``delta``: every recorded study composed, plus ``extra`` (a plan)."""
        return history_epsilon([h for e in self.entries for h in e.history] + list(extra), delta, accountant)

    def epsilon_with(self, study: str, history: History, delta: float, accountant: str) -> float:
        """Lifetime epsilon if ``study``'s spending were ``history`` (its recorded entry replaced)."""
        return history_epsilon(self.others(study) + [tuple(h) for h in history], delta, accountant)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.privacy.lifetime FOLDER [--delta D]``: list a hospital's studies and its total."""
    p = argparse.ArgumentParser(description="A hospital's privacy spending over all its studies.")
    p.add_argument("folder", help="the hospital's state-dir (or a simulation's privacy.lifetime_dir)")
    p.add_argument("--delta", type=float, default=None, help="delta of the total (default: the largest used)")
    a = p.parse_args(argv)
    files = sorted(Path(a.folder).glob(f"*{FILE_SUFFIX}"))
    if not files:
        print(f"error: {a.folder} holds no lifetime ledger (*{FILE_SUFFIX}): no study trained there", file=sys.stderr)
        return 2
    for path in files:
        ledger = LifetimeLedger.load(path)
        print(f"{path.name}")
        print(f"  {'study':<38}{'first':<27}{'last':<27}{'steps':>7}{'epsilon':>9}{'delta':>9}")
        for e in ledger.entries:
            print(f"  {e.study:<38}{e.first:<27}{e.last:<27}{e.steps:>7}{e.epsilon:>9.3f}{e.delta:>9.1e}")
        if ledger.entries:
            delta = a.delta or max(e.delta for e in ledger.entries)
            total = ledger.epsilon(delta, ledger.entries[-1].accountant)
            n = len(ledger.entries)
            print(f"  lifetime: {n} {'study' if n == 1 else 'studies'}, epsilon {total:.3f} at delta {delta:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
