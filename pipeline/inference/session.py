"""An encrypted-inference session: the data owner here, the model owner in a process of its own.

:class:`RemoteModelOwner` starts ``python -m pipeline.inference.session RUN_DIR`` (:func:`serve`),
which loads the run's weights, compiles them (:func:`~pipeline.inference.encrypted.he_network`)
and from then on sees bytes only: length-prefixed frames on its stdin and stdout, never the data
owner's objects. The conversation:

1. model owner -> ``{"spec": QuerySpec}`` (what to encrypt for), or ``{"error", "kind"}`` and exit 2;
2. data owner -> its evaluation context (no secret key); model owner -> ``{"has_secret_key": false}``;
3. per query: data owner -> query; model owner -> encrypted logits, then ``{"seconds": ...}``;
4. data owner -> an empty frame: the model owner exits.

:func:`encrypted_logits` runs a whole session for a set of images and returns the logits the data
owner decrypted with the costs of each query.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import numpy as np

from pipeline.errors import ConfigError, DataError
from pipeline.inference.encrypted import IM2COL, SLOTS, CkksParams, DataOwner, ModelOwner, QuerySpec, he_network

_ERRORS = {"ConfigError": ConfigError, "DataError": DataError}


def write_frame(out: IO[bytes], payload: bytes) -> None:
    """One frame: an 8-byte little-endian length, then the payload."""
    out.write(struct.pack("<Q", len(payload)))
    out.write(payload)
    out.flush()


def read_frame(stream: IO[bytes]) -> bytes:
    """The next frame's payload; EOFError when the stream ends first."""
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the other party closed the channel")
    (n,) = struct.unpack("<Q", head)
    payload = stream.read(n)
    if len(payload) < n:
        raise EOFError("the other party closed the channel mid-frame")
    return payload


def _write_json(out: IO[bytes], value: dict) -> None:
    write_frame(out, json.dumps(value).encode())


def serve(run_dir: str, data_root: str | None, stdin: IO[bytes], stdout: IO[bytes]) -> int:
    """The model owner's side of a session (see the module docstring); returns the exit code."""
    from pipeline.inference.clear import load_run

    try:
        run = load_run(run_dir, data_root)
        network = he_network(run.model, run.channels, run.image_size)
    except (ConfigError, DataError) as err:
        _write_json(stdout, {"error": str(err), "kind": type(err).__name__})
        return 2
    _write_json(stdout, {"spec": asdict(network.spec)})
    try:
        context = read_frame(stdin)
        if not context:  # the data owner stopped before sending keys (its parameters did not fit)
            return 0
        owner = ModelOwner(network, context)
    except EOFError:
        return 1
    except (ConfigError, DataError) as err:
        _write_json(stdout, {"error": str(err), "kind": type(err).__name__})
        return 2
    _write_json(stdout, {"has_secret_key": owner.context.has_secret_key()})
    try:
        while query := read_frame(stdin):
            start = time.perf_counter()
            result = owner.evaluate(query)
            seconds = time.perf_counter() - start
            write_frame(stdout, result)
            _write_json(stdout, {"seconds": seconds})
    except EOFError:  # the data owner went away without saying goodbye
        return 1
    return 0


class RemoteModelOwner:
    """The model owner running in its own process; only bytes cross (a context manager).

    Raises (on start):
        ConfigError, DataError: the model owner's one-line refusal (e.g. a layer CKKS cannot evaluate).
    """

    def __init__(self, run_dir: str | Path, data_root: str | None = None) -> None:
        root = str(Path(__file__).resolve().parents[2])  # the folder holding pipeline/ and models/
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "pipeline.inference.session", str(run_dir)]
        if data_root is not None:
            cmd += ["--data-root", str(data_root)]
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env)
        self.spec = QuerySpec(**self._json()["spec"])

    def _json(self) -> dict:
        message = json.loads(self._read())
        if "error" in message:
            self.close()
            raise _ERRORS.get(message.get("kind"), DataError)(message["error"])
        return message

    def _read(self) -> bytes:
        try:
            return read_frame(self.proc.stdout)
        except EOFError:
            self.proc.wait()
            self._log.seek(0)
            tail = self._log.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(
                f"the model owner's process ended (exit {self.proc.returncode}): {tail[-1] if tail else 'no output'}"
            ) from None

    def send_context(self, evaluation_context: bytes) -> bool:
        """Hand over the evaluation context; returns whether the model owner's context holds a secret key."""
        write_frame(self.proc.stdin, evaluation_context)
        return bool(self._json()["has_secret_key"])

    def evaluate(self, query: bytes) -> tuple[bytes, float]:
        """The encrypted result of ``query`` and the model owner's seconds for it."""
        write_frame(self.proc.stdin, query)
        result = self._read()
        return result, float(self._json()["seconds"])

    def close(self) -> None:
        """Tell the model owner to stop and wait for it."""
        if self.proc.poll() is None:
            try:
                write_frame(self.proc.stdin, b"")
                self.proc.stdin.close()
            except OSError:  # it already went
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> RemoteModelOwner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class QueryCost:
    """One query: its images and what it cost each party."""

    images: int
    encrypt_seconds: float
    evaluate_seconds: float
    decrypt_seconds: float
    bytes_up: int
    bytes_down: int


@dataclass
class EncryptedRun:
    """The decrypted logits of a session and what it cost."""

    logits: np.ndarray
    queries: list[QueryCost]
    layout: str
    params: CkksParams
    spec: QuerySpec
    evaluation_key_bytes: int
    keygen_seconds: float
    model_owner_has_secret_key: bool
    wall_seconds: float


def encrypted_logits(
    run_dir: str | Path,
    x: np.ndarray,
    params: CkksParams | None = None,
    batch: int = 1,
    data_root: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> EncryptedRun:
    """Encrypt ``x`` (preprocessed, ``(N, C, H, W)``), have a separate model-owner process evaluate it, decrypt.

    Args:
        run_dir: the run whose final model the model owner serves.
        x: the data owner's preprocessed images.
        params: the data owner's CKKS parameters (default :class:`CkksParams`).
        batch: 1 = one image per query (im2col); more = up to ``batch`` images per query (slots).
        data_root: passed to the model owner for the run's data config.
        log: progress lines.
    """
    params = params or CkksParams()
    layout = IM2COL if batch == 1 else SLOTS
    start = time.perf_counter()
    with RemoteModelOwner(run_dir, data_root) as remote:
        t0 = time.perf_counter()
        owner = DataOwner(remote.spec, params, layout, batch)
        context = owner.evaluation_context()
        keygen = time.perf_counter() - t0
        log(f"data owner: CKKS key made ({keygen:.1f} s); {len(context) / 2**20:.1f} MiB of evaluation keys sent")
        has_secret = remote.send_context(context)
        logits, costs = [], []
        for first in range(0, len(x), batch):
            chunk = x[first : first + batch]
            t0 = time.perf_counter()
            query = owner.encrypt(chunk)
            t1 = time.perf_counter()
            result, evaluate = remote.evaluate(query)
            t2 = time.perf_counter()
            logits.append(owner.decrypt(result))
            t3 = time.perf_counter()
            costs.append(QueryCost(len(chunk), t1 - t0, evaluate, t3 - t2, len(query), len(result)))
            done = first + len(chunk)
            if done == len(x) or len(costs) % 25 == 0 or batch > 1:
                log(f"encrypted inference: {done}/{len(x)} images ({evaluate:.2f} s on the model owner's side)")
    return EncryptedRun(
        np.concatenate(logits),
        costs,
        layout,
        params,
        remote.spec,
        len(context),
        keygen,
        has_secret,
        time.perf_counter() - start,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.inference.session RUN_DIR [--data-root DIR]``: the model owner's process."""
    import argparse
    import warnings

    parser = argparse.ArgumentParser(description="The model owner of an encrypted-inference session (frames on stdio).")
    parser.add_argument("run_dir")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    frames = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints (TenSEAL's C++ warnings) go to stderr
    return serve(args.run_dir, args.data_root, sys.stdin.buffer, frames)


if __name__ == "__main__":
    sys.exit(main())
