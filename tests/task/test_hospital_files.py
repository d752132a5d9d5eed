"""Hospital exports as they are: DICOM (nested folders, 12-bit, rescaled), NIfTI, PNG; CSV and JSON manifests.

Every file is written by pydicom, nibabel or PIL into a temporary folder; reading goes through
MONAI's readers, as in a run.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_cfg
from omegaconf import OmegaConf
from PIL import Image

from pipeline.errors import ConfigError, DataError
from pipeline.task import sites
from pipeline.task.data import FileDataset, label_strata, load_splits, make_dataset
from pipeline.task.generated import (
    blob_volume,
    dicom_export,
    nifti_export,
    png_datalist,
    write_csv,
    write_dicom,
)
from pipeline.task.readers import ReadImaged, image_format, probe
from pipeline.task.transforms import IMAGE_KEY, no_metadata


def _manifest_cfg(manifest, *overrides: str, cache: str = "none"):
    return compose_cfg(
        "data=manifest",
        f"data.manifest={manifest}",
        "data.image_column=file",
        "data.label_column=finding",
        f"data.cache={cache}",
        *overrides,
    )


def _read(path) -> np.ndarray:
    with no_metadata():
        return np.asarray(ReadImaged(IMAGE_KEY).read(str(path)))


# --- readers -----------------------------------------------------------------------------------
def test_dicom_rescale_slope_and_intercept_are_applied(tmp_path):
    # Prepare: 12-bit values in 16-bit words, HU = 2 x stored - 1024
    stored = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 80) % 4096
    path = write_dicom(tmp_path / "ct.dcm", stored, slope=2.0, intercept=-1024.0)

    # Execute
    img = _read(path)

    # Assert: channel first, rows stay rows
    assert img.shape == (1, 6, 8)
    np.testing.assert_allclose(img[0], stored * 2.0 - 1024.0)


def test_dicom_keeps_only_the_bits_stored(tmp_path):
    # Prepare: the unused top 4 bits of a 12-bit word hold garbage (as some modalities write)
    stored = np.full((4, 4), 1000, dtype=np.uint16)
    stored[0, 0] = 0xF000 | 1000
    path = write_dicom(tmp_path / "x.dcm", stored, bits_stored=12)

    # Execute
    img = _read(path)

    # Assert
    np.testing.assert_array_equal(img[0], np.full((4, 4), 1000.0))


def test_monochrome1_is_shown_the_usual_way_round(tmp_path):
    # Prepare: the same pixels stored as MONOCHROME1 (0 = white) and MONOCHROME2 (0 = black)
    stored = np.arange(16, dtype=np.uint16).reshape(4, 4) * 200
    mono1 = write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")
    mono2 = write_dicom(tmp_path / "m2.dcm", 4095 - stored, photometric="MONOCHROME2")

    # Execute / Assert: same image once inverted
    np.testing.assert_allclose(_read(mono1), _read(mono2))


def test_dicom_series_folder_is_one_volume(tmp_path):
    # Prepare: 5 slices, written out of order (InstanceNumber orders them)
    rng = np.random.default_rng(0)
    slices = [rng.integers(0, 4000, (6, 7)).astype(np.uint16) for _ in range(5)]
    for k in (3, 0, 4, 1, 2):
        write_dicom(tmp_path / "series" / f"slice{k}", slices[k], instance=k + 1, position=float(k))

    # Execute
    header = probe(tmp_path / "series")
    img = _read(tmp_path / "series")

    # Assert: rows x columns x slices, in instance order
    assert image_format(tmp_path / "series") == "dicom"
    assert header.shape == (6, 7, 5)
    assert img.shape == (1, 6, 7, 5)
    for k in range(5):
        np.testing.assert_allclose(img[0, :, :, k], slices[k])


def test_nifti_volume_reads_as_stored(tmp_path):
    import nibabel

    # Prepare
    vol = blob_volume(np.random.default_rng(0), 10, True)
    nibabel.save(nibabel.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")

    # Execute / Assert
    np.testing.assert_allclose(_read(tmp_path / "v.nii.gz")[0], vol, rtol=1e-6)


def test_suffixless_dicom_is_recognised_by_its_preamble(tmp_path):
    # Prepare: exports often name files by UID, without a suffix
    write_dicom(tmp_path / "1.2.840.113619.2.55", np.zeros((4, 4), np.uint16))
    (tmp_path / "notes").write_text("not an image")

    # Execute / Assert
    assert image_format(tmp_path / "1.2.840.113619.2.55") == "dicom"
    assert image_format(tmp_path / "notes") is None


# --- manifests -----------------------------------------------------------------------------------
def test_nested_dicom_manifest_with_string_labels(tmp_path):
    # Prepare
    manifest = dicom_export(tmp_path / "export", 20, size=32)
    cfg = _manifest_cfg(manifest, "data.image_size=16", "data.test_fraction=0.25")

    # Execute
    s = load_splits(cfg.data, seed=0)
    data = make_dataset(cfg.data, s.train_x, s.train_y)
    x, y = data[0]

    # Assert: sorted string classes, a stratified 25 % (2 of each 10), resized, normalised to [-1, 1]
    assert s.class_names == ["normal", "pneumonia"]
    np.testing.assert_array_equal(np.bincount(s.test_y), [2, 2])
    assert s.train_x.shape == (16, 1, 16, 16) and x.shape == (1, 16, 16)
    assert float(x.min()) == pytest.approx(-1.0) and float(x.max()) == pytest.approx(1.0)
    assert y.dtype == torch.int64


def test_blob_is_brighter_in_the_finding_class(tmp_path):
    # Prepare
    manifest = dicom_export(tmp_path / "export", 16, size=32)
    cfg = _manifest_cfg(manifest, "data.image_size=32")
    s = load_splits(cfg.data, seed=0)
    data = make_dataset(cfg.data, s.train_x, s.train_y)

    # Execute
    centre = {0: [], 1: []}
    for i in range(len(data)):
        x, y = data[i]
        centre[int(y)].append(float(x[0, 12:20, 12:20].mean()))

    # Assert: the label is visible in the pixels
    assert np.mean(centre[1]) > np.mean(centre[0]) + 0.5


def test_integer_labels_and_a_fixed_class_order(tmp_path):
    # Prepare
    manifest = nifti_export(tmp_path / "vols", 8, size=8)
    cfg = _manifest_cfg(manifest, "data.spatial_dims=3", "data.image_size=8", "data.classes=[1,0]")

    # Execute
    s = load_splits(cfg.data, seed=0)
    written = [int(p[-10:-7]) % 2 for p in [*s.train_x.paths, *s.test_x.paths]]  # case<i>.nii.gz has label i % 2

    # Assert: label 1 is class 0 because data.classes says so
    assert s.class_names == ["1", "0"]
    np.testing.assert_array_equal([*s.train_y, *s.test_y], [1 - w for w in written])


def test_nifti_volumes_give_3d_tensors(tmp_path):
    # Prepare
    manifest = nifti_export(tmp_path / "vols", 8, size=12)
    cfg = _manifest_cfg(manifest, "data.spatial_dims=3", "data.image_size=8", "data.augment=true")

    # Execute
    s = load_splits(cfg.data, seed=0)
    x, y = make_dataset(cfg.data, s.train_x, s.train_y, augment=True)[0]

    # Assert
    assert s.class_names == ["0", "1"] and s.spatial_dims == 3
    assert x.shape == (1, 8, 8, 8) and torch.isfinite(x).all()


def test_png_json_datalist_with_its_own_test_entries(tmp_path):
    # Prepare
    path = png_datalist(tmp_path / "task", 10, test=4)
    cfg = compose_cfg("data=manifest", f"data.manifest={path}", "data.cache=none", "data.image_size=24")

    # Execute
    s = load_splits(cfg.data, seed=0)
    x, _ = make_dataset(cfg.data, s.test_x, s.test_y)[0]

    # Assert: Decathlon keys image/label; the datalist's "test" list is the held-out test set
    assert (len(s.train_y), len(s.test_y)) == (10, 4)
    assert all("imagesTr" in p for p in s.test_x.paths)
    assert x.shape == (1, 24, 24)


def test_test_manifest_is_the_held_out_set(tmp_path):
    # Prepare
    train = dicom_export(tmp_path / "a", 8, size=16)
    test = dicom_export(tmp_path / "b", 6, size=16, seed=1)
    cfg = _manifest_cfg(train, f"data.test_manifest={test}", "data.image_size=16")

    # Execute
    s = load_splits(cfg.data, seed=0)

    # Assert
    assert (len(s.train_y), len(s.test_y)) == (8, 6)
    assert all(str(tmp_path / "b") in p for p in s.test_x.paths)


def test_multi_label_manifest_is_multi_hot(tmp_path):
    # Prepare
    root = tmp_path / "cxr"
    write_csv(
        root / "labels.csv",
        [
            {"file": "a.png", "finding": "Cardiomegaly|Effusion"},
            {"file": "b.png", "finding": ""},
            {"file": "c.png", "finding": "Effusion"},
            {"file": "d.png", "finding": "Cardiomegaly"},
        ],
        ["file", "finding"],
    )
    for name in "abcd":
        Image.fromarray(np.full((8, 8), ord(name), np.uint8)).save(root / f"{name}.png")
    cfg = _manifest_cfg(root / "labels.csv", "data.multi_label=true", "data.image_size=8", "data.test_fraction=0.25")

    # Execute
    s = load_splits(cfg.data, seed=0)
    y = {
        p[-5:]: row.tolist()
        for p, row in zip([*s.train_x.paths, *s.test_x.paths], [*s.train_y, *s.test_y], strict=True)
    }
    _, label = make_dataset(cfg.data, s.train_x, s.train_y)[0]

    # Assert: findings sorted, an empty cell = no finding, float targets for BCE
    assert s.class_names == ["Cardiomegaly", "Effusion"] and s.multi_label
    assert y == {"a.png": [1, 1], "b.png": [0, 0], "c.png": [0, 1], "d.png": [1, 0]}
    assert label.dtype == torch.float32 and label.shape == (2,)


def test_label_strata_take_the_rarest_finding():
    # Prepare: finding 1 is the rarest
    labels = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 1], [0, 0, 1]], dtype=np.float32)

    # Execute / Assert: rarest present finding, 3 (= findings) for none
    np.testing.assert_array_equal(label_strata(labels), [1, 0, 3, 2, 2])


def test_partitioning_reads_no_pixel(tmp_path, monkeypatch):
    # Prepare: any pixel read fails
    manifest = dicom_export(tmp_path / "export", 30, size=16)
    cfg = _manifest_cfg(manifest, "data.image_size=16", "seed=5")

    def no_pixels(self, path):
        raise AssertionError(f"pixels of {path} read")

    monkeypatch.setattr(ReadImaged, "read", no_pixels)

    # Execute
    shares = sites.hospital_shares(cfg)

    # Assert
    assert len(shares) == 3 and sum(len(t) + len(v) for t, v in shares) == 24


# --- caches --------------------------------------------------------------------------------------
def test_persistent_cache_is_private_reused_and_renewed_when_a_file_changes(tmp_path):
    # Prepare
    manifest = dicom_export(tmp_path / "export", 4, size=16)
    cache = tmp_path / "cache"
    cfg = _manifest_cfg(
        manifest, "data.image_size=16", f"data.cache_dir={cache}", "data.intensity=[-1024,7000]", cache="persistent"
    )
    s = load_splits(cfg.data, seed=0)
    first = make_dataset(cfg.data, s.train_x, s.train_y)
    x0 = first[0][0]

    # Execute: a second dataset reads the cache; then the file changes
    cached = sorted(cache.rglob("*.pt"))
    again = make_dataset(cfg.data, s.train_x, s.train_y)[0][0]
    target = s.train_x.paths[0]
    write_dicom(Path(target), np.zeros((16, 16), np.uint16), slope=2.0, intercept=-1024.0)
    os.utime(target, ns=(1, 1))
    renewed = load_splits(cfg.data, seed=0)
    changed = make_dataset(cfg.data, renewed.train_x, renewed.train_y)[0][0]

    # Assert
    assert len(cached) == 1 and stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cached[0].parent).st_mode) == 0o700
    assert torch.equal(x0, again)
    assert not torch.equal(x0, changed) and float(changed.max()) == pytest.approx(-1.0)


def test_memory_cache_keeps_at_most_its_budget(tmp_path):
    # Prepare: 16 x 16 float32 = 1 KiB per image, a budget of 3 KiB
    manifest = dicom_export(tmp_path / "export", 8, size=16)
    cfg = _manifest_cfg(manifest, "data.image_size=16", f"data.cache_memory={3 / 1024}", cache="memory")
    s = load_splits(cfg.data, seed=0)

    # Execute
    data = make_dataset(cfg.data, s.train_x, s.train_y)
    first = [data[i][0] for i in range(len(data))]
    second = [data[i][0] for i in range(len(data))]

    # Assert
    assert isinstance(data, FileDataset)
    assert data.images.cache_num == 3
    assert sum(item is not None for item in data.images._cache) == 3
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


# --- augmentation --------------------------------------------------------------------------------
def test_augment_list_builds_monai_transforms(tmp_path):
    # Prepare: a flip that always fires
    manifest = dicom_export(tmp_path / "export", 4, size=16)
    flip = "data.augment=[{_target_: monai.transforms.RandFlip, prob: 1.0, spatial_axis: 1}]"
    cfg = _manifest_cfg(manifest, "data.image_size=16", flip)
    s = load_splits(cfg.data, seed=0)

    # Execute
    plain = make_dataset(cfg.data, s.train_x, s.train_y)[0][0]
    flipped = make_dataset(cfg.data, s.train_x, s.train_y, augment=True)[0][0]

    # Assert
    torch.testing.assert_close(flipped, plain.flip(-1))


@pytest.mark.parametrize(
    ("augment", "fragment"),
    [
        ("[{_target_: monai.transforms.RandFlipd, keys: image}]", "not a MONAI array transform"),
        ("[{_target_: monai.transforms.NormalizeIntensity}]", "is not random"),
        ("[{_target_: monai.transforms.NoSuchThing}]", "cannot build"),
    ],
)
def test_augment_entries_that_do_not_fit_are_refused(tmp_path, augment, fragment):
    # Prepare
    manifest = dicom_export(tmp_path / "export", 4, size=16)
    cfg = _manifest_cfg(manifest, "data.image_size=16", f"data.augment={augment}")
    s = load_splits(cfg.data, seed=0)

    # Execute / Assert
    with pytest.raises(ConfigError, match=fragment):
        make_dataset(cfg.data, s.train_x, s.train_y, augment=True)


# --- bad input -----------------------------------------------------------------------------------
def test_missing_column_names_the_columns_there_are(tmp_path):
    manifest = dicom_export(tmp_path / "export", 4, size=8)
    cfg = _manifest_cfg(manifest, "data.label_column=diagnosis")

    with pytest.raises(DataError) as err:
        load_splits(cfg.data, seed=0)

    assert "'diagnosis'" in str(err.value) and "'file', 'finding'" in str(err.value)
    assert "\n" not in str(err.value)


def test_label_outside_classes_names_the_row_and_the_value(tmp_path):
    manifest = dicom_export(tmp_path / "export", 6, size=8, labels=("normal", "pneumonia", "covid"))
    cfg = _manifest_cfg(manifest, "data.classes=[normal,pneumonia]")

    with pytest.raises(DataError) as err:
        load_splits(cfg.data, seed=0)

    assert f"{manifest} line 4" in str(err.value) and "'covid'" in str(err.value)


def test_missing_files_are_refused_naming_the_first_and_the_count(tmp_path):
    # Prepare: two rows name files that are not there, one file is no image
    root = tmp_path / "export"
    manifest = dicom_export(root, 12, size=8)
    (root / "patient0003" / "study1" / "IM00003.dcm").unlink()
    (root / "patient0005" / "study1" / "IM00005.dcm").unlink()
    (root / "patient0007" / "study1" / "IM00007.dcm").write_bytes(b"not a dicom file at all")
    cfg = _manifest_cfg(manifest)

    # Execute
    with pytest.raises(DataError) as err:
        load_splits(cfg.data, seed=0)

    # Assert: one line, the count, the first files and why, and the way out
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("3 of 12 image files cannot be used")
    assert "IM00003.dcm (not found)" in message and "IM00005.dcm (not found)" in message
    assert "data.on_bad_file=skip" in message


def test_skipping_bad_files_leaves_them_out_with_a_warning_naming_them(tmp_path, caplog):
    # Prepare
    root = tmp_path / "export"
    manifest = dicom_export(root, 12, size=8)
    (root / "patient0003" / "study1" / "IM00003.dcm").unlink()
    cfg = _manifest_cfg(manifest, "data.on_bad_file=skip")

    # Execute
    with caplog.at_level(logging.WARNING):
        s = load_splits(cfg.data, seed=0)

    # Assert
    assert len(s.train_y) + len(s.test_y) == 11
    assert not any("IM00003" in p for p in [*s.train_x.paths, *s.test_x.paths])
    assert "IM00003.dcm" in caplog.text and "left out 1 of 12" in caplog.text


def test_a_volume_in_a_2d_data_set_is_a_bad_file(tmp_path):
    import nibabel

    manifest = nifti_export(tmp_path / "vols", 4, size=8)
    cfg = _manifest_cfg(manifest)
    nibabel.save(nibabel.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), tmp_path / "vols" / "x.nii")

    with pytest.raises(DataError, match=r"3D image \(8x8x8\) but data.spatial_dims=2"):
        load_splits(cfg.data, seed=0)


def test_truncated_dicom_is_found_at_the_start(tmp_path):
    path = write_dicom(tmp_path / "t.dcm", np.zeros((64, 64), np.uint16))
    path.write_bytes(path.read_bytes()[:-2000])

    header_error = pytest.raises(Exception, match="truncated DICOM")
    with header_error:
        probe(path)


def test_shrinking_more_than_4x_is_warned(tmp_path, caplog):
    # Prepare: 128 px images read at 16 px
    manifest = dicom_export(tmp_path / "export", 4, size=128)
    cfg = _manifest_cfg(manifest, "data.image_size=16")

    # Execute
    with caplog.at_level(logging.WARNING):
        load_splits(cfg.data, seed=0)

    # Assert
    assert "shrunk 8x to data.image_size=16" in caplog.text


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("data.cache=disk", "data.cache='disk'"),
        ("data.on_bad_file=ignore", "data.on_bad_file='ignore'"),
        ("data.spatial_dims=4", "data.spatial_dims=4"),
        ("data.intensity=[5,1]", "data.intensity"),
        ("data.augment=maybe", "data.augment"),
        ("data.classes=[a,a]", "data.classes"),
    ],
)
def test_bad_data_settings_are_config_errors(override, fragment):
    with pytest.raises(ConfigError) as err:
        compose_cfg("data=manifest", "data.manifest=m.csv", override)

    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_3d_needs_file_data():
    with pytest.raises(ConfigError, match="data.spatial_dims=3 needs volumes"):
        compose_cfg("data=synthetic", "+data.spatial_dims=3")


def test_multi_label_needs_a_manifest(tmp_path):
    with pytest.raises(ConfigError, match="data.multi_label=true needs a manifest"):
        compose_cfg("data=folder", f"data.root={tmp_path}", "+data.multi_label=true")


# --- a hospital's own data -----------------------------------------------------------------------
def test_own_manifest_in_the_data_root(tmp_path):
    # Prepare: the hospital's data-root holds a manifest named like data.manifest
    dicom_export(tmp_path / "site", 20, size=16)
    cfg = _manifest_cfg("manifest.csv", "data.image_size=16", "data.classes=[normal,pneumonia]")

    # Execute
    own = sites.own_hospital_data(cfg, str(tmp_path / "site"))

    # Assert: all of it, a stratified validation share kept back
    assert own.num_train + len(own.val) == 20 and len(own.val) == 2
    assert (own.channels, own.num_classes, own.image_size) == (1, 2, 16)
    assert own.train[0][0].shape == (1, 16, 16)


def test_own_manifest_without_classes_is_refused(tmp_path):
    dicom_export(tmp_path / "site", 4, size=8)
    cfg = _manifest_cfg("manifest.csv")

    with pytest.raises(ConfigError, match="data.classes"):
        sites.own_hospital_data(cfg, str(tmp_path / "site"))


def _dicom_class_folders(root: Path) -> None:
    """root/<class>/patient<i>/study1/<file>: 12-bit, slope 2, intercept -1024; two files have no suffix."""
    for c, name in enumerate(("effusion", "normal")):
        for i in range(4):
            stored = np.full((8, 8), 100 + 1000 * c + i, np.uint16)
            file = f"IM{i}.dcm" if i < 3 else "1.2.840.99"
            write_dicom(root / name / f"patient{i}" / "study1" / file, stored, slope=2.0, intercept=-1024.0)


def test_folder_layout_reads_nested_dicom_by_class_folder(tmp_path):
    # Prepare
    _dicom_class_folders(tmp_path / "export")
    cfg = compose_cfg(
        "data=folder",
        f"data.root={tmp_path / 'export'}",
        "data.image_size=8",
        "data.cache=none",
        "data.intensity=[-1024,3072]",
    )

    # Execute
    s = load_splits(cfg.data, seed=0)
    data = make_dataset(cfg.data, s.train_x, s.train_y)
    values = {
        Path(p).parent.parent.parent.name + "/" + Path(p).name: float(data[i][0][0, 0, 0])
        for i, p in enumerate(s.train_x.paths)
    }

    # Assert: every file found (suffixless ones too), labelled by its class folder, rescaled before the window
    assert s.class_names == ["effusion", "normal"] and len(s.train_y) + len(s.test_y) == 8
    assert {Path(p).name for p in [*s.train_x.paths, *s.test_x.paths]} >= {"1.2.840.99"}
    for key, value in values.items():
        cls, file = key.split("/")
        stored = 100 + 1000 * (cls == "normal") + (int(file[2]) if file.startswith("IM") else 3)
        rescaled = 2.0 * stored - 1024.0  # then the window [-1024, 3072] to [0, 1], then (x - 0.5) / 0.5
        assert value == pytest.approx(((rescaled + 1024.0) / 4096 - 0.5) / 0.5, abs=1e-5)


def test_own_dicom_class_folders_in_the_data_root(tmp_path):
    # Prepare: a deployment hospital's data-root holds DICOM class folders
    _dicom_class_folders(tmp_path / "site")
    cfg = compose_cfg("data=folder", "data.root=unused", "data.image_size=8", "data.cache=none")

    # Execute
    own = sites.own_hospital_data(cfg, str(tmp_path / "site"))

    # Assert
    assert own.num_train + len(own.val) == 8 and own.num_classes == 2
    assert own.train[0][0].shape == (1, 8, 8)


def test_preprocessing_key_follows_the_settings(tmp_path):
    from pipeline.task.transforms import preprocessing_key

    a = OmegaConf.create(
        {"channels": 1, "spatial_dims": 2, "image_size": 64, "intensity": "minmax", "mean": 0.5, "std": 0.5}
    )
    b = OmegaConf.merge(a, {"image_size": 32})

    assert preprocessing_key(a) == preprocessing_key(OmegaConf.create(OmegaConf.to_container(a)))
    assert preprocessing_key(a) != preprocessing_key(b)


def test_a_file_broken_after_the_start_names_itself_when_read(tmp_path):
    # Prepare: the header check passed, then the file is overwritten with garbage
    manifest = dicom_export(tmp_path / "export", 4, size=8)
    cfg = _manifest_cfg(manifest, "data.image_size=8")
    s = load_splits(cfg.data, seed=0)
    data = make_dataset(cfg.data, s.train_x, s.train_y)
    Path(s.train_x.paths[0]).write_bytes(b"garbage")

    # Execute / Assert
    with pytest.raises(DataError) as err:
        data[0]
    assert str(err.value).startswith(f"{s.train_x.paths[0]} cannot be read") and "\n" not in str(err.value)
