"""The webhook receiver at the edge, over real sockets against the real Redis-compatible server
of the session: every answer counted, whoever gives it; a fault of its own answered 500 and
logged once; bodies over the cap refused before any signature is computed; clients that send
their head or body too slowly cut off, without holding up anyone else's delivery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from adapters.config import DEFAULT_STREAM
from adapters.webhooks.answers import WebhookMetrics
from adapters.webhooks.receiver import Settings, make_app, server_options
from engine.domain.clock import ManualClock

from .webhook_helpers import (
    SHOPIFY_LEVEL,
    SHOPIFY_SECRET,
    answers,
    as_body,
    entries,
    receiver,
    requests,
    shopify_headers,
)


async def raw_exchange(client: TestClient[Any, Any], request: bytes) -> bytes:
    """Sends `request` as it is on a socket of its own; what comes back until the server
    closes the connection."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# --- every answer counted ---


async def test_every_answer_is_counted_by_platform_status_and_result(
    redis: aioredis.Redis,
) -> None:
    async with receiver(redis, square_signature_key="", square_notification_url="") as (
        client,
        metrics,
    ):
        wrong_method = await client.get("/webhooks/shopify")
        assert wrong_method.status == 405
        assert wrong_method.headers["Allow"] == "POST"
        assert (await wrong_method.json())["result"] == "method_not_allowed"
        assert (await client.post("/nowhere", data=b"{}")).status == 404
        assert (await client.post("/webhooks/square", data=b"{}")).status == 404
        assert (await client.get("/healthz")).status == 200
        # a request aiohttp cannot parse never reaches the application: counted all the same
        garbage = await raw_exchange(client, b"POST /webhooks/shopify HTTP/1.1\r\nno colon\r\n\r\n")
        assert status_of(garbage) == 400
    assert answers(metrics, "shopify", 405, "method_not_allowed") == 1
    assert answers(metrics, "other", 404, "not_found") == 1
    assert answers(metrics, "square", 404, "not_configured") == 1
    assert answers(metrics, "other", 200, "ok") == 1
    assert answers(metrics, "other", 400, "bad_request") == 1


class BrokenClock(ManualClock):
    """A clock that fails: a fault of the receiver's own, nothing the client did."""

    def now_ms(self) -> int:
        raise RuntimeError("the clock broke: secret internals")


async def test_a_fault_of_its_own_is_a_500_logged_once_without_a_traceback_for_the_client(
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    body = as_body(SHOPIFY_LEVEL)
    headers = shopify_headers("inventory_levels/update", body)
    async with receiver(redis, BrokenClock()) as (client, metrics):
        with caplog.at_level(logging.INFO):
            resp = await client.post("/webhooks/shopify", data=body, headers=headers)
            assert resp.status == 500
            shown = await resp.text()
    assert "Traceback" not in shown and "clock broke" not in shown
    assert (await resp.json()) == {"result": "error", "error": "internal error"}
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and "clock broke" in str(logged[0].exc_info[1])  # type: ignore[index]
    assert answers(metrics, "shopify", 500, "error") == 1
    assert await redis.exists(DEFAULT_STREAM) == 0
    assert requests(metrics, "shopify", "accepted") == 0


# --- raw HTTP/1.1, a byte at a time where it matters ---


def head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: hooks.example.com"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def signed_head(body: bytes, **more: str) -> bytes:
    headers = shopify_headers("inventory_levels/update", body)
    return head("/webhooks/shopify", {**headers, **more})


@asynccontextmanager
async def connection(
    client: TestClient[Any, Any],
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@asynccontextmanager
async def dribbling(writer: asyncio.StreamWriter, data: bytes) -> AsyncIterator[None]:
    """Sends `data` a byte every 50 ms meanwhile: a slow client, or a slowloris."""

    async def send() -> None:
        with contextlib.suppress(OSError):
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.05)

    task = asyncio.create_task(send())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def status_line(reader: asyncio.StreamReader, within: float) -> bytes:
    async with asyncio.timeout(within):
        return await reader.readline()


async def closed(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server closes the connection within `within` seconds."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


async def delivered(client: TestClient[Any, Any]) -> int:
    """A good delivery on a connection of its own: its status."""
    body = as_body(SHOPIFY_LEVEL)
    headers = shopify_headers("inventory_levels/update", body)
    async with asyncio.timeout(2):
        return (await client.post("/webhooks/shopify", data=body, headers=headers)).status


# --- bodies over the cap: refused before any signature is computed ---


async def test_a_body_declared_over_the_cap_is_refused_before_it_is_sent(
    redis: aioredis.Redis,
) -> None:
    async with (
        receiver(redis, max_body_bytes=1024) as (client, metrics),
        connection(client) as (reader, writer),
    ):
        writer.write(signed_head(b"{}", **{"Content-Length": "1025"}))  # and no body at all
        assert (await status_line(reader, within=1)).startswith(b"HTTP/1.1 413 ")
    assert answers(metrics, "shopify", 413, "too_large") == 1
    assert requests(metrics, "shopify", "bad_signature") == 0
    assert await redis.exists(DEFAULT_STREAM) == 0


async def test_a_body_without_a_length_is_refused_once_it_passes_the_cap(
    redis: aioredis.Redis,
) -> None:
    """Chunked: no length to judge by; the answer comes while the body is still unfinished,
    so no signature could have been computed over it."""
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    async with (
        receiver(redis, max_body_bytes=4096) as (client, metrics),
        connection(client) as (reader, writer),
    ):
        writer.write(signed_head(b"{}", **{"Transfer-Encoding": "chunked"}))
        writer.write(chunk * 5)  # 5 KiB, and never the last chunk
        assert (await status_line(reader, within=1)).startswith(b"HTTP/1.1 413 ")
    assert answers(metrics, "shopify", 413, "too_large") == 1
    assert requests(metrics, "shopify", "bad_signature") == 0


async def test_a_body_at_the_cap_is_taken_and_one_byte_more_is_not(
    redis: aioredis.Redis,
) -> None:
    body = as_body(SHOPIFY_LEVEL)
    headers = shopify_headers("inventory_levels/update", body)
    for cap, status in ((len(body), 200), (len(body) - 1, 413)):
        async with receiver(redis, max_body_bytes=cap) as (client, _):
            resp = await client.post("/webhooks/shopify", data=body, headers=headers)
            assert resp.status == status
    assert len(await entries(redis)) == 1


# --- slow heads and bodies: cut off, without holding up anyone else ---


async def test_a_body_slower_than_the_body_timeout_is_answered_408(
    redis: aioredis.Redis,
) -> None:
    body = as_body(SHOPIFY_LEVEL)
    async with (
        receiver(redis, body_timeout=0.5) as (client, metrics),
        connection(client) as (reader, writer),
    ):
        writer.write(signed_head(body, **{"Content-Length": str(len(body))}))
        async with dribbling(writer, body):  # 20 bytes a second: 15 s for this body
            assert await delivered(client) == 200  # meanwhile, another delivery goes through
            assert (await status_line(reader, within=2)).startswith(b"HTTP/1.1 408 ")
    assert answers(metrics, "shopify", 408, "timeout") == 1
    assert len(await entries(redis)) == 1  # the other delivery's, and only that


@pytest.mark.parametrize(
    "before",
    ["", "nothing", "an-answer"],
    ids=["a-head-dribbled", "nothing-sent", "a-second-head-dribbled"],
)
async def test_a_connection_slower_than_the_header_timeout_with_its_head_is_closed(
    redis: aioredis.Redis, before: str
) -> None:
    """From its opening, or from its last answer, a connection has the header timeout to send
    a whole request head; bytes trickling in do not buy it more time."""
    body = as_body(SHOPIFY_LEVEL)
    slow = b"" if before == "nothing" else signed_head(body) * 10  # 10 heads: 70 s
    async with (
        receiver(redis, header_timeout=0.5) as (client, _),
        connection(client) as (reader, writer),
    ):
        if before == "an-answer":
            writer.write(signed_head(body, **{"Content-Length": str(len(body))}) + body)
            assert (await status_line(reader, within=2)).startswith(b"HTTP/1.1 200 ")
        async with dribbling(writer, slow):
            assert await delivered(client) == 200  # meanwhile, another delivery goes through
            assert await closed(reader, within=2)


# --- bodies that end badly: the client's doing, not a fault of the receiver ---


async def test_a_body_that_cannot_be_decoded_is_a_400(
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    body = as_body(SHOPIFY_LEVEL)
    headers = {**shopify_headers("inventory_levels/update", body), "Content-Encoding": "gzip"}
    async with receiver(redis) as (client, metrics):
        with caplog.at_level(logging.INFO, logger="adapters.webhooks"):
            resp = await client.post("/webhooks/shopify", data=body, headers=headers)
            assert resp.status == 400
            assert (await resp.json())["result"] == "bad_request"
    assert answers(metrics, "shopify", 400, "bad_request") == 1
    assert not [r for r in caplog.records if r.name == "adapters.webhooks" and r.exc_info]


async def test_a_client_that_leaves_mid_body_is_counted_and_not_taken_for_a_fault(
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """As the command serves it: aiohttp's test server cancels the handler instead."""
    settings, metrics = Settings(shopify_secret=SHOPIFY_SECRET), WebhookMetrics()
    runner = web.AppRunner(make_app(redis, settings, metrics), **server_options(settings, metrics))
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    host, port = sock.getsockname()
    try:
        with caplog.at_level(logging.INFO, logger="adapters.webhooks"):
            _, writer = await asyncio.open_connection(host, port)
            writer.write(signed_head(b"{}", **{"Content-Length": "100"}) + b"{")
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            for _ in range(100):  # until the receiver has counted its answer
                if answers(metrics, "shopify", 400, "bad_request"):
                    break
                await asyncio.sleep(0.02)
    finally:
        await runner.cleanup()
    assert answers(metrics, "shopify", 400, "bad_request") == 1
    assert not [r for r in caplog.records if r.name == "adapters.webhooks" and r.exc_info]
