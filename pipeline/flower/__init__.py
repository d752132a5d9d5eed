"""The Flower apps: a hospital's ClientApp and a thin ServerApp, and what travels between them.

Owns: the hospital's work for each message and its state between messages (:mod:`.hospital`,
:mod:`.hospital_state`), the ClientApp that runs it in place or relays it to the hospital's
long-running service (:mod:`.client_app`, :mod:`.hospital_service`), the ServerApp that starts
a :mod:`strategies` strategy (:mod:`.server_app`), the names of message records and keys
(:mod:`.messages`), what the apps read from their Flower context (:mod:`.context`) and the
fault-injection mod for tests and chaos runs (:mod:`.faults`).

The ServerApp side (:mod:`.server_app`, :mod:`.messages`, :mod:`.context`) imports nothing that
can load a secret key; only :mod:`.hospital` reaches :mod:`pipeline.secagg.keys`, lazily, in
the hospital's own process.
"""
