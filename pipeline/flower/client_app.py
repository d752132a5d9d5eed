"""Flower ClientApp: one hospital. Each handler answers in this process or relays to the hospital's service.

The work itself (train locally with DP-SGD, send an encoded update, evaluate) is in
:mod:`.hospital`. With the node config ``hospital-service`` (a Unix socket), the handlers relay
each message to that long-running process (:mod:`.hospital_service`): the Deployment Engine starts
a fresh ClientApp process for every message, and this module imports nothing heavy at module
level, so such a process costs Flower's start-up and no more.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from pipeline.flower import fault_mod
from pipeline.flower import messages as M
from pipeline.flower.context import SERVICE_KEY, with_defaults


def _reply(msg: Message, context: Context, handler: str) -> Message:
    """Answer ``msg`` with ``handler``: through the hospital's service when the node config names one."""
    service = str(context.node_config.get(SERVICE_KEY, "") or "")
    if service:
        from pipeline.flower.hospital_service import ask

        content = ask(service, handler, msg.content, context)
    else:
        from pipeline.flower.hospital import answer

        content = answer(msg.content, context, handler)
    return Message(content=content, reply_to=msg)


def make_app(run_config: dict | None = None, node_config: dict | None = None) -> ClientApp:
    """The hospital ClientApp; a simulation binds the run config and per-site settings here.

    With ``FEDMED_FAULTS`` set, the fault-injection mod (:mod:`.fault_mod`) wraps every handler.
    """
    client_app = ClientApp(mods=fault_mod.mods())

    @client_app.query()
    def query(msg: Message, context: Context) -> Message:
        """Report data size and shape (no data leaves the hospital)."""
        return _reply(msg, with_defaults(context, run_config, node_config), M.QUERY)

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        """Apply the last aggregate, train one round, reply with the encoded weighted update."""
        return _reply(msg, with_defaults(context, run_config, node_config), M.TRAIN)

    @client_app.query(M.UNMASK.split(".", 1)[1])
    def unmask(msg: Message, context: Context) -> Message:
        """Reveal what removes the masks of the round's sum (secure aggregation)."""
        return _reply(msg, with_defaults(context, run_config, node_config), "unmask")

    @client_app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        """Apply the new aggregate and evaluate it on the local validation share."""
        return _reply(msg, with_defaults(context, run_config, node_config), M.EVALUATE)

    return client_app


# Entry point for `flwr run` (pyproject [tool.flwr.app.components]).
app = make_app()
