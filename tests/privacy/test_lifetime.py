"""A hospital's lifetime ledger: spending over studies composes, never shrinks, and its command lists it."""

from __future__ import annotations

import pytest

from pipeline.privacy.accounting import history_epsilon
from pipeline.privacy.lifetime import LifetimeLedger, lifetime_file, main

PLAN = (1.0, 1 / 12, 24)  # one round of the default plan: noise 1.0, sample rate 1/12, 24 steps


def test_studies_compose_into_the_lifetime_total(tmp_path):
    ledger = LifetimeLedger.load(lifetime_file(tmp_path, 0))

    ledger.record("study-a", [PLAN], 1e-5, "rdp")
    ledger.record("study-a", [(1.0, 1 / 12, 48)], 1e-5, "rdp")  # the same study, a round later
    ledger.record("study-b", [PLAN], 1e-5, "rdp")
    reloaded = LifetimeLedger.load(lifetime_file(tmp_path, 0))

    assert [e.study for e in reloaded.entries] == ["study-a", "study-b"]
    assert reloaded.entries[0].steps == 48
    assert reloaded.epsilon(1e-5, "rdp") == pytest.approx(history_epsilon([(1.0, 1 / 12, 72)], 1e-5, "rdp"))
    assert reloaded.epsilon(1e-5, "rdp") > max(e.epsilon for e in reloaded.entries)
    assert lifetime_file(tmp_path, 0).stat().st_mode & 0o777 == 0o600


def test_spending_is_never_forgotten_when_a_study_id_comes_back_with_a_shorter_history(tmp_path):
    ledger = LifetimeLedger.load(lifetime_file(tmp_path, 0))
    ledger.record("study-a", [(1.0, 1 / 12, 96)], 1e-5, "rdp")
    before = ledger.epsilon(1e-5, "rdp")

    ledger.record("study-a", [PLAN], 1e-5, "rdp")  # e.g. a server that reuses an old study id

    assert len(ledger.entries) == 2
    assert ledger.epsilon(1e-5, "rdp") > before


def test_what_if_replaces_only_the_studys_own_entry(tmp_path):
    ledger = LifetimeLedger.load(lifetime_file(tmp_path, 0))
    ledger.record("old", [PLAN], 1e-5, "rdp")
    ledger.record("now", [PLAN], 1e-5, "rdp")

    planned = ledger.epsilon_with("now", [(1.0, 1 / 12, 192)], 1e-5, "rdp")

    assert planned == pytest.approx(history_epsilon([(1.0, 1 / 12, 216)], 1e-5, "rdp"))


def test_the_command_lists_a_hospitals_studies_and_total(tmp_path, capsys):
    ledger = LifetimeLedger.load(lifetime_file(tmp_path, 3))
    ledger.record("study-a", [PLAN], 1e-5, "rdp")
    ledger.record("study-b", [PLAN], 1e-5, "rdp")

    code = main([str(tmp_path)])

    out = capsys.readouterr().out
    assert code == 0
    assert "hospital_3" in out and "study-a" in out and "study-b" in out
    assert f"lifetime: 2 studies, epsilon {ledger.epsilon(1e-5, 'rdp'):.3f}" in out


def test_the_command_on_a_folder_without_a_ledger_says_so(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no lifetime ledger" in capsys.readouterr().err
