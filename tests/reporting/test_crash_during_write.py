"""A process killed in the middle of writing any of the product's files leaves the previous good file.

Each case runs in a child process: it writes version 1 of a file with the product's own writer,
then arranges to SIGKILL itself at the worst instant of the next write (the new bytes are on disk
under a temporary name, the rename has not happened) and writes version 2. The parent checks that
the child died there and that the file still reads back as version 1 with the product's reader.
A writer that wrote in place would not die at the rename and would leave version 2 (or half of it).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT

# what every case's child runs first: after this, the next rename by the atomic writer kills the process
DIE_AT_RENAME = """
import os, signal
import pipeline.reporting.atomic as atomic
def die_at_rename(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
"""

CASES = {
    "summary.json": """
from pipeline.reporting.recorder import write_json
write_json(target, {"version": 1})
{die}
atomic.os.replace = die_at_rename
write_json(target, {"version": 2, "padding": "x" * 10_000_000})
""",
    "metrics.csv and checkpoint.json": """
from pipeline.reporting.recorder import RunRecorder
rec = RunRecorder(target.parent)
rec.add_round({"round": 1, "val_auc": 0.5})
rec.write_checkpoint({"completed_round": 1})
{die}
atomic.os.replace = die_at_rename
rec.write_checkpoint({"completed_round": 2})
""",
    "model.pt": """
import torch
from pipeline.task.model import save_model
m1, m2 = torch.nn.Linear(3, 1), torch.nn.Linear(300, 1000)
torch.nn.init.constant_(m1.weight, 1.0)
save_model(m1, target)
{die}
atomic.os.replace = die_at_rename
save_model(m2, target)
""",
    "hospital state": """
import numpy as np
from pipeline.flower.hospital_state import HospitalState
state = HospitalState(target, model_round=1, weights=np.ones(1000, dtype=np.float32), ledger="v1")
state.save()
{die}
atomic.os.replace = die_at_rename
state.model_round, state.weights, state.ledger = 2, np.full(1_000_000, 2.0, dtype=np.float32), "v2"
state.save()
""",
    "lifetime ledger": """
from pipeline.privacy.lifetime import LifetimeLedger
ledger = LifetimeLedger(target)
ledger.record("study-1", [(1.0, 0.1, 10)], 1e-5, "rdp")
{die}
atomic.os.replace = die_at_rename
ledger.record("study-2", [(1.0, 0.1, 999)], 1e-5, "rdp")
""",
    "CKKS key files": """
from pipeline.config.compose import compose
from pipeline.secagg.keys import write_key_files
enc = compose().encryption
write_key_files(enc, target.parent)
{die}
atomic.os.replace = die_at_rename
write_key_files(enc, target.parent)
""",
}


def _run_case(name: str, target: Path) -> subprocess.CompletedProcess:
    body = CASES[name].replace("{die}", DIE_AT_RENAME)
    code = "from pathlib import Path\n" + f"target = Path({str(target)!r})\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _died_at_the_rename(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == -signal.SIGKILL, f"the writer did not reach an atomic rename:\n{done.stderr[-2000:]}"


def test_summary_json_survives_a_kill_mid_write(tmp_path):
    target = tmp_path / "summary.json"
    _died_at_the_rename(_run_case("summary.json", target))
    assert json.loads(target.read_text()) == {"version": 1}


def test_the_checkpoint_survives_a_kill_mid_write(tmp_path):
    target = tmp_path / "checkpoint.json"
    _died_at_the_rename(_run_case("metrics.csv and checkpoint.json", target))
    assert json.loads(target.read_text()) == {"completed_round": 1}
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].startswith("1,")


def test_model_weights_survive_a_kill_mid_write(tmp_path):
    target = tmp_path / "model.pt"
    _died_at_the_rename(_run_case("model.pt", target))
    weights = torch.load(target)
    assert weights["weight"].shape == (1, 3) and torch.all(weights["weight"] == 1.0)


def test_hospital_state_survives_a_kill_mid_write(tmp_path):
    from pipeline.flower.hospital_state import HospitalState

    target = tmp_path / "state" / "hospital_0.npz"
    _died_at_the_rename(_run_case("hospital state", target))
    state = HospitalState.load(target)
    assert state.model_round == 1 and state.ledger == "v1"
    assert np.array_equal(state.weights, np.ones(1000, dtype=np.float32))


def test_the_lifetime_ledger_survives_a_kill_mid_write(tmp_path):
    from pipeline.privacy.lifetime import LifetimeLedger

    target = tmp_path / "lifetime_hospital_0.json"
    _died_at_the_rename(_run_case("lifetime ledger", target))
    assert [e.study for e in LifetimeLedger.load(target).entries] == ["study-1"]


def test_ckks_key_files_survive_a_kill_mid_write(tmp_path):
    from pipeline.secagg.keys import load_secret_context
    from pipeline.secagg.params import SECRET_FILE

    target = tmp_path / "keys" / SECRET_FILE
    _died_at_the_rename(_run_case("CKKS key files", target))
    ctx, _ = load_secret_context(str(target))  # the first, whole key: it still loads
    assert ctx.is_private()


@pytest.mark.parametrize("name", ["summary.json", "hospital state"])
def test_a_kill_mid_write_leaves_only_a_temporary_file_beside_the_good_one(tmp_path, name):
    target = tmp_path / ("summary.json" if name == "summary.json" else "hospital_0.npz")
    _died_at_the_rename(_run_case(name, target))
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != target.name)
    assert all(n.startswith(f".{target.name}.") and n.endswith(".tmp") for n in leftovers), leftovers
