"""Optional experiment tracking: log a finished run to MLflow (``logger=mlflow``).

The run folder stays the source of truth; this copies it into MLflow after the run, so that users
who compare runs in MLflow's UI can: params (the flattened config), per-round metrics from
metrics.csv, the final test metrics and epsilon, and the folder's summary, config and plot.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError
from pipeline.outputs.recorder import METRICS_FILE, read_metrics


def log_run(cfg: DictConfig, run_dir: Path, summary: dict) -> str | None:
    """Log the run in ``run_dir`` to MLflow when ``cfg.logger.backend == "mlflow"``; return the run id."""
    if cfg.logger.backend != "mlflow":
        return None
    try:
        import mlflow
    except ImportError:
        raise ConfigError('logger=mlflow needs MLflow: pip install -e ".[mlflow]"') from None
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
        for row in read_metrics(run_dir / METRICS_FILE):
            values = {k: float(v) for k, v in row.items() if k != "round" and isinstance(v, (int, float))}
            mlflow.log_metrics(values, step=int(row["round"]))
        final = {f"test_{k}": v for k, v in (summary.get("test") or {}).items() if v is not None}
        if summary.get("epsilon"):
            final["final_epsilon_max"] = max(summary["epsilon"].values())
        mlflow.log_metrics(final)
        for name in ("summary.json", "config.yaml", "curves.png"):
            if (run_dir / name).exists():
                mlflow.log_artifact(str(run_dir / name))
        return active.info.run_id
