"""Default run folders: a run started in the same second as another gets its own ``<time>-2`` folder."""

from __future__ import annotations

from pathlib import Path

from conftest import CONF_DIR

from pipeline.config import paths  # noqa: F401  (registers the config's resolvers)
from pipeline.config import run_folder as rf


def test_a_taken_folder_fails_over_to_the_next_free_sibling(tmp_path):
    base = tmp_path / "outputs" / "2026-12-01" / "22-00-00"

    first = rf.claim_fresh_folder(base)
    second = rf.claim_fresh_folder(base)
    base.with_name("22-00-00-4").mkdir()
    third, fourth = rf.claim_fresh_folder(base), rf.claim_fresh_folder(base)

    assert (first, second, third) == (base, base.with_name("22-00-00-2"), base.with_name("22-00-00-3"))
    assert fourth == base.with_name("22-00-00-5") and fourth.is_dir()


def test_resume_and_run_dir_are_used_as_given_and_nothing_is_created(tmp_path):
    default = tmp_path / "default"

    assert rf.run_folder(str(tmp_path / "a"), None, default) == str(tmp_path / "a")
    assert rf.run_folder(None, str(tmp_path / "b"), default) == str(tmp_path / "b")
    assert rf.run_folder("", str(tmp_path / "b"), default) == str(tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_one_process_gets_one_folder_for_one_default_path(tmp_path):
    default = tmp_path / "12-00-00"
    default.mkdir()  # another run's

    ours = rf.run_folder(None, None, default)

    assert ours == str(tmp_path / "12-00-00-2") and rf.run_folder(None, None, default) == ours


def test_hydra_run_dir_claims_a_fresh_folder_when_the_default_one_is_taken(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.utils import setup_globals

    setup_globals()  # Hydra's ${now:...}, as hydra.main registers it
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        taken = compose("config", overrides=[f"paths.outputs={tmp_path}"], return_hydra_config=True)
        assert list(tmp_path.iterdir()) == []  # composing claims nothing; resolving hydra.run.dir does
        first = Path(taken.hydra.run.dir)
        fresh = compose("config", overrides=[f"paths.outputs={tmp_path}/"], return_hydra_config=True)
        given = compose("config", overrides=[f"paths.outputs={tmp_path}", "run_dir=/x/run"], return_hydra_config=True)
        second = Path(fresh.hydra.run.dir)

    assert first.parent.parent == tmp_path and first.is_dir()
    if second.parent == first.parent and second.name.startswith(first.name):  # the same second
        assert second.name == f"{first.name}-2"
    assert second != first and second.is_dir()
    assert given.hydra.run.dir == "/x/run"
