"""Privacy attacks (pipeline.analysis.attacks): gradient inversion without DP, with DP and against ciphertexts,
membership inference, and the command line on a small run folder. Tiny models, a few hundred iterations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import DATA_ROOT, compose_cfg, privacy_cfg
from omegaconf import OmegaConf
from torch import nn

from models.builders import cnn
from pipeline.analysis import attacks as A
from pipeline.analysis.attacks.report import chance_auc_error
from pipeline.config import compose
from pipeline.privacy.plan import DPPlan

MEAN, STD = 0.5, 0.5
BOUNDS = ((0 - MEAN) / STD, (1 - MEAN) / STD)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a busy shared CPU, multi-threaded small-tensor work slows down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def noise_plan(noise_multiplier: float, max_grad_norm: float = 1.0) -> DPPlan:
    """A DP plan of which only the noise multiplier and the clipping norm matter here."""
    return DPPlan(noise_multiplier, 0.01, 1, 1, 8.0, 1e-5, max_grad_norm, "rdp")


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return cnn(1, 2, 28, channels=(4, 8), strides=(2, 2), norm=("group", {"num_groups": 2}))


@pytest.fixture(scope="module")
def xrays() -> tuple[np.ndarray, np.ndarray]:
    """Real PneumoniaMNIST training images (uint8, N x 28 x 28) and labels."""
    path = DATA_ROOT / "pneumoniamnist.npz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    with np.load(path) as z:
        return z["train_images"], z["train_labels"].reshape(-1).astype(np.int64)


def normalised(images: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(images).float() / 255 - MEAN) / STD)[:, None]


def one_per_class(labels: np.ndarray) -> list[int]:
    return [int(np.flatnonzero(labels == c)[0]) for c in (0, 1)]


@pytest.fixture(scope="module")
def inversion_results(xrays):
    """Plaintext and DP reconstructions of a batch of 2 real X-rays (one per class) by a tiny CNN."""
    images, labels = xrays
    idx = one_per_class(labels)
    x, y = normalised(images[idx]), torch.from_numpy(labels[idx])
    truth = A.to_unit(x, MEAN, STD)
    model = tiny_cnn()
    scores = {}
    for name, plan in (("plaintext", None), ("dp", noise_plan(1.0))):
        grad = A.observed_gradient(model, x, y, plan, privacy_cfg())
        rec = A.invert_gradients(model, grad, y, tuple(x.shape), iterations=300, tv_weight=0.3, seed=1, bounds=BOUNDS)
        scores[name] = A.image_scores(A.match_to_truth(A.to_unit(rec, MEAN, STD), truth, y), truth)
    # the server plus a colluding hospital: hospital 0's real masked reply of a 3-hospital round,
    # decrypted with the shared key, its self mask and its pair mask with the colluder removed
    update = A.update_from_gradient(model, A.observed_gradient(model, x, y), 0.1, 1.0)
    estimate, facts = A.colluder_estimate(update, compose("encryption=ckks").encryption, 3)
    grad = A.gradient_from_update(model, estimate, 0.1, 1.0)
    rec = A.invert_gradients(model, grad, y, tuple(x.shape), iterations=300, tv_weight=0.3, seed=1, bounds=BOUNDS)
    scores["collusion"] = {**A.image_scores(A.match_to_truth(A.to_unit(rec, MEAN, STD), truth, y), truth), **facts}
    rand = A.to_unit(A.random_images(tuple(x.shape), 1, BOUNDS), MEAN, STD)
    scores["random"] = A.image_scores(rand, truth)
    scores["num_params"] = update.size
    return scores


def test_inversion_without_dp_recovers_images_clearly_better_than_random(inversion_results):
    plain, rand = inversion_results["plaintext"], inversion_results["random"]

    assert rand["ssim"] < 0.1
    assert plain["ssim"] > rand["ssim"] + 0.3
    assert plain["psnr"] > rand["psnr"] + 6


def test_the_server_with_one_colluding_hospital_reconstructs_at_the_random_image_level(inversion_results):
    plain, collusion = inversion_results["plaintext"], inversion_results["collusion"]

    # inversions of updates that carry no information score -0.05..0.18 on two images (TV-smoothed
    # blobs); the plaintext one scores ~0.6
    assert collusion["ssim"] < 0.25 and collusion["ssim"] < plain["ssim"] - 0.3
    # what it decrypted is unrelated to the update: |r| within 4 standard errors of 0 (1/sqrt(n) each)
    assert abs(collusion["estimate_correlation"]) < 4 / inversion_results["num_params"] ** 0.5
    assert collusion["masks_left"] == ["pair mask victim-hospital 2"]


def test_inversion_of_a_dp_gradient_is_clearly_worse(inversion_results):
    plain, dp = inversion_results["plaintext"], inversion_results["dp"]

    assert dp["ssim"] < plain["ssim"] - 0.25
    assert dp["psnr"] < plain["psnr"] - 3


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_the_attacked_dp_gradient_is_the_pipelines_clipped_sum_plus_noise_over_batch(mode):
    # Prepare: a layer with thousands of weights, so that the noise's spread is measured to ~2%
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 2))
    x, y = torch.randn(4, 64) * 10, torch.tensor([0, 1, 0, 1])
    privacy = privacy_cfg(grad_sample_mode=mode)
    per_sample = A.per_sample_gradients(model, x, y)
    mean_grad = A.batch_gradient(model, x, y)

    # Execute: the pipeline's own DP step (Opacus's noise, the configured clipping)
    noiseless = A.dp_step_gradient(model, x, y, noise_plan(0.0, max_grad_norm=1e9), privacy)
    clipped = A.dp_step_gradient(model, x, y, noise_plan(0.0, max_grad_norm=0.1), privacy)
    noisy = A.dp_step_gradient(model, x, y, noise_plan(5.0, max_grad_norm=0.1), privacy)

    # Assert
    for a, b in zip(noiseless, mean_grad, strict=True):  # no clipping, no noise: the plain mean gradient
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    norms = torch.stack([g.reshape(4, -1).norm(dim=1) for g in per_sample]).norm(dim=0)
    assert norms.min() > 0.1  # every sample is clipped, so the mean has norm <= C
    assert torch.sqrt(sum(g.pow(2).sum() for g in clipped)) <= 0.1 + 1e-6
    spread = torch.cat([(n - c).reshape(-1) for n, c in zip(noisy, clipped, strict=True)])
    assert spread.numel() > 4000
    assert float(spread.std()) == pytest.approx(5.0 * 0.1 / 4, rel=0.06)  # noise std sigma * C / B


def test_update_round_trip_gives_back_the_gradient():
    model = tiny_cnn()
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([0, 1])
    grad = A.batch_gradient(model, x, y)

    update = A.update_from_gradient(model, grad, lr=0.002, weight=0.9)
    back = A.gradient_from_update(model, update, lr=0.002, weight=0.9)

    assert update.dtype == np.float32 and update.size == sum(t.numel() for t in model.state_dict().values())
    for a, b in zip(back, grad, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_encrypted_setting_exposes_no_gradient():
    enc = compose("encryption=ckks").encryption
    update = (np.random.default_rng(0).normal(0, 0.01, 3000)).astype(np.float32)

    view = A.encrypted_view(update, enc, num_hospitals=3)

    assert view.gradient is None
    assert not view.plaintext_values and not view.server_has_secret_key
    assert view.chunks >= 1 and view.payload_bytes > update.nbytes  # ciphertext, larger than the float32 update
    assert view.decrypt_error is not None and view.decrypt_error.startswith("ValueError")
    assert view.key_holder_max_error < 2 * 0.05 / 2**6  # the key holders do read it (within a quantisation step)


def test_membership_inference_scores_an_overfitted_model_well_above_chance(xrays):
    # Real X-rays with labels drawn at random: the only way to fit them is to memorise each image, the
    # deliberate overfitting that membership inference detects. (With the true labels the task is so easy
    # that held-out images get near-zero loss too, and the loss attack stays near 0.6 even on a model
    # that has driven its training loss to 1e-4.)
    images, labels = xrays
    rng = np.random.default_rng(0)
    idx = rng.permutation(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:32] for c in (0, 1)]))
    x = normalised(images[idx])
    y = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(1))
    members, non_members = (x[:32], y[:32]), (x[32:], y[32:])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):  # full batch, until the members are memorised
        opt.zero_grad()
        nn.functional.cross_entropy(model(members[0]), members[1]).backward()
        opt.step()

    result = A.loss_threshold_attack(model, members, non_members, seed=0)

    assert result["members"] == result["non_members"] == 32
    assert result["member_loss"] < 0.01 < 1.0 < result["non_member_loss"]
    assert result["auc"] > 0.8
    assert result["advantage"] > 0.5


def test_roc_auc_and_points_on_known_cases():
    hi, lo = torch.tensor([3.0, 4.0, 5.0]), torch.tensor([0.0, 1.0, 2.0])

    assert A.roc_auc(hi, lo) == pytest.approx(1.0)
    assert A.roc_auc(lo, hi) == pytest.approx(0.0)
    assert A.roc_auc(torch.ones(4), torch.ones(4)) == pytest.approx(0.5)
    fpr, tpr = A.roc_points(hi, lo)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.max(tpr - fpr) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A run folder as pipeline.run leaves it (config.yaml, model.pt, summary.json), synthetic data, tiny CNN."""
    from pipeline.task.model import build_model

    run = tmp_path_factory.mktemp("run")
    cfg = compose_cfg(
        "data=synthetic",
        "data.num_samples=200",
        "model.channels=[4,8]",
        "model.strides=[2,2]",
        "model.norm=[group,{num_groups:2}]",
        "privacy=none",
        "encryption=none",
        "federation.rounds=2",
        f"run_dir={run}",
    )
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    model = build_model(cfg, 1, 2, int(cfg.data.image_size))
    torch.save(model.state_dict(), run / "model.pt")
    (run / "summary.json").write_text(json.dumps({"epsilon": {}, "status": "completed"}))
    return run


def test_cli_writes_report_json_markdown_and_grid(small_run, capsys):
    code = A.main([str(small_run), "--iterations", "15", "--batch-size", "2"])

    assert code == 0
    out = small_run / "attack"
    report = json.loads((out / "report.json").read_text())
    inv = report["inversion"]
    for setting in ("plaintext", "dp", "collusion", "no_information_baseline", "random_baseline"):
        assert isinstance(inv[setting]["ssim"], float) and isinstance(inv[setting]["psnr"], float)
    assert inv["encrypted"]["ssim"] is None and inv["encrypted"]["psnr"] is None
    assert inv["encrypted"]["server_decrypt_error"].startswith("ValueError")
    assert inv["dp"]["target_epsilon"] == 8.0 and "default" in inv["dp"]["plan_source"]
    assert 0.0 <= report["membership"]["auc"] <= 1.0
    assert report["membership"]["members"] == report["membership"]["non_members"] > 0
    assert report["run_epsilon"] is None
    assert (out / "inversion_grid.png").stat().st_size > 0
    assert "# Privacy attacks" in (out / "report.md").read_text()
    assert "# Privacy attacks" in capsys.readouterr().out


@pytest.mark.parametrize("missing", ["folder", "model.pt"])
def test_cli_bad_run_folder_is_one_line_and_exit_2(small_run, tmp_path, capsys, missing):
    target = tmp_path / "nope"
    if missing == "model.pt":
        target.mkdir()
        (target / "config.yaml").write_text((small_run / "config.yaml").read_text())

    code = A.main([str(target)])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and "Traceback" not in err[0]
    assert (missing if missing != "folder" else "not a folder") in err[0]


def membership_result(auc: float, members: int = 624, advantage: float = 0.1) -> dict:
    """A membership section of report.json with the given headline AUC (test-split non-members)."""
    return {
        "attack": "loss threshold",
        "model": "the final model",
        "member_set": "training images",
        "non_member_set": "test split",
        "members": members,
        "non_members": members,
        "auc": auc,
        "advantage": advantage,
        "tpr_at_1pct_fpr": 0.02,
        "member_loss": 0.3,
        "non_member_loss": 0.35,
    }


def report_text(mia: dict) -> str:
    return A.report_markdown(
        {"run_dir": "r", "run_private": False, "run_encrypted": False, "hospital": 0, "membership": mia}
    )


def test_chance_auc_error_is_hanley_mcneils_null_standard_error():
    # 624 vs 624: sqrt(1249 / (12 * 624 * 624))
    assert chance_auc_error(624, 624) == pytest.approx(0.016350, abs=1e-5)


@pytest.mark.parametrize(
    ("auc", "says", "never"),
    [
        (0.5, "within the sampling error of 0.5; the attacker cannot tell members from non-members", "better than"),
        (0.52, "within the sampling error of 0.5", "better than chance"),
        (
            0.589,
            "0.089 above chance (5.4 standard errors); the attacker tells members from non-members better",
            "cannot",
        ),
        (0.9, "0.400 above chance (24.5 standard errors)", "cannot tell"),
        (0.4, "0.100 below chance", "cannot tell"),
    ],
)
def test_membership_text_follows_the_measured_auc(auc, says, never):
    text = report_text(membership_result(auc))

    assert says in text and never not in text
    assert "AUC 0.5: the attacker cannot tell" not in text  # the old fixed sentence
    assert f"AUC {auc:.3f} against 0.5 for guessing (sampling error ±0.033 at 624 vs 624)" in text


def test_membership_text_on_few_samples_allows_a_wider_error():
    text = report_text(membership_result(0.589, members=50))

    assert "within the sampling error of 0.5" in text and "±0.116 at 50 vs 50" in text


def test_membership_text_names_the_advantage_and_explains_only_the_rows_present():
    mia = membership_result(0.7, advantage=0.25)
    alone = report_text(mia)
    both = report_text({**mia, "same_distribution": {**membership_result(0.5), "non_member_set": "held-out train"}})

    assert "flags 25% more of the members than of the non-members" in alone
    assert "the second uses non-members" not in alone and "the second uses non-members" in both
    assert "- held-out train: AUC 0.500" in both and "- test split: AUC 0.700" in both
