"""Builders for the command line's tests (test_cli.py): what a run printed, lines of its
tables, alerts and dead letters to show."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from engine.pb.omnistock.v1 import omnistock_pb2 as pb

from .grpc_helpers import T0, Stubs, delta

DEAD = "omnistock:events:dead"


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return orjson.loads(self.out)


Omni = Callable[..., Awaitable[Ran]]


def has_line(out: str, *cells: object) -> bool:
    """A line holding these cells in this order, separated by blanks only."""
    pattern = r"\s+".join(re.escape(str(c)) for c in cells)
    return re.search(rf"^\s*{pattern}(\s|$)", out, re.MULTILINE) is not None


async def make_alerts(stubs: Stubs, *sources: str) -> None:
    """A clock_skew alert for each source: an event an hour ahead of the server's clock."""
    now = int(time.time() * 1000)
    for i, source in enumerate(sources):
        ahead = delta(f"f-{source}-{i}", "s1", "a", -1, now + 3_600_000, source=source)
        await stubs.stock.StreamEvents(iter([pb.StreamEventsRequest(events=[ahead])])).read()


def closed_port() -> int:
    """A loopback port nothing listens on (free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def letter(origin: str, reason: str, **entry: str) -> dict[str, str]:
    return {"dead.from": origin, "dead.reason": reason, "dead.at": str(T0), "dead.id": "x", **entry}


def sale(event_id: str, sku: str, kind: str, qty: int, reason: str, **more: str) -> dict[str, str]:
    """A dead letter from the ingest stream holding a stock event at s1."""
    entry = {"event_id": event_id, "location_id": "s1", "sku": sku, "kind": kind, "qty": str(qty)}
    return letter("stream", reason, **entry, source_time=str(T0 + 1000), **more)
