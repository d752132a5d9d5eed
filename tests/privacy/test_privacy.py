"""DP-SGD: accounting, planning, the cumulative budget, and DP-step equivalences (real Opacus)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import privacy_cfg
from opacus.accountants import create_accountant
from torch import nn

from pipeline.errors import ConfigError
from pipeline.privacy.accounting import history_epsilon, known_epsilons, merged_history
from pipeline.privacy.engine import make_private
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.privacy.plan import DPPlan, plan_dp
from pipeline.task.data import ImageDataset, make_synthetic
from pipeline.task.training import train_epochs


def test_rdp_accountant_gives_opacus_known_value():
    ledger = PrivacyLedger("rdp", history=[(1.5, 0.04, 2250)])

    eps = ledger.epsilon(1e-5)

    assert eps == pytest.approx(7.33, abs=0.01)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_equal_mechanisms_of_a_history_compose_as_one_entry(accountant):
    a, b = (1.0, 1 / 12, 24), (2.0, 0.1, 10)
    reference = create_accountant(accountant)
    reference.history = [a, b, a]  # what Opacus is given unmerged

    assert merged_history([a, b, a, (1.0, 1 / 12, 0)]) == ((1.0, 1 / 12, 48), (2.0, 0.1, 10))
    assert history_epsilon([a, b, a], 1e-5, accountant) == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-6)
    assert history_epsilon([], 1e-5, accountant) == 0.0
    history_epsilon([a, a], 1e-5, accountant)  # a round's budget check: the history and the round ahead
    assert 1e-5 in known_epsilons([(1.0, 1 / 12, 48)], accountant)  # the spending after it: no second evaluation


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_plan_spends_at_most_the_target_over_all_rounds(accountant):
    plan = plan_dp(privacy_cfg(accountant=accountant), train_size=1400, batch_size=128, local_epochs=2, rounds=5)
    ledger = PrivacyLedger(accountant)

    for _ in range(plan.rounds):
        assert ledger.can_afford_round(plan)
        ledger.accountant.history.append((plan.noise_multiplier, plan.sample_rate, plan.steps_per_round))

    assert plan.total_steps == 5 * 2 * 11
    assert plan.target_epsilon * 0.97 <= ledger.epsilon(plan.delta) <= plan.target_epsilon
    assert not ledger.can_afford_round(plan)  # one more round would overspend


def test_epsilon_grows_each_round_and_survives_serialisation():
    plan = plan_dp(privacy_cfg(), train_size=1000, batch_size=100, local_epochs=1, rounds=4)
    ledger = PrivacyLedger("rdp")
    seen = []

    for _ in range(4):
        restored = PrivacyLedger.from_json(ledger.to_json(), "rdp")  # what a resumed hospital does
        restored.accountant.history.append((plan.noise_multiplier, plan.sample_rate, plan.steps_per_round))
        ledger = restored
        seen.append(ledger.epsilon(plan.delta))

    uninterrupted = PrivacyLedger("rdp", history=[(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round * 4)])
    assert all(b > a for a, b in zip(seen, seen[1:], strict=False))
    assert seen[-1] == pytest.approx(uninterrupted.epsilon(plan.delta), rel=1e-9)


@pytest.mark.parametrize(
    "override, fragment",
    [
        (dict(epsilon=0.01), "privacy.epsilon=0.01 cannot be met"),
        (dict(delta=1e-2), "privacy.delta=0.01 is above 1/(training-set size)"),
    ],
)
def test_unreachable_budgets_are_refused_at_start(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        plan_dp(privacy_cfg(**override), train_size=1400, batch_size=128, local_epochs=2, rounds=50)


def test_ledger_refuses_another_accountant():
    text = PrivacyLedger("rdp", history=[(1.0, 0.1, 10)]).to_json()

    with pytest.raises(ConfigError, match="accountant"):
        PrivacyLedger.from_json(text, "prv")


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8 * 8, 16), nn.ReLU(), nn.Linear(16, 2))


@pytest.mark.parametrize("mode", ["hooks", "ghost", "bk"])
def test_dp_step_without_noise_or_clipping_equals_plain_step(mode):
    s = make_synthetic(64, 2, 8, 1, seed=3)
    data = ImageDataset(s.train_x, s.train_y, 0.5, 0.5)
    x, y = data.x, data.y
    plain, private_model = _tiny_model(), _tiny_model()
    # One batch holding every sample (sample rate 1): the DP mean gradient is the plain mean gradient.
    plan = DPPlan(0.0, 1.0, 1, 1, 8.0, 1e-5, 1e9, "rdp")
    opt = torch.optim.SGD(plain.parameters(), lr=0.5)
    nn.CrossEntropyLoss()(plain(x), y).backward()
    opt.step()
    dp = make_private(
        private_model,
        torch.optim.SGD(private_model.parameters(), lr=0.5),
        data,
        batch_size=len(data),
        plan=plan,
        ledger=PrivacyLedger("rdp"),
        privacy=privacy_cfg(grad_sample_mode=mode),
    )

    dp.optimizer.zero_grad()
    dp.criterion(dp.model(x), y).backward()
    dp.optimizer.step()

    for a, b in zip(plain.parameters(), private_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_private_training_records_every_step_in_the_ledger():
    s = make_synthetic(300, 2, 8, 1, seed=1)
    data = ImageDataset(s.train_x, s.train_y, 0.5, 0.5)
    plan = plan_dp(privacy_cfg(), train_size=len(data), batch_size=50, local_epochs=2, rounds=3)
    ledger = PrivacyLedger("rdp")
    model = _tiny_model()
    dp = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), data, 50, plan, ledger, privacy_cfg())

    train_epochs(dp.model, dp.loader, dp.optimizer, dp.criterion, 2, torch.device("cpu"))

    assert ledger.steps <= plan.steps_per_round  # empty Poisson batches are skipped, never added
    assert ledger.steps >= plan.steps_per_round - 2
    assert 0 < ledger.epsilon(plan.delta) < plan.target_epsilon


def test_noise_changes_the_update():
    s = make_synthetic(64, 2, 8, 1, seed=3)
    data = ImageDataset(s.train_x, s.train_y, 0.5, 0.5)
    results = []
    for noise in (0.0, 5.0):
        model = _tiny_model()
        before = copy.deepcopy(model.state_dict())
        plan = DPPlan(noise, 1.0, 1, 1, 8.0, 1e-5, 1.0, "rdp")
        dp = make_private(
            model,
            torch.optim.SGD(model.parameters(), lr=0.5),
            data,
            len(data),
            plan,
            PrivacyLedger("rdp"),
            privacy_cfg(),
        )
        torch.manual_seed(0)
        dp.optimizer.zero_grad()
        dp.criterion(dp.model(data.x), data.y).backward()
        dp.optimizer.step()
        results.append(np.concatenate([(model.state_dict()[k] - before[k]).flatten().numpy() for k in before]))
    assert np.linalg.norm(results[1] - results[0]) > 1e-3


@pytest.mark.parametrize("name", ["cnn", "resnet18", "densenet121"])
@pytest.mark.parametrize("mode", ["hooks", "ghost", "bk"])
def test_every_shipped_model_takes_a_dp_step(name, mode):
    from models import builders

    s = make_synthetic(8, 2, 28, 1, seed=0)
    data = ImageDataset(s.train_x, s.train_y, 0.5, 0.5)
    model = getattr(builders, name)(1, 2, 28)
    before = [p.detach().clone() for p in model.parameters()]
    plan = DPPlan(1.0, 0.5, 1, 1, 8.0, 1e-5, 1.0, "rdp")
    dp = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        data,
        4,
        plan,
        PrivacyLedger("rdp"),
        privacy_cfg(grad_sample_mode=mode),
    )

    dp.optimizer.zero_grad()
    dp.criterion(dp.model(data.x[:4]), data.y[:4]).backward()
    dp.optimizer.step()

    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]
    assert all(changed), f"{sum(not c for c in changed)} parameter tensors of {name} got no DP update"
