"""Data loaders: the real PneumoniaMNIST file, a hospital's folder export, synthetic images, splits.

Reading manifests, DICOM and NIfTI: tests/task/test_hospital_files.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_cfg
from PIL import Image

from pipeline.errors import DataError
from pipeline.task.data import FileImages, ImageDataset, load_splits, make_dataset, make_synthetic, stratified_split
from pipeline.task.manifest import class_folder_rows


@pytest.fixture(scope="module")
def pneumonia(data_root):
    cfg = compose_cfg("data=pneumoniamnist", f"data.root={data_root}")
    return load_splits(cfg.data, seed=0)


def _write_class_folders(root: Path, counts: dict[str, int], size: int = 12, mode: str = "L", seed: int = 0) -> None:
    """``root/<class>/img_i.png`` with ``counts[class]`` small random images each."""
    rng = np.random.default_rng(seed)
    channels = 1 if mode == "L" else 3
    for name, count in counts.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(size, size, channels), dtype=np.uint8)
            Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode).save(folder / f"img_{i}.png")


def test_pneumoniamnist_shapes_and_classes(pneumonia):
    # Execute / Assert
    assert pneumonia.train_x.shape == (4708, 1, 28, 28)
    assert pneumonia.train_x.dtype == np.uint8
    assert pneumonia.test_x.shape == (624, 1, 28, 28)
    assert pneumonia.test_x.dtype == np.uint8
    assert pneumonia.train_y.shape == (4708,) and pneumonia.test_y.shape == (624,)
    assert pneumonia.num_classes == 2
    assert pneumonia.class_names == ["normal", "pneumonia"]
    assert set(np.unique(pneumonia.train_y)) == {0, 1}
    assert (pneumonia.channels, pneumonia.image_size) == (1, 28)


def test_pneumoniamnist_matches_the_npz_file(pneumonia, data_root):
    # Prepare
    with np.load(data_root / "pneumoniamnist.npz") as npz:
        raw_x, raw_y = npz["train_images"], npz["train_labels"]

    # Execute / Assert: only an added channel axis, no reordering or rescaling
    np.testing.assert_array_equal(pneumonia.train_x[:, 0], raw_x)
    np.testing.assert_array_equal(pneumonia.train_y, raw_y.reshape(-1))


def test_missing_medmnist_file_names_the_path_and_the_download_switch(tmp_path):
    # Prepare
    cfg = compose_cfg("data=pneumoniamnist", f"data.root={tmp_path}")

    # Execute
    with pytest.raises(DataError) as err:
        load_splits(cfg.data, seed=0)

    # Assert
    assert str(tmp_path / "pneumoniamnist.npz") in str(err.value)
    assert "data.download" in str(err.value)


def test_limit_caps_both_splits(data_root):
    # Prepare
    cfg = compose_cfg("data=pneumoniamnist", f"data.root={data_root}", "data.limit=50")

    # Execute
    first = load_splits(cfg.data, seed=3)
    again = load_splits(cfg.data, seed=3)

    # Assert
    assert first.train_x.shape == (50, 1, 28, 28)
    assert first.test_x.shape == (50, 1, 28, 28)
    np.testing.assert_array_equal(first.train_y, again.train_y)
    np.testing.assert_array_equal(first.train_x, again.train_x)


def _folder_cfg(*overrides: str):
    return compose_cfg("data=folder", "data.cache=none", *overrides)


def test_folder_without_test_root_holds_out_a_stratified_share(tmp_path):
    # Prepare
    _write_class_folders(tmp_path / "export", {"cancer": 10, "healthy": 20})
    cfg = _folder_cfg(f"data.root={tmp_path / 'export'}", "data.test_fraction=0.2", "data.image_size=28")

    # Execute
    splits = load_splits(cfg.data, seed=0)

    # Assert: files, not pixels, until a dataset reads them
    assert splits.class_names == ["cancer", "healthy"]
    assert isinstance(splits.train_x, FileImages)
    assert splits.train_x.shape == (24, 1, 28, 28)
    assert splits.test_x.shape == (6, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(splits.test_y), [2, 4])
    np.testing.assert_array_equal(np.bincount(splits.train_y), [8, 16])
    assert not set(splits.train_x.paths) & set(splits.test_x.paths)


def test_folder_with_test_root_uses_it_whole(tmp_path):
    # Prepare
    _write_class_folders(tmp_path / "train", {"a": 6, "b": 4}, seed=1)
    _write_class_folders(tmp_path / "test", {"a": 3, "b": 2}, seed=2)
    cfg = _folder_cfg(f"data.root={tmp_path / 'train'}", f"data.test_root={tmp_path / 'test'}", "data.image_size=16")

    # Execute
    splits = load_splits(cfg.data, seed=0)
    x, _ = make_dataset(cfg.data, splits.test_x, splits.test_y)[0]

    # Assert
    assert splits.train_x.shape == (10, 1, 16, 16)
    assert splits.test_x.shape == (5, 1, 16, 16)
    assert x.shape == (1, 16, 16)
    np.testing.assert_array_equal(splits.train_y, [0] * 6 + [1] * 4)
    np.testing.assert_array_equal(splits.test_y, [0, 0, 0, 1, 1])


def test_folder_test_root_with_other_classes_is_refused(tmp_path):
    # Prepare
    _write_class_folders(tmp_path / "train", {"a": 3, "b": 3})
    _write_class_folders(tmp_path / "test", {"a": 2, "c": 2})
    cfg = _folder_cfg(f"data.root={tmp_path / 'train'}", f"data.test_root={tmp_path / 'test'}")

    # Execute / Assert
    with pytest.raises(DataError, match="differ"):
        load_splits(cfg.data, seed=0)


def test_folder_reads_pixels_unchanged_at_native_size(tmp_path):
    # Prepare: a fixed window [0, 255] maps the stored values straight to [0, 1]
    img = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    for name in ("x", "y"):
        (tmp_path / name).mkdir()
        Image.fromarray(img, mode="L").save(tmp_path / name / "one.png")
    cfg = _folder_cfg(f"data.root={tmp_path}", "data.image_size=8", "data.intensity=[0,255]", "data.test_fraction=0.5")

    # Execute
    splits = load_splits(cfg.data, seed=0)
    x, y = make_dataset(cfg.data, splits.train_x, splits.train_y)[0]

    # Assert: rows stay rows (numpy order), values unchanged up to (v / 255 - mean) / std
    np.testing.assert_allclose(x[0].numpy(), (img / 255.0 - 0.5) / 0.5, atol=1e-6)
    assert int(y) in (0, 1)


def test_folder_with_one_class_names_the_folder(tmp_path):
    # Prepare
    _write_class_folders(tmp_path / "export", {"only": 4})
    cfg = _folder_cfg(f"data.root={tmp_path / 'export'}")

    # Execute
    with pytest.raises(DataError) as err:
        load_splits(cfg.data, seed=0)

    # Assert
    assert str(tmp_path / "export") in str(err.value)


def test_missing_folder_names_the_folder(tmp_path):
    # Execute
    with pytest.raises(DataError) as err:
        class_folder_rows(tmp_path / "absent")

    # Assert
    assert str(tmp_path / "absent") in str(err.value)


def test_class_folder_without_images_names_it(tmp_path):
    # Prepare
    _write_class_folders(tmp_path, {"a": 2})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("no images here")

    # Execute
    with pytest.raises(DataError) as err:
        class_folder_rows(tmp_path)

    # Assert
    assert str(tmp_path / "b") in str(err.value)


def test_rgb_folder_gives_three_channels(tmp_path):
    # Prepare
    _write_class_folders(tmp_path / "export", {"a": 5, "b": 5}, mode="RGB")
    cfg = _folder_cfg(f"data.root={tmp_path / 'export'}", "data.channels=3", "data.image_size=20")

    # Execute
    splits = load_splits(cfg.data, seed=0)
    x, _ = make_dataset(cfg.data, splits.train_x, splits.train_y)[0]

    # Assert
    assert splits.channels == 3
    assert splits.train_x.shape[1:] == (3, 20, 20)
    assert len(splits.train_y) + len(splits.test_y) == 10
    # random RGB pixels: the three channels differ (not a greyscale copy)
    assert x.shape == (3, 20, 20) and not torch.equal(x[0], x[1])


def test_rgb_images_read_as_greyscale_are_their_luma(tmp_path):
    # Prepare: one colour, so that min-max scaling cannot hide the mix of channels
    pixels = np.zeros((6, 6, 3), np.uint8)
    pixels[:3] = (200, 40, 10)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(pixels, mode="RGB").save(tmp_path / name / "c.png")
    cfg = _folder_cfg(f"data.root={tmp_path}", "data.image_size=6", "data.intensity=[0,255]", "data.test_fraction=0.5")

    # Execute
    splits = load_splits(cfg.data, seed=0)
    x, _ = make_dataset(cfg.data, splits.train_x, splits.train_y)[0]

    # Assert: BT.601 luma, as PIL's convert("L")
    luma = 0.299 * 200 + 0.587 * 40 + 0.114 * 10
    assert x.shape == (1, 6, 6)
    assert float(x[0, 0, 0]) == pytest.approx((luma / 255 - 0.5) / 0.5, abs=1e-5)
    assert float(x[0, 5, 0]) == pytest.approx(-1.0)


def test_synthetic_is_deterministic_per_seed():
    # Prepare
    cfg = compose_cfg("data=synthetic", "data.num_samples=120", "data.num_classes=3", "data.channels=3")

    # Execute
    a = load_splits(cfg.data, seed=7)
    b = load_splits(cfg.data, seed=7)
    c = load_splits(cfg.data, seed=8)

    # Assert
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.train_y, b.train_y)
    np.testing.assert_array_equal(a.test_x, b.test_x)
    assert not np.array_equal(a.train_x, c.train_x)
    assert a.train_x.shape == (120, 3, 28, 28) and a.train_x.dtype == np.uint8
    assert a.test_x.shape == (30, 3, 28, 28)
    assert a.num_classes == 3 and set(np.unique(a.train_y)) == {0, 1, 2}


def test_synthetic_classes_differ_in_disc_brightness():
    # Execute
    s = make_synthetic(400, 2, 28, 1, seed=0)

    # Assert: the centre of class-1 images is brighter than that of class-0 images
    centre = s.train_x[:, 0, 12:16, 12:16].reshape(len(s.train_y), -1).mean(axis=1)
    assert centre[s.train_y == 1].mean() > centre[s.train_y == 0].mean() + 50


def test_stratified_split_keeps_class_proportions_and_is_disjoint():
    # Prepare
    labels = np.repeat([0, 1, 2], [100, 300, 50])
    np.random.default_rng(0).shuffle(labels)

    # Execute
    keep, held = stratified_split(labels, 0.2, seed=1)

    # Assert
    assert np.intersect1d(keep, held).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([keep, held])), np.arange(len(labels)))
    np.testing.assert_array_equal(np.bincount(labels[held]), [20, 60, 10])
    np.testing.assert_allclose(np.bincount(labels[keep]) / len(keep), np.bincount(labels) / len(labels), atol=1e-9)


def test_stratified_split_is_seeded():
    # Prepare
    labels = np.arange(200) % 2

    # Execute
    _, held_a = stratified_split(labels, 0.3, seed=1)
    _, held_b = stratified_split(labels, 0.3, seed=1)
    _, held_c = stratified_split(labels, 0.3, seed=2)

    # Assert
    np.testing.assert_array_equal(held_a, held_b)
    assert not np.array_equal(held_a, held_c)


def test_stratified_split_holds_at_least_one_of_each_class_with_two_or_more():
    # Prepare: 3 images of a rare class, a share that rounds to zero
    labels = np.array([0] * 40 + [1] * 3)

    # Execute
    keep, held = stratified_split(labels, 0.1, seed=0)

    # Assert
    assert (labels[held] == 1).sum() == 1
    assert (labels[keep] == 1).sum() == 2


def test_image_dataset_normalises():
    # Prepare
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 1, 5, 5), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1, 1, 0])
    mean, std = 0.3, 0.2

    # Execute
    ds = ImageDataset(images, labels, mean=mean, std=std)
    x, y = ds[4]

    # Assert
    assert len(ds) == 6
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    np.testing.assert_allclose(x.numpy(), (images[4] / 255.0 - mean) / std, rtol=1e-5, atol=1e-6)
    assert int(y) == 1


def test_image_dataset_augmentation_moves_the_image_and_keeps_its_shape():
    # Prepare: an image with structure (a bright square off-centre), so that an affine move shows
    images = np.zeros((1, 1, 28, 28), dtype=np.uint8)
    images[0, 0, 4:12, 16:24] = 255
    plain = ImageDataset(images, np.array([0]), mean=0.5, std=0.5, augment=False)
    augmented = ImageDataset(images, np.array([0]), mean=0.5, std=0.5, augment=True)
    torch.manual_seed(0)

    # Execute: several draws (each sample is augmented afresh)
    draws = [augmented[0][0] for _ in range(8)]

    # Assert
    assert all(x.shape == (1, 28, 28) and torch.isfinite(x).all() for x in draws)
    assert all(torch.equal(plain[0][0], plain[0][0]) for _ in range(2))  # off: always the same tensor
    moved = [float((x - plain[0][0]).abs().max()) for x in draws]
    assert max(moved) > 0.5, "augmentation on must change the image"
    assert len({round(float(x.sum()), 3) for x in draws}) > 1, "each draw is a different transform"
