"""Development TLS certificates for a SuperLink, and SuperNode authentication keys.

    python scripts/make_certs.py --out certs/ [--hosts 127.0.0.1 localhost superlink.example.org]
    python scripts/make_certs.py --out certs/ --node-keys 3

Writes ``ca.crt`` (give to every hospital and to whoever runs ``flwr``), ``ca.key`` (keep
offline), ``superlink.crt`` and ``superlink.key`` (the SuperLink's), and with ``--node-keys N``
one ``hospital_<i>/node_key`` (stays at hospital i) and ``node_key.pub`` (register it with
``flwr supernode register``). Private keys are mode 0600. For a real study, use certificates
from your institution's CA instead (README, "Running across hospitals").
"""

import argparse
import sys
from pathlib import Path

from pipeline.engines.certificates import make_certificates, make_node_key


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the files (created)")
    p.add_argument(
        "--hosts", nargs="+", default=["127.0.0.1", "localhost"], help="addresses the SuperLink is reached at"
    )
    p.add_argument("--days", type=int, default=365, help="validity in days")
    p.add_argument("--node-keys", type=int, default=0, metavar="N", help="also make N hospitals' node key pairs")
    a = p.parse_args()
    if a.node_keys < 0:
        print(f"error: --node-keys={a.node_keys} must be >= 0", file=sys.stderr)
        return 2
    try:
        certs = make_certificates(a.out, a.hosts, a.days)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"CA certificate:        {certs.ca_cert}  (every hospital and the flwr user get a copy)")
    print(f"CA private key:        {certs.ca_key}  (keep offline)")
    print(f"SuperLink certificate: {certs.server_cert}  (valid for {', '.join(a.hosts)})")
    print(f"SuperLink private key: {certs.server_key}")
    for i in range(a.node_keys):
        private, public = make_node_key(Path(a.out) / f"hospital_{i}")
        print(f"hospital {i}: {private} (stays there), {public} (register with flwr supernode register)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
