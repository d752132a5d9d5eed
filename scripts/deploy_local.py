"""Run the experiment on Flower's Deployment Engine on this machine: SuperLink + 3 SuperNodes, TLS, loopback.

    python scripts/deploy_local.py data.root=../shared/data [other Hydra overrides]

The same as ``python -m pipeline.run deployment=local ...``: makes development certificates, node
keys, CKKS keys and one data file per hospital in a workspace, starts a SuperLink (TLS, SuperNode
authentication) and one SuperNode per hospital on 127.0.0.1, runs the experiment with ``flwr run``
to the end, writes the run folder as a simulation does (config.yaml, metrics.csv, summary.json,
curves.png, model.pt), and stops every process it started, also on failure or Ctrl-C.
Compare with a simulation of the same config: ``python scripts/compare.py RUN_A RUN_B``.
"""

import sys

from pipeline.run import main

if __name__ == "__main__":
    if not any(arg.startswith("deployment=") for arg in sys.argv[1:]):
        sys.argv.insert(1, "deployment=local")
    main()
