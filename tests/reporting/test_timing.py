"""Phase timing: the hospitals' stopwatches and the split of a round's wall time into columns that add up."""

from __future__ import annotations

import time

import pytest

from pipeline.reporting.timing import PHASE_COLUMNS, ExchangeTime, Stopwatch, process_seconds, round_phases, run_phases


def test_stopwatch_sums_blocks_moves_parts_and_reports_a_total():
    # Prepare
    watch = Stopwatch()

    # Execute
    with watch.phase("train"):
        time.sleep(0.05)
    with watch.phase("train"):
        time.sleep(0.05)
    watch.move("train", "dp", 0.03)
    watch.move("train", "dp", 99.0)  # never more than the source holds
    timed = watch.timed("encode", lambda x: x + 1)
    result = timed(1)
    report = watch.report()

    # Assert
    assert result == 2
    assert watch.seconds["train"] == pytest.approx(0.0, abs=1e-9)
    assert watch.seconds["dp"] == pytest.approx(0.1, abs=0.03)
    assert "encode" in watch.seconds
    assert report["total"] >= 0.1 and all(round(v, 3) == v for v in report.values())


def test_a_round_is_split_along_the_last_reply_of_each_exchange():
    # Prepare: train (last reply: 3 s handler), unmask, evaluate; 0.2 s of adding inside the train exchange
    exchanges = [
        ExchangeTime(5.0, {"setup": 0.1, "decode": 0.0, "train": 2.0, "dp": 0.6, "encode": 0.1, "total": 3.0}),
        ExchangeTime(0.5, {"decode": 0.2, "total": 0.3}),
        ExchangeTime(1.0, {"decode": 0.1, "evaluate": 0.4, "total": 0.6}),
    ]

    # Execute
    row = round_phases(7.0, exchanges, aggregate=0.2, server_evaluate=0.0)

    # Assert: the critical handlers' phases, the waits, the server's own time; all adding up to 7 s
    assert set(row) == set(PHASE_COLUMNS)
    assert sum(row.values()) == pytest.approx(7.0)
    assert row["phase_train"] == pytest.approx(2.0) and row["phase_dp"] == pytest.approx(0.6)
    assert row["phase_decode"] == pytest.approx(0.3) and row["phase_evaluate"] == pytest.approx(0.4)
    assert row["phase_aggregate"] == pytest.approx(0.2)
    # waits: (5 - 3) + (0.5 - 0.3) + (1 - 0.6) less the adding
    assert row["phase_send_receive"] == pytest.approx(2.6 - 0.2)
    # other: the handlers' unnamed 0.2 + 0.1 + 0.1, and the server's 7 - 6.5 between exchanges
    assert row["phase_other"] == pytest.approx(0.4 + 0.5)


def test_an_exchange_without_replies_is_all_waiting_and_server_tests_count_as_evaluation():
    # Execute
    row = round_phases(10.0, [ExchangeTime(8.0, {})], aggregate=0.0, server_evaluate=1.5)

    # Assert
    assert row["phase_send_receive"] == pytest.approx(8.0)
    assert row["phase_evaluate"] == pytest.approx(1.5)
    assert row["phase_other"] == pytest.approx(0.5)
    assert sum(row.values()) == pytest.approx(10.0)


def test_a_handler_reporting_more_than_its_exchange_still_adds_up():
    # Execute: clocks of two processes; a reply cannot take longer than its exchange
    row = round_phases(4.0, [ExchangeTime(3.0, {"train": 3.5, "total": 3.6})], aggregate=0.0)

    # Assert
    assert row["phase_send_receive"] == pytest.approx(0.0)
    assert sum(row.values()) == pytest.approx(4.0)


def test_the_run_sums_its_rounds_phases():
    rows = [
        {"seconds": 2.0, **dict.fromkeys(PHASE_COLUMNS, 2.0 / len(PHASE_COLUMNS))},
        {"seconds": 3.0, **dict.fromkeys(PHASE_COLUMNS, 3.0 / len(PHASE_COLUMNS))},
    ]

    timing = run_phases(1.5, rows)

    assert timing["query"] == 1.5 and timing["rounds"] == pytest.approx(5.0)
    assert sum(timing["phases"].values()) == pytest.approx(5.0)


def test_the_process_age_is_positive_and_grows():
    first = process_seconds()
    time.sleep(0.05)
    assert 0 < first < process_seconds()
