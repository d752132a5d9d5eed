"""`scripts/keygen.py` (pipeline.secagg.keys.main): the roster of real hospitals' SuperNode keys (--roster), and
existing key files kept unless --force."""

from __future__ import annotations

import stat

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pipeline.secagg import keys
from pipeline.secagg.agreement import load_roster
from pipeline.secagg.params import ROSTER_FILE, SECRET_FILE, SERVER_FILE, SIGNING_DIR


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


def test_existing_key_files_are_refused_in_one_line_naming_them_and_force(tmp_path, capsys):
    out = tmp_path / "keys"
    assert keys.main(["--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    rc = keys.main(["--out", str(out)])

    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert str(out / SECRET_FILE) in err and str(out / SERVER_FILE) in err and "--force" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing replaced, no temporary files


def test_an_existing_signing_key_alone_is_refused_too(tmp_path, capsys):
    out = tmp_path / "keys"
    (out / SIGNING_DIR).mkdir(parents=True)
    (out / SIGNING_DIR / "hospital_1.key").write_text("old")

    rc = keys.main(["--out", str(out), "--hospitals", "2"])

    err = capsys.readouterr().err
    assert rc == 2 and "hospital_1.key" in err and SECRET_FILE not in err
    assert not (out / SECRET_FILE).exists() and (out / SIGNING_DIR / "hospital_1.key").read_text() == "old"


def test_force_replaces_the_key_files_with_fresh_ones(tmp_path, capsys):
    out = tmp_path / "keys"
    assert keys.main(["--out", str(out), "--hospitals", "2"]) == 0
    old_secret, old_key = (out / SECRET_FILE).read_bytes(), (out / SIGNING_DIR / "hospital_0.key").read_bytes()

    rc = keys.main(["--out", str(out), "--hospitals", "2", "--force"])

    assert rc == 0, capsys.readouterr().err
    assert (out / SECRET_FILE).read_bytes() != old_secret
    assert (out / SIGNING_DIR / "hospital_0.key").read_bytes() != old_key
    assert stat.S_IMODE((out / SECRET_FILE).stat().st_mode) == 0o600
    assert sorted(load_roster(out / ROSTER_FILE)) == [0, 1]


def test_a_key_file_made_meanwhile_is_never_replaced(tmp_path, capsys, monkeypatch):
    out = tmp_path / "keys"
    real = keys.write_key_files

    def someone_else_first(enc, out_dir, replace=True):
        out.mkdir(exist_ok=True)
        (out / SECRET_FILE).write_text("theirs")  # appears after the check, before the write
        return real(enc, out_dir, replace=replace)

    monkeypatch.setattr(keys, "write_key_files", someone_else_first)
    rc = keys.main(["--out", str(out)])

    err = capsys.readouterr().err
    assert rc == 2 and str(out / SECRET_FILE) in err and "--force" in err
    assert (out / SECRET_FILE).read_text() == "theirs"
    assert [p.name for p in out.iterdir()] == [SECRET_FILE]  # the temporary file is gone too
