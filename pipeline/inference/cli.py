"""The command line, ``fedmed-infer`` / ``python scripts/infer.py RUN_DIR [IMAGES...]``: :func:`main`.

Clear inference predicts with the run's final model and writes ``RUN_DIR/inference/``
(predictions.csv, summary.json). ``--encrypted`` plays both parties of encrypted inference on this
machine: the data owner (this process) makes its CKKS key, encrypts and decrypts; the model owner
(a separate process, :mod:`pipeline.inference.session`) evaluates ciphertexts with the weights.
The logits in predictions.csv are then the decrypted ones (column ``encrypted`` = ``true``), and
report.json / report.md compare them with plaintext inference of the same images, which this
process also runs as the verifier (no real data owner holds the weights). Bad input exits with
code 2 and one line.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch

from pipeline.errors import ConfigError, DataError
from pipeline.heap import quick_exit
from pipeline.inference.clear import (
    INFERENCE_DIR,
    SPLITS,
    input_tensors,
    load_run,
    predict_logits,
    read_inputs,
    read_split,
)
from pipeline.inference.encrypted import CkksParams


def _bit_sizes(text: str) -> tuple[int, ...]:
    try:
        bits = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of bit sizes") from None
    if len(bits) < 3:
        raise argparse.ArgumentTypeError("give at least 3 primes (first, levels..., special)")
    return bits


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line's options (``argv`` ``None``: ``sys.argv[1:]``); bad combinations exit through argparse."""
    defaults = CkksParams()
    p = argparse.ArgumentParser(
        prog="fedmed-infer",
        description="Predict with a finished run's final model, in the clear or on CKKS-encrypted images; "
        "writes RUN_DIR/inference/.",
    )
    p.add_argument("run_dir", help="a finished run folder (config.yaml, model.pt)")
    p.add_argument("images", nargs="*", help="image files, folders of images, or manifest .csv files")
    p.add_argument("--split", choices=SPLITS, help="predict a split of the run's own data set instead")
    p.add_argument("--data-root", default=None, help="override the run's data.root (for --split and its classes)")
    p.add_argument("--image-column", default="path", help="a manifest's column of image paths (default path)")
    p.add_argument("--label-column", default=None, help="a manifest's column of labels (default: label, if present)")
    p.add_argument("--limit", type=int, default=None, help="predict the first N images only")
    p.add_argument("--encrypted", action="store_true", help="encrypted inference (CKKS); needs model=he_cnn")
    p.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images per encrypted query: 1 = im2col layout (default), more = one image per CKKS slot",
    )
    p.add_argument("--ckks-degree", type=int, default=defaults.poly_modulus_degree, help="CKKS ring degree")
    shown = ",".join(map(str, defaults.coeff_mod_bit_sizes))
    p.add_argument(
        "--ckks-bits",
        type=_bit_sizes,
        default=defaults.coeff_mod_bit_sizes,
        help=f"CKKS modulus primes in bits, comma-separated (default {shown})",
    )
    p.add_argument("--ckks-scale-bits", type=int, default=defaults.scale_bits, help="CKKS scale, log2")
    args = p.parse_args(argv)
    if bool(args.images) == bool(args.split):
        p.error("give images (files, folders or manifests) or --split, not both and not neither")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    if args.batch_size < 1 or (args.batch_size > 1 and not args.encrypted):
        p.error("--batch-size must be >= 1 and applies to --encrypted only")
    return args


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (``fedmed-infer``); returns the exit code (0 ok, 2 bad input, 1 write failure)."""
    from pipeline.inference.report import encrypted_report, report_markdown, write_outputs
    from pipeline.inference.session import encrypted_logits

    args = parse_args(argv)
    quick_exit()  # no walk of the imported libraries' heap at exit (pipeline.heap)
    warnings.filterwarnings("ignore", category=UserWarning)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        run = load_run(args.run_dir, args.data_root)
        if args.split:
            inputs = read_split(run, args.split)
        else:
            inputs = read_inputs(run, args.images, args.image_column, args.label_column)
        inputs = inputs.head(args.limit)
        x = input_tensors(run, inputs)
        plain = predict_logits(run, x)
        report = None
        logits = plain
        if args.encrypted:
            params = CkksParams(args.ckks_degree, tuple(args.ckks_bits), args.ckks_scale_bits)
            enc = encrypted_logits(run.run_dir, x.double().numpy(), params, args.batch_size, args.data_root, log)
            report = encrypted_report(run, inputs, plain, enc)
            logits = torch.from_numpy(enc.logits).float()
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        s = write_outputs(run, inputs, logits, args.encrypted, report)
    except OSError as err:
        print(f"error: cannot write to {run.run_dir}: {err}", file=sys.stderr)
        return 1
    if report is not None:
        print(report_markdown(report))
    metrics = s["metrics"]
    scores = f"; AUC {metrics['auc']:.4f}, accuracy {metrics['accuracy']:.4f}" if metrics else ""
    print(f"{s['images']} images ({s['source']}): predicted {s['predicted']}{scores}")
    print(f"written: {run.run_dir / INFERENCE_DIR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
