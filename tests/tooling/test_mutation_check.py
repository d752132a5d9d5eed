"""The mutation check's list stays applicable: each mutation's original text occurs exactly once."""

from __future__ import annotations

import importlib.util
import sys

from conftest import ROOT


def _module():
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "scripts" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_mutation_applies_to_the_current_code():
    check = _module()

    assert check.check_definitions() == []
    assert len(check.MUTATIONS) >= 10
    for m in check.MUTATIONS:
        assert m.original != m.mutated and all((ROOT / t).exists() for t in m.tests), m.name
