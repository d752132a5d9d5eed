"""Running the attacks on a finished run folder: the options, reading the run's config and
epsilon, the DP plan and CKKS parameters the attack uses, the attacked batch, and
:func:`attack_run`, which does both attacks and returns the report and the images for the grid."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.analysis.attacks.collusion import colluder_estimate, no_information_estimate
from pipeline.analysis.attacks.encrypted import encrypted_view
from pipeline.analysis.attacks.gradients import gradient_from_update, observed_gradient, update_from_gradient
from pipeline.analysis.attacks.images import image_scores, match_to_truth, to_unit
from pipeline.analysis.attacks.inversion import invert_gradients, random_images
from pipeline.analysis.attacks.membership import loss_threshold_attack
from pipeline.privacy.plan import DPPlan

DEFAULT_DP_EPSILON = 8.0


@dataclass
class AttackOptions:
    """Command line settings of :func:`attack_run`."""

    batch_size: int = 4
    iterations: int = 1000
    tv: float = 0.3
    lr: float = 0.1
    seed: int = 0
    hospital: int = 0
    data_root: str | None = None
    device: str = "cpu"
    skip: list[str] = field(default_factory=list)


class AttackError(Exception):
    """A problem with the run folder or the options; its message is the one line shown."""


def load_run_config(run_dir: Path, data_root: str | None = None) -> DictConfig:
    """The run's resolved config (``config.yaml``, validated when the run started); ``data_root`` overrides."""
    if not run_dir.is_dir():
        raise AttackError(f"{run_dir} is not a folder (expected a run folder holding config.yaml and model.pt)")
    for name in ("config.yaml", "model.pt"):
        if not (run_dir / name).is_file():
            raise AttackError(f"{run_dir} has no {name}; is it a finished run folder?")
    try:
        cfg = OmegaConf.load(run_dir / "config.yaml")
        if data_root is not None:
            cfg.data.root = data_root
        mode = cfg.federation.mode
    except Exception as err:  # YAML or missing-key errors of many types, shown in one line
        raise AttackError(f"{run_dir / 'config.yaml'}: cannot read it ({str(err).splitlines()[0]})") from None
    if mode != "federated":
        raise AttackError(f"{run_dir} is a {mode} baseline run; the attacks need a federated run")
    return cfg


def run_epsilon(run_dir: Path) -> float | None:
    """Largest epsilon any hospital spent, from ``summary.json`` (None without DP or without the file)."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    eps = summary.get("epsilon")
    values = list(eps.values()) if isinstance(eps, dict) else eps if isinstance(eps, list) else [eps]
    values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return max(values) if values else None


def attack_dp_plan(cfg: DictConfig, num_train: int) -> tuple[DPPlan, DictConfig, str]:
    """The run's DP plan (and privacy config) for a hospital of ``num_train`` images, or the default
    epsilon-8 DP-SGD when the run had no DP; with a line saying which."""
    from pipeline.config import compose
    from pipeline.privacy.plan import plan_for_run

    if cfg.privacy.enabled:
        source = "the run's privacy config"
        plan_cfg = cfg
    else:
        source = f"default DP-SGD (epsilon {DEFAULT_DP_EPSILON:g}; the run itself had no DP)"
        plan_cfg = copy.deepcopy(cfg)
        plan_cfg.privacy = compose("privacy=dpsgd", f"privacy.epsilon={DEFAULT_DP_EPSILON}").privacy
    plan = plan_for_run(plan_cfg, num_train)
    if plan is None:  # not reachable: privacy is enabled in plan_cfg
        raise AttackError("no DP plan could be made")
    return plan, plan_cfg.privacy, source


def _encryption_cfg(cfg: DictConfig) -> tuple[DictConfig, str]:
    from pipeline.config import compose

    if cfg.encryption.enabled:
        return cfg.encryption, "the run's CKKS parameters"
    return compose("encryption=ckks").encryption, "default CKKS parameters, the run itself had none"


def pick_batch(labels: torch.Tensor, batch_size: int, seed: int) -> np.ndarray:
    """Seeded choice of ``batch_size`` sample indices, classes alternating as far as they go."""
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels.numpy() == c)).tolist() for c in torch.unique(labels).tolist()]
    chosen: list[int] = []
    while len(chosen) < batch_size and any(by_class):
        for pool in by_class:
            if pool and len(chosen) < batch_size:
                chosen.append(pool.pop())
    return np.asarray(chosen)


def attack_run(
    run_dir: Path, opts: AttackOptions, log: Callable[[str], None] = print
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Run both attacks on a finished run; return the report and the images for the grid."""
    from pipeline.errors import ConfigError, DataError
    from pipeline.task.model import build_model
    from pipeline.task.sites import hospital_data, hospital_shares, test_dataset

    cfg = load_run_config(run_dir, opts.data_root)
    try:
        data = hospital_data(cfg, opts.hospital)
        test = test_dataset(cfg)
    except (ConfigError, DataError, ValueError, KeyError, OmegaConfBaseException) as err:
        raise AttackError(str(err).splitlines()[0]) from None
    device = torch.device(opts.device)
    mean, std = float(cfg.data.mean), float(cfg.data.std)
    bounds = ((0.0 - mean) / std, (1.0 - mean) / std)
    num_hospitals = int(cfg.federation.num_hospitals)
    n_ref = max(len(t) for t, _ in hospital_shares(cfg))
    weight = data.num_train / n_ref
    step_lr = float(cfg.train.optimizer.get("lr", 1e-3))
    report: dict[str, Any] = {
        "run_dir": str(run_dir),
        "run_epsilon": run_epsilon(run_dir),
        "run_private": bool(cfg.privacy.enabled),
        "run_encrypted": bool(cfg.encryption.enabled),
        "hospital": opts.hospital,
    }

    # --- gradient inversion --------------------------------------------------------------------
    if "inversion" not in opts.skip:
        model = build_model(cfg, data.channels, data.num_classes, data.image_size).to(device)  # round-1 weights
        idx = pick_batch(data.train.y, opts.batch_size, opts.seed)
        x, y = data.train.x[idx].to(device), data.train.y[idx].to(device)
        try:
            plan, privacy, plan_source = attack_dp_plan(cfg, data.num_train)
        except ConfigError as err:
            raise AttackError(str(err)) from None
        enc, enc_source = _encryption_cfg(cfg)
        truth = to_unit(x.cpu(), mean, std)
        images: dict[str, torch.Tensor] = {"true": truth}
        settings: dict[str, Any] = {}

        def invert(name: str, grads: list[torch.Tensor]) -> None:
            t0 = time.perf_counter()
            rec = invert_gradients(
                model, grads, y, tuple(x.shape), opts.iterations, opts.tv, opts.lr, opts.seed + 1, bounds
            )
            rec = match_to_truth(to_unit(rec.cpu(), mean, std), truth, y.cpu())
            images[name] = rec
            settings[name] = {**image_scores(rec, truth), "seconds": round(time.perf_counter() - t0, 1)}
            log(f"inversion {name}: SSIM {settings[name]['ssim']:.3f}, PSNR {settings[name]['psnr']:.2f} dB")

        # plaintext: what the server receives without encryption, turned back into a gradient
        plain_grad = observed_gradient(model, x, y)
        plain_update = update_from_gradient(model, plain_grad, step_lr, weight)
        invert("plaintext", gradient_from_update(model, plain_update, step_lr, weight))
        dp_grad = observed_gradient(model, x, y, plan, privacy)
        invert(
            "dp", gradient_from_update(model, update_from_gradient(model, dp_grad, step_lr, weight), step_lr, weight)
        )
        settings["dp"].update(
            {
                "noise_multiplier": plan.noise_multiplier,
                "max_grad_norm": plan.max_grad_norm,
                "target_epsilon": plan.target_epsilon,
                "delta": plan.delta,
                "plan_source": plan_source,
                "noise_std_per_coordinate": plan.noise_multiplier * plan.max_grad_norm / len(y),
                "clean_gradient_norm": float(torch.sqrt(sum(g.pow(2).sum() for g in plain_grad))),
            }
        )
        view = encrypted_view(plain_update, enc, num_hospitals, opts.seed)
        settings["encrypted"] = {
            "ssim": None,
            "psnr": None,
            "reason": (
                "the server holds only CKKS ciphertext chunks and a parameters-only context (no secret key); "
                "decryption fails, so there is no gradient to invert. The encrypted update is the no-DP one "
                "(encryption alone, the strongest case for the attacker)."
            ),
            "parameters_source": enc_source,
            **view.as_dict(),
        }
        log(f"inversion encrypted: {view.chunks} ciphertext chunks, server decryption -> {view.decrypt_error}")
        # the server plus one colluding hospital: the victim's real masked reply, decrypted with the key
        estimate, facts = colluder_estimate(plain_update, enc, max(num_hospitals, 3), opts.seed)
        invert("collusion", gradient_from_update(model, estimate, step_lr, weight))
        nothing = no_information_estimate(len(estimate), enc, opts.seed + 2)
        invert("no_information_baseline", gradient_from_update(model, nothing, step_lr, weight))
        settings["collusion"].update(
            {
                "threat_model": (
                    "the server hands another hospital's real reply to a colluding hospital, which decrypts it "
                    "with the shared CKKS key and removes the masks the pair knows after the round (the victim's "
                    "self mask, whose seed the survivors revealed, and its own pair mask with the victim); the rest "
                    "is read as the update and inverted. The update is the no-DP one."
                ),
                "parameters_source": enc_source,
                **facts,
            }
        )
        rand = random_images(tuple(x.shape), opts.seed + 1, bounds)
        rand = match_to_truth(to_unit(rand, mean, std), truth, y.cpu())
        images["random"] = rand
        settings["random_baseline"] = image_scores(rand, truth)
        avg = to_unit(data.train.x.mean(dim=0, keepdim=True), mean, std).expand_as(truth).contiguous()
        settings["mean_image_baseline"] = image_scores(avg, truth)
        report["inversion"] = {
            "attack": "Inverting Gradients (Geiping et al. 2020): cosine gradient loss + total variation, Adam",
            "threat_model": (
                "honest-but-curious server; one local SGD step of one hospital on a small batch, at the public "
                "initial weights (round 1, where the attack is strongest); labels known; the update "
                "(n_k/n_ref)(w_local - w_global) = -(n_k/n_ref) lr g is turned back into the gradient g"
            ),
            "batch_size": len(y),
            "labels": y.cpu().tolist(),
            "iterations": opts.iterations,
            "tv_weight": opts.tv,
            "lr": opts.lr,
            "seed": opts.seed,
            "model_round": 0,
            **settings,
        }
    else:
        images = {}

    # --- membership inference ------------------------------------------------------------------
    if "membership" not in opts.skip:
        final = build_model(cfg, data.channels, data.num_classes, data.image_size)
        try:
            final.load_state_dict(torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True))
        except (RuntimeError, OSError, ValueError) as err:
            raise AttackError(
                f"{run_dir / 'model.pt'} does not fit the run's model ({str(err).splitlines()[0]})"
            ) from None
        t0 = time.perf_counter()
        mia = loss_threshold_attack(
            final.to(device),
            (data.train.x.to(device), data.train.y.to(device)),
            (test.x.to(device), test.y.to(device)),
            seed=opts.seed,
        )
        # the test split may differ in distribution from the training split (PneumoniaMNIST's does), which
        # alone raises the AUC; the hospitals' validation shares come from the training split, never trained on
        vals = [hospital_data(cfg, h).val for h in range(num_hospitals)]
        same = loss_threshold_attack(
            final,
            (data.train.x.to(device), data.train.y.to(device)),
            (torch.cat([v.x for v in vals]).to(device), torch.cat([v.y for v in vals]).to(device)),
            seed=opts.seed,
        )
        same.pop("attack")
        same["non_member_set"] = "all hospitals' validation shares (training split, never trained on)"
        mia["same_distribution"] = same
        mia["seconds"] = round(time.perf_counter() - t0, 1)
        mia["model"] = "the run's final global model (model.pt)"
        mia["member_set"] = f"hospital {opts.hospital}'s training images"
        mia["non_member_set"] = "the test split, never trained on"
        report["membership"] = mia
        log(f"membership inference: AUC {mia['auc']:.3f} on {mia['members']} members / {mia['non_members']} others")
    return report, images
