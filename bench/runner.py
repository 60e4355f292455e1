"""The load runner: closed-loop (fixed concurrency) or open-loop (target rate) load from one
or more client processes, latency in an HDR histogram (microseconds), a live progress line,
and one merged result.

Open loop measures each request from when it was due, not from when it was sent, so a
server that falls behind shows its queueing in the latencies (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing as mp
import queue
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from bench.scenarios import Context

MAX_LATENCY_US = 60_000_000


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, MAX_LATENCY_US, 3)


@dataclass(frozen=True)
class LoadConfig:
    scenario: str
    target: str
    mode: str = "closed"  # closed | open
    concurrency: int = 32  # closed: requests in flight, over all processes
    rate: float = 1000.0  # open: requests per second, over all processes
    duration: float = 10.0  # seconds measured
    warmup: float = 0.0  # seconds of the same load before them, not measured
    requests: int = 0  # stop after this many (0: duration only)
    processes: int = 1
    channels: int = 4  # gRPC connections per process
    seed: int = 1
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkerResult:
    histogram: bytes
    outcomes: dict[str, int]
    seconds: list[tuple[int, int, int, int]]  # second, count, p50 us, p99 us
    elapsed: float
    held: dict[str, int]  # "location\tsku" -> units this process still holds


async def _closed(cfg: LoadConfig, ctx: Context, share: int, budget: int, sink: Any) -> None:
    deadline = time.perf_counter() + cfg.warmup + cfg.duration
    issued = 0

    async def one_client() -> None:
        nonlocal issued
        while time.perf_counter() < deadline and (not budget or issued < budget):
            issued += 1
            start = time.perf_counter()
            outcome = await ctx.run_one()
            sink(start, time.perf_counter(), outcome)

    await asyncio.gather(*(one_client() for _ in range(share)))


async def _open(cfg: LoadConfig, ctx: Context, rate: float, budget: int, sink: Any) -> None:
    interval, start = 1.0 / rate, time.perf_counter()
    end, tasks, n = start + cfg.warmup + cfg.duration, set(), 0

    async def one(due: float) -> None:
        outcome = await ctx.run_one()
        sink(due, time.perf_counter(), outcome)

    while (not budget or n < budget) and (due := start + n * interval) < end:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    if tasks:
        await asyncio.gather(*tasks)


async def _work(cfg: LoadConfig, index: int, progress: Any) -> WorkerResult:
    ctx = await Context.open(cfg, index)
    # What the worker made to start (modules, stubs, its scenario's data) lives to its end:
    # out of the collector's sight, a full collection in the measured time walks only what
    # came after, not a pause of tens of ms charged to a request (as server.py does).
    gc.collect()
    gc.freeze()
    hist, outcomes = new_histogram(), Counter[str]()
    per_second: dict[int, HdrHistogram] = {}
    t0 = time.perf_counter() + cfg.warmup  # the measured time starts here
    last_report = [t0 - cfg.warmup, 0, 0]

    warming: Counter[str] = Counter()  # outcomes of the warm-up: shown, not measured

    def sink(start: float, end: float, outcome: str) -> None:
        micros = max(1, min(int((end - start) * 1e6), MAX_LATENCY_US))
        if start < t0:
            warming[outcome] += 1
        else:
            hist.record_value(micros)
            per_second.setdefault(int(end - t0), new_histogram()).record_value(micros)
            outcomes[outcome] += 1
        if end - last_report[0] >= 0.5:
            seen = outcomes + warming
            done = seen.total()
            errors = done - seen["ok"] - seen["short"]
            progress.put((index, done - last_report[1], errors - last_report[2], micros))
            last_report[:] = [end, done, errors]

    share_c = max(1, cfg.concurrency // cfg.processes + (index < cfg.concurrency % cfg.processes))
    budget = cfg.requests // cfg.processes if cfg.requests else 0
    try:
        if cfg.mode == "open":
            await _open(cfg, ctx, cfg.rate / cfg.processes, budget, sink)
        else:
            await _closed(cfg, ctx, share_c, budget, sink)
    finally:
        await ctx.close()
    seconds = [
        (s, h.get_total_count(), h.get_value_at_percentile(50), h.get_value_at_percentile(99))
        for s, h in sorted(per_second.items())
    ]
    held = {f"{loc}\t{sku}": n for (loc, sku), n in ctx.held.items() if n}
    return WorkerResult(hist.encode(), dict(outcomes), seconds, time.perf_counter() - t0, held)


def _worker_entry(cfg: LoadConfig, index: int, progress: Any, results: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a bench dependency
        pass
    results.put((index, asdict(asyncio.run(_work(cfg, index, progress)))))


def _show_progress(started: float, done: int, errors: int, rate: float, last_us: int) -> None:
    line = (
        f"\r[{time.perf_counter() - started:6.1f}s] {done:>10,} requests  {rate:>9,.0f}/s"
        f"  errors {errors:,}  last {last_us / 1000:.2f} ms"
    )
    print(line, end="", file=sys.stderr, flush=True)


def run_load(cfg: LoadConfig) -> dict[str, Any]:
    """Runs the load in `cfg.processes` processes and merges what they measured."""
    spawn = mp.get_context("spawn")
    progress, results = spawn.Queue(), spawn.Queue()
    workers = [
        spawn.Process(target=_worker_entry, args=(cfg, i, progress, results))
        for i in range(cfg.processes)
    ]
    started = time.perf_counter()
    for w in workers:
        w.start()
    done = errors = 0
    window: list[tuple[float, int]] = []
    collected: dict[int, dict[str, Any]] = {}
    while len(collected) < len(workers):
        try:
            _, n, e, last_us = progress.get(timeout=0.2)
            done, errors = done + n, errors + e
            now = time.perf_counter()
            window = [(t, c) for t, c in window if now - t < 2.0] + [(now, n)]
            rate = sum(c for _, c in window) / max(now - window[0][0], 0.5)
            _show_progress(started, done, errors, rate, last_us)
        except queue.Empty:
            pass
        while True:
            try:
                index, result = results.get_nowait()
                collected[index] = result
            except queue.Empty:
                break
        if any(w.exitcode not in (None, 0) for w in workers):
            raise RuntimeError("a load process failed; see its traceback above")
    for w in workers:
        w.join()
    print(file=sys.stderr)
    return merge([WorkerResult(**collected[i]) for i in sorted(collected)])


def merge(parts: list[WorkerResult]) -> dict[str, Any]:
    hist = new_histogram()
    outcomes: Counter[str] = Counter()
    held: Counter[str] = Counter()
    by_second: dict[int, list[tuple[int, int, int]]] = {}
    for part in parts:
        hist.add(HdrHistogram.decode(part.histogram))
        outcomes.update(part.outcomes)
        held.update(part.held)
        for s, count, p50, p99 in part.seconds:
            by_second.setdefault(s, []).append((count, p50, p99))
    elapsed = max(p.elapsed for p in parts)
    total = hist.get_total_count()
    return {
        "requests": total,
        "elapsed_s": round(elapsed, 3),
        "throughput_rps": round(total / elapsed, 1) if elapsed else 0.0,
        "outcomes": dict(outcomes),
        "errors": sum(n for k, n in outcomes.items() if k not in ("ok", "short")),
        "latency_ms": {
            name: hist.get_value_at_percentile(p) / 1000
            for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))
        }
        | {"max": hist.get_max_value() / 1000, "mean": round(hist.get_mean_value() / 1000, 3)},
        "held": dict(held),
        "timeline": [
            {
                "second": s,
                "requests": sum(c for c, _, _ in rows),
                "p50_ms": max(p50 for _, p50, _ in rows) / 1000,
                "p99_ms": max(p99 for _, _, p99 in rows) / 1000,
            }
            for s, rows in sorted(by_second.items())
        ],
    }
