"""`python -m adapters.streams`: flags, then the consumer until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
from collections.abc import Sequence

from adapters.config import (
    FollowedStore,
    add_common_flags,
    add_server_flags,
    serve_metrics,
    server_access,
    server_channel,
)
from adapters.streams.consumer import Consumer, Options
from engine.domain.errors import InvalidArgument
from engine.logs import setup_logging
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc
from engine.store.connect import connect  # one Redis, or a whole cluster

log = logging.getLogger("omnistock.streams")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.streams",
        description="Apply stock events from a Redis stream through omnistock, exactly once",
        allow_abbrev=False,
    )
    add_common_flags(parser, metrics_port=9465)
    parser.add_argument("--group", default="omnistock", help="the consumer group")
    parser.add_argument(
        "--consumer",
        default=socket.gethostname(),
        help="this consumer's name in the group; keep it across restarts (default: host name)",
    )
    add_server_flags(parser)
    parser.add_argument("--batch", type=int, default=500, help="entries per read and request")
    parser.add_argument(
        "--claim-idle-ms",
        type=int,
        default=30_000,
        help="take over entries pending this long at another (crashed) consumer",
    )
    parser.add_argument(
        "--max-deliveries",
        type=int,
        default=10,
        help="an entry delivered more often without an answer is dead-lettered",
    )
    parser.add_argument(
        "--start-id", default="0", help="where a new group starts: 0 the whole stream, $ new only"
    )
    parser.add_argument(
        "--dead-letter-days",
        type=float,
        default=30.0,
        help="dead letters older than this are trimmed (0: kept however old)",
    )
    parser.add_argument(
        "--dead-letter-max",
        type=int,
        default=100_000,
        help="dead letters kept at most, the oldest trimmed first (0: no limit)",
    )
    args = parser.parse_args(argv)
    if args.dead_letter_days < 0 or args.dead_letter_max < 0:
        parser.error("--dead-letter-days and --dead-letter-max must be >= 0")
    if not 1 <= args.batch <= 5000:
        parser.error("--batch must be 1 to 5000 (the server takes at most 5000 events a message)")
    return args


async def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level)
    try:
        access = server_access(args)
    except InvalidArgument as exc:
        raise SystemExit(f"python -m adapters.streams: {exc}") from None
    options = Options(
        stream=args.stream,
        group=args.group,
        consumer=args.consumer,
        batch=args.batch,
        claim_idle_ms=args.claim_idle_ms,
        max_deliveries=args.max_deliveries,
        start_id=args.start_id,
        dead_letter_days=args.dead_letter_days,
        dead_letter_max=args.dead_letter_max,
    )
    # the socket waits out a blocked read (XREADGROUP BLOCK), and a little more
    timeout = options.block_ms / 1000 + 5.0
    store = FollowedStore(args.redis_url, args.state_dir, lambda url: connect(url, timeout))
    await store.open()
    async with server_channel(access) as channel:
        stub = pb_grpc.StockServiceStub(channel)
        consumer = Consumer(store.client, stub, options, store.follow)
        serve_metrics(args.metrics_port, consumer.metrics.registry)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "applying %s (group %s, consumer %s) through %s",
            args.stream,
            args.group,
            args.consumer,
            args.server,
        )
        await consumer.run(stop)
    await store.client.aclose()
    log.info("stopped")
