"""What a run prints: one line per finished round, a live progress bar on a terminal, the final table."""

from __future__ import annotations

import sys
import time
from typing import Any


def progress_line(row: dict[str, Any], rounds: int) -> str:
    """One console line for a finished round (a metrics.csv row)."""
    parts = [f"round {row['round']}/{rounds}", f"{row['hospitals']} hospitals"]
    parts.append(f"train loss {_fmt(row.get('train_loss'))}")
    parts.append(f"val AUC {_fmt(row.get('val_auc'))}")
    if row.get("test_auc") not in (None, ""):
        parts.append(f"test AUC {row['test_auc']:.4f}")
    if row.get("epsilon_max"):
        parts.append(f"epsilon max {row['epsilon_max']:.3f}")
    parts.append(f"{row.get('seconds') or 0:.1f}s")
    return " | ".join(parts)


class LiveProgress:
    """A live bar on a terminal: the round, the hospitals done in its current phase, elapsed and left.

    Fed by the strategy's progress hook ``(round, phase, replies so far, replies expected)``, from
    the server's thread. The time left is the mean time of the rounds finished so far times the
    rounds still to go. Log lines and prints go above the bar (rich redirects the console streams).
    """

    def __init__(self, rounds: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
        from rich.text import Text

        self.rounds = rounds
        self.started = self.run_started = time.monotonic()
        self.first_round: int | None = None
        run_started = self.run_started

        class RunElapsed(ProgressColumn):
            """Time since the run's first message (rich's own column stops when a phase completes)."""

            def render(self, task) -> Text:  # noqa: ARG002
                return Text(_clock(time.monotonic() - run_started))

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("hospitals"),
            RunElapsed(),
            TextColumn("{task.fields[left]}"),
            console=Console(file=sys.stdout),
            transient=True,
        )
        self.task = self.progress.add_task("starting", total=None, left="")
        self.progress.start()
        _LIVE.append(self)

    def __call__(self, rnd: int, phase: str, done: int, total: int) -> None:
        """Show ``done`` of ``total`` replies in ``phase`` of round ``rnd`` (round 0: the size query)."""
        if rnd >= 1 and self.first_round is None:
            self.first_round, self.started = rnd, time.monotonic()
        finished = rnd - self.first_round if self.first_round is not None else 0
        left = ""
        if finished > 0:
            per_round = (time.monotonic() - self.started) / finished
            left = f"~{_clock(per_round * (self.rounds - rnd + 1))} left"
        title = f"round {rnd}/{self.rounds} {phase}" if rnd else phase
        self.progress.update(self.task, description=title, completed=done, total=total, left=left)

    def close(self) -> None:
        """Remove the bar (idempotent)."""
        self.progress.stop()
        if self in _LIVE:
            _LIVE.remove(self)


_LIVE: list[LiveProgress] = []  # bars on screen (an interrupted run removes them from the main thread)


def close_live_progress() -> None:
    """Remove every live bar, e.g. before an interrupted run prints its last line."""
    for bar in list(_LIVE):
        bar.close()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def live_progress(level: str, rounds: int) -> LiveProgress | None:
    """A :class:`LiveProgress` when the console is a terminal and ``log.level`` is info; else None."""
    if level != "info" or not sys.stdout.isatty():
        return None
    return LiveProgress(rounds)


def _fmt(value: Any) -> str:
    return "nan" if value in (None, "") else f"{float(value):.4f}"


# test AUC this much below the final validation AUC gets the note on the test split's shift
SHIFT_NOTE_GAP = 0.02
SHIFT_NOTE = (
    "note: test AUC {test:.3f} is well below the final validation AUC {val:.3f}: the test split differs from the\n"
    "hospitals' data (PneumoniaMNIST's official test split is known to be shifted from its train/val splits),\n"
    "so validation overstates test performance"
)


def summary_table(summary: dict[str, Any]) -> str:
    """A short text table of the final numbers, for the console: test metrics (AUC with its 95%
    interval), the operating point and calibration, epsilon and cost."""
    test = summary.get("test") or {}
    lines = [
        f"{'run':<22}{summary.get('run_dir', '')}",
        f"{'mode':<22}{summary.get('mode', '')} ({summary.get('num_hospitals', '?')} hospitals, "
        f"{summary.get('rounds_completed', '?')} rounds)",
    ]
    if test.get("auc") is not None:
        ci = test.get("auc_ci")  # with its interval: 0.930 [0.91, 0.95]
        auc = f"{test['auc']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{test['auc']:.4f}"
        lines.append(f"{'test AUC':<22}{auc}")
    for key in ("accuracy", "mcc", "loss"):
        if key in test and test[key] is not None:
            lines.append(f"{'test ' + key:<22}{test[key]:.4f}")
    if test.get("threshold") is not None:
        lines.append(f"{'threshold':<22}{test['threshold']:.3f} ({test.get('threshold_source', '')})")
    operating = (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ppv", "PPV"), ("npv", "NPV"))
    for key, name in (*operating, ("f1", "F1"), ("ece", "ECE (calibration)")):
        if test.get(key) is not None:
            lines.append(f"{name:<22}{test[key]:.3f}")
    eps = summary.get("epsilon") or {}
    if eps:
        lines.append(
            f"{'epsilon (max)':<22}{max(v for v in eps.values() if v is not None):.3f} "
            f"(target {summary.get('epsilon_target')})"
        )
    devices = summary.get("devices") or {}
    if devices:  # as the hospitals reported it
        counts = {d: list(devices.values()).count(d) for d in sorted(set(devices.values()))}
        lines.append(f"{'trained on':<22}" + ", ".join(f"{d} ({n} hospital{'s' * (n > 1)})" for d, n in counts.items()))
    for key in ("bytes_per_param_up", "bytes_per_param_down", "seconds"):
        if summary.get(key) is not None:
            lines.append(f"{key:<22}{summary[key]:.3f}")
    val_auc = (summary.get("final_validation") or {}).get("val_auc")
    width = max(len(s) for s in lines)
    table = ["-" * width, *lines, "-" * width]
    if val_auc is not None and test.get("auc") is not None and test["auc"] < val_auc - SHIFT_NOTE_GAP:
        table.append(SHIFT_NOTE.format(test=test["auc"], val=val_auc))
    return "\n".join(table)
