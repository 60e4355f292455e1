"""The command: `python -m adapters.webhooks` serves the receiver (receiver.py) with its flags
and environment, and its own Prometheus metrics."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from adapters.config import FollowedStore, add_common_flags, secret, serve_metrics
from adapters.webhooks.answers import WebhookMetrics
from adapters.webhooks.receiver import (
    BODY_TIMEOUT,
    HEADER_TIMEOUT,
    MAX_BODY_BYTES,
    WRITE_TIMEOUT,
    Settings,
    make_app,
    server_options,
)
from adapters.webhooks.writer import appendonly
from engine.domain.errors import InvalidArgument
from engine.logs import setup_logging
from engine.store.connect import connect  # the engine's fail-fast client, or a cluster's

log = logging.getLogger("adapters.webhooks")

SHOPIFY_SECRET = "SHOPIFY_WEBHOOK_SECRET"  # environment variables
SQUARE_KEY = "SQUARE_SIGNATURE_KEY"
LIGHTSPEED_SECRET = "LIGHTSPEED_CLIENT_SECRET"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m adapters.webhooks",
        description="Receives Shopify, Square and Lightspeed (X-Series) inventory webhooks onto "
        "the ingest stream.",
        allow_abbrev=False,
    )
    parser.add_argument("--listen", default="127.0.0.1:8080", help="host:port to serve on")
    parser.add_argument(
        "--shopify-secret-file",
        type=Path,
        metavar="PATH",
        help=f"a file holding the Shopify app's client secret, else env {SHOPIFY_SECRET}; "
        "neither: /webhooks/shopify answers 404",
    )
    parser.add_argument(
        "--square-signature-key-file",
        type=Path,
        metavar="PATH",
        help=f"a file holding the Square subscription's signature key, else env {SQUARE_KEY}; "
        "neither: /webhooks/square answers 404",
    )
    parser.add_argument(
        "--square-notification-url",
        default=env.get("SQUARE_NOTIFICATION_URL", ""),
        help="the notification URL exactly as configured at Square (env "
        "SQUARE_NOTIFICATION_URL): Square signs it, and behind a proxy it cannot be guessed",
    )
    parser.add_argument(
        "--lightspeed-secret-file",
        type=Path,
        metavar="PATH",
        help="a file holding the Lightspeed (X-Series) app's client_secret, else env "
        f"{LIGHTSPEED_SECRET}; neither: /webhooks/lightspeed answers 404",
    )
    parser.add_argument(
        "--no-wait-aof",
        action="store_true",
        help="answer once Redis took the write, without waiting for its AOF fsync (WAITAOF)",
    )
    parser.add_argument(
        "--write-timeout-seconds",
        type=float,
        default=WRITE_TIMEOUT,
        help="budget of one delivery's write; past it the platform gets a 503 and retries",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=MAX_BODY_BYTES,
        help="a body over this many bytes is answered 413 before its signature is checked "
        "(at once, when its Content-Length says so; default %(default)s)",
    )
    parser.add_argument(
        "--header-timeout-seconds",
        type=positive_float,
        default=HEADER_TIMEOUT,
        help="a connection that has not sent a whole request head this long after it opened, "
        "or after its last answer, is closed: slow heads, and idle connections (default "
        "%(default)s)",
    )
    parser.add_argument(
        "--body-timeout-seconds",
        type=positive_float,
        default=BODY_TIMEOUT,
        help="a body not whole this long after its head is answered 408 (default %(default)s)",
    )
    add_common_flags(parser, 9466)
    args = parser.parse_args(argv)
    try:
        args.shopify_secret = secret(SHOPIFY_SECRET, args.shopify_secret_file)
        args.square_signature_key = secret(SQUARE_KEY, args.square_signature_key_file)
        args.lightspeed_secret = secret(LIGHTSPEED_SECRET, args.lightspeed_secret_file)
    except InvalidArgument as exc:
        parser.error(str(exc))
    if args.square_signature_key and not args.square_notification_url:
        parser.error("a Square signature key needs --square-notification-url: Square signs it")
    return args


def positive_int(text: str) -> int:
    """An argparse type: a whole number above 0 (0 would turn a guard off)."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number of seconds above 0 (0 would turn a guard off)."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def settings_of(args: argparse.Namespace) -> Settings:
    return Settings(
        stream=args.stream,
        shopify_secret=args.shopify_secret,
        square_signature_key=args.square_signature_key,
        square_notification_url=args.square_notification_url,
        lightspeed_secret=args.lightspeed_secret,
        wait_aof=not args.no_wait_aof,
        write_timeout=args.write_timeout_seconds,
        max_body_bytes=args.max_body_bytes,
        header_timeout=args.header_timeout_seconds,
        body_timeout=args.body_timeout_seconds,
    )


async def serve(args: argparse.Namespace) -> None:
    setup_logging(args.log_level)
    settings = settings_of(args)
    metrics = WebhookMetrics()
    serve_metrics(args.metrics_port, metrics.registry)
    timeout = settings.write_timeout
    store = FollowedStore(args.redis_url, args.state_dir, lambda url: connect(url, timeout))
    redis = await store.open()
    if settings.wait_aof and not await appendonly(redis):
        raise SystemExit(
            "the ingest stream's Redis has appendonly off: every delivery would wait for an "
            "fsync that never comes (503). Turn appendonly on there, or give --no-wait-aof."
        )
    app = make_app(redis, settings, metrics, follow=store.follow)
    runner = web.AppRunner(app, **server_options(settings, metrics))
    await runner.setup()
    host, port = args.listen.rsplit(":", 1)
    await web.TCPSite(runner, host, int(port)).start()
    log.info(
        "webhooks on http://%s (shopify %s, square %s, lightspeed %s) -> stream %s",
        args.listen,
        "on" if settings.shopify_secret else "off",
        "on" if settings.square_signature_key else "off",
        "on" if settings.lightspeed_secret else "off",
        settings.stream,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await store.client.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    asyncio.run(serve(parse_args(argv)))
