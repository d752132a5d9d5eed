"""A hospital's long-running service: answers its ClientApp's messages in one process.

Flower's Deployment Engine starts a fresh ClientApp process for every message (Flower 1.42 has no
long-running ClientApp), and each would import torch, MONAI (about 7 s here: MONAI imports all its
submodules), Opacus and TenSEAL, and load the data and the keys again: three messages a round
made a deployed round cost about 14 times a simulated one. With the node config
``hospital-service=<socket>`` the ClientApp only relays: it sends the message over a Unix socket
to this process, which the hospital starts once, beside its SuperNode::

    python -m pipeline.flower.hospital_service --socket /srv/fedmed/service/hospital.sock

and which keeps the imports, the decoded data, the keys and the DP plan from one message to the
next. ``deployment=local`` starts one per hospital (``deployment.hospital_service``).

What it holds (the secret key, the data, the ledger) stays where it was: the socket is created
owner-only (0600, no window) in an owner-only folder, and only a peer of the same user
(``SO_PEERCRED``) is answered. The service runs the hospital's installed code
(:func:`pipeline.flower.hospital.answer`); the ClientApp process that relays to it is still the
FAB the server sent, run as the hospital's user, exactly as without the service.

Wire: each frame is an 8-byte big-endian length and its bytes. A request is a JSON header
(handler, run and node ids, node and run config) then the message content (Flower's protobuf
RecordDict); a reply is a JSON status then the reply content.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import stat
import struct
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from flwr.app import Context, RecordDict

from pipeline.flower import messages as M
from pipeline.heap import freeze_heap, quick_exit

log = logging.getLogger("fedmed")
_LENGTH = struct.Struct(">Q")
_MAX_PATH = 100  # a Unix socket's path is at most 107 bytes; longer ones are reached from their folder
T = TypeVar("T")


class ServiceUnavailable(RuntimeError):
    """No hospital service answers at the configured socket, or it dropped the connection."""


# --- framing ---------------------------------------------------------------------------
def _send(conn: socket.socket, data: bytes) -> None:
    conn.sendall(_LENGTH.pack(len(data)) + data)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the connection closed mid-frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv(conn: socket.socket) -> bytes:
    (n,) = _LENGTH.unpack(_recv_exact(conn, _LENGTH.size))
    return _recv_exact(conn, n)


def _at(path: Path, fn: Callable[[str], T]) -> T:
    """``fn(address)`` for the socket at ``path``, from its folder when the full path is too long."""
    if len(str(path)) <= _MAX_PATH:
        return fn(str(path))
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        return fn(path.name)
    finally:
        os.chdir(here)


# --- the ClientApp's side ---------------------------------------------------------------
def ask(path: str | Path, handler: str, content: RecordDict, context: Context) -> RecordDict:
    """Have the hospital service at ``path`` answer one message; its reply content.

    Raises:
        ServiceUnavailable: nothing listens at ``path``, or the service dropped the connection.
        RuntimeError: the service's handler failed (its error, one line).
    """
    path = Path(path)
    header = {
        "handler": handler,
        "run_id": int(context.run_id),
        "node_id": int(context.node_id),
        "node_config": dict(context.node_config),
        "run_config": dict(context.run_config),
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            _at(path, conn.connect)
        except OSError as err:
            raise ServiceUnavailable(
                f"no hospital service listens at {path} ({err.strerror or err}); start it with "
                f"`python -m pipeline.flower.hospital_service --socket {path}`"
            ) from err
        try:
            _send(conn, json.dumps(header).encode())
            _send(conn, M.to_bytes(content))
            status = json.loads(_recv(conn))
            body = _recv(conn)
        except (ConnectionError, OSError) as err:
            raise ServiceUnavailable(f"the hospital service at {path} dropped the connection: {err}") from err
    if not status.get("ok"):
        raise RuntimeError(f"hospital service: {status.get('error', 'unknown error')}")
    return M.from_bytes(body)


# --- the service ------------------------------------------------------------------------
def check_folder(folder: Path) -> None:
    """Create ``folder`` owner-only, or refuse one that others may enter (they could reach the socket).

    Raises:
        PermissionError: ``folder`` exists with group or other permissions, or belongs to another user.
    """
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
    st = folder.stat()
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise PermissionError(
            f"the socket's folder {folder} is mode {stat.S_IMODE(st.st_mode):o} (owner uid {st.st_uid}): "
            "use a folder only this user can enter (chmod 700)"
        )


@contextlib.contextmanager
def listening(path: Path) -> Iterator[socket.socket]:
    """A listening socket at ``path`` (0600 from the start, in an owner-only folder); removed at exit.

    Raises:
        PermissionError: see :func:`check_folder`.
        RuntimeError: another service listens at ``path``.
    """
    check_folder(path.parent)
    if path.exists():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                _at(path, probe.connect)
            except OSError:
                path.unlink()  # a stale socket of a service that died
            else:
                raise RuntimeError(f"another hospital service listens at {path}")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        _at(path, server.bind)
    finally:
        os.umask(old)
    server.listen(4)
    try:
        yield server
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def handle(conn: socket.socket) -> None:
    """Answer one request on ``conn`` (a peer of another user gets a refusal, nothing else)."""
    from pipeline.flower.hospital import answer

    if _peer_uid(conn) != os.getuid():
        _send(conn, json.dumps({"ok": False, "error": "refused: the peer is another user"}).encode())
        _send(conn, b"")
        return
    header = json.loads(_recv(conn))
    content = M.from_bytes(_recv(conn))
    context = Context(
        run_id=int(header["run_id"]),
        node_id=int(header["node_id"]),
        node_config=dict(header["node_config"]),
        state=RecordDict(),  # a hospital's state lives in its own file (hospital_state), never here
        run_config=dict(header["run_config"]),
    )
    start = time.perf_counter()
    try:
        reply = answer(content, context, str(header["handler"]))
    except Exception as err:  # the ClientApp raises it: Flower reports the message as failed
        log.error("%s failed:\n%s", header["handler"], traceback.format_exc())
        _send(conn, json.dumps({"ok": False, "error": f"{type(err).__name__}: {err}"}).encode())
        _send(conn, b"")
        return
    _send(conn, json.dumps({"ok": True}).encode())
    _send(conn, M.to_bytes(reply))
    log.info("%s answered in %.2f s", header["handler"], time.perf_counter() - start)


def serve(path: Path, on_ready: Callable[[], None] | None = None) -> None:
    """Listen at ``path`` and answer requests one at a time (a hospital handles one message at a time)."""
    with listening(path) as server:
        import pipeline.flower.hospital  # noqa: F401  (torch, MONAI, Opacus, TenSEAL: loaded once, now)

        freeze_heap()  # their objects stay out of the collector's passes (pipeline.heap)
        log.info("hospital service listening at %s (pid %d)", path, os.getpid())
        if on_ready is not None:
            on_ready()
        while True:
            conn, _ = server.accept()
            with conn:
                try:
                    handle(conn)
                except (ConnectionError, OSError, ValueError) as err:  # a peer gone mid-request
                    log.warning("request dropped: %s", err)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.flower.hospital_service --socket PATH``: serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, type=Path, help="the Unix socket (its folder: owner-only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    quick_exit()

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        serve(args.socket.expanduser().resolve())
    except (PermissionError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
