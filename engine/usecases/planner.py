"""Runs the sourcing search (engine.domain.sourcing.plan_order, pure CPU: about 0.1 s for an order
of a few lines over 500 candidate locations, more for long ones) in worker processes, so
that no Allocate holds the event loop that every other call of the process shares. A
small order is planned inline: sending it to a worker would cost more than planning it.
At most `waiting` plans wait for a worker; one more is refused RESOURCE_EXHAUSTED (retry)
rather than queued behind minutes of work."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from engine.domain.errors import ResourceExhausted
from engine.domain.model import BasketLine
from engine.domain.sourcing import Candidate, Constraints, CostModel, Plan, plan_order

INLINE_CELLS = 200  # lines x candidates planned on the event loop (well under a millisecond)


class Planner:
    def __init__(self, workers: int, waiting: int) -> None:
        self.workers = workers
        self._slots = asyncio.Semaphore(workers + waiting)
        self._pool: ProcessPoolExecutor | None = None

    async def plan(
        self,
        lines: Sequence[BasketLine],
        candidates: Sequence[Candidate],
        model: CostModel,
        constraints: Constraints,
    ) -> Plan:
        if self.workers == 0 or len(lines) * len(candidates) <= INLINE_CELLS:
            return plan_order(lines, candidates, model, constraints)
        if self._slots.locked():
            raise ResourceExhausted("Allocate: too many orders are being planned; retry later")
        async with self._slots:
            loop = asyncio.get_running_loop()
            args = (list(lines), list(candidates), model, constraints)
            return await loop.run_in_executor(self._workers(), plan_order, *args)

    def _workers(self) -> ProcessPoolExecutor:
        if self._pool is None:  # started on first use: a server that never plans has none
            # spawn, not fork: a forked copy of a process running grpc is not safe
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
