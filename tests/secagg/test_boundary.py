"""The server side of secure aggregation can reach nothing that loads a secret key.

Two checks: the import graph of the server-side modules (module-level and lazy imports alike),
and what a fresh process that builds the simulation's apps, as the driver does, has loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

# What runs in the server's process: the ServerApp, the strategies, the server-side secagg modules.
SERVER_SIDE = [
    "pipeline/flower/server_app.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "strategies").glob("*.py")),
    "pipeline/secagg/params.py",
    "pipeline/secagg/wire.py",
    "pipeline/secagg/server_sum.py",
    "pipeline/secagg/aggregates.py",
]
# Modules that make, read or use a secret context.
KEY_MODULES = {"pipeline.secagg.keys", "pipeline.secagg.codec", "pipeline.secagg.consortium"}
SECRET_NAMES = ["secret_context_bytes", "load_secret_context", "make_secret_context", "save_secret_key=True"]


def _imported_modules(source: str) -> set[str]:
    """Every module an ``import`` / ``from ... import`` in ``source`` names, at any nesting level."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # from pipeline.secagg import keys
    return names


def _local(module: str) -> Path | None:
    for path in (ROOT / (module.replace(".", "/") + ".py"), ROOT / module.replace(".", "/") / "__init__.py"):
        if path.exists():
            return path
    return None


def _reachable(start: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = [p.removesuffix(".py").replace("/", ".") for p in start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += [m for m in _imported_modules(_local(module).read_text()) if _local(m)]
    return seen


@pytest.mark.parametrize("relpath", SERVER_SIDE)
def test_server_side_source_names_no_secret_key_function(relpath):
    # Prepare
    source = (ROOT / relpath).read_text()

    # Execute
    imported = _imported_modules(source)

    # Assert
    assert imported & KEY_MODULES == set()
    for name in SECRET_NAMES:
        assert name not in source, f"{relpath} mentions {name}"


def test_server_side_modules_do_not_reach_key_handling_through_other_modules():
    # Execute: the project modules the server can import, directly or lazily
    seen = _reachable(SERVER_SIDE)

    # Assert: the walk does see the server's code, and none of the key holders'
    assert {"pipeline.flower.server_app", "strategies.secure_fedavg", "pipeline.secagg.server_sum"} <= seen
    assert "pipeline.task.model" in seen  # the plaintext server-side test is reachable: the walk follows lazy imports
    assert seen & KEY_MODULES == set()


def test_the_key_holder_side_does_reach_the_keys():
    """The check above can fail: the same walk from the hospital's app finds the key module."""
    # Execute
    seen = _reachable(["pipeline/flower/client_app.py"])

    # Assert
    assert "pipeline.secagg.keys" in seen


def test_the_simulation_driver_process_never_loads_the_key_module():
    # Prepare: what engines/simulation.py does before run_simulation: import it and build both apps
    code = "\n".join(
        [
            "import sys",
            "from pipeline.engines import simulation",
            "from pipeline.flower import client_app, server_app",
            "server_app.make_app({}); client_app.make_app({}, {'secret-context': '/nowhere.ctx'})",
            "print(sorted(m for m in sys.modules if m.startswith(('pipeline', 'strategies'))))",
            f"print('KEYS' if any(m in sys.modules for m in {sorted(KEY_MODULES)!r}) else 'NO-KEYS')",
        ]
    )

    # Execute
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)

    # Assert
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pipeline.flower.client_app" in done.stdout  # the driver does hold the hospital's app object
    assert done.stdout.strip().splitlines()[-1] == "NO-KEYS"
