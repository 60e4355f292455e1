"""Flash sale, storage layer against storage layer: the same load (bench.peers.flash_load,
the same concurrency), through omnistock's own storage code (Reservations over Storage on a
private Redis-compatible server, no gRPC) and through a row-locking PostgreSQL storage layer
(bench.peers.postgres on a private PostgreSQL). Each ends with the no-oversell check: the
row's reserved equals the number of successful holds (and the held reservations it has), and
reserved + safety_stock <= on_hand.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bench.peers.common import LOCATION, SKU, Peer, private_redis, run_async, running
from bench.peers.flash_load import FlashConfig, run_flash_sale
from bench.peers.postgres import PgLine, PgStock, PrivatePostgres
from engine.domain.model import Line
from engine.store.keys import Keys

HOLD_TTL_S = 3600.0  # longer than any run: nothing expires while the load runs


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--units", type=int, default=20_000, help="on_hand of the hot row")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent callers")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load at most")
    p.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds of the same load before the measured part (not counted)",
    )
    p.add_argument("--requests", type=int, default=0, help="stop after this many (0: no limit)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per hold before error")
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="keep holding after the row is sold out (default: stop there)",
    )


def add_omnistock_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--appendfsync",
        choices=("everysec", "always"),
        default="everysec",
        help="AOF fsync of the embedded server (the engine's default: everysec)",
    )


def add_postgres_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--style",
        choices=("transaction", "function"),
        default="transaction",
        help="statements one by one (an application's data layer) or one PL/pgSQL "
        "call (PostgreSQL's best case)",
    )
    p.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra server setting, e.g. --pg-setting synchronous_commit=off",
    )


def load_config(args: argparse.Namespace) -> FlashConfig:
    return FlashConfig(
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        requests=args.requests,
        timeout=args.timeout,
        until_sold_out=not args.keep_going,
    )


# -- omnistock ------------------------------------------------------------------------


async def omnistock_flash_sale(args: argparse.Namespace) -> dict[str, Any]:
    async with private_redis(args.appendfsync) as redis:
        await redis.seed(args.units)
        reservations = redis.reservations()
        lines = [Line(LOCATION, SKU, 1)]

        async def hold(reservation_id: str) -> bool:
            result = await reservations.reserve(reservation_id, lines, HOLD_TTL_S)
            return result.ok

        spent = await _redis_spent(redis.client, redis.server.pid)
        load = await run_flash_sale(hold, load_config(args), "omnistock")
        after = await _redis_spent(redis.client, redis.server.pid)
        spent = [b - a for a, b in zip(spent, after, strict=True)]
        row = await redis.hot_row()
        held_parts = int(await redis.client.zcard(Keys.due(LOCATION)))
        info = await redis.client.info("server")
    store = redis.describe() | {
        "version": info.get("valkey_version") or info.get("redis_version"),
        "code_path": (
            "engine.usecases.reservations.Reservations.reserve -> engine.store.storage.Storage.hold"
        ),
    }
    check = {
        "on_hand": row.on_hand,
        "reserved": row.reserved,
        "safety_stock": row.safety_stock,
        "held_parts": held_parts,
    }
    held = load["held"] + load["warmup"]["held"]
    return {
        "store": store | _per_hold(spent, held),
        "load": load,
        "check": check | _verdict(check, held),
    }


async def _redis_spent(client: Any, pid: int) -> list[float]:
    """What the store has spent so far: µs inside scripts (INFO commandstats; a script's
    own calls included), script calls, and CPU µs of its process (user + system, reading and
    answering included: /proc/<pid>/stat)."""
    scripts = (await client.info("commandstats")).get("cmdstat_evalsha", {})
    return [float(scripts.get("usec", 0)), float(scripts.get("calls", 0)), _cpu_us(pid)]


def _cpu_us(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1e6 / os.sysconf("SC_CLK_TCK")


def _per_hold(spent: list[float], held: int) -> dict[str, Any]:
    """Redis' cost of one Reserve at the hot row, all of it in one slot: the ceiling of one
    slot (one Redis core) is about 1e6 / cpu_us_per_hold holds a second."""
    usec, scripts, cpu_us = spent
    per = max(held, 1)
    return {
        "redis_script_us_per_hold": round(usec / per, 1),
        "redis_scripts_per_hold": round(scripts / per, 2),
        "redis_cpu_us_per_hold": round(cpu_us / per, 1),
        "one_slot_ceiling_holds_per_s": round(per * 1e6 / cpu_us) if cpu_us else None,
    }


# -- PostgreSQL -----------------------------------------------------------------------


async def postgres_flash_sale(args: argparse.Namespace) -> dict[str, Any]:
    server = PrivatePostgres(args.pg_setting, max_connections=args.concurrency + 10)
    async with running(server.start, server.stop):
        stock = await PgStock.open(server.dsn, args.concurrency, args.style)
        try:
            await stock.create_schema()
            await stock.set_on_hand(LOCATION, SKU, args.units)
            lines = [PgLine(LOCATION, SKU, 1)]

            async def hold(reservation_id: str) -> bool:
                return not await stock.hold(reservation_id, lines, HOLD_TTL_S)

            load = await run_flash_sale(hold, load_config(args), "postgresql")
            row = await stock.check(LOCATION, SKU)
        finally:
            await stock.close()
        store = {
            "server": server.version(),
            "settings": server.settings,
            "style": args.style,
            "pool": f"asyncpg {args.concurrency} connections",
            "code_path": "bench.peers.postgres.PgStock.hold",
        }
    check = row | {"held_parts": row["held_lines"]}
    held = load["held"] + load["warmup"]["held"]
    return {"store": store, "load": load, "check": check | _verdict(check, held)}


def _verdict(check: dict[str, Any], held: int) -> dict[str, Any]:
    """held: the successful holds of the warm-up and the measured load together."""
    return {
        "holds_succeeded": held,
        "reserved_equals_held": check["reserved"] == held == check["held_parts"],
        "no_oversell": check["reserved"] + check["safety_stock"] <= check["on_hand"],
    }


# -- the commands ---------------------------------------------------------------------


def ok(result: dict[str, Any]) -> bool:
    sides = [result[k] for k in ("omnistock", "postgresql") if k in result] or [result]
    return all(s["check"]["reserved_equals_held"] and s["check"]["no_oversell"] for s in sides)


def _side_line(name: str, side: dict[str, Any]) -> str:
    load, lat, check = side["load"], side["load"]["latency_ms"], side["check"]
    sold = f"sold out at {load['sold_out_at_s']}s" if load["sold_out"] else "not sold out"
    verdict = "OK" if check["reserved_equals_held"] and check["no_oversell"] else f"FAIL {check}"
    return (
        f"{name}: {load['held']:,} held / {load['requests']:,} requests in {load['elapsed_s']}s"
        f" ({sold}) = {load['held_per_s']:,.0f} holds/s; errors {load['errors']};"
        f" latency ms p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} p99.9 {lat['p99.9']:.2f};"
        f" oversell check {verdict}"
        + (
            f"; Redis per hold: {side['store']['redis_script_us_per_hold']} µs in scripts,"
            f" {side['store']['redis_cpu_us_per_hold']} µs CPU (one slot's ceiling about"
            f" {side['store']['one_slot_ceiling_holds_per_s']:,}/s)"
            if "redis_cpu_us_per_hold" in side["store"]
            else ""
        )
    )


def run_storage(args: argparse.Namespace) -> dict[str, Any]:
    return run_async(omnistock_flash_sale(args))


def run_postgres(args: argparse.Namespace) -> dict[str, Any]:
    return run_async(postgres_flash_sale(args))


async def _both(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    return await omnistock_flash_sale(args), await postgres_flash_sale(args)


def run_ratio(args: argparse.Namespace) -> dict[str, Any]:
    omnistock, postgresql = run_async(_both(args))
    pg_rate = postgresql["load"]["held_per_s"]
    ratio = omnistock["load"]["held_per_s"] / pg_rate if pg_rate else None
    return {"omnistock": omnistock, "postgresql": postgresql, "ratio": ratio}


def ratio_summary(result: dict[str, Any]) -> str:
    ratio = result["ratio"]
    return "\n".join(
        [
            _side_line("storage-flash-sale", result["omnistock"]),
            _side_line("postgres-flash-sale", result["postgresql"]),
            "ratio omnistock/postgresql held per s: "
            + (f"{ratio:.1f}x (target >= 10x)" if ratio is not None else "n/a"),
        ]
    )


def _storage_arguments(p: argparse.ArgumentParser) -> None:
    add_load_arguments(p)
    add_omnistock_arguments(p)


def _postgres_arguments(p: argparse.ArgumentParser) -> None:
    add_load_arguments(p)
    add_postgres_arguments(p)


def _all_arguments(p: argparse.ArgumentParser) -> None:
    add_load_arguments(p)
    add_omnistock_arguments(p)
    add_postgres_arguments(p)


PEERS = [
    Peer(
        "storage-flash-sale",
        "flash sale through omnistock's storage layer (no gRPC) on a private Redis",
        _storage_arguments,
        run_storage,
        lambda r: _side_line("storage-flash-sale", r),
        ok,
    ),
    Peer(
        "postgres-flash-sale",
        "the same flash sale through row-locking PostgreSQL storage on a private PostgreSQL",
        _postgres_arguments,
        run_postgres,
        lambda r: _side_line("postgres-flash-sale", r),
        ok,
    ),
    Peer(
        "flash-sale-ratio",
        "both flash sales in one run, one after the other, and the ratio of their rates",
        _all_arguments,
        run_ratio,
        ratio_summary,
        ok,
    ),
]
