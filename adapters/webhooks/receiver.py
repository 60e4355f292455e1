"""The receiver's HTTP side (aiohttp): each delivery whose signature checks out becomes stock
events on the ingest stream (adapters/config.py), written durably (writer.py) before the
platform gets its answer.

    POST /webhooks/shopify   inventory_levels/update, /connect, /disconnect -> one COUNT each
    POST /webhooks/square    inventory.count.updated -> one COUNT per IN_STOCK count
    GET  /healthz            the process is up

Answers, and why:

    200  written (accepted); nothing to write (ignored: another topic or type, or no IN_STOCK
         count); or a signed payload that is not the documented shape, kept on the dead-letter
         stream with the reason, since a retry would not make it any better (dead_letter)
    401  a missing or wrong signature: nothing is written anywhere
    404  the platform's secret is not configured here
    503  Redis did not take the write, or did not report it fsynced, within the write budget:
         the platform retries later
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from adapters.config import DEFAULT_STREAM, dead_letter_stream
from adapters.webhooks import shopify, square
from adapters.webhooks.answers import (
    Result,
    WebhookMetrics,
    answer,
    answer_counter,
    errors_as_answers,
)
from adapters.webhooks.payloads import load_object
from adapters.webhooks.writer import StreamWriter, stream_entry
from engine.clock import Clock, SystemClock
from engine.domain import StockEvent
from engine.errors import InvalidArgument, Unavailable

log = logging.getLogger("adapters.webhooks")

WRITE_TIMEOUT = 0.8  # seconds; platforms give a few more before they count a delivery failed


@dataclass(frozen=True, slots=True)
class Settings:
    stream: str = DEFAULT_STREAM
    # secrets: kept out of repr, so logging the settings never shows them
    shopify_secret: str = field(default="", repr=False)  # the app's client secret; empty: 404
    square_signature_key: str = field(default="", repr=False)  # the subscription's; empty: 404
    square_notification_url: str = ""  # exactly as configured at Square: it is signed too
    wait_aof: bool = True
    write_timeout: float = WRITE_TIMEOUT


@dataclass(frozen=True, slots=True)
class Delivery:
    platform: str
    delivery_id: str  # for the dead-letter entry and the log
    topic: str  # Shopify's topic or Square's type
    body: bytes


Parse = Callable[[], list[StockEvent]]


class Receiver:
    def __init__(
        self, redis: aioredis.Redis, settings: Settings, metrics: WebhookMetrics, clock: Clock
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.writer = StreamWriter(redis, settings.wait_aof, settings.write_timeout)

    async def receive_shopify(self, request: web.Request) -> web.Response:
        secret = self.settings.shopify_secret
        if not secret:
            return _not_configured(shopify.SHOPIFY)
        body = await request.read()
        headers = request.headers
        if not shopify.signature_ok(secret, body, headers.get(shopify.HMAC, "")):
            return self._refuse(shopify.SHOPIFY)
        received = self.clock.now_ms()
        topic = headers.get(shopify.TOPIC, "")
        delivery = Delivery(shopify.SHOPIFY, shopify.delivery_id(headers), topic, body)
        return await self._take(delivery, lambda: shopify.events(headers, body, received))

    async def receive_square(self, request: web.Request) -> web.Response:
        key, url = self.settings.square_signature_key, self.settings.square_notification_url
        if not key:
            return _not_configured(square.SQUARE)
        body = await request.read()
        if not square.signature_ok(key, url, body, request.headers.get(square.SIGNATURE, "")):
            return self._refuse(square.SQUARE)
        event_id, kind = square.ids(body)
        delivery = Delivery(square.SQUARE, event_id, kind, body)
        return await self._take(delivery, lambda: square.events(load_object(body)))

    async def _take(self, delivery: Delivery, parse: Parse) -> web.Response:
        try:
            events = parse()
        except InvalidArgument as exc:
            return await self._dead_letter(delivery, str(exc))
        if not events:
            return answer(Result.IGNORED)
        try:
            await self.writer.append(self.settings.stream, [stream_entry(e) for e in events])
        except Unavailable as exc:
            return self._unavailable(delivery, exc)
        self.metrics.events.labels(delivery.platform).inc(len(events))
        return answer(Result.ACCEPTED, events=len(events))

    async def _dead_letter(self, delivery: Delivery, reason: str) -> web.Response:
        entry: dict[str, str | bytes] = {
            "platform": delivery.platform,
            "reason": reason,
            "delivery_id": delivery.delivery_id,
            "topic": delivery.topic,
            "body": delivery.body,
        }
        try:
            await self.writer.append(dead_letter_stream(self.settings.stream), [entry])
        except Unavailable as exc:
            return self._unavailable(delivery, exc)
        log.warning(
            "%s delivery %r dead-lettered: %s", delivery.platform, delivery.delivery_id, reason
        )
        return answer(Result.DEAD_LETTER, reason=reason)

    def _unavailable(self, delivery: Delivery, exc: Unavailable) -> web.Response:
        log.warning(
            "%s delivery %r not written, answered 503: %s",
            delivery.platform,
            delivery.delivery_id,
            exc,
        )
        return answer(Result.UNAVAILABLE, 503)

    def _refuse(self, platform: str) -> web.Response:
        log.info("%s delivery refused: missing or wrong signature", platform)
        return answer(Result.BAD_SIGNATURE, 401)


def _not_configured(platform: str) -> web.Response:
    return answer(Result.NOT_CONFIGURED, 404, error=f"{platform} webhooks are not configured here")


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(
    redis: aioredis.Redis,
    settings: Settings,
    metrics: WebhookMetrics | None = None,
    clock: Clock | None = None,
) -> web.Application:
    receiver = Receiver(redis, settings, metrics or WebhookMetrics(), clock or SystemClock())
    app = web.Application(middlewares=[errors_as_answers])
    app.add_routes(
        [
            web.post("/webhooks/shopify", receiver.receive_shopify),
            web.post("/webhooks/square", receiver.receive_square),
            web.get("/healthz", healthz),
        ]
    )
    return app


def server_options(settings: Settings, metrics: WebhookMetrics) -> dict[str, Any]:
    """The receiver's settings of aiohttp's server (AppRunner's keyword arguments)."""
    return {"access_log_class": answer_counter(metrics)}
