"""What an operator looks at: a row with its holds, a reservation, a location, the sources of
stock events (their lag and clocks), the alerts (followed as they come, with --follow).

Each command makes its call and prints the answer: a table for people, or with --json one
JSON document of the proto's fields (a list: a JSON array). A call that fails raises
grpc.aio.AioRpcError, which cli/main.py turns into a message and an exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Mapping

import grpc

from cli.show import (
    as_json,
    dumps,
    dumps_line,
    enum_name,
    fields,
    iso,
    now_ms,
    offset,
    say,
    table,
    when,
    yes,
)
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc

POLL_EVERY = 1.0  # seconds between two looks for new alerts (--follow)


async def row(args: argparse.Namespace, channel: grpc.aio.Channel) -> int:
    request = pb.GetRowRequest(location_id=args.location, sku=args.sku)
    got = await pb_grpc.OperatorServiceStub(channel).GetRow(request, timeout=args.timeout)
    if args.json:
        say(dumps(as_json(got)))
        return 0
    now, level = now_ms(), got.level
    say(f"row {level.location_id} {level.sku}")
    say(
        fields(
            [
                ("on_hand", level.on_hand),
                ("reserved", level.reserved),
                ("safety_stock", level.safety_stock),
                ("available", level.available),
                ("status", enum_name(pb.StockStatus, level.status, "STOCK_STATUS_")),
                ("version", level.version),
                ("as_of", when(level.as_of, now) if level.as_of else "- (never counted)"),
                ("detected_bands", _checked(got.detected_bands) or "- (no change checked yet)"),
            ]
        )
    )
    say("")
    if not got.holds:
        say("no holds")
        return 0
    say(f"holds, oldest first ({len(got.holds)}):")
    holds = [(h.reservation_id, h.qty, when(h.held_at, now)) for h in got.holds]
    say(table(("RESERVATION", "QTY", "HELD AT"), holds))
    return 0


def _checked(bands: Mapping[str, int]) -> str:
    """The band each channel's crossings were last checked in: "LOW (no channel), OUT (web)"."""
    return ", ".join(
        f"{enum_name(pb.StockStatus, status, 'STOCK_STATUS_')} ({channel or 'no channel'})"
        for channel, status in sorted(bands.items())
    )


async def reservation(args: argparse.Namespace, channel: grpc.aio.Channel) -> int:
    request = pb.GetReservationRequest(reservation_id=args.id)
    got = await pb_grpc.ReservationServiceStub(channel).GetReservation(
        request, timeout=args.timeout
    )
    if args.json:
        say(dumps(as_json(got)))
        return 0
    state = enum_name(pb.ReservationState, got.state, "RESERVATION_STATE_")
    say(f"reservation {got.reservation_id}")
    say(fields([("state", state), ("expires_at", when(got.expires_at, now_ms()))]))
    say("")
    if not any(ln.future_qty for ln in got.lines):
        say(
            table(
                ("LOCATION", "SKU", "QTY"), [(ln.location_id, ln.sku, ln.qty) for ln in got.lines]
            )
        )
        return 0
    rows = [
        (ln.location_id, ln.sku, ln.qty, ln.future_qty, _promise(ln, now_ms())) for ln in got.lines
    ]
    say(table(("LOCATION", "SKU", "QTY", "WAITING", "PROMISE_BY"), rows))
    return 0


def _promise(ln: pb.ReservationLine, now: int) -> str:
    """Of the units of a line waiting for supply: when they are promised, or broken."""
    if not ln.future_qty:
        return ""
    return "broken" if ln.promise_broken else when(ln.promise_by, now)


async def location(args: argparse.Namespace, channel: grpc.aio.Channel) -> int:
    request = pb.GetLocationRequest(location_id=args.id)
    got = await pb_grpc.OperatorServiceStub(channel).GetLocation(request, timeout=args.timeout)
    if args.json:
        say(dumps(as_json(got)))
        return 0
    loc = got.location
    capacity = loc.ship_capacity if loc.HasField("ship_capacity") else "unlimited"
    say(f"location {loc.id}")
    say(
        fields(
            [
                ("name", loc.name),
                ("type", enum_name(pb.LocationType, loc.type, "LOCATION_TYPE_")),
                ("latitude", loc.latitude),
                ("longitude", loc.longitude),
                ("country", loc.country or "-"),
                ("region", loc.region or "-"),
                ("pickup_enabled", yes(loc.pickup_enabled)),
                ("ship_enabled", yes(loc.ship_enabled)),
                ("ship_capacity", capacity),
                ("priority", loc.priority),
                ("active", yes(loc.active)),
                ("rows", got.rows),
                ("held_reservations", got.held_reservations),
            ]
        )
    )
    if got.numbered_sources:
        now = now_ms()
        say("")
        say("numbered sources (their events' numbers not arrived yet: gaps):")
        numbered = [
            (n.source, n.highest, ", ".join(_gap(g, now) for g in n.gaps) or "-")
            for n in got.numbered_sources
        ]
        say(table(("SOURCE", "HIGHEST", "GAPS"), numbered))
    return 0


def _gap(gap: pb.SequenceGap, now: int) -> str:
    numbers = str(gap.first) if gap.first == gap.last else f"{gap.first}-{gap.last}"
    return f"{numbers} (open since {when(gap.opened_at, now)})"


async def sources(args: argparse.Namespace, channel: grpc.aio.Channel) -> int:
    request = pb.ListSourcesRequest()
    got = await pb_grpc.OperatorServiceStub(channel).ListSources(request, timeout=args.timeout)
    listed = sorted(got.sources, key=lambda s: s.source)
    if args.json:
        say(dumps([as_json(s) for s in listed]))
        return 0
    if not listed:
        say("no stock events received yet")
        return 0
    now = now_ms()
    rows = [
        (
            s.source or "(none)",
            s.events,
            when(s.last_arrival, now),
            iso(s.last_source_time),
            offset(s.clock_offset_ms),
            s.clock,
        )
        for s in listed
    ]
    headers = ("SOURCE", "EVENTS", "LAST ARRIVAL", "NEWEST SOURCE TIME", "CLOCK OFFSET", "CLOCK")
    say(table(headers, rows))
    return 0


# -- alerts ---------------------------------------------------------------------------------


def details(alert: pb.Alert) -> str:
    if alert.kind == "band":
        return band(alert.details)
    return " ".join(f"{k}={v}" for k, v in sorted(alert.details.items()))


def band(d: Mapping[str, str]) -> str:
    """A band crossing as a line: "store-1 SKU-1 for web: LOW -> OUT (available 0, version 7)"."""
    channel = f" for {d['channel']}" if d.get("channel") else ""
    fell = f"{d.get('was', '?')} -> {d.get('status', '?')}"
    return (
        f"{d.get('location_id', '?')} {d.get('sku', '?')}{channel}: {fell} "
        f"(available {d.get('available', '?')}, version {d.get('version', '?')})"
    )


async def alerts(args: argparse.Namespace, channel: grpc.aio.Channel) -> int:
    stub = pb_grpc.OperatorServiceStub(channel)
    if args.follow:
        return await follow(args, stub)
    request = pb.ListAlertsRequest(after=args.after, limit=args.limit)
    got = list((await stub.ListAlerts(request, timeout=args.timeout)).alerts)
    if args.json:
        say(dumps([as_json(a) for a in got]))
    elif got:
        now = now_ms()
        rows = [(a.id, when(a.at, now), a.kind, details(a)) for a in got]
        say(table(("ID", "AT", "KIND", "DETAILS"), rows))
    else:
        say("no alerts" + (f" after {args.after}" if args.after else ""))
    if got and len(got) == args.limit:
        print(f"(more: --after {got[-1].id})", file=sys.stderr)
    return 0


async def follow(args: argparse.Namespace, stub: pb_grpc.OperatorServiceStub) -> int:
    """Every alert after --after, then each new one as it comes: one line each (JSON Lines
    with --json), looking again every second, for --follow-seconds (0: until Ctrl-C)."""
    after, limit = args.after, args.limit
    ends = time.monotonic() + args.follow_seconds if args.follow_seconds else float("inf")
    while True:
        request = pb.ListAlertsRequest(after=after, limit=limit)
        got = (await stub.ListAlerts(request, timeout=args.timeout)).alerts
        for alert in got:
            say(dumps_line(as_json(alert)) if args.json else followed(alert))
        if got:
            after = got[-1].id
        if len(got) == limit:
            continue  # more are waiting: no pause
        left = ends - time.monotonic()
        if left <= 0:
            return 0
        await asyncio.sleep(min(POLL_EVERY, left))


def followed(alert: pb.Alert) -> str:
    return f"{iso(alert.at)}  {alert.kind:<12}  {alert.id}  {details(alert)}"
