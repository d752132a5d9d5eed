"""Book-keeping clipping (privacy.grad_sample_mode=bk) against real Opacus: same clipped mean, same accounting."""

from __future__ import annotations

import pytest
import torch
from conftest import privacy_cfg
from torch import nn

from models import builders
from pipeline.errors import ConfigError
from pipeline.privacy.bk_clipping import BookKeepingLoss, BookKeepingModule
from pipeline.privacy.engine import make_private
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.plan import DPPlan, plan_dp
from pipeline.task.data import ImageDataset, make_synthetic
from pipeline.task.training import train_epochs


class Mixed(nn.Module):
    """Every bk code path: materialised and ghost convs (two sharing an input), GroupNorm, PReLU,
    token Linear layers (ghost and materialised), LayerNorm, a bias-free conv and a plain head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)  # 64 positions, 9-long patches: materialised
        self.gn = nn.GroupNorm(4, 8)
        self.act = nn.PReLU(8)
        self.conv2 = nn.Conv2d(8, 32, 3, stride=2, padding=1)  # ghost ...
        self.short = nn.Conv2d(8, 32, 3, stride=2, padding=1)  # ... sharing conv2's patch Gram
        self.conv3 = nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False)  # ghost, 4 positions
        self.tok = nn.Linear(32, 24)  # 4 tokens: ghost
        self.ln = nn.LayerNorm(24)
        self.tok2 = nn.Linear(24, 4)  # 4 tokens, small: materialised
        self.head = nn.Linear(16, 2)  # one step: ghost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.gn(self.conv1(x)))
        h = torch.relu(self.conv2(h) + self.short(h))
        t = self.conv3(h).flatten(2).transpose(1, 2)  # [B, 4, 32]
        t = self.tok2(torch.relu(self.ln(self.tok(t))))
        return self.head(t.flatten(1))


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return Mixed() if name == "mixed" else builders.cnn(1, 2, 28)


def _data(name: str) -> ImageDataset:
    s = make_synthetic(40, 2, 8 if name == "mixed" else 28, 1, seed=4)
    return ImageDataset(s.train_x, s.train_y, 0.5, 0.5)


def _dp_gradient(name: str, mode: str, clip: float, x: torch.Tensor, y: torch.Tensor):
    """Noise-free DP gradient of one batch (after Opacus's clipping, noise 0 and mean), and the model."""
    model = _model(name)
    plan = DPPlan(0.0, 0.25, 1, 1, 8.0, 1e-5, clip, "rdp")
    dp = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        _data(name),
        10,
        plan,
        PrivacyLedger("rdp"),
        privacy_cfg(grad_sample_mode=mode),
    )
    dp.optimizer.zero_grad(set_to_none=True)
    dp.criterion(dp.model(x), y).backward()
    dp.optimizer.step()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    return grads, dp


def _poisson_batch(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    model = _model(name)
    plan = DPPlan(0.0, 0.25, 1, 1, 8.0, 1e-5, 1.0, "rdp")
    dp = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        _data(name),
        10,
        plan,
        PrivacyLedger("rdp"),
        privacy_cfg(grad_sample_mode="bk"),
    )
    torch.manual_seed(7)
    x, y = next(iter(dp.loader))
    dp.model.remove_hooks()
    assert len(y) > 2
    return x, y


@pytest.mark.parametrize("name", ["cnn", "mixed"])
@pytest.mark.parametrize("clip", [0.05, 1e4], ids=["some-clipped", "none-clipped"])
def test_bk_clipped_mean_gradient_equals_opacus_hooks(name, clip):
    x, y = _poisson_batch(name)

    expected, hooks = _dp_gradient(name, "hooks", clip, x, y)
    got, bk = _dp_gradient(name, "bk", clip, x, y)

    norms = bk.model.per_sample_norms
    clipped = int((norms > clip).sum())
    assert (clipped > 0) if clip < 1 else (clipped == 0)
    assert len(got) == len(expected) == len(list(_model(name).parameters()))
    scale = max(t.abs().max().item() for t in expected)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6 * scale)
    assert any(e.abs().max() > 0 for e in expected)


@pytest.mark.parametrize("name", ["cnn", "mixed"])
def test_bk_step_without_noise_or_clipping_equals_plain_sgd_step(name):
    data = _data(name)
    x, y = data.x, data.y
    plain, private = _model(name), _model(name)
    opt = torch.optim.SGD(plain.parameters(), lr=0.5)
    nn.CrossEntropyLoss()(plain(x), y).backward()
    opt.step()
    plan = DPPlan(0.0, 1.0, 1, 1, 8.0, 1e-5, 1e9, "rdp")  # every sample in the batch, clip never binds
    dp = make_private(
        private,
        torch.optim.SGD(private.parameters(), lr=0.5),
        data,
        len(data),
        plan,
        PrivacyLedger("rdp"),
        privacy_cfg(grad_sample_mode="bk"),
    )

    dp.optimizer.zero_grad(set_to_none=True)
    dp.criterion(dp.model(x), y).backward()
    dp.optimizer.step()

    for a, b in zip(plain.parameters(), private.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(_model(name).parameters(), private.parameters(), strict=True))


def test_empty_poisson_batch_is_a_noise_only_step():
    ledger = PrivacyLedger("rdp")
    model = _model("mixed")
    before = [p.detach().clone() for p in model.parameters()]
    plan = DPPlan(0.0, 0.25, 1, 1, 8.0, 1e-5, 1.0, "rdp")
    dp = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        _data("mixed"),
        10,
        plan,
        ledger,
        privacy_cfg(grad_sample_mode="bk"),
    )

    dp.optimizer.zero_grad(set_to_none=True)
    dp.criterion(dp.model(torch.zeros(0, 1, 8, 8)), torch.zeros(0, dtype=torch.long)).backward()
    dp.optimizer.step()

    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert ledger.steps == 1  # Opacus accounts the step like any other


def test_unsupported_layer_is_refused_at_wrap_time():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4, affine=True), nn.Flatten(), nn.Linear(144, 2))

    with pytest.raises(ConfigError) as err:
        make_private(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            _data("mixed"),
            10,
            DPPlan(1.0, 0.25, 1, 1, 8.0, 1e-5, 1.0, "rdp"),
            PrivacyLedger("rdp"),
            privacy_cfg(grad_sample_mode="bk"),
        )

    message = str(err.value)
    assert "layer 1 (InstanceNorm2d)" in message
    assert "privacy.grad_sample_mode=hooks" in message
    assert "\n" not in message


def test_epsilon_accounting_in_bk_equals_hooks():
    data = _data("mixed")
    cfg = privacy_cfg(grad_sample_mode="hooks")
    plan = plan_dp(cfg, train_size=len(data), batch_size=10, local_epochs=2, rounds=3)
    ledgers = {}
    for mode in ("hooks", "bk"):
        torch.manual_seed(11)  # same Poisson batches and noise draws in both modes
        model = _model("mixed")
        ledgers[mode] = PrivacyLedger("rdp")
        dp = make_private(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            data,
            10,
            plan,
            ledgers[mode],
            privacy_cfg(grad_sample_mode=mode),
        )
        train_epochs(dp.model, dp.loader, dp.optimizer, dp.criterion, 2, torch.device("cpu"))
        dp.model.remove_hooks()

    assert ledgers["bk"].steps == ledgers["hooks"].steps > 0
    assert ledgers["bk"].accountant.history == ledgers["hooks"].accountant.history
    assert ledgers["bk"].epsilon(plan.delta) == pytest.approx(ledgers["hooks"].epsilon(plan.delta), rel=1e-12)
    assert 0 < ledgers["bk"].epsilon(plan.delta) < plan.target_epsilon


def test_two_backward_passes_without_a_step_are_refused():
    model = _model("mixed")
    wrapped = BookKeepingModule(model, max_grad_norm=1.0)
    x, y = _data("mixed").x[:4], _data("mixed").y[:4]
    nn.functional.cross_entropy(wrapped(x), y, reduction="sum").backward()
    wrapped.clip_gradients()

    nn.functional.cross_entropy(wrapped(x), y, reduction="sum").backward()
    with pytest.raises(RuntimeError, match="two backward passes without optimizer.step"):
        wrapped.clip_gradients()


def test_remove_hooks_leaves_a_plain_trainable_model():
    model = _model("mixed")
    wrapped = BookKeepingModule(model, max_grad_norm=1.0)
    wrapped(_data("mixed").x[:4])  # forward only: parameters are frozen until the clipping

    assert not any(p.requires_grad for p in model.parameters())
    wrapped.remove_hooks()
    assert all(p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


CONV_VARIANTS = {
    "conv1d-same-dilated": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 6, 3, padding="same", dilation=2), nn.PReLU(), nn.Flatten(), nn.Linear(6 * 16, 2)
        ),
        (5, 2, 16),
    ),
    "conv1d-ghost": (
        lambda: nn.Sequential(nn.Conv1d(16, 64, 3, stride=4, padding=1), nn.Flatten(), nn.Linear(256, 2)),
        (5, 16, 16),
    ),
    "reflect-groups": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 8, 3, padding=1, padding_mode="reflect"),
            nn.Conv2d(8, 8, 3, groups=4, padding=1),
            nn.Flatten(),
            nn.Linear(8 * 64, 2),
        ),
        (5, 2, 8, 8),
    ),
    "circular-strided-dilated": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 16, 3, stride=2, dilation=2, padding=2, padding_mode="circular"),
            nn.Flatten(),
            nn.Linear(256, 2),
        ),
        (5, 2, 8, 8),
    ),
    "same-even-kernel": (
        lambda: nn.Sequential(nn.Conv2d(2, 4, 4, padding="same"), nn.Flatten(), nn.Linear(256, 2)),
        (5, 2, 8, 8),
    ),
    "ghost-reflect": (
        lambda: nn.Sequential(
            nn.Conv2d(16, 64, 3, stride=4, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(256, 2)
        ),
        (5, 16, 8, 8),
    ),
    "conv3d-groupnorm": (
        lambda: nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(256, 2)),
        (5, 1, 4, 4, 4),
    ),
}


@pytest.mark.parametrize("variant", list(CONV_VARIANTS))
def test_conv_variants_match_per_sample_autograd(variant):
    """Padding modes, 'same', groups, dilation, Conv1d/3d: bk against one autograd pass per sample."""
    build, shape = CONV_VARIANTS[variant]
    x, y = torch.randn(*shape, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 1, 0, 1])
    torch.manual_seed(1)
    reference = build()
    torch.manual_seed(1)
    model = build()
    per_sample = []
    for i in range(len(y)):
        reference.zero_grad()
        nn.functional.cross_entropy(reference(x[i : i + 1]), y[i : i + 1]).backward()
        per_sample.append([p.grad.clone() for p in reference.parameters()])
    norms = torch.stack([torch.cat([g.flatten() for g in grads]).norm() for grads in per_sample])
    factors = (0.5 / (norms + 1e-6)).clamp(max=1.0)

    wrapped = BookKeepingModule(model, max_grad_norm=0.5)
    nn.functional.cross_entropy(wrapped(x), y, reduction="sum").backward()
    wrapped.clip_gradients()

    torch.testing.assert_close(wrapped.per_sample_norms, norms, rtol=1e-5, atol=1e-7)
    assert (norms > 0.5).any()
    for j, p in enumerate(model.parameters()):
        expected = sum(factors[i] * per_sample[i][j] for i in range(len(y)))
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())


@pytest.mark.parametrize("name", ["cnn", "mixed", *CONV_VARIANTS])
def test_augmentation_multiplicity_clips_the_mean_gradient_of_each_samples_views(name):
    """copies=3: a sample's gradient is the mean over its 3 views (consecutive rows), clipped as one."""
    copies, samples = 3, 4
    if name in CONV_VARIANTS:
        build, shape = CONV_VARIANTS[name]
        view_shape = shape[1:]
    else:
        build, view_shape = (lambda: _model(name)), (1, 8, 8) if name == "mixed" else (1, 28, 28)
    x = torch.randn(samples * copies, *view_shape, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 1, 0]).repeat_interleave(copies)
    torch.manual_seed(1)
    reference = build()
    torch.manual_seed(1)
    model = build()
    per_sample = []
    for i in range(samples):
        reference.zero_grad()
        rows = slice(i * copies, (i + 1) * copies)
        nn.functional.cross_entropy(reference(x[rows]), y[rows]).backward()  # mean over the views
        per_sample.append([p.grad.clone() for p in reference.parameters()])
    norms = torch.stack([torch.cat([g.flatten() for g in grads]).norm() for grads in per_sample])
    clip = float(norms.median())
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)

    wrapped = BookKeepingModule(model, max_grad_norm=clip, copies=copies)
    BookKeepingLoss(wrapped, nn.CrossEntropyLoss())(wrapped(x), y).backward()

    torch.testing.assert_close(wrapped.per_sample_norms, norms, rtol=1e-5, atol=1e-7)
    assert (norms > clip).any() and (norms < clip).any()
    expected = [sum(factors[i] * per_sample[i][j] for i in range(samples)) for j in range(len(per_sample[0]))]
    scale = max(e.abs().max().item() for e in expected)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-6 * scale)


def test_a_batch_that_is_not_whole_views_per_sample_is_refused():
    wrapped = BookKeepingModule(_model("cnn"), max_grad_norm=1.0, copies=3)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 1, 0])

    with pytest.raises(RuntimeError, match="4 rows is not 3 views per sample"):
        BookKeepingLoss(wrapped, nn.CrossEntropyLoss())(wrapped(x), y).backward()
