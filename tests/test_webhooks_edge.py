"""The webhook receiver at the edge, over real sockets against the real Redis-compatible server
of the session: every answer counted, whoever gives it; a fault of its own answered 500 and
logged once; bodies over the cap refused before any signature is computed; clients that send
their head or body too slowly cut off, without holding up anyone else's delivery."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from adapters.config import DEFAULT_STREAM
from engine.clock import ManualClock

from .webhook_helpers import (
    SHOPIFY_LEVEL,
    answers,
    as_body,
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
