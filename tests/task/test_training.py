"""Training with the task's loss: multi-label BCE and 3D volumes under DP-SGD, frozen layers, seeded augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose_cfg, privacy_cfg
from torch import nn
from torch.utils.data import TensorDataset

from models import builders
from pipeline.privacy.engine import make_private
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.plan import DPPlan, plan_for_run
from pipeline.task.data import ImageDataset, make_synthetic, seed_augmentation
from pipeline.task.model import build_model, get_flat
from pipeline.task.training import MultiLabelBCE, task_criterion, train_round

CLIP = 0.05


def test_multi_label_bce_gives_one_loss_per_sample_and_the_plain_mean():
    # Prepare
    torch.manual_seed(0)
    logits, target = torch.randn(6, 4), (torch.rand(6, 4) > 0.5).float()

    # Execute
    per_sample = MultiLabelBCE(reduction="none")(logits, target)
    mean = MultiLabelBCE()(logits, target)

    # Assert
    reference = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1)
    torch.testing.assert_close(per_sample, reference)
    torch.testing.assert_close(mean, nn.BCEWithLogitsLoss()(logits, target))


def test_task_criterion_follows_the_data():
    single = compose_cfg("data=synthetic")
    multi = compose_cfg("data=manifest", "data.manifest=m.csv", "data.multi_label=true")

    assert isinstance(task_criterion(single), nn.CrossEntropyLoss)
    assert isinstance(task_criterion(multi), MultiLabelBCE)


def _case(kind: str):
    """A model, a batch and its criterion: 2D multi-label (3 findings) or a 3D single-label volume task."""
    torch.manual_seed(0)
    if kind == "multi-label":
        model = builders.cnn(1, 3, 16, channels=(8, 16), strides=(2, 2))
        x, y = torch.randn(12, 1, 16, 16), (torch.rand(12, 3) > 0.5).float()
        return model, x, y, MultiLabelBCE()
    model = builders.cnn(1, 2, 8, channels=(8, 16), strides=(2, 2), spatial_dims=3)
    x, y = torch.randn(12, 1, 8, 8, 8), torch.arange(12) % 2
    return model, x, y, nn.CrossEntropyLoss()


def _clipped_mean_by_hand(model: nn.Module, x, y, criterion: nn.Module, expected_batch: int) -> list[torch.Tensor]:
    """sum_i clip(g_i) / expected batch size, one sample at a time (Opacus's clipping factor)."""
    sums = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(y)):
        model.zero_grad()
        criterion(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        factor = min(1.0, CLIP / (float(norm) + 1e-6))
        sums = [s + factor * g for s, g in zip(sums, grads, strict=True)]
    return [s / expected_batch for s in sums]


@pytest.mark.parametrize("mode", ["bk", "hooks", "ghost"])
@pytest.mark.parametrize("kind", ["multi-label", "3d"])
def test_dp_gradient_clips_each_sample_of_the_task_loss(kind, mode):
    # Prepare: noise 0, so the step's gradient is the clipped mean itself
    model, x, y, criterion = _case(kind)
    reference = _clipped_mean_by_hand(model, x, y, criterion, expected_batch=12)
    model.zero_grad(set_to_none=True)
    plan = DPPlan(0.0, 0.25, 1, 1, 8.0, 1e-5, CLIP, "rdp")
    data = TensorDataset(torch.cat([x] * 4), torch.cat([y] * 4))  # 48 images, expected batch 12
    dp = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        data,
        12,
        plan,
        PrivacyLedger("rdp"),
        privacy_cfg(grad_sample_mode=mode),
        criterion=criterion,
    )

    # Execute
    dp.optimizer.zero_grad(set_to_none=True)
    dp.criterion(dp.model(x), y).backward()
    dp.optimizer.step()

    # Assert
    got = [p.grad for p in model.parameters()]
    scale = max(float(r.abs().max()) for r in reference)
    for g, r in zip(got, reference, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("privacy", ["dpsgd", "none"])
def test_frozen_layers_stay_as_they_started(privacy):
    # Prepare: the convolutional body frozen (linear probing)
    cfg = compose_cfg(
        "model=cnn",
        "data=synthetic",
        "data.num_samples=200",
        f"privacy={privacy}",
        "model.freeze=[net]",
        "train.batch_size=32",
    )
    s = make_synthetic(200, 2, 28, 1, seed=0)
    data = ImageDataset(s.train_x, s.train_y, 0.5, 0.5)
    model = build_model(cfg, 1, 2, 28)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = plan_for_run(cfg, len(data))

    # Execute
    train_round(cfg, model, data, 1, torch.device("cpu"), plan, PrivacyLedger("prv") if plan else None, seed=3)

    # Assert
    for name, p in model.named_parameters():
        if name.startswith("net."):
            assert not p.requires_grad and torch.equal(p, before[name]), name
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith("final."))


def test_augmentation_follows_the_round_seed():
    # Prepare
    s = make_synthetic(8, 2, 28, 1, seed=0)
    data = ImageDataset(s.train_x, s.train_y, 0.5, 0.5, augment=True)

    # Execute
    seed_augmentation(data, 11)
    first = [data[i][0] for i in range(4)]
    seed_augmentation(data, 11)
    again = [data[i][0] for i in range(4)]
    seed_augmentation(data, 12)
    other = [data[i][0] for i in range(4)]

    # Assert
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_multi_label_training_learns_the_findings():
    # Prepare: finding j is a bright quadrant j
    rng = np.random.default_rng(0)
    y = (rng.random((256, 2)) < 0.5).astype(np.float32)
    x = rng.integers(0, 60, (256, 1, 16, 16)).astype(np.uint8)
    x[:, 0, :8, :8] += (y[:, 0] * 150).astype(np.uint8)[:, None, None]
    x[:, 0, 8:, 8:] += (y[:, 1] * 150).astype(np.uint8)[:, None, None]
    cfg = compose_cfg("data=manifest", "data.manifest=m.csv", "data.multi_label=true", "privacy=none")
    model = build_model(cfg, 1, 2, 16)
    data = ImageDataset(x, y, 0.5, 0.5, class_names=["a", "b"])
    start = get_flat(model)

    # Execute
    result = train_round(cfg, model, data, 3, torch.device("cpu"), None, None, seed=0)

    # Assert
    from pipeline.task.training import evaluate

    metrics = evaluate(model, data, torch.device("cpu"))
    assert not np.array_equal(start, get_flat(model))
    assert result["train_loss"] < 0.5
    assert set(metrics["per_label"]) == {"a", "b"} and metrics["auc"] > 0.95


@pytest.mark.parametrize("privacy", ["dpsgd", "none"])
def test_augmentation_multiplicity_trains_on_distinct_views_at_the_same_privacy_cost(privacy):
    # Prepare: 3 augmented views per sampled image
    cfg = compose_cfg("data=synthetic", "data.num_samples=200", f"privacy={privacy}", "train.batch_size=32")
    s = make_synthetic(200, 2, 28, 1, seed=0)
    data = ImageDataset(s.train_x, s.train_y, 0.5, 0.5, augment=True)
    plan = plan_for_run(cfg, len(data))
    seen: list[torch.Tensor] = []
    results = {}

    # Execute: the same round with 1 and with 3 views
    for views in (1, 3):
        cfg.train.augmentation_multiplicity = views
        model = build_model(cfg, 1, 2, 28)
        hook = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        ledger = PrivacyLedger("prv") if plan else None
        stats = train_round(cfg, model, data, 1, torch.device("cpu"), plan, ledger, seed=3)
        hook.remove()
        results[views] = (stats, ledger, seen[:])
        seen.clear()

    # Assert: batches of whole views, distinct from each other; the same steps in the ledger
    batch = next(x for x in results[3][2] if len(x) > 0)
    assert len(batch) % 3 == 0
    views = batch.reshape(-1, 3, *batch.shape[1:])
    assert not torch.equal(views[:, 0], views[:, 1])
    assert all(np.isfinite(stats["train_loss"]) for stats, _, _ in results.values())
    if plan:
        history = [results[v][1].accountant.history for v in (1, 3)]
        assert history[0] == history[1] and history[0]


def test_augmentation_multiplicity_without_bk_or_augmentation_is_refused():
    from pipeline.config.validate import validate
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="privacy.grad_sample_mode=bk"):
        validate(compose_cfg("train.augmentation_multiplicity=4", "privacy.grad_sample_mode=hooks"))
    with pytest.raises(ConfigError, match="needs data.augment"):
        validate(compose_cfg("train.augmentation_multiplicity=4", "data.augment=false"))
    with pytest.raises(ConfigError, match="must be >= 1"):
        validate(compose_cfg("train.augmentation_multiplicity=0"))
