"""Optional experiment tracking: log a finished run to MLflow (``logger=mlflow``) or TensorBoard
(``logger=tensorboard``).

The run folder stays the source of truth; this copies it into the tracker after the run, so that
users who compare runs in MLflow's or TensorBoard's UI can: per-round metrics from metrics.csv, the
final test metrics and epsilon, and the config (MLflow: params, plus the folder's summary, config
and plot as artifacts; TensorBoard: scalars ``round/<column>`` and ``final/<metric>``, the config as
text, in ``<run folder>/tensorboard/`` or ``<logger.tracking_uri>/<run folder name>/``).
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError
from pipeline.reporting.recorder import METRICS_FILE, read_metrics

TENSORBOARD_DIR = "tensorboard"


def round_metrics(run_dir: Path) -> list[tuple[int, dict[str, float]]]:
    """``(round, {column: value})`` for each metrics.csv row of ``run_dir``, numbers only."""
    return [
        (int(row["round"]), {k: float(v) for k, v in row.items() if k != "round" and isinstance(v, (int, float))})
        for row in read_metrics(run_dir / METRICS_FILE)
    ]


def final_metrics(summary: dict) -> dict[str, float]:
    """The run's final numbers: ``test_<metric>`` from summary.json (numbers only: not the AUC
    interval, threshold source, confusion matrix or per-label dicts) and ``final_epsilon_max``."""
    test = summary.get("test") or {}
    final = {f"test_{k}": v for k, v in test.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if summary.get("epsilon"):
        final["final_epsilon_max"] = max(summary["epsilon"].values())
    return final


# backend -> (the module it needs, the install command)
_NEEDS = {
    "mlflow": ("mlflow", 'logger=mlflow needs MLflow: pip install -e ".[mlflow]"'),
    "tensorboard": ("tensorboard", 'logger=tensorboard needs TensorBoard: pip install -e ".[tensorboard]"'),
}


def check_backend(cfg: DictConfig) -> None:
    """Refuse, before the run starts, a ``logger`` whose package is not installed.

    Raises:
        ConfigError: naming the install command.
    """
    import importlib.util

    need = _NEEDS.get(str(cfg.logger.backend))
    if need is not None and importlib.util.find_spec(need[0]) is None:
        raise ConfigError(need[1])


def log_run(cfg: DictConfig, run_dir: Path, summary: dict) -> str | None:
    """Log the run in ``run_dir`` to ``cfg.logger.backend``: the MLflow run id, the TensorBoard
    log folder, or None (``logger=none``)."""
    if cfg.logger.backend == "mlflow":
        return _log_mlflow(cfg, run_dir, summary)
    if cfg.logger.backend == "tensorboard":
        return str(_log_tensorboard(cfg, run_dir, summary))
    return None


def _log_mlflow(cfg: DictConfig, run_dir: Path, summary: dict) -> str:
    try:
        import mlflow
    except ImportError:
        raise ConfigError(_NEEDS["mlflow"][1]) from None
    uri = cfg.logger.tracking_uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    name = str(cfg.logger.experiment_name)
    existing = mlflow.get_experiment_by_name(name)
    experiment_id = (
        existing.experiment_id
        if existing
        else mlflow.create_experiment(name, artifact_location=(run_dir / "mlartifacts").resolve().as_uri())
    )
    from pipeline.config.tree import flatten

    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_dir.name) as active:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        for step, values in round_metrics(run_dir):
            mlflow.log_metrics(values, step=step)
        mlflow.log_metrics(final_metrics(summary))
        for name in ("summary.json", "config.yaml", "curves.png", "roc.png", "calibration.png"):
            if (run_dir / name).exists():
                mlflow.log_artifact(str(run_dir / name))
        return active.info.run_id


def _log_tensorboard(cfg: DictConfig, run_dir: Path, summary: dict) -> Path:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(_NEEDS["tensorboard"][1]) from None
    log_dir = Path(cfg.logger.tracking_uri) / run_dir.name if cfg.logger.tracking_uri else run_dir / TENSORBOARD_DIR
    rounds = round_metrics(run_dir)
    last = max((step for step, _ in rounds), default=0)
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for step, values in rounds:
            for key, value in values.items():
                if math.isfinite(value):
                    writer.add_scalar(f"round/{key}", value, step)
        for key, value in final_metrics(summary).items():
            writer.add_scalar(f"final/{key}", float(value), last)
        config = OmegaConf.to_yaml(cfg, resolve=True)
        writer.add_text("config", "\n".join(f"    {line}" for line in config.splitlines()))  # a markdown code block
    return log_dir
