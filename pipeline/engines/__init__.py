"""Where a federated run executes: Flower's simulation engine, a local Deployment Engine, or a baseline.

Owns: the simulation (:mod:`.simulation`, Ray), the local deployment with TLS and authenticated
SuperNodes (:mod:`.deployment`), development certificates and node keys (:mod:`.certificates`),
the ``flwr run`` run config (:mod:`.run_config`), the private folders kept outside the run
folder (:mod:`.workspace`) and the centralized / local baselines (:mod:`.baselines`).

Engines start key generation and the consortium as separate processes; the process that runs the
server never loads a secret key.
"""
