"""Test doubles that keep everything else real: a Grid that delivers messages in-process, a small
federation of real hospitals (real data, Opacus, TenSEAL, key agreement) behind it, without Ray,
and another process holding a folder lock (a live run elsewhere)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from omegaconf import DictConfig, OmegaConf

from pipeline.flower import client_app, fault_mod, hospital
from pipeline.flower.context import (
    EXPERIMENT_KEY,
    ROSTER_KEY,
    SECRET_CONTEXT_KEY,
    SIGNING_DIR_KEY,
    STATE_DIR_KEY,
)
from pipeline.secagg import agreement
from pipeline.secagg import keys as ckks_keys
from pipeline.secagg.params import ROSTER_FILE, SIGNING_DIR

Hospital = Callable[[Message], RecordDict | Error | None]  # None: no reply at all
ROOT = Path(__file__).resolve().parents[1]
_HOLD = (
    "import sys, time\n"
    "from pipeline.reporting.lock import FolderLock\n"
    "lock = FolderLock.beside(sys.argv[1]) if sys.argv[2] == 'beside' else FolderLock(sys.argv[1])\n"
    "lock.acquire()\n"
    "print('held', flush=True)\n"
    "time.sleep(120)\n"
)


@contextlib.contextmanager
def held_elsewhere(folder: Path, beside: bool = False) -> Iterator[subprocess.Popen]:
    """Another process that holds ``folder``'s lock until the block ends (``beside``: the lock file
    next to the folder, as a run holds its private folder, :func:`pipeline.engines.workspace.private_lock`)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(folder), "beside" if beside else "inside"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "held", proc.stderr.read()
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


class FakeGrid:
    """Delivers each message to a hospital callable and hands back its reply (the Grid methods the loop uses)."""

    def __init__(self, hospitals: dict[int, Hospital]) -> None:
        # what Flower's ServerApp runtime sets before a strategy creates messages
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.hospitals = hospitals
        self.sent: list[Message] = []
        self.received: list[Message] = []  # every reply the server got, in order
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.hospitals)

    def push_messages(self, messages) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # what the SuperLink assigns
            self.sent.append(msg)
            answer = self.hospitals[msg.metadata.dst_node_id](msg)
            if isinstance(answer, Error):
                self._replies[msg.metadata.message_id] = Message(error=answer, reply_to=msg)
            elif answer is not None:
                self._replies[msg.metadata.message_id] = Message(content=answer, reply_to=msg)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, ids) -> list[Message]:
        replies = [self._replies.pop(i) for i in list(ids) if i in self._replies]
        self.received.extend(replies)
        return replies

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))

    def sent_of(self, kind: str, rnd: int | None = None) -> list[Message]:
        from pipeline.flower import messages as M

        return [
            m
            for m in self.sent
            if m.metadata.message_type == kind and (rnd is None or int(m.content[M.CONFIG][M.ROUND]) == rnd)
        ]


def hospital_contexts(cfg: DictConfig, folder: Path) -> list[Context]:
    """Flower contexts of ``cfg.federation.num_hospitals`` hospitals: shared CKKS key, own signing keys, roster."""
    node: dict = {STATE_DIR_KEY: str(folder / "state")}
    if cfg.encryption.enabled:
        secret, _ = ckks_keys.write_key_files(cfg.encryption, folder / "keys")
        agreement.write_signing_keys(folder / "keys", int(cfg.federation.num_hospitals))
        node.update(
            {
                SECRET_CONTEXT_KEY: str(secret),
                SIGNING_DIR_KEY: str(folder / "keys" / SIGNING_DIR),
                ROSTER_KEY: str(folder / "keys" / ROSTER_FILE),
            }
        )
    yaml = OmegaConf.to_yaml(cfg)
    return [
        Context(
            run_id=1,
            node_id=10 + h,
            node_config={"partition-id": h, **node},
            state=RecordDict(),
            run_config={EXPERIMENT_KEY: yaml},
        )
        for h in range(int(cfg.federation.num_hospitals))
    ]


def real_hospital(context: Context) -> Hospital:
    """A hospital answering as the ClientApp does: a new HospitalClient per message; errors become error replies."""
    from pipeline.flower import messages as M

    handlers = {M.QUERY: "query", M.TRAIN: "train", M.UNMASK: "unmask", M.EVALUATE: "evaluate"}

    def handle(m: Message, ctx: Context) -> Message:
        return client_app._reply(m, ctx, handlers[m.metadata.message_type])

    for mod in reversed(fault_mod.mods()):  # FEDMED_FAULTS, as the ClientApp installs them
        handle = _wrapped(mod, handle)

    def answer(msg: Message) -> RecordDict | Error:
        try:
            return handle(msg, context).content
        except Exception as err:  # as Flower turns a ClientApp exception into an error reply
            return Error(code=1, reason=f"{type(err).__name__}: {err}")

    return answer


def _wrapped(mod: Callable, call_next: Callable) -> Callable:
    return lambda m, ctx: mod(m, ctx, call_next)


def real_federation(cfg: DictConfig, folder: Path) -> tuple[FakeGrid, list[Context]]:
    """A FakeGrid over real hospitals (node ids 10, 11, ...)."""
    contexts = hospital_contexts(cfg, folder)
    return FakeGrid({c.node_id: real_hospital(c) for c in contexts}), contexts


def roster_config(contexts: list[Context]) -> dict:
    """The roster fields of a train message, from each hospital's own query reply (as the server relays them)."""
    from pipeline.flower import messages as M

    ids, keys, sigs = [], [], []
    for context in contexts:
        conf = hospital.HospitalClient(context).query()[M.CONFIG]
        ids.append(int(conf[M.HOSPITAL]))
        keys.append(str(conf[M.AGREE_KEY]))
        sigs.append(bytes(conf[M.AGREE_SIG]))
    return {M.ROSTER_IDS: ids, M.ROSTER_KEYS: keys, M.ROSTER_SIGS: sigs}
