"""Privacy attacks on a finished run: gradient inversion and membership inference.

Two attacks test what the privacy mechanisms claim, measured rather than assumed:

* **Gradient inversion** ("Inverting Gradients", Geiping et al., NeurIPS 2020): an honest-but-
  curious server optimises dummy images so that their gradient matches the one a hospital revealed
  (cosine-similarity loss over all parameter gradients plus a total-variation prior, Adam on the
  images with signed gradients, images kept inside the valid intensity range, labels assumed
  known as in the paper). It is run against one hospital's single local step on a small batch,
  at the public initial weights (round 1, where the attack is strongest), in three settings:

  - ``plaintext``: no DP, no encryption: the server receives the float32 update
    ``(n_k / n_ref) * (w_local - w_global)``; for one SGD step this is a known scale of the
    batch gradient, which the attacker divides back out.
  - ``dp``: DP-SGD as in Opacus's ``DPOptimizer``: each per-sample gradient clipped to
    ``max_grad_norm``, summed, plus Gaussian noise of std ``noise_multiplier * max_grad_norm``,
    divided by the batch size; the noise multiplier is the one the run's DP plan derives.
  - ``encrypted``: the CKKS ciphertext chunks the server actually receives
    (:class:`pipeline.codec.CkksCodec`). The server holds the parameters-only context; decrypting
    is attempted and the failure recorded. There is no gradient to invert, so no reconstruction
    is made and its SSIM/PSNR are reported as null, with the reason.

  Reconstructions are scored against the true images by SSIM and PSNR (MONAI's metrics, images
  mapped to [0, 1]), after matching reconstructions to true images of the same label; a random-
  image baseline (the attack's own starting point) and a mean-image baseline (an attacker who only
  knows what an average image looks like) put the numbers in context.

* **Membership inference** against the final global model: the loss-threshold attack (Yeom et al.,
  CSF 2018): score = -loss, members = the attacked hospital's training images, non-members = the
  test split (balanced, seeded subsample). Reported as ROC-AUC (0.5: the attacker learns nothing),
  the largest TPR - FPR (Yeom's membership advantage) and the TPR at 1% FPR (Carlini et al., S&P
  2022, argue for low-FPR reporting; their likelihood-ratio attack, LiRA, needs shadow models and
  is not implemented here).

``python scripts/attack.py RUN_DIR`` (or ``fedmed-attack RUN_DIR``) runs both on a run folder and
writes ``RUN_DIR/attack/report.json``, ``report.md`` and ``inversion_grid.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from pipeline.privacy.plan import DPPlan

ATTACK_DIR = "attack"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
GRID_PNG = "inversion_grid.png"
DEFAULT_DP_EPSILON = 8.0

# ---------------------------------------------------------------------------------------------
# what a hospital reveals


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def batch_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Mean cross-entropy gradient of ``model``'s trainable parameters over the batch ``(x, y)``."""
    loss = F.cross_entropy(model(x), y)
    return [g.detach() for g in torch.autograd.grad(loss, _params(model))]


def per_sample_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Per-sample gradients, one tensor ``(B, *param.shape)`` per trainable parameter.

    A loop over the (small) batch: the same values Opacus's hooks compute, without wrapping the model.
    """
    grads = [batch_gradient(model, x[i : i + 1], y[i : i + 1]) for i in range(len(y))]
    return [torch.stack(gs) for gs in zip(*grads, strict=True)]


def dp_sgd_gradient(
    per_sample: list[torch.Tensor], max_grad_norm: float, noise_multiplier: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """The gradient one DP-SGD step uses, computed as Opacus's ``DPOptimizer`` does.

    Each sample's gradient (over all parameters) is scaled by ``min(1, C / (||g_i|| + 1e-6))``, the
    clipped gradients are summed, Gaussian noise of std ``noise_multiplier * C`` is added to every
    coordinate, and the sum is divided by the batch size (Opacus: the expected batch size; for the
    attacked step, the batch it drew).
    """
    batch = per_sample[0].shape[0]
    norms = torch.stack([g.reshape(batch, -1).norm(dim=1) for g in per_sample]).norm(dim=0)
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    std = noise_multiplier * max_grad_norm
    out = []
    for g in per_sample:
        summed = torch.einsum("b,b...->...", factor, g)
        noise = torch.normal(0.0, std, size=summed.shape, generator=generator, dtype=summed.dtype)  # CPU generator
        noise = noise.to(summed.device)
        out.append((summed + noise) / batch)
    return out


def observed_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, plan: DPPlan | None = None, seed: int = 0
) -> list[torch.Tensor]:
    """The batch gradient a hospital's single local step reveals through its update.

    Without ``plan``: the plain mean gradient. With ``plan`` (only ``max_grad_norm`` and
    ``noise_multiplier`` are used): the clipped, noised DP-SGD gradient of :func:`dp_sgd_gradient`,
    noise drawn from a generator seeded with ``seed``. ``model`` is put in eval mode (no dropout),
    the same mode the attacker uses.
    """
    model.eval()
    if plan is None:
        return batch_gradient(model, x, y)
    gen = torch.Generator().manual_seed(seed)
    return dp_sgd_gradient(per_sample_gradients(model, x, y), plan.max_grad_norm, plan.noise_multiplier, gen)


def update_from_gradient(model: nn.Module, grads: list[torch.Tensor], lr: float, weight: float) -> np.ndarray:
    """The weighted update ``weight * (w_local - w_global)`` of one SGD step ``w -= lr * grad``.

    Laid out like :func:`pipeline.hospital.get_flat` (all state, buffers included: their change is 0),
    which is what the hospital encodes and sends.
    """
    by_param = {id(p): g for p, g in zip(_params(model), grads, strict=True)}
    named = dict(model.named_parameters())
    parts = []
    for key, tensor in model.state_dict().items():
        p = named.get(key)
        if p is not None and id(p) in by_param:
            parts.append((-lr * weight * by_param[id(p)]).detach().reshape(-1).float().cpu())
        else:
            parts.append(torch.zeros(tensor.numel()))
    return torch.cat(parts).numpy().astype(np.float32)


def gradient_from_update(model: nn.Module, update: np.ndarray, lr: float, weight: float) -> list[torch.Tensor]:
    """Invert :func:`update_from_gradient`: the server knows ``lr`` and the weight ``n_k / n_ref``."""
    named = dict(model.named_parameters())
    wanted = {id(p) for p in _params(model)}
    found: dict[int, torch.Tensor] = {}
    offset = 0
    for key, tensor in model.state_dict().items():
        n = tensor.numel()
        p = named.get(key)
        if p is not None and id(p) in wanted:
            chunk = torch.from_numpy(np.asarray(update[offset : offset + n], dtype=np.float32))
            found[id(p)] = (chunk / (-lr * weight)).reshape(p.shape).to(p.device)
        offset += n
    if offset != len(update):
        raise ValueError(f"update has {len(update)} values, the model's state has {offset}")
    return [found[id(p)] for p in _params(model)]


# ---------------------------------------------------------------------------------------------
# the inversion attack


def cosine_gradient_loss(grads: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """``1 - cos(grads, target)`` over all parameters concatenated (Geiping et al.'s cost)."""
    dot = sum((g * t).sum() for g, t in zip(grads, target, strict=True))
    norm_g = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    norm_t = torch.sqrt(sum(t.pow(2).sum() for t in target))
    return 1 - dot / (norm_g * norm_t + 1e-12)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean absolute difference of neighbouring pixels."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


def invert_gradients(
    model: nn.Module,
    target_grad: list[torch.Tensor],
    labels: torch.Tensor,
    shape: tuple[int, ...],
    iterations: int = 1000,
    tv_weight: float = 1e-2,
    lr: float = 0.1,
    seed: int = 0,
    bounds: tuple[float, float] = (-1.0, 1.0),
) -> torch.Tensor:
    """Reconstruct the images behind ``target_grad`` (Geiping et al. 2020, "Inverting Gradients").

    Dummy images (seeded Gaussian start, clamped to ``bounds``) are optimised with Adam on the
    sign of the gradient of ``1 - cos(grad(dummy), target_grad) + tv_weight * TV(dummy)``; the
    step size drops tenfold at 3/8, 5/8 and 7/8 of ``iterations``; after each step the images are
    clamped to ``bounds`` (the valid normalised intensity range). ``labels`` are assumed known.

    Returns:
        The reconstruction, shaped ``shape``, in the model's (normalised) input space.
    """
    model.eval()
    params = _params(model)
    target = [t.detach() for t in target_grad]
    lo, hi = bounds
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).clamp(lo, hi).to(labels.device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    milestones = sorted({max(1, int(iterations * f)) for f in (3 / 8, 5 / 8, 7 / 8)})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(F.cross_entropy(model(x), labels), params, create_graph=True)
        cost = cosine_gradient_loss(grads, target) + tv_weight * total_variation(x)
        (x.grad,) = torch.autograd.grad(cost, x)
        x.grad.sign_()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(lo, hi)
    return x.detach()


def random_images(shape: tuple[int, ...], seed: int, bounds: tuple[float, float]) -> torch.Tensor:
    """The attack's starting point: seeded Gaussian noise clamped to ``bounds`` (the random baseline)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).clamp(*bounds)


# ---------------------------------------------------------------------------------------------
# image quality


def to_unit(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Normalised images ``(v - mean) / std`` back to intensities in [0, 1]."""
    return (x * std + mean).clamp(0.0, 1.0)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of [0, 1] images ``(B, C, H, W)`` (MONAI, 11x11 Gaussian window, sigma 1.5)."""
    from monai.metrics import SSIMMetric

    metric = SSIMMetric(spatial_dims=2, data_range=1.0, reduction="none")
    return metric(a.float(), b.float()).reshape(len(a), -1).mean(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [0, 1] images ``(B, C, H, W)`` (MONAI)."""
    from monai.metrics import PSNRMetric

    return PSNRMetric(max_val=1.0, reduction="none")(a.float(), b.float()).reshape(len(a), -1).mean(dim=1)


def match_to_truth(recon: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reorder ``recon`` so each reconstruction faces the true image it resembles most (by SSIM).

    A batch's gradient does not say which dummy image stands for which true image among those of
    the same label, so matching is only done within a label (Hungarian assignment).
    """
    from scipy.optimize import linear_sum_assignment

    n = len(truth)
    score = np.zeros((n, n))
    for i in range(n):
        score[i] = ssim(truth[i : i + 1].expand_as(recon), recon).numpy()
    same = (labels[:, None] == labels[None, :]).numpy()
    cost = np.where(same, -score, 1e6)
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(n, dtype=np.int64)
    order[rows] = cols
    return recon[torch.from_numpy(order)]


def image_scores(recon: torch.Tensor, truth: torch.Tensor) -> dict[str, Any]:
    """Mean and per-image SSIM and PSNR of [0, 1] images ``recon`` against ``truth``."""
    s, p = ssim(recon, truth), psnr(recon, truth)
    p = p.clamp(max=100.0)  # identical images give inf
    return {
        "ssim": float(s.mean()),
        "psnr": float(p.mean()),
        "ssim_per_image": [round(float(v), 4) for v in s],
        "psnr_per_image": [round(float(v), 2) for v in p],
    }


# ---------------------------------------------------------------------------------------------
# the encrypted setting


@dataclass
class EncryptedView:
    """What the server holds of one hospital's update with encryption on."""

    chunks: int
    payload_bytes: int
    values: int
    plaintext_values: bool  # does the payload carry any plaintext update values?
    server_has_secret_key: bool
    decrypt_error: str | None  # exception type and message when the server tries to decrypt
    key_holder_max_error: float  # the hospitals can decode the same payload (quantisation error)
    gradient: None = None  # nothing to invert

    def as_dict(self) -> dict[str, Any]:
        return {
            "chunks": self.chunks,
            "payload_bytes": self.payload_bytes,
            "bytes_per_value": self.payload_bytes / max(self.values, 1),
            "plaintext_values": self.plaintext_values,
            "server_has_secret_key": self.server_has_secret_key,
            "server_decrypt_error": self.decrypt_error,
            "key_holder_max_abs_error": self.key_holder_max_error,
        }


def encrypted_view(update: np.ndarray, enc: DictConfig, num_hospitals: int, seed: int = 0) -> EncryptedView:
    """Encrypt ``update`` exactly as a hospital does and look at it with the server's context.

    A fresh key is generated (the run's key was deleted after the run). The server's context is the
    parameters-only serialisation (:func:`pipeline.secagg.keys.server_context_bytes`); decrypting a chunk
    with it is attempted and the exception recorded. The key holders' decode is checked too, so the
    payload demonstrably carries the update.
    """
    import tenseal as ts

    from pipeline.secagg import keys
    from pipeline.secagg.codec import CkksCodec

    secret = keys.make_secret_context(enc)
    server_bytes = keys.server_context_bytes(secret)
    codec = CkksCodec(secret, server_bytes, enc, num_hospitals)
    payload = codec.encode(update, np.random.default_rng(seed))
    server = ts.context_from(server_bytes)
    error = None
    try:
        ts.ckks_vector_from(server, payload.chunks[0]).decrypt()
    except Exception as err:  # TenSEAL raises ValueError; any failure is the point
        error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}".rstrip(": ")
    decoded = codec.decode(payload, 1, len(update))
    clip = float(enc.clip)
    return EncryptedView(
        chunks=len(payload.chunks),
        payload_bytes=payload.nbytes,
        values=len(update),
        plaintext_values=payload.values is not None,
        server_has_secret_key=bool(server.has_secret_key()),
        decrypt_error=error,
        key_holder_max_error=float(np.max(np.abs(decoded - np.clip(update, -clip, clip)))),
    )


# ---------------------------------------------------------------------------------------------
# membership inference


@torch.no_grad()
def per_sample_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Cross-entropy of every sample under ``model`` (eval mode), as a CPU tensor."""
    model.eval()
    out = [
        F.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size], reduction="none")
        for i in range(0, len(y), batch_size)
    ]
    return torch.cat(out).cpu()


def roc_auc(member_scores: torch.Tensor, non_member_scores: torch.Tensor) -> float:
    """ROC-AUC of telling members (label 1) from non-members by score (higher = member); MONAI's."""
    from monai.metrics import compute_roc_auc

    scores = torch.cat([member_scores, non_member_scores]).double()
    labels = torch.cat([torch.ones(len(member_scores)), torch.zeros(len(non_member_scores))])
    return float(compute_roc_auc(scores, labels))


def roc_points(member_scores: torch.Tensor, non_member_scores: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every threshold ``score >= t`` (ties share a point)."""
    scores = torch.cat([member_scores, non_member_scores]).double().numpy()
    labels = np.concatenate([np.ones(len(member_scores)), np.zeros(len(non_member_scores))])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp, fp = np.cumsum(labels)[last], np.cumsum(1 - labels)[last]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def loss_threshold_attack(
    model: nn.Module,
    members: tuple[torch.Tensor, torch.Tensor],
    non_members: tuple[torch.Tensor, torch.Tensor],
    seed: int = 0,
    balance: bool = True,
) -> dict[str, Any]:
    """Yeom et al.'s loss-threshold membership inference: score = -loss.

    With ``balance`` the larger group is cut to the smaller one's size (seeded), so that AUC and
    advantage are not skewed by the class ratio.

    Returns:
        ``auc``, ``advantage`` (max TPR - FPR), ``tpr_at_1pct_fpr``, group sizes and mean losses.
    """
    (mx, my), (nx, ny) = members, non_members
    if balance:
        rng = np.random.default_rng(seed)
        n = min(len(my), len(ny))
        mi = np.sort(rng.permutation(len(my))[:n])
        ni = np.sort(rng.permutation(len(ny))[:n])
        mx, my, nx, ny = mx[mi], my[mi], nx[ni], ny[ni]
    m_loss, n_loss = per_sample_loss(model, mx, my), per_sample_loss(model, nx, ny)
    fpr, tpr = roc_points(-m_loss, -n_loss)
    return {
        "attack": "loss-threshold (Yeom et al. 2018)",
        "auc": roc_auc(-m_loss, -n_loss),
        "advantage": float(np.max(tpr - fpr)),
        "tpr_at_1pct_fpr": float(np.max(tpr[fpr <= 0.01])),
        "members": len(my),
        "non_members": len(ny),
        "member_loss": float(m_loss.mean()),
        "non_member_loss": float(n_loss.mean()),
    }


# ---------------------------------------------------------------------------------------------
# a run folder


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


def attack_dp_plan(cfg: DictConfig, num_train: int) -> tuple[DPPlan, str]:
    """The run's DP plan for a hospital of ``num_train`` images, or a default epsilon-8 plan without DP."""
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
    return plan, source


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


def attack_run(run_dir: Path, opts: AttackOptions, log=print) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
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
            plan, plan_source = attack_dp_plan(cfg, data.num_train)
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
        dp_grad = observed_gradient(model, x, y, plan, seed=opts.seed)
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


# ---------------------------------------------------------------------------------------------
# report


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    eps = report.get("run_epsilon")
    parts = [
        "# Privacy attacks",
        "",
        f"Run `{report['run_dir']}`: DP {'on' if report['run_private'] else 'off'}"
        + (f" (epsilon spent {eps:.3f})" if eps is not None else "")
        + f", encryption {'on' if report['run_encrypted'] else 'off'}. Attacked hospital: {report['hospital']}.",
    ]
    inv = report.get("inversion")
    if inv:
        dp = inv["dp"]
        enc = inv["encrypted"]
        parts += [
            "",
            "## Gradient inversion",
            "",
            f"{inv['attack']}; {inv['iterations']} iterations, TV weight {inv['tv_weight']:g}, "
            f"batch of {inv['batch_size']} (labels {inv['labels']}).",
            f"Threat model: {inv['threat_model']}.",
            "",
            "| setting | what the server sees | SSIM | PSNR (dB) |",
            "|---|---|---|---|",
            f"| plaintext | float32 update (no DP) | {_fmt(inv['plaintext']['ssim'])} | "
            f"{_fmt(inv['plaintext']['psnr'], 2)} |",
            f"| dp | float32 update, DP-SGD (noise multiplier {dp['noise_multiplier']:.3f}, clip "
            f"{dp['max_grad_norm']:g}, target epsilon {dp['target_epsilon']:g}) | {_fmt(dp['ssim'])} | "
            f"{_fmt(dp['psnr'], 2)} |",
            f"| encrypted | {enc['chunks']} CKKS ciphertext chunks ({enc['payload_bytes']} bytes) | n/a | n/a |",
            f"| random images (baseline) | | {_fmt(inv['random_baseline']['ssim'])} | "
            f"{_fmt(inv['random_baseline']['psnr'], 2)} |",
            f"| mean training image (baseline) | | {_fmt(inv['mean_image_baseline']['ssim'])} | "
            f"{_fmt(inv['mean_image_baseline']['psnr'], 2)} |",
            "",
            f"- DP plan: {dp['plan_source']}. Per-coordinate noise std of the batch gradient "
            f"{dp['noise_std_per_coordinate']:.3g}, against a clean gradient of norm {dp['clean_gradient_norm']:.3g}.",
            f"- Encrypted: {enc['reason']} Server decryption attempt: `{enc['server_decrypt_error']}`. "
            f"The key holders decode the same payload to within {enc['key_holder_max_abs_error']:.2g} "
            f"(quantisation; {enc['parameters_source']}).",
            "- SSIM/PSNR after matching each reconstruction to the true image of the same label it resembles most; "
            "the random baseline is the attack's own starting point.",
            "",
            f"![true images and reconstructions]({GRID_PNG})",
        ]
    mia = report.get("membership")
    if mia:
        parts += [
            "",
            "## Membership inference",
            "",
            f"{mia['attack']} against {mia['model']}: {mia['members']} members ({mia['member_set']}) vs "
            f"{mia['non_members']} non-members ({mia['non_member_set']}).",
            "",
            "| non-members | count | AUC | advantage (max TPR-FPR) | TPR at 1% FPR | member loss | non-member loss |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in (mia, mia.get("same_distribution")):
            if m:
                parts.append(
                    f"| {m['non_member_set']} | {m['members']} vs {m['non_members']} | {_fmt(m['auc'])} | "
                    f"{_fmt(m['advantage'])} | {_fmt(m['tpr_at_1pct_fpr'])} | {_fmt(m['member_loss'], 4)} | "
                    f"{_fmt(m['non_member_loss'], 4)} |"
                )
        parts += [
            "",
            "AUC 0.5: the attacker cannot tell members from non-members. The first row is the headline "
            "(`membership.auc`); the second uses non-members drawn from the same split as the members, so that a "
            "train/test distribution shift cannot inflate the AUC. Compare the reports of runs with and without DP "
            "for the trend.",
        ]
    parts.append("")
    return "\n".join(parts)


def save_grid(images: dict[str, torch.Tensor], report: dict[str, Any], path: Path) -> Path:
    """PNG grid: true images, reconstructions (plaintext, DP), random start; a note for encryption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inv = report["inversion"]
    rows = [
        ("true", "true images"),
        ("plaintext", f"no DP\nSSIM {inv['plaintext']['ssim']:.2f}"),
        ("dp", f"DP (eps {inv['dp']['target_epsilon']:g})\nSSIM {inv['dp']['ssim']:.2f}"),
        ("random", f"random start\nSSIM {inv['random_baseline']['ssim']:.2f}"),
    ]
    cols = len(images["true"])
    labels = inv.get("labels") or [None] * cols
    fig, axes = plt.subplots(len(rows) + 1, cols, figsize=(1.5 * cols + 1.2, 1.55 * len(rows) + 0.9), squeeze=False)
    for r, (key, label) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            img = images[key][c]
            ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if key == "true":
                ax.set_title(f"label {labels[c]}", fontsize=7)
            else:
                per_image = inv[key if key != "random" else "random_baseline"]["ssim_per_image"]
                ax.set_xlabel(f"SSIM {per_image[c]:.2f}", fontsize=6, labelpad=1)
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    for c in range(cols):
        axes[-1][c].axis("off")
    enc = inv["encrypted"]
    fig.text(
        0.02,
        0.5 / (len(rows) + 1),
        f"CKKS encrypted: the server gets {enc['chunks']} ciphertext chunks ({enc['payload_bytes']} bytes)\n"
        f"and no key; decrypting fails ({(enc['server_decrypt_error'] or 'no error?').split(':')[0]}):\n"
        "no gradient, nothing to invert (no reconstruction)",
        fontsize=7,
        va="center",
    )
    fig.subplots_adjust(left=0.16, right=0.98, top=0.95, bottom=0.02, hspace=0.35, wspace=0.08)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_report(report: dict[str, Any], images: dict[str, torch.Tensor], out: Path) -> list[Path]:
    """Write report.json, report.md and (with an inversion) inversion_grid.png into ``out``."""
    from pipeline.outputs.atomic import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    written = [out / REPORT_JSON, out / REPORT_MD]
    write_atomic(written[0], json.dumps(_finite(report), indent=2) + "\n")
    write_atomic(written[1], report_markdown(report))
    if "inversion" in report:
        written.append(save_grid(images, report, out / GRID_PNG))
    return written


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="fedmed-attack",
        description="Gradient inversion and membership inference against a finished run; writes RUN_DIR/attack/.",
    )
    p.add_argument("run_dir", help="a run folder (config.yaml, model.pt, summary.json)")
    p.add_argument("--batch-size", type=int, default=4, help="images in the attacked batch (default 4)")
    p.add_argument("--iterations", type=int, default=1000, help="inversion iterations (default 1000)")
    p.add_argument("--tv", type=float, default=0.3, help="total-variation weight (default 0.3)")
    p.add_argument("--lr", type=float, default=0.1, help="Adam step size on the dummy images (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="batch choice, DP noise, attack start (default 0)")
    p.add_argument("--hospital", type=int, default=0, help="attacked hospital (default 0)")
    p.add_argument("--data-root", default=None, help="override data.root (the run's is relative to where it ran)")
    p.add_argument("--device", default="cpu", help="torch device for the attacks (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--skip", choices=("inversion", "membership"), action="append", default=[], help="skip an attack")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.iterations < 1 or args.tv < 0 or args.lr <= 0 or (args.threads or 1) < 1:
        p.error("--batch-size, --iterations and --threads must be >= 1, --tv >= 0, --lr > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (``fedmed-attack``); returns the exit code (0 ok, 2 bad input)."""
    args = parse_args(argv)
    opts = AttackOptions(
        batch_size=args.batch_size,
        iterations=args.iterations,
        tv=args.tv,
        lr=args.lr,
        seed=args.seed,
        hospital=args.hospital,
        data_root=args.data_root,
        device=args.device,
        skip=list(args.skip),
    )
    run_dir = Path(args.run_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"opacus\.")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    try:
        report, images = attack_run(run_dir, opts, log)
    except AttackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = run_dir / ATTACK_DIR
    try:
        write_report(report, images, out)
    except OSError as err:
        print(f"error: cannot write the report to {out}: {err}", file=sys.stderr)
        return 1
    print(report_markdown(report))
    print(f"report: {out / REPORT_MD} (+ {REPORT_JSON}" + (f", {GRID_PNG})" if "inversion" in report else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
