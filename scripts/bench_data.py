"""Hospital data at scale: loading throughput of DICOM files, and the memory of a run on a large manifest.

    python scripts/bench_data.py throughput [--files 2000] [--size 64]
    python scripts/bench_data.py memory [--files 2000 20000] [--size 64]

``throughput``: generated size x size 12-bit DICOM files (nested patient/study folders, a CSV
manifest) read through the pipeline's FileDataset (MONAI PydicomReader, resize, intensity,
normalisation) in batches of 128: images/s without a cache, with MONAI's PersistentDataset on
its first pass (reading and writing the cache) and on later passes (reading the cache), and with
the in-memory cache once filled; plus the header check every run makes at the start (files/s).

``memory``: for each manifest size, one real 3-hospital run of the default private pipeline
(DP-SGD + CKKS, CNN, 1 round of 1 epoch, persistent cache) through ``python -m pipeline.run``,
and the peak resident memory of its whole process tree (driver, Ray, hospitals; sampled every
0.2 s). Bounded memory means the peak does not grow with the number of files.

Files are generated into a temporary folder and removed afterwards. Prints Markdown rows for
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_scale import measured_run  # noqa: E402  (scripts/ is this script's folder)

from pipeline.config import compose  # noqa: E402
from pipeline.task.data import load_splits, make_dataset  # noqa: E402
from pipeline.task.generated import dicom_export  # noqa: E402

BATCH = 128


def manifest_overrides(manifest: Path, cache_dir: Path, size: int, cache: str = "persistent") -> list[str]:
    """The overrides of a run on ``manifest`` (a DICOM export made by :func:`dicom_export`)."""
    return [
        "data=manifest",
        f"data.manifest={manifest}",
        "data.image_column=file",
        "data.label_column=finding",
        f"data.image_size={size}",
        f"data.cache={cache}",
        f"data.cache_dir={cache_dir}",
    ]


def images_per_second(dataset) -> float:
    """One pass over ``dataset`` in batches, as training reads it."""
    start = time.perf_counter()
    count = sum(len(y) for _, y in DataLoader(dataset, batch_size=BATCH))
    return count / (time.perf_counter() - start)


def throughput(files: int, size: int) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        manifest = dicom_export(Path(tmp) / "export", files, size=size)
        print(f"generated {files} DICOM files of {size}x{size} in {time.perf_counter() - started:.0f} s")
        print(f"machine: {platform.processor() or platform.machine()}, 1 torch thread, batch {BATCH}\n")
        print("| data | cache | pass | images/s |\n|---|---|---|---|")
        for cache in ("none", "persistent", "memory"):
            cfg = compose(*manifest_overrides(manifest, Path(tmp) / "cache", size, cache), "data.test_fraction=0.01")
            start = time.perf_counter()
            s = load_splits(cfg.data, seed=0)
            scan = (len(s.train_y) + len(s.test_y)) / (time.perf_counter() - start)
            if cache == "none":
                print(f"| {files} DICOM {size}x{size} | header check at start | - | {scan:.0f} |")
            passes = ["first", "later"] if cache != "none" else ["every"]
            dataset = make_dataset(cfg.data, s.train_x, s.train_y)
            for name in passes:
                print(
                    f"| {files} DICOM {size}x{size} | {cache} | {name} | {images_per_second(dataset):.0f} |", flush=True
                )


def memory(sizes: list[int], size: int) -> None:
    print("| manifest (DICOM files) | image | run | wall s | peak RSS of the run's process tree (GiB) | test AUC |")
    print("|---|---|---|---|---|---|")
    for files in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = dicom_export(Path(tmp) / "export", files, size=size)
            run = ["federation.rounds=1", "train.local_epochs=1", "federation.round_timeout=3600"]
            r = measured_run(manifest_overrides(manifest, Path(tmp) / "cache", size) + run)
        print(
            f"| {files} | {size}x{size} | 3 hospitals, DP-SGD + CKKS, 1 round x 1 epoch | {r['wall']:.0f} "
            f"| {r['peak_gib']:.2f} | {r['auc']:.3f} |",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput", help="images/s of DICOM loading, with and without the persistent cache")
    t.add_argument("--files", type=int, default=2000)
    t.add_argument("--size", type=int, default=64)
    m = sub.add_parser("memory", help="peak RSS of a 3-hospital run for each manifest size")
    m.add_argument("--files", type=int, nargs="+", default=[2000, 20000])
    m.add_argument("--size", type=int, default=64)
    a = p.parse_args()
    if a.what == "throughput":
        throughput(a.files, a.size)
    else:
        memory(a.files, a.size)


if __name__ == "__main__":
    main()
