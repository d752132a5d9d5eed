"""Clear inference and the command line: files, folders, manifests, splits; bad input in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA_ROOT, TINY, compose_cfg, make_run
from omegaconf import OmegaConf
from PIL import Image

from pipeline.errors import DataError
from pipeline.inference.clear import input_tensors, load_run, predict_logits, read_inputs, read_split
from pipeline.inference.cli import main
from pipeline.reporting.recorder import CONFIG_FILE, MODEL_FILE
from pipeline.task import sites
from pipeline.task.data import load_splits
from pipeline.task.model import build_model, save_model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished he_cnn run on PneumoniaMNIST (briefly trained weights)."""
    return make_run(tmp_path_factory.mktemp("clear_run"), *TINY, train_epochs=1)


@pytest.fixture(scope="module")
def test_pngs(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """The first 6 official test images written as PNG files into class folders, with their labels."""
    s = load_splits(compose_cfg(f"data.root={DATA_ROOT}").data, 0)
    folder = tmp_path_factory.mktemp("pngs")
    names = ["normal", "pneumonia"]
    for i in range(6):
        (folder / names[s.test_y[i]]).mkdir(exist_ok=True)
        Image.fromarray(s.test_x[i, 0]).save(folder / names[s.test_y[i]] / f"test_{i}.png")
    return folder, s.test_x[:6], s.test_y[:6]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_split_is_preprocessed_exactly_as_the_run_tests(run_dir):
    # Prepare
    run = load_run(run_dir)
    cfg = OmegaConf.load(run_dir / CONFIG_FILE)

    # Execute
    x = input_tensors(run, read_split(run, "test"))

    # Assert: the same tensors the run's own test set holds
    expected = torch.stack([item[0] for item in sites.test_dataset(cfg)])
    assert x.shape == (624, 1, 28, 28)
    torch.testing.assert_close(x, expected, rtol=0, atol=0)


def test_png_files_give_the_split_arrays_tensors(run_dir, test_pngs):
    # Prepare
    folder, images, _ = test_pngs
    run = load_run(run_dir)
    files = sorted(folder.rglob("*.png"), key=lambda p: int(p.stem.split("_")[1]))

    # Execute
    from_files = input_tensors(run, read_inputs(run, files))

    # Assert
    split = read_split(run, "test").head(6)
    torch.testing.assert_close(from_files, input_tensors(run, split), rtol=0, atol=0)


def test_cli_on_files_writes_one_row_per_image_without_labels(run_dir, test_pngs, capsys):
    # Prepare
    folder, _, _ = test_pngs
    files = sorted(str(p) for p in folder.rglob("*.png"))[:3]

    # Execute
    code = main([str(run_dir), *files])

    # Assert
    rows = _rows(run_dir / "inference" / "predictions.csv")
    assert code == 0
    assert [r["path"] for r in rows] == files
    assert set(rows[0]) == {"path", "prob_normal", "prob_pneumonia", "predicted", "label", "encrypted"}
    assert all(r["label"] == "" and r["encrypted"] == "false" for r in rows)
    assert all(abs(float(r["prob_normal"]) + float(r["prob_pneumonia"]) - 1) < 1e-5 for r in rows)
    summary = json.loads((run_dir / "inference" / "summary.json").read_text())
    assert summary["images"] == 3 and summary["metrics"] is None
    assert "3 images" in capsys.readouterr().out


def test_cli_on_a_class_folder_labels_rows_and_scores_them(run_dir, test_pngs):
    # Prepare
    folder, images, labels = test_pngs
    run = load_run(run_dir)

    # Execute
    code = main([str(run_dir), str(folder)])

    # Assert: labels from the class folders; probabilities are the model's on those images
    rows = _rows(run_dir / "inference" / "predictions.csv")
    assert code == 0 and len(rows) == 6
    by_name = {Path(r["path"]).stem: r for r in rows}
    plain = torch.softmax(predict_logits(run, input_tensors(run, read_split(run, "test").head(6))), 1)
    for i in range(6):
        row = by_name[f"test_{i}"]
        assert row["label"] == run.class_names[labels[i]]
        assert float(row["prob_pneumonia"]) == pytest.approx(float(plain[i, 1]), abs=1e-5)
        assert row["predicted"] == run.class_names[int(plain[i].argmax())]
    summary = json.loads((run_dir / "inference" / "summary.json").read_text())
    assert summary["labelled"] == 6 and 0 <= summary["metrics"]["accuracy"] <= 1


def test_cli_on_a_manifest_reads_names_indices_and_blank_labels(run_dir, test_pngs, tmp_path):
    # Prepare: paths relative to the manifest, labels as a name, an index and unknown
    folder, _, labels = test_pngs
    files = sorted(folder.rglob("*.png"), key=lambda p: int(p.stem.split("_")[1]))[:3]
    manifest = folder / "list.csv"
    manifest.write_text(
        "file,diagnosis\n"
        f"{files[0].relative_to(folder)},{['normal', 'pneumonia'][labels[0]]}\n"
        f"{files[1].relative_to(folder)},{labels[1]}\n"
        f"{files[2].relative_to(folder)},\n"
    )

    # Execute
    code = main([str(run_dir), str(manifest), "--image-column", "file", "--label-column", "diagnosis"])

    # Assert
    rows = _rows(run_dir / "inference" / "predictions.csv")
    names = ["normal", "pneumonia"]
    assert code == 0
    assert [r["label"] for r in rows] == [names[labels[0]], names[labels[1]], ""]
    assert [Path(r["path"]).name for r in rows] == [f.name for f in files]


def test_cli_on_the_test_split_scores_it(run_dir, capsys):
    # Execute
    code = main([str(run_dir), "--split", "test", "--limit", "40"])

    # Assert
    rows = _rows(run_dir / "inference" / "predictions.csv")
    summary = json.loads((run_dir / "inference" / "summary.json").read_text())
    assert code == 0
    assert [r["index"] for r in rows] == [str(i) for i in range(40)]
    assert all(r["label"] in ("normal", "pneumonia") for r in rows)
    assert summary["source"] == "test split" and summary["labelled"] == 40
    assert 0 <= summary["metrics"]["auc"] <= 1
    assert "AUC" in capsys.readouterr().out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize(
    ("size", "mode", "fragment"),
    [(32, "L", "32x32 with 1 channel"), (28, "RGB", "3 channel")],
    ids=["wrong-size", "wrong-channels"],
)
def test_images_of_the_wrong_size_or_channels_are_refused(run_dir, tmp_path, capsys, size, mode, fragment):
    # Prepare
    path = tmp_path / "bad.png"
    Image.new(mode, (size, size)).save(path)

    # Execute
    code = main([str(run_dir), str(path)])

    # Assert
    line = _one_line_error(capsys)
    assert code == 2 and fragment in line and "bad.png" in line and "28x28" in line


def test_a_run_without_a_final_model_is_refused(run_dir, tmp_path, capsys):
    # Prepare
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / CONFIG_FILE).write_text((run_dir / CONFIG_FILE).read_text())

    # Execute
    code = main([str(unfinished), "--split", "test"])

    # Assert
    assert code == 2 and "no model.pt" in _one_line_error(capsys)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["missing.png"], "does not exist"),
        (["--split", "test", "--data-root", "/nonexistent"], "not found"),
    ],
)
def test_bad_inputs_give_one_line(run_dir, capsys, args, fragment):
    # Execute
    code = main([str(run_dir), *args])

    # Assert
    assert code == 2 and fragment in _one_line_error(capsys)


def test_a_manifest_without_the_column_names_the_columns(run_dir, tmp_path, capsys):
    # Prepare
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label\nx.png,normal\n")

    # Execute
    code = main([str(run_dir), str(manifest)])

    # Assert
    line = _one_line_error(capsys)
    assert code == 2 and "'path'" in line and "['image', 'label']" in line and "--image-column" in line


def test_weights_of_another_network_are_refused(tmp_path):
    # Prepare: a run folder whose model.pt belongs to the default cnn
    cfg = compose_cfg("model=he_cnn", f"data.root={DATA_ROOT}")
    (tmp_path / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg))
    save_model(build_model(compose_cfg("model=cnn", f"data.root={DATA_ROOT}"), 1, 2, 28), tmp_path / MODEL_FILE)

    # Execute / Assert
    with pytest.raises(DataError, match="does not fit the run's network"):
        load_run(tmp_path)


def test_a_folder_trained_run_reads_files_through_its_own_pipeline(tmp_path):
    # Prepare: a run on a hospital's class folders of 40x40 PNGs, resized to 28 by its MONAI preprocessing
    rng = np.random.default_rng(0)
    root = tmp_path / "export"
    for name in ("healthy", "sick"):
        (root / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(root / name / f"{i}.png")
    run_dir = make_run(tmp_path / "run", "data=folder", f"data.root={root}", "data.image_size=28", "data.cache=none")
    run = load_run(run_dir)
    cfg = OmegaConf.load(run_dir / CONFIG_FILE)

    # Execute
    split = input_tensors(run, read_split(run, "test"))
    single = input_tensors(run, read_inputs(run, [root / "sick" / "0.png"]))

    # Assert: the run's own test tensors; any size is taken (as training took it)
    torch.testing.assert_close(split, torch.stack([item[0] for item in sites.test_dataset(cfg)]), rtol=0, atol=0)
    assert run.class_names == ["healthy", "sick"]
    assert single.shape == (1, 1, 28, 28)
