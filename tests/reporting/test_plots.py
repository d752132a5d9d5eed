"""The run folder's curves.png (pipeline.reporting.plots): what the figure shows, read from its axes."""

from __future__ import annotations

import matplotlib
import pytest
from conftest import compose_cfg

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.reporting.plots import AUC_LIMITS, rounds_figure, run_title  # noqa: E402


def rows(rounds: int = 3, bytes_per_round: float = 656_760) -> list[dict]:
    """metrics.csv rows as the recorder keeps them (the encrypted run's test AUC is left empty)."""
    return [
        {
            "round": float(r),
            "hospitals": 3,
            "train_loss": 1.0 / r,
            "val_loss": 0.9 / r,
            "val_auc": 0.95 + 0.005 * r,
            "test_auc": 0.94 + 0.005 * r,
            "epsilon_max": 2.5 * r,
            "bytes_up": bytes_per_round,
            "bytes_down": bytes_per_round,
        }
        for r in range(1, rounds + 1)
    ]


@pytest.fixture
def figure():
    fig = rounds_figure(rows(), "cnn, 3 hospitals", epsilon_target=8.0)
    yield fig
    plt.close(fig)


def panel(fig, title: str):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_every_panel_has_a_y_label_and_whole_round_ticks(figure):
    for ax in figure.axes:
        assert ax.get_ylabel() and ax.get_xlabel() == "round"
        assert [float(t) for t in ax.get_xticks()] == [round(t) for t in ax.get_xticks()], ax.get_title()


def test_a_single_round_gets_a_whole_round_tick():
    fig = rounds_figure(rows(1))
    ticks = [t for t in fig.axes[0].get_xticks() if fig.axes[0].get_xlim()[0] <= t <= fig.axes[0].get_xlim()[1]]
    plt.close(fig)

    assert ticks == [1.0]


def test_legends_are_human_names_not_column_names(figure):
    assert legend(panel(figure, "loss")) == ["training loss (hospitals' mean)", "validation loss"]
    assert legend(panel(figure, "ROC-AUC")) == ["validation AUC", "test AUC"]


def test_auc_axis_is_fixed_from_chance_to_one_whatever_the_values(figure):
    assert panel(figure, "ROC-AUC").get_ylim() == AUC_LIMITS


def test_auc_axis_goes_lower_for_an_auc_below_chance():
    low = rows()
    low[0]["val_auc"] = 0.3
    fig = rounds_figure(low)
    bottom, top = panel(fig, "ROC-AUC").get_ylim()
    plt.close(fig)

    assert bottom < 0.3 and top == 1.0


def test_epsilon_target_is_a_dashed_line_on_the_privacy_panel(figure):
    ax = panel(figure, "privacy budget spent")
    target = [line for line in ax.lines if line.get_linestyle() == "--"]

    assert len(target) == 1 and list(target[0].get_ydata()) == [8.0, 8.0]
    assert legend(ax) == ["epsilon spent", "target epsilon 8"]
    assert ax.get_ylim()[1] > 8.0 and ax.get_ylabel() == "epsilon (max over hospitals)"


def test_bytes_are_shown_in_kib_or_mib_per_hospital():
    for per_round, unit, shown in ((656_760, "KiB", 656_760 / 1024), (5 * 2**20, "MiB", 5.0)):
        fig = rounds_figure(rows(bytes_per_round=per_round))
        ax = panel(fig, "traffic per hospital")
        ylabel, values = ax.get_ylabel(), list(ax.lines[0].get_ydata())
        plt.close(fig)

        assert ylabel == f"{unit} per hospital per round"
        assert values == pytest.approx([shown] * 3)


def test_title_names_model_hospitals_privacy_and_encryption():
    default = run_title(compose_cfg(), 3)
    assert default == "scatter_cnn, 3 hospitals, DP-SGD epsilon 8, delta 1e-05, CKKS-encrypted aggregation"
    plain = run_title(compose_cfg("model=cnn", "privacy=none", "encryption=none"), 2)
    assert plain == "cnn, 2 hospitals, no DP, plaintext aggregation"
    fig = rounds_figure(rows(), plain)
    title = fig._suptitle.get_text()
    plt.close(fig)
    assert title == plain


def test_a_run_without_dp_says_so_instead_of_a_zero_epsilon_line():
    plain = rows()
    for r in plain:
        r["epsilon_max"] = 0.0
    fig = rounds_figure(plain)
    ax = panel(fig, "privacy budget spent")
    lines, texts = ax.lines, [t.get_text() for t in ax.texts]
    plt.close(fig)

    assert not lines and texts == ["no DP in this run:\nno privacy budget"]
