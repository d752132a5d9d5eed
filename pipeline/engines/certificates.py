"""Development TLS certificates and SuperNode authentication keys for the Deployment Engine.

:func:`make_certificates` writes a private certificate authority and a SuperLink certificate it
signs (for the addresses the SuperNodes and ``flwr`` dial), which is what Flower's own
``generate_cert.sh`` does with openssl. :func:`make_node_key` writes one hospital's SuperNode key
pair (ECDSA P-384, OpenSSH format, as ``ssh-keygen -t ecdsa -b 384`` makes it): the SuperLink
admits a SuperNode only after its public key was registered with ``flwr supernode register``.

For a real study, use certificates from the institution's own CA instead (see the README).
Private keys are written with mode 0600 and never belong in the repository (.gitignore).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.reporting.atomic import write_atomic

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "superlink.crt"
SERVER_KEY = "superlink.key"
NODE_KEY = "node_key"
NODE_PUBLIC_KEY = "node_key.pub"


@dataclass(frozen=True)
class Certificates:
    """Paths of the files :func:`make_certificates` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_certificates(out: str | Path, hosts: list[str], days: int = 365) -> Certificates:
    """Write a CA and a SuperLink certificate valid for ``hosts`` (IP addresses or DNS names).

    Raises:
        ValueError: no hosts, or ``days`` < 1.
    """
    if not hosts:
        raise ValueError("hosts is empty; give the addresses the SuperLink is reached at, e.g. 127.0.0.1 localhost")
    if days < 1:
        raise ValueError(f"days={days}: a certificate must be valid for at least 1 day")
    out = Path(out)
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmed development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    paths = Certificates(out / CA_CERT, out / CA_KEY, out / SERVER_CERT, out / SERVER_KEY)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(paths.ca_cert, ca_cert.public_bytes(pem))
    write_atomic(paths.server_cert, server_cert.public_bytes(pem))
    write_atomic(paths.ca_key, ca_key.private_bytes(pem, pkcs8, serialization.NoEncryption()), private=True)
    write_atomic(paths.server_key, server_key.private_bytes(pem, pkcs8, serialization.NoEncryption()), private=True)
    return paths


def make_node_key(out: str | Path) -> tuple[Path, Path]:
    """Write one SuperNode's authentication key pair into ``out``; return (private, public) paths."""
    out = Path(out)
    key = ec.generate_private_key(ec.SECP384R1())
    private = out / NODE_KEY
    public = out / NODE_PUBLIC_KEY
    write_atomic(
        private,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
        private=True,
    )
    write_atomic(
        public,
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n",
    )
    return private, public
