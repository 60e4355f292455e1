"""The flash-sale load, the same for every storage layer it is run against: C concurrent
callers in one asyncio process, each holding 1 unit of the one hot row under a fresh
reservation id, again and again, until the duration, the request budget, or the stock is gone.

What counts is successful holds per second while stock lasts: once a caller is told "short"
the row is sold out (units only ever leave it), the load stops and the rate is taken over the
time until then. Latency is recorded per request, in microseconds, in an HDR histogram like
bench/runner.py's.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.peers.common import Progress, latency_ms
from bench.runner import MAX_LATENCY_US, new_histogram

# reservation id -> True when held, False when short; raises on error.
Hold = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True)
class FlashConfig:
    concurrency: int = 64
    duration: float = 10.0  # seconds, measured
    warmup: float = 1.0  # seconds of the same load before, not measured
    requests: int = 0  # stop after this many (0: no budget)
    timeout: float = 5.0  # seconds per hold; a hold taking longer counts as an error
    until_sold_out: bool = True  # stop at the first "short"


class _Tally:
    def __init__(self) -> None:
        self.hist = new_histogram()
        self.outcomes: Counter[str] = Counter()
        self.first_error: dict[str, str] = {}
        self.sold_out_at: float | None = None


async def run_flash_sale(hold: Hold, cfg: FlashConfig, label: str) -> dict[str, Any]:
    """Runs the warm-up (not measured: connections open, statements get prepared, scripts
    get cached), then the measured load, and answers what the measured load saw."""
    run_id = uuid.uuid4().hex[:8]
    warmup = _Tally()
    if cfg.warmup > 0:
        await _drive(hold, cfg, warmup, cfg.warmup, 0, f"{label} warm-up", f"w{run_id}")
    tally = _Tally()
    elapsed = await _drive(hold, cfg, tally, cfg.duration, cfg.requests, label, run_id)
    result = _summary(tally, elapsed)
    result["warmup"] = {
        "seconds": cfg.warmup,
        "held": warmup.outcomes["held"],
        "requests": warmup.hist.get_total_count(),
    }
    return result


async def _drive(
    hold: Hold, cfg: FlashConfig, tally: _Tally, seconds: float, budget: int, label: str, tag: str
) -> float:
    """C callers until `seconds`, the `budget` of requests, or sold out; answers the time."""
    progress = Progress(label)
    stop = asyncio.Event()
    issued = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds

    async def caller(index: int) -> None:
        nonlocal issued
        n = 0
        while not stop.is_set() and time.perf_counter() < deadline:
            if budget and issued >= budget:
                return
            issued += 1
            n += 1
            start = time.perf_counter()
            outcome = await _one(hold, f"fs-{tag}-{index}-{n}", cfg.timeout, tally)
            end = time.perf_counter()
            tally.hist.record_value(max(1, min(int((end - start) * 1e6), MAX_LATENCY_US)))
            tally.outcomes[outcome] += 1
            progress.done += 1
            if outcome == "short":
                if tally.sold_out_at is None:
                    tally.sold_out_at = end - t0
                if cfg.until_sold_out:
                    stop.set()
            elif outcome != "held":
                progress.errors += 1

    progress.start()
    try:
        await asyncio.gather(*(caller(i) for i in range(cfg.concurrency)))
    finally:
        await progress.stop()
    return time.perf_counter() - t0


async def _one(hold: Hold, reservation_id: str, limit_s: float, tally: _Tally) -> str:
    try:
        async with asyncio.timeout(limit_s):
            return "held" if await hold(reservation_id) else "short"
    except Exception as exc:  # counted by type, the first message of each kept
        name = type(exc).__name__
        tally.first_error.setdefault(name, str(exc)[:300])
        return name


def _summary(tally: _Tally, elapsed: float) -> dict[str, Any]:
    held = tally.outcomes["held"]
    window = tally.sold_out_at if tally.sold_out_at is not None else elapsed
    total = tally.hist.get_total_count()
    return {
        "requests": total,
        "elapsed_s": round(elapsed, 3),
        "held": held,
        "short": tally.outcomes["short"],
        "errors": total - held - tally.outcomes["short"],
        "outcomes": dict(tally.outcomes),
        "first_error": tally.first_error,
        "sold_out": tally.sold_out_at is not None,
        "sold_out_at_s": None if tally.sold_out_at is None else round(tally.sold_out_at, 3),
        # the figure compared: successful holds per second while stock lasted
        "held_per_s": round(held / window, 1) if window else 0.0,
        "requests_per_s": round(total / elapsed, 1) if elapsed else 0.0,
        "latency_ms": latency_ms(tally.hist),
    }
