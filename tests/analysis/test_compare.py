"""Run comparison (pipeline.analysis.compare, scripts/compare.py) and run provenance (pipeline.reporting.provenance).

The e2e tests make two tiny real runs (DP-SGD at epsilon 3 and 8, a real Flower simulation each)
and compare them through the user's command. The other tests compare hand-made run folders, no
simulation.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import yaml

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
from conftest import ROOT  # noqa: E402

from pipeline.analysis import compare
from pipeline.config.tree import flatten  # noqa: E402
from pipeline.reporting import provenance  # noqa: E402

SCRIPT = ROOT / "scripts" / "compare.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("val_auc.png", "privacy_utility.png", "cost.png")
# Marks the tests that need the real runs (a Flower simulation each, ~25 s); the unit tests of
# this module stay unmarked so that `pytest -m "not e2e"` still runs them.
e2e = pytest.mark.e2e


def run_compare(*args: str) -> subprocess.CompletedProcess:
    """The user's command: python scripts/compare.py ..."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


# ---------------------------------------------------------------------------------------------
# two real runs


@pytest.fixture(scope="session")
def real_runs(twin_runs) -> Path:
    """Two real 1-round runs (conftest's twins: CKKS-encrypted and plaintext) in one folder."""
    parent = twin_runs.parent / "compared"
    if not parent.exists():
        parent.mkdir()
        for name in ("ckks", "plain"):
            shutil.copytree(twin_runs / name, parent / name)
    return parent


@pytest.fixture(scope="session")
def real_report(real_runs, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("report")
    done = run_compare(str(real_runs), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out, done


@e2e
def test_real_runs_table_has_the_differing_key_and_the_summary_values(real_runs, real_report):
    out, _ = real_report
    columns, rows = read_csv(out / "comparison.csv")

    assert columns == ["run", "encryption.enabled", *compare.METRIC_COLUMNS]
    assert [r["run"] for r in rows] == ["ckks", "plain"]
    for row in rows:
        run_dir = real_runs / row["run"]
        summary = json.loads((run_dir / "summary.json").read_text())
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        _, metrics = read_csv(run_dir / "metrics.csv")
        assert row["encryption.enabled"] == json.dumps(config["encryption"]["enabled"])  # as typed: true
        for key in ("auc", "accuracy", "mcc"):
            assert float(row[f"test_{key}"]) == pytest.approx(summary["test"][key])
        assert row["epsilon"] == "" and summary["epsilon"] == {}  # no DP in these runs
        assert int(row["rounds"]) == summary["rounds_completed"] == 1
        assert float(row["seconds"]) == pytest.approx(summary["seconds"])
        assert float(row["bytes_up_per_round"]) == pytest.approx(float(metrics[0]["bytes_up"]))
        assert float(row["bytes_down_per_round"]) == pytest.approx(float(metrics[0]["bytes_down"]))
        crypto = sum(float(metrics[0][k]) for k in ("aggregate_seconds", "encode_seconds", "decode_seconds"))
        assert float(row["encryption_overhead_pct"]) == pytest.approx(100 * crypto / float(metrics[0]["seconds"]))
    # the plaintext twin's codec work (float copies and sums) is next to nothing beside CKKS's
    overhead = {r["run"]: float(r["encryption_overhead_pct"]) for r in rows}
    assert overhead["plain"] < 1.0 and overhead["ckks"] > 5 * overhead["plain"]
    assert not (out / "comparison_by_seed.csv").exists()


@e2e
def test_real_runs_report_prints_the_table_and_no_data_or_seed_warning(real_report):
    out, done = real_report
    markdown = (out / "comparison.md").read_text()

    header = next(line for line in done.stdout.splitlines() if line.startswith("| run"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["run", "encryption.enabled", *compare.METRIC_COLUMNS]
    assert header in markdown
    assert "| ckks " in done.stdout and "| plain " in done.stdout
    for text in (markdown, done.stderr):  # same data, same seed (code versions may move under a live checkout)
        assert "differ in data" not in text and "differ in seed" not in text
    for plot in PLOTS:
        assert f"]({plot})" in markdown


@e2e
def test_real_runs_plots_are_valid_pngs(real_report):
    out, _ = real_report
    for plot in PLOTS:
        assert_png(out / plot)


@e2e
def test_real_runs_record_their_own_provenance(real_runs):
    """run.py writes the provenance into summary.json; the comparison relies on it."""
    for name in ("ckks", "plain"):
        found = json.loads((real_runs / name / "summary.json").read_text())["provenance"]
        assert set(found["versions"]) == {"python", *provenance.PACKAGES}
        assert found["seed"] == 42 and found["data"]["kind"] == "medmnist" and found["data"]["sha256"]


@e2e
def test_real_runs_data_fingerprints_match(real_runs):
    prints = [json.loads((real_runs / r / "summary.json").read_text())["provenance"]["data"] for r in ("ckks", "plain")]

    assert prints[0]["kind"] == "medmnist" and prints[0]["sha256"] == prints[1]["sha256"]
    assert prints[0]["file"] == "pneumoniamnist.npz"


@e2e
def test_run_folder_without_summary_stops_with_one_line_under_strict(real_runs, tmp_path):
    parent = tmp_path / "sweep"
    shutil.copytree(real_runs, parent)
    (parent / "plain" / "summary.json").unlink()

    done = run_compare(str(parent), "--out", str(tmp_path / "out"), "--strict")

    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert str(parent / "plain") in done.stderr and "summary.json" in done.stderr
    assert not (tmp_path / "out").exists()


def test_empty_folder_stops_with_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()

    done = run_compare(str(empty), "--out", str(tmp_path / "out"))

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert str(empty) in done.stderr and "no runs" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------
# hand-made run folders

BASE = {
    "seed": 42,
    "device": "auto",
    "run_dir": "/somewhere/a",
    "resume": None,
    "data": {"kind": "synthetic", "root": "data", "num_samples": 200, "num_classes": 2},
    "model": {"_target_": "models.builders.cnn", "_partial_": True, "channels": [16, 32, 64]},
    "federation": {"mode": "federated", "num_hospitals": 3, "rounds": 2},
    "privacy": {"enabled": True, "epsilon": 8.0, "delta": 1e-5},
    "encryption": {"enabled": True, "poly_modulus_degree": 4096},
}


def config(**changes: object) -> dict:
    """BASE with dotted-key changes: config(**{"privacy.epsilon": 3.0})."""
    cfg = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = cfg
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def make_run(folder: Path, cfg: dict, auc: float = 0.8, eps: float | None = 7.5, encrypted: bool = True) -> Path:
    """A finished run folder as pipeline.run writes it (2 rounds)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    summary = {
        "status": "completed",
        "mode": "federated",
        "encrypted": encrypted,
        "num_hospitals": 3,
        "rounds_completed": 2,
        "test": {"auc": auc, "accuracy": auc - 0.1, "mcc": auc - 0.3, "loss": 0.5},
        "final_validation": {"val_auc": auc + 0.05},
        "epsilon": {"0": eps, "1": eps / 2} if eps is not None else {},
        "epsilon_target": 8.0 if eps is not None else None,
        "seconds": 12.5,
        "provenance": {"data": provenance.data_fingerprint(_cfg(cfg["data"]))},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["round", "val_auc", "seconds", "bytes_up", "bytes_down", "aggregate_seconds", "encode_seconds"]
        )
        writer.writerow([1, auc - 0.1, 2.0, 1000, 2000, 0.1, 0.2])
        writer.writerow([2, auc, 4.0, 3000, 4000, 0.3, 0.2])
    return folder


def test_differing_keys_finds_nested_changes_and_ignores_paths_and_hydra():
    a = config()
    b = config(
        **{
            "model._target_": "models.builders.resnet18",
            "model.channels": [16, 32],
            "run_dir": "/elsewhere/b",
            "resume": "/elsewhere/a",
            "federation.hospital_dir": "/root/hospitals",
            "paths.hospitals": "/root/hospitals",
            "data.root": "/mnt/data",
            "hydra.job.name": "x",
            "log.level": "debug",  # console verbosity, not a setting of the experiment
            "privacy.epsilon": 8,  # int 8 == 8.0
        }
    )

    assert compare.differing_keys([a, b]) == ["model._target_", "model.channels"]
    assert compare.differing_keys([a, copy.deepcopy(a)]) == []
    assert compare.differing_keys([a]) == []


def test_differing_keys_counts_missing_keys_but_not_switched_off_groups():
    a, b = config(), config(**{"privacy.enabled": False, "privacy.epsilon": 1.0, "federation.extra": 1})
    masked = [compare.mask_inactive(flatten(c)) for c in (a, b)]

    assert compare.differing_keys(masked) == ["privacy.enabled", "federation.extra"]
    c = config(**{"privacy.epsilon": 3.0})
    masked.append(compare.mask_inactive(flatten(c)))
    assert compare.differing_keys(masked) == ["privacy.enabled", "privacy.epsilon", "federation.extra"]


def test_seed_groups_gather_runs_that_differ_only_by_seed():
    configs = [
        config(seed=1, **{"privacy.epsilon": 3.0}),
        config(seed=2, **{"privacy.epsilon": 3.0}),
        config(seed=1, **{"privacy.epsilon": 8.0}),
        config(seed=2, **{"privacy.epsilon": 8.0}),
        config(seed=3, **{"privacy.epsilon": 3.0}),
    ]
    keys = compare.differing_keys(configs)

    assert keys == ["seed", "privacy.epsilon"]
    assert compare.seed_groups(configs, keys) == [[0, 1, 4], [2, 3]]
    assert compare.seed_groups(configs[:1] + configs[2:3], ["privacy.epsilon"]) is None  # same seed
    one_each = [config(seed=1), config(seed=2, **{"privacy.epsilon": 3.0})]
    assert compare.seed_groups(one_each, compare.differing_keys(one_each)) is None  # no repeats


def test_seed_repeats_get_a_grouped_table_and_a_seed_warning(tmp_path, capsys):
    runs = tmp_path / "multirun"
    aucs = {(3.0, 1): 0.70, (3.0, 2): 0.74, (8.0, 1): 0.80, (8.0, 2): 0.86, (8.0, 3): 0.83}
    for n, ((eps, seed), auc) in enumerate(aucs.items()):
        make_run(runs / f"{n}_eps={eps},seed={seed}", config(seed=seed, **{"privacy.epsilon": eps}), auc=auc)
    out = tmp_path / "report"

    assert compare.main([str(runs), "--out", str(out)]) == 0

    columns, rows = read_csv(out / "comparison_by_seed.csv")
    assert columns[:3] == ["privacy.epsilon", "runs", "seeds"]
    assert [(r["privacy.epsilon"], r["runs"], r["seeds"]) for r in rows] == [("3.0", "2", "1;2"), ("8.0", "3", "1;2;3")]
    for row, eps in zip(rows, (3.0, 8.0), strict=True):
        values = [auc for (e, _), auc in aucs.items() if e == eps]
        assert float(row["test_auc_mean"]) == pytest.approx(statistics.fmean(values))
        assert float(row["test_auc_std"]) == pytest.approx(statistics.stdev(values))
        assert float(row["test_mcc_mean"]) == pytest.approx(statistics.fmean(v - 0.3 for v in values))
        assert float(row["val_auc_mean"]) == pytest.approx(statistics.fmean(v + 0.05 for v in values))
    markdown = (out / "comparison.md").read_text()
    assert "## Over seeds" in markdown and "0.8300 ± 0.0300" in markdown
    assert "runs differ in seed (1, 2, 3)" in markdown
    assert "differ in data" not in markdown
    captured = capsys.readouterr()
    assert "warning: runs differ in seed" in captured.err
    assert "| privacy.epsilon | runs | seeds" in captured.out
    columns, _ = read_csv(out / "comparison.csv")
    assert columns[:3] == ["run", "seed", "privacy.epsilon"]
    for plot in PLOTS:
        assert_png(out / plot)


def test_runs_on_different_data_are_warned_about(tmp_path):
    make_run(tmp_path / "runs" / "a", config())
    make_run(tmp_path / "runs" / "b", config(**{"data.num_samples": 400}))
    c = compare.compare(compare.load_runs([tmp_path / "runs"])[0])

    assert c.keys == ["data.num_samples"]
    assert any(w.startswith("runs differ in data: data.num_samples (200, 400)") for w in c.warnings)
    assert any("data fingerprints (provenance) differ" in w for w in c.warnings)


def test_same_config_but_other_data_file_is_warned_about(tmp_path):
    make_run(tmp_path / "runs" / "a", config())
    b = make_run(tmp_path / "runs" / "b", config(**{"data.root": "/other"}))
    summary = json.loads((b / "summary.json").read_text())
    summary["provenance"]["data"]["sha256"] = "0" * 16
    (b / "summary.json").write_text(json.dumps(summary))
    c = compare.compare(compare.load_runs([tmp_path / "runs"])[0])

    assert c.keys == []  # data.root is ignored ...
    assert any("data fingerprints (provenance) differ" in w for w in c.warnings)  # ... the fingerprint is not


def test_no_dp_run_shows_dashes_and_is_a_reference_line(tmp_path, capsys):
    make_run(tmp_path / "runs" / "dp", config())
    make_run(tmp_path / "runs" / "plain", config(**{"privacy.enabled": False}), auc=0.9, eps=None, encrypted=False)
    out = tmp_path / "out"

    assert compare.main([str(tmp_path / "runs"), "--out", str(out)]) == 0

    columns, rows = read_csv(out / "comparison.csv")
    assert columns[:2] == ["run", "privacy.enabled"]
    assert [r["epsilon"] for r in rows] == ["7.5", ""]
    assert float(rows[0]["bytes_up_per_round"]) == 2000 and float(rows[0]["bytes_down_per_round"]) == 3000
    assert float(rows[0]["encryption_overhead_pct"]) == pytest.approx(100 * 0.4 / 3.0)
    table = capsys.readouterr().out
    plain = next(line for line in table.splitlines() if line.startswith("| plain"))
    header = next(line for line in table.splitlines() if line.startswith("| run"))
    epsilon = [c.strip() for c in header.strip("|").split("|")].index("epsilon")
    assert [c.strip() for c in plain.strip("|").split("|")][epsilon] == "-"
    for plot in PLOTS:
        assert_png(out / plot)


def test_find_runs_skips_hydra_folders_sources_and_run_insides(tmp_path):
    run = make_run(tmp_path / "multirun" / "0_x", config())
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config()))
    (run / "aggregates").mkdir()
    (run / "aggregates" / "metrics.csv").write_text("round\n1\n")
    (tmp_path / "multirun" / "conf").mkdir()
    (tmp_path / "multirun" / "conf" / "config.yaml").write_text("defaults:\n  - data: synthetic\nseed: 1\n")
    make_run(tmp_path / "multirun" / "10_x", config(seed=2))
    make_run(tmp_path / "multirun" / "2_x", config(seed=3))

    assert [p.name for p in compare.find_runs(tmp_path / "multirun")] == ["0_x", "2_x", "10_x"]


def test_short_names_tell_runs_apart_and_drop_shared_hydra_overrides(tmp_path):
    paths = [tmp_path / "a" / "0_x", tmp_path / "b" / "0_x", tmp_path / "b" / "1_y"]

    assert compare.short_names(paths) == ["a/0_x", "b/0_x", "1_y"]
    jobs = [tmp_path / f"{n}_data=synthetic,privacy={p},rounds=1" for n, p in enumerate(("eps1", "eps3", "none"))]
    assert compare.short_names(jobs) == ["0_privacy=eps1", "1_privacy=eps3", "2_privacy=none"]


def test_run_folder_without_config_stops_with_exit_code_2_under_strict(tmp_path, capsys):
    run = make_run(tmp_path / "runs" / "a", config())
    (run / "config.yaml").unlink()

    assert compare.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--strict"]) == 2

    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: {run}: run folder without config.yaml"]


def test_unreadable_summary_and_missing_path_stop_with_exit_code_2(tmp_path, capsys):
    run = make_run(tmp_path / "runs" / "a", config())
    (run / "summary.json").write_text("{not json")

    assert compare.main([str(tmp_path / "runs")]) == 2
    assert str(run / "summary.json") in capsys.readouterr().err
    assert compare.main([str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_skip_incomplete_is_still_accepted_and_is_the_default(tmp_path, capsys):
    make_run(tmp_path / "runs" / "a", config())
    make_run(tmp_path / "runs" / "b", config(**{"privacy.epsilon": 3.0}))
    broken = tmp_path / "runs" / "c"
    broken.mkdir()
    (broken / "config.yaml").write_text(yaml.safe_dump(config()))

    assert compare.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--skip-incomplete"]) == 0

    _, rows = read_csv(tmp_path / "out" / "comparison.csv")
    assert [r["run"] for r in rows] == ["a", "b"]
    assert f"{broken} (no summary.json)" in capsys.readouterr().err
    assert compare.main([str(tmp_path / "runs"), "--strict", "--skip-incomplete"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_failed_runs_are_skipped_with_one_warning_line_naming_them(tmp_path, capsys):
    make_run(tmp_path / "runs" / "a", config())
    make_run(tmp_path / "runs" / "b", config(**{"privacy.epsilon": 3.0}))
    failed = []
    for name in ("c", "d"):  # failed jobs of a sweep: config.yaml (and run.log), no summary.json
        failed.append(tmp_path / "runs" / name)
        failed[-1].mkdir()
        (failed[-1] / "config.yaml").write_text(yaml.safe_dump(config()))

    assert compare.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0

    _, rows = read_csv(tmp_path / "out" / "comparison.csv")
    assert [r["run"] for r in rows] == ["a", "b"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert warnings == [
        "warning: skipped 2 incomplete run folders (failed or unfinished runs; --strict stops instead): "
        f"{failed[0]} (no summary.json), {failed[1]} (no summary.json)"
    ]
    assert warnings[0].removeprefix("warning: ") in (tmp_path / "out" / "comparison.md").read_text()


def test_strict_stops_at_a_failed_run_with_exit_code_2(tmp_path, capsys):
    make_run(tmp_path / "runs" / "a", config())
    failed = tmp_path / "runs" / "b"
    failed.mkdir()
    (failed / "config.yaml").write_text(yaml.safe_dump(config()))

    assert compare.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--strict"]) == 2

    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {failed}: run folder without summary.json (the run did not finish?)"
    ]
    assert not (tmp_path / "out").exists()


def test_only_failed_runs_is_an_error_naming_them(tmp_path, capsys):
    failed = tmp_path / "runs" / "a"
    failed.mkdir(parents=True)
    (failed / "config.yaml").write_text(yaml.safe_dump(config()))

    assert compare.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no complete runs found" in err[0] and f"{failed} (no summary.json)" in err[0]


# ---------------------------------------------------------------------------------------------
# provenance


def test_provenance_collects_versions_machine_and_data(tmp_path):
    root = tmp_path / "images"
    for name, size in (("a/1.png", 3), ("b/2.png", 5)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x" * size)
    cfg = config(device="cpu", **{"data.kind": "folder", "data.root": str(root)})

    found = provenance.collect(cfg)

    assert set(found["versions"]) == {"python", *provenance.PACKAGES}
    assert found["versions"]["torch"] and found["versions"]["hydra-core"]
    assert found["git"] is None or len(found["git"]["commit"]) == 40
    assert found["seed"] == 42 and found["cpu_count"] >= 1 and found["hostname"]
    assert found["device"]["type"] == "cpu" and found["device"]["name"]
    assert found["data"]["files"] == 2 and found["data"]["bytes"] == 8 and len(found["data"]["sha256"]) == 16
    json.dumps(found)  # JSON-ready
    (root / "b" / "2.png").write_bytes(b"x" * 6)
    assert provenance.collect(cfg)["data"]["sha256"] != found["data"]["sha256"]


def test_data_fingerprint_of_medmnist_file_and_synthetic_params(tmp_path):
    (tmp_path / "pneumoniamnist.npz").write_bytes(b"npz bytes")
    medmnist = {"kind": "medmnist", "flag": "pneumoniamnist", "size": 28, "root": str(tmp_path)}

    found = provenance.data_fingerprint(_cfg(medmnist))
    assert found == {"kind": "medmnist", "file": "pneumoniamnist.npz", "bytes": 9, "sha256": found["sha256"]}
    assert found["sha256"] == hashlib.sha256(b"npz bytes").hexdigest()[:16]
    missing = provenance.data_fingerprint(_cfg({**medmnist, "size": 64}))
    assert missing["sha256"] is None and missing["file"] == "pneumoniamnist_64.npz"
    synth = provenance.data_fingerprint(_cfg(BASE["data"]))
    assert synth["params"]["num_samples"] == 200
    assert synth["sha256"] != provenance.data_fingerprint(_cfg({**BASE["data"], "num_samples": 201}))["sha256"]


def _cfg(tree: dict):
    from omegaconf import OmegaConf

    return OmegaConf.create(tree)


# ---------------------------------------------------------------------------------------------
# experiment files (conf/experiment/)


def compose_experiment(*overrides: str, hydra_config: bool = False):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_config)


def test_quick_and_primia_experiments_compose_and_validate():
    from pipeline.config import validate

    quick = validate(compose_experiment("experiment=quick"))
    assert quick.data.kind == "synthetic" and quick.federation.rounds <= 2 and quick.train.batch_size <= 32
    primia = validate(compose_experiment("experiment=primia"))
    assert primia.model._target_ == "models.builders.resnet18" and primia.federation.num_hospitals == 3
    assert primia.data.flag == "pneumoniamnist" and primia.privacy.enabled and primia.encryption.enabled


@pytest.mark.parametrize(
    ("experiment", "key", "jobs"),
    [("privacy_sweep", "privacy", ["eps1", "eps3", "eps8", "none"]), ("baselines", "federation.mode", None)],
)
def test_sweep_experiments_define_their_jobs(experiment, key, jobs):
    from pipeline.config import validate

    params = compose_experiment(f"experiment={experiment}", hydra_config=True).hydra.sweeper.params
    values = params[key].split(",")
    if jobs:
        assert values == jobs
    for value in values:
        cfg = validate(compose_experiment(f"experiment={experiment}", f"{key}={value}"))
        assert cfg.encryption.enabled
        if key == "privacy":
            assert cfg.privacy.enabled == (value != "none")
            assert value == "none" or cfg.privacy.epsilon == float(value.removeprefix("eps"))
        else:
            assert cfg.federation.mode == value


# ---------------------------------------------------------------------------------------------
# what the plots show (read from the figures)


def hand_made_comparison(tmp_path: Path, *runs: tuple[str, dict, dict]) -> compare.Comparison:
    for name, cfg, kw in runs:
        make_run(tmp_path / "runs" / name, cfg, **kw)
    return compare.compare(*compare.load_runs([tmp_path / "runs"]))


def whole_ticks(ax) -> list[float]:
    low, high = ax.get_xlim()
    return [float(t) for t in ax.get_xticks() if low <= t <= high]


def test_val_auc_plot_has_whole_round_ticks_a_fixed_auc_axis_and_setting_labels(tmp_path):
    from pipeline.analysis.compare.plots import val_auc_figure

    c = hand_made_comparison(tmp_path, ("a", config(), {}), ("b", config(**{"privacy.epsilon": 3.0}), {}))
    for run in c.runs:
        run.rows = run.rows[:1]  # one round: matplotlib's default ticks are 0.96, 0.98, 1.0, ...
    fig = val_auc_figure(c)
    ax = fig.axes[0]

    assert whole_ticks(ax) == [1.0]
    assert ax.get_ylim() == (0.5, 1.0)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["privacy.epsilon=8.0", "privacy.epsilon=3.0"]
    matplotlib.pyplot.close(fig)


def test_cost_plot_labels_bars_by_setting_and_shows_only_the_kinds_present(tmp_path):
    from pipeline.analysis.compare.plots import cost_figure

    c = hand_made_comparison(tmp_path, ("a", config(), {}), ("b", config(**{"privacy.epsilon": 3.0}), {}))
    fig = cost_figure(c)
    seconds, traffic = fig.axes

    for ax in (seconds, traffic):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["privacy.epsilon=8.0", "privacy.epsilon=3.0"]
    legend = [t.get_text() for t in seconds.get_legend().get_texts()]
    assert legend == ["encrypted (CKKS)", "aggregate + encode + decode (% of round)"]  # no "plaintext": none is
    hatched = [p for p in seconds.patches if p.get_hatch()]
    # metrics.csv: seconds 2 and 4, aggregate + encode 0.3 and 0.5: 0.4 of a 3-second round
    assert [p.get_height() for p in hatched] == pytest.approx([0.4, 0.4])
    assert [t.get_text() for t in seconds.texts] == ["13.3%", "13.3%"]
    assert traffic.get_ylabel() == "KiB per hospital per round"
    matplotlib.pyplot.close(fig)


def test_cost_plot_of_mixed_runs_names_both_kinds_and_falls_back_to_run_names(tmp_path):
    from pipeline.analysis.compare.plots import cost_figure

    c = hand_made_comparison(
        tmp_path,
        ("ckks", config(), {}),
        ("plain", config(**{"encryption.enabled": False}), {"encrypted": False}),
        ("plain2", config(**{"encryption.enabled": False}), {"encrypted": False}),
    )
    fig = cost_figure(c)
    seconds = fig.axes[0]

    assert [t.get_text() for t in seconds.get_xticklabels()] == ["encryption.enabled=true", "plain", "plain2"]
    assert [t.get_text() for t in seconds.get_legend().get_texts()][:2] == ["plaintext", "encrypted (CKKS)"]
    matplotlib.pyplot.close(fig)


def test_privacy_utility_ticks_only_the_epsilons_drawn(tmp_path):
    from pipeline.analysis.compare.plots import privacy_utility_figure

    c = hand_made_comparison(
        tmp_path,
        ("dp", config(), {}),
        ("plain", config(**{"privacy.enabled": False}), {"eps": None, "auc": 0.9}),
    )
    fig = privacy_utility_figure(c)
    ax = fig.axes[0]

    assert list(ax.get_xticks()) == [7.5]  # not the no-DP reference line's axes-relative x of 1
    assert ax.get_ylim() == (0.5, 1.0)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["no DP", "DP-SGD"]
    matplotlib.pyplot.close(fig)


def test_cost_plot_letters_bars_whose_settings_are_too_long_and_writes_the_key_below(tmp_path):
    from pipeline.analysis.compare.plots import cost_figure

    long = {"model._target_": "models.builders.densenet121", "train.optimizer.lr": 0.0001}
    c = hand_made_comparison(tmp_path, ("a", config(), {}), ("b", config(**long), {}))
    fig = cost_figure(c)

    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["A", "B"]
    key = fig.texts[0].get_text()
    assert "A: model._target_=models.builders.cnn" in key and "B: model._target_=models.builders.densenet121" in key
    matplotlib.pyplot.close(fig)
