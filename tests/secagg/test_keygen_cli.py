"""`scripts/keygen.py --roster`: the roster of real hospitals' SuperNode keys (pipeline.secagg.keys.main)."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pipeline.secagg import keys
from pipeline.secagg.agreement import load_roster


def _node_key_pub(path) -> ec.EllipticCurvePublicKey:
    """What `ssh-keygen -t ecdsa -b 384` writes as node_key.pub."""
    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    path.write_bytes(public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return public


def _raw(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_roster_from_supernode_public_keys_names_hospitals_in_order(tmp_path, capsys):
    publics = [_node_key_pub(tmp_path / f"node_{i}.pub") for i in range(3)]

    rc = keys.main(["--out", str(tmp_path / "keys"), "--roster", *(str(tmp_path / f"node_{i}.pub") for i in range(3))])

    assert rc == 0, capsys.readouterr().err
    roster = load_roster(tmp_path / "keys" / "roster.json")
    assert sorted(roster) == [0, 1, 2]
    assert all(_raw(roster[i]) == _raw(publics[i]) for i in range(3))


def test_a_key_that_is_not_ecdsa_is_named_and_nothing_is_written(tmp_path, capsys):
    _node_key_pub(tmp_path / "node_0.pub")
    (tmp_path / "node_1.pub").write_text("ssh-rsa AAAAB3NzaC1yc2E= not-ecdsa\n")

    rc = keys.main(
        ["--out", str(tmp_path / "keys"), "--roster", str(tmp_path / "node_0.pub"), str(tmp_path / "node_1.pub")]
    )

    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "hospital 1's key" in err and "node_1.pub" in err and "not an ECDSA public key" in err
    assert not (tmp_path / "keys").exists()
