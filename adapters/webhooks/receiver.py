"""The receiver's HTTP side (aiohttp): each delivery whose signature checks out becomes stock
events on the ingest stream (adapters/config.py), written durably (writer.py) before the
platform gets its answer.

    POST /webhooks/shopify     inventory_levels/update, /connect, /disconnect -> one COUNT each
    POST /webhooks/square      inventory.count.updated -> one COUNT per IN_STOCK count
    POST /webhooks/lightspeed  inventory.update -> one COUNT of the record's count, at receipt
    GET  /healthz            the process is up

Answers, and why:

    200  written (accepted); nothing to write (ignored: another topic or type, or no IN_STOCK
         count); or a signed payload that is not the documented shape, kept on the dead-letter
         stream with the reason, since a retry would not make it any better (dead_letter)
    400  a body that cannot be read (broken chunks, a content-encoding that does not decode)
    401  a missing or wrong signature: nothing is written anywhere
    404  the platform's secret is not configured here
    408  the body came slower than the body timeout allows
    413  the body is over the cap: refused before any signature is computed, at once when its
         Content-Length says so
    503  Redis did not take the write, or did not report it fsynced, within the write budget:
         the platform retries later

A connection that has not sent a whole request head within the header timeout of opening, or
of its last answer, is closed (server_options). Every answer is counted (answers.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.cluster import RedisCluster

from adapters.config import (
    DEAD_BODY,
    DEAD_HEADERS,
    DEAD_RECEIVED,
    DEFAULT_STREAM,
    Follow,
    dead_letter,
    dead_letter_stream,
)
from adapters.webhooks import lightspeed, shopify, square
from adapters.webhooks.answers import (
    Result,
    WebhookMetrics,
    answer,
    answer_counter,
    errors_as_answers,
)
from adapters.webhooks.payloads import load_object
from adapters.webhooks.writer import StreamWriter, stream_entry
from engine.domain.clock import Clock, SystemClock
from engine.domain.errors import InvalidArgument, Unavailable
from engine.domain.model import StockEvent

log = logging.getLogger("adapters.webhooks")

WRITE_TIMEOUT = 0.8  # seconds; platforms give a few more before they count a delivery failed
# An inventory_levels delivery is under 1 KB, an inventory.count.updated one carries a few
# hundred bytes a count, and an inventory.update one a few KB (the product comes along);
# 256 KiB holds hundreds of counts in one event and keeps what anyone can make the receiver
# hold in memory, per connection, small.
MAX_BODY_BYTES = 256 * 1024
# Shopify and Lightspeed wait 5 s for an answer, Square 10 s: a head or body slower than that
# is not a platform's, and a delivery that takes longer fails at the platform anyway.
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 10.0
LINGER = 2.0  # seconds to drain a body left unread (413, 408) so the client sees the answer


@dataclass(frozen=True, slots=True)
class Settings:
    stream: str = DEFAULT_STREAM
    # secrets: kept out of repr, so logging the settings never shows them
    shopify_secret: str = field(default="", repr=False)  # the app's client secret; empty: 404
    square_signature_key: str = field(default="", repr=False)  # the subscription's; empty: 404
    square_notification_url: str = ""  # exactly as configured at Square: it is signed too
    lightspeed_secret: str = field(default="", repr=False)  # the app's client_secret; empty: 404
    wait_aof: bool = True
    write_timeout: float = WRITE_TIMEOUT
    max_body_bytes: int = MAX_BODY_BYTES
    header_timeout: float = HEADER_TIMEOUT  # from a connection's opening, or its last answer
    body_timeout: float = BODY_TIMEOUT  # from the end of the head


@dataclass(frozen=True, slots=True)
class Delivery:
    platform: str
    delivery_id: str  # for the dead-letter entry and the log
    topic: str  # Shopify's topic, Square's or Lightspeed's type
    body: bytes
    headers: dict[str, str]  # those its parser reads (kept with a dead letter, for replay)
    received: int  # ms


Parse = Callable[[], list[StockEvent]]


class Receiver:
    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster,
        settings: Settings,
        metrics: WebhookMetrics,
        clock: Clock,
        follow: Follow | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.writer = StreamWriter(redis, settings.wait_aof, settings.write_timeout, follow)

    async def receive_shopify(self, request: web.Request) -> web.Response:
        secret = self.settings.shopify_secret
        if not secret:
            return _not_configured(shopify.SHOPIFY)
        body = await read_body(request, self.settings)
        headers = request.headers
        if not shopify.signature_ok(secret, body, headers.get(shopify.HMAC, "")):
            return self._refuse(shopify.SHOPIFY)
        received = self.clock.now_ms()
        topic = headers.get(shopify.TOPIC, "")
        read = {name: headers[name] for name in shopify.PARSED_HEADERS if name in headers}
        delivery = Delivery(
            shopify.SHOPIFY, shopify.delivery_id(headers), topic, body, read, received
        )
        return await self._take(delivery, lambda: shopify.events(read, body, received))

    async def receive_square(self, request: web.Request) -> web.Response:
        key, url = self.settings.square_signature_key, self.settings.square_notification_url
        if not key:
            return _not_configured(square.SQUARE)
        body = await read_body(request, self.settings)
        if not square.signature_ok(key, url, body, request.headers.get(square.SIGNATURE, "")):
            return self._refuse(square.SQUARE)
        event_id, kind = square.ids(body)
        delivery = Delivery(square.SQUARE, event_id, kind, body, {}, self.clock.now_ms())
        return await self._take(delivery, lambda: square.events(load_object(body)))

    async def receive_lightspeed(self, request: web.Request) -> web.Response:
        secret = self.settings.lightspeed_secret
        if not secret:
            return _not_configured(lightspeed.LIGHTSPEED)
        body = await read_body(request, self.settings)
        if not lightspeed.signature_ok(secret, body, request.headers.get(lightspeed.SIGNATURE, "")):
            return self._refuse(lightspeed.LIGHTSPEED)
        received = self.clock.now_ms()  # the payload has no time: this is its time
        kind, ident = lightspeed.webhook_type(body), lightspeed.delivery_id(body)
        delivery = Delivery(lightspeed.LIGHTSPEED, ident, kind, body, {}, received)
        return await self._take(delivery, lambda: lightspeed.events(body, received))

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
        entry = {
            **dead_letter(delivery.platform, reason, delivery.delivery_id),
            DEAD_BODY: delivery.body,
            DEAD_HEADERS: json.dumps(delivery.headers),
            DEAD_RECEIVED: str(delivery.received),
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


async def read_body(request: web.Request, settings: Settings) -> bytes:
    """The raw body, before anything looks at it: refused at once when its declared length is
    over the cap, cut off once it passes the cap (aiohttp's client_max_size, for a body sent
    without a length) or when it comes slower than the body timeout allows."""
    cap, declared = settings.max_body_bytes, request.content_length
    if declared is not None and declared > cap:
        raise web.HTTPRequestEntityTooLarge(max_size=cap, actual_size=declared)
    try:
        async with asyncio.timeout(settings.body_timeout):
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"the body took longer than {settings.body_timeout:g} s"
        ) from None
    except web.RequestPayloadError as exc:  # broken chunks, or an encoding that will not decode
        raise web.HTTPBadRequest(text=f"the body cannot be read: {exc}") from None
    except ConnectionResetError:  # the client left: nobody will read the answer, but it counts
        raise web.HTTPBadRequest(text="the connection closed before the whole body came") from None


def _not_configured(platform: str) -> web.Response:
    return answer(Result.NOT_CONFIGURED, 404, error=f"{platform} webhooks are not configured here")


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(
    redis: aioredis.Redis | RedisCluster,
    settings: Settings,
    metrics: WebhookMetrics,
    clock: Clock | None = None,
    follow: Follow | None = None,
) -> web.Application:
    """The receiver's application; served with server_options(settings, metrics), which
    count its answers into the same metrics. follow: see StreamWriter."""
    receiver = Receiver(redis, settings, metrics, clock or SystemClock(), follow)
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[errors_as_answers])
    app.add_routes(
        [
            web.post("/webhooks/shopify", receiver.receive_shopify),
            web.post("/webhooks/square", receiver.receive_square),
            web.post("/webhooks/lightspeed", receiver.receive_lightspeed),
            web.get("/healthz", healthz),
        ]
    )
    return app


def server_options(settings: Settings, metrics: WebhookMetrics) -> dict[str, Any]:
    """The receiver's settings of aiohttp's server (AppRunner's keyword arguments)."""
    return {
        # aiohttp (3.14.4 on) arms this timer when a connection opens and again after each
        # answer, and closes the connection when it fires while no whole request head has
        # come: the read timeout of a head (slowloris), which also ends idle connections.
        "keepalive_timeout": settings.header_timeout,
        "lingering_time": LINGER,
        "access_log_class": answer_counter(metrics),
    }
