"""Epsilon of an accountant history, computed once: one PRV evaluation takes 0.1-0.3 s here.

A hospital asks for the same epsilon several times a round (can it afford the round, what it has
spent, what its lifetime ledger says, again when it evaluates), so :func:`history_epsilon`
memoises each (accountant, history, delta) per process, and the hospital's ledger carries the
epsilon of its current history in its state file (:meth:`PrivacyLedger.to_json`), so the next
message, in whichever worker process, need not recompute it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opacus.accountants import create_accountant

Entry = tuple[float, float, int]  # (noise multiplier, sample rate, steps)
_MEMO: dict[tuple, float] = {}
_MEMO_LIMIT = 4096


def merged_history(history: Iterable[Sequence]) -> tuple[Entry, ...]:
    """``history`` with the steps of its entries of equal (noise multiplier, sample rate) added up.

    A mechanism composed ``n`` times and then ``m`` times is the mechanism composed ``n + m``
    times, in any order, so every accountant gives the same epsilon for both (to ~1e-11 with
    Opacus's PRV); but Opacus's PRV accountant pays per entry (an RDP bound of its domain each),
    and a round's trial history ``[(s, q, n), (s, q, k)]`` would cost twice its merged one.
    """
    steps: dict[tuple[float, float], int] = {}
    for s, q, n in history:
        if int(n) > 0:
            mechanism = (float(s), float(q))
            steps[mechanism] = steps.get(mechanism, 0) + int(n)
    return tuple((s, q, n) for (s, q), n in steps.items())


def _key(history: Iterable[Sequence], delta: float, accountant: str) -> tuple:
    return str(accountant), merged_history(history), float(delta)


def history_epsilon(history: Iterable[Sequence], delta: float, accountant: str) -> float:
    """Epsilon at ``delta`` of every step in ``history`` under ``accountant`` (0 without steps)."""
    key = _key(history, delta, accountant)
    if key not in _MEMO:
        if not key[1]:
            return 0.0
        acc = create_accountant(mechanism=key[0])
        acc.history = list(key[1])
        if len(_MEMO) >= _MEMO_LIMIT:
            _MEMO.clear()
        _MEMO[key] = float(acc.get_epsilon(delta=key[2]))
    return _MEMO[key]


def known_epsilons(history: Iterable[Sequence], accountant: str) -> dict[float, float]:
    """The epsilons of ``history`` computed so far in this process, by delta."""
    accountant, steps, _ = _key(history, 0.0, accountant)
    return {k[2]: v for k, v in _MEMO.items() if k[0] == accountant and k[1] == steps}


def remember(history: Iterable[Sequence], delta: float, accountant: str, epsilon: float) -> None:
    """Take ``epsilon`` as the value of ``history`` at ``delta`` (one this hospital computed and saved)."""
    _MEMO[_key(history, delta, accountant)] = float(epsilon)
