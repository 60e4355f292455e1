"""Clock sanity per source (engine/usecases/sources.py): a source is judged by the least
delay of its events over the last minutes, flagged past the allowed skew either way, told
once (again every ten minutes while it lasts), and cleared when its clock comes right."""

from __future__ import annotations

import logging

import pytest

from engine.domain.model import EventKind, StockEvent
from engine.metrics import Metrics
from engine.store.storage import Storage
from engine.usecases.sources import RELOG_MS, WINDOW_MS, Sources

NOW = 1_767_225_600_000
SKEW = 300_000


def sale(source: str, delay_ms: int, now: int) -> StockEvent:
    return StockEvent("e", "s1", "a", EventKind.DELTA, -1, now - delay_ms, source=source)


@pytest.fixture
def sources(storage: Storage) -> Sources:
    return Sources(storage, Metrics(), SKEW, lambda: NOW)


def test_one_prompt_event_clears_a_source_of_late_ones(sources: Sources) -> None:
    # the least delay is the estimate: one late delivery alone says nothing of the clock
    assert sources.saw([sale("till", 900_000, NOW), sale("till", 20, NOW)], NOW) == []
    assert sources.seen["till"].clock == "ok"


def test_a_clock_behind_is_alerted_once_again_after_ten_minutes_and_when_it_recovers(
    sources: Sources, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "engine.usecases.sources"):
        (alert,) = sources.saw([sale("till", 400_000, NOW)], NOW)
        assert alert["clock"] == "behind" and alert["clock_offset_ms"] == "400000"
        assert sources.saw([sale("till", 400_000, NOW + 1000)], NOW + 1000) == []
        later = NOW + RELOG_MS
        (again,) = sources.saw([sale("till", 400_000, later)], later)
        assert again["clock"] == "behind"
        # it is judged on the last two windows: the late events leave them in time
        mended = later + 2 * WINDOW_MS
        (cleared,) = sources.saw([sale("till", 10, mended)], mended)
    assert cleared["clock"] == "ok"
    assert "source till: clock behind by 400.0 s" in caplog.text
    assert "source till: clock within the allowed skew again (was behind)" in caplog.text


def test_a_clock_ahead_is_flagged_and_its_events_counted(sources: Sources) -> None:
    (alert,) = sources.saw([sale("till", -SKEW - 1, NOW)] * 3, NOW)
    assert alert["clock"] == "ahead"
    skewed = sources.metrics.registry.get_sample_value(
        "omnistock_clock_skewed_events_total", {"clock": "ahead"}
    )
    assert skewed == 3


def test_within_the_skew_is_no_news(sources: Sources) -> None:
    assert sources.saw([sale("till", SKEW, NOW), sale("pos", -SKEW, NOW)], NOW) == []


async def test_what_a_process_saw_is_added_to_the_store_once(
    sources: Sources, storage: Storage
) -> None:
    sources.saw([sale("till", 10, NOW)] * 2, NOW)
    await sources.flush()
    sources.saw([sale("till", 5, NOW + 1)], NOW + 1)
    await sources.flush()
    await sources.flush()  # nothing new: nothing added
    got = (await storage.sources())["till"]
    assert int(got["events"]) == 3
    assert int(got["last_arrival"]) == NOW + 1
    assert int(got["clock_offset_ms"]) == 5
