"""Key agreement for the pairwise masks, and the Shamir shares of the self masks (hospital side).

Each hospital holds a signing key (a SuperNode's node key in a deployment; one generated per
hospital with the CKKS keys in a simulation) and every hospital holds the *roster*: each
hospital's public signing key, distributed out of band like the CKKS key. For each run a hospital
makes a fresh ECDH key pair (P-384) and signs its public half for this study; the server relays
the signed keys, and every hospital checks each signature against the roster before agreeing a
pairwise key, so the server cannot stand in the middle. Pairwise keys come from Flower's
``generate_shared_key`` (ECDH + HKDF); signatures from Flower's ``sign_message`` /
``verify_signature``; shares from Flower's ``shamir.create_shares``. Shares travel encrypted for
their recipient (Fernet with the pairwise key) through the server.

Nothing here touches the CKKS key; the server needs none of it (it only combines shares,
:func:`pipeline.secagg.masks.rebuild_seed`).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
    sign_message,
    verify_signature,
)

from pipeline.reporting.atomic import write_atomic
from pipeline.secagg.params import ROSTER_FILE, SIGNING_DIR

Roster = dict[int, ec.EllipticCurvePublicKey]


# --- signing keys and the roster ---------------------------------------------------------------
def signing_key_file(folder: str | Path, hospital: int) -> Path:
    """Hospital ``hospital``'s signing key in a simulation's ``signing`` folder."""
    return Path(folder) / f"hospital_{hospital}.key"


def write_signing_keys(out: str | Path, num_hospitals: int, replace: bool = True) -> Path:
    """One signing key per hospital (0600) and the roster of their public keys; returns the roster's path.

    ``replace=False``: an existing key or roster file is never replaced (FileExistsError).
    """
    out = Path(out)
    roster = {}
    for hospital in range(num_hospitals):
        private, public = generate_key_pairs()
        key_file = signing_key_file(out / SIGNING_DIR, hospital)
        write_atomic(key_file, private_key_to_bytes(private), private=True, replace=replace)
        roster[str(hospital)] = public_key_to_bytes(public).decode()
    return write_atomic(out / ROSTER_FILE, json.dumps(roster, indent=2) + "\n", replace=replace)


def write_roster(path: str | Path, public_keys: dict[int, bytes], replace: bool = True) -> Path:
    """A roster from public keys (PEM or OpenSSH, e.g. SuperNodes' ``node_key.pub``).

    ``replace=False``: an existing file is never replaced (FileExistsError).
    """
    text = json.dumps({str(k): v.decode() for k, v in public_keys.items()}, indent=2) + "\n"
    return write_atomic(path, text, replace=replace)


def parse_public_key(text: bytes) -> ec.EllipticCurvePublicKey:
    """A public signing key from PEM or OpenSSH text (ValueError if it is neither, or not elliptic-curve)."""
    key = serialization.load_ssh_public_key(text) if text.startswith(b"ecdsa-") else bytes_to_public_key(text)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("a roster key must be an elliptic-curve (ECDSA) public key")
    return key


def load_roster(path: str | Path) -> Roster:
    """The trusted public signing keys by hospital id."""
    raw = json.loads(Path(path).read_text())
    return {int(k): parse_public_key(v.encode()) for k, v in raw.items()}


def load_signing_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """A hospital's signing key: PEM (PKCS8) or OpenSSH (a SuperNode's ``node_key``)."""
    data = Path(path).read_bytes()
    if b"OPENSSH PRIVATE KEY" in data:
        key = serialization.load_ssh_private_key(data, password=None)
    else:
        key = bytes_to_private_key(data)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an elliptic-curve (ECDSA) private key")
    return key


# --- the per-run agreement key -----------------------------------------------------------------
def new_agreement_key() -> tuple[bytes, bytes]:
    """A fresh ECDH key pair for one run: (private PEM, public PEM)."""
    private, public = generate_key_pairs()
    return private_key_to_bytes(private), public_key_to_bytes(public)


def _advert_message(study: str, hospital: int, public_pem: bytes) -> bytes:
    return b"fedmed-agreement|" + study.encode() + b"|" + str(int(hospital)).encode() + b"|" + public_pem


def sign_advert(signing_key: ec.EllipticCurvePrivateKey, study: str, hospital: int, public_pem: bytes) -> bytes:
    """The signature that binds ``public_pem`` to ``hospital`` for ``study``."""
    return sign_message(signing_key, _advert_message(study, hospital, public_pem))


def advert_problem(roster: Roster, study: str, adverts: dict[int, tuple[bytes, bytes]]) -> str | None:
    """Why the relayed agreement keys cannot be trusted (unknown hospital, bad signature); None if all are good."""
    for hospital, (public_pem, signature) in sorted(adverts.items()):
        if hospital not in roster:
            return f"hospital {hospital} is not in this hospital's roster of signing keys"
        if not verify_signature(roster[hospital], _advert_message(study, hospital, public_pem), signature):
            return f"the agreement key relayed for hospital {hospital} is not signed by its registered signing key"
    return None


def shared_keys(private_pem: bytes, me: int, adverts: dict[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
    """The 32-byte key this hospital shares with every other hospital in ``adverts``."""
    private = bytes_to_private_key(private_pem)
    return {
        other: base64.urlsafe_b64decode(generate_shared_key(private, bytes_to_public_key(public_pem)))
        for other, (public_pem, _) in adverts.items()
        if other != me
    }


# --- shares of a self-mask seed ------------------------------------------------------------------
def _tag(round_tag: str, frm: int, to: int) -> bytes:
    return f"fedmed-share|{round_tag}|{int(frm)}|{int(to)}|".encode()


def _fernet(key: bytes) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(key))


def share_seed(
    seed: bytes, threshold: int, me: int, round_tag: str, keys: dict[int, bytes]
) -> tuple[dict[int, bytes], bytes]:
    """Shamir shares of ``seed`` (``threshold`` of them rebuild it), one per hospital of the round.

    Returns the shares for the others, each encrypted for its recipient and bound to the round
    attempt and both hospitals, and this hospital's own share (kept in its state, revealed only
    while it is a survivor).
    """
    recipients = sorted({*keys, me})
    shares = dict(zip(recipients, create_shares(seed, threshold, len(recipients)), strict=True))
    own = shares.pop(me)
    return {to: _fernet(keys[to]).encrypt(_tag(round_tag, me, to) + share) for to, share in shares.items()}, own


def open_share(token: bytes, key: bytes, round_tag: str, frm: int, to: int) -> bytes:
    """The share in ``token`` (from ``frm`` to ``to`` for ``round_tag``); ValueError if it is not that."""
    try:
        plain = _fernet(key).decrypt(token)
    except InvalidToken:
        raise ValueError(f"the share from hospital {frm} does not decrypt with our pairwise key") from None
    tag = _tag(round_tag, frm, to)
    if not plain.startswith(tag):
        raise ValueError(f"the share from hospital {frm} is not for round {round_tag} and hospital {to}")
    return plain[len(tag) :]
