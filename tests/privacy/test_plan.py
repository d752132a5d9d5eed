"""The DP plan's noise search and its file cache: a cached answer is used only once it is verified."""

from __future__ import annotations

import json

import pytest

from pipeline.privacy import plan as plan_module
from pipeline.privacy.plan import EPSILON_TOLERANCE, cache_file, spends

ARGS = (4.0, 1e-5, 0.1, 50, "rdp")  # epsilon, delta, sample rate, steps, accountant


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder of this test's own, and no per-process memo."""
    monkeypatch.setenv(plan_module.CACHE_ENV, str(tmp_path))
    plan_module._noise_multiplier.cache_clear()
    yield cache_file()
    plan_module._noise_multiplier.cache_clear()


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[float, str]:
    """The search's own answer to ARGS and its cache key, searched once for the module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(plan_module.CACHE_ENV, str(tmp_path_factory.mktemp("plan_cache")))
        plan_module._noise_multiplier.cache_clear()
        noise = plan_module._noise_multiplier(*ARGS)
        key = next(iter(json.loads(cache_file().read_text())))
        plan_module._noise_multiplier.cache_clear()
    return noise, key


def _search_must_not_run(monkeypatch):
    def refuse(**kwargs):
        raise AssertionError("the noise search ran although the cache holds a verified answer")

    monkeypatch.setattr(plan_module, "get_noise_multiplier", refuse)


def test_a_search_is_cached_and_the_cached_answer_is_used(cache, monkeypatch):
    # Execute: a first search fills the cache; a fresh process (memo cleared) must not search again
    first = plan_module._noise_multiplier(*ARGS)
    plan_module._noise_multiplier.cache_clear()
    _search_must_not_run(monkeypatch)
    second = plan_module._noise_multiplier(*ARGS)

    # Assert
    assert second == first
    assert list(json.loads(cache.read_text()).values()) == [first]
    eps = spends(first, *ARGS[1:])
    assert ARGS[0] - EPSILON_TOLERANCE <= eps <= ARGS[0]


@pytest.mark.parametrize("tampered", [0.3, 50.0, -1.0, "x"])
def test_a_cached_answer_that_does_not_spend_the_target_is_searched_again(cache, searched, tampered):
    # Prepare: a cache holding a wrong answer (too little noise: epsilon above the target; too much:
    # utility thrown away; nonsense) under the right key
    right, key = searched
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({key: tampered}))

    # Execute
    noise = plan_module._noise_multiplier(*ARGS)

    # Assert: the search's answer, and the cache repaired
    assert noise == pytest.approx(right)
    assert json.loads(cache.read_text())[key] == pytest.approx(right)


def test_an_unreadable_cache_falls_back_to_the_search(cache):
    # Prepare
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("{not json")

    # Execute
    noise = plan_module._noise_multiplier(*ARGS)

    # Assert
    assert ARGS[0] - EPSILON_TOLERANCE <= spends(noise, *ARGS[1:]) <= ARGS[0]
