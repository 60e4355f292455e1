"""Every answer the receiver gives, and the count of them.

Each answer is counted once, when it is sent, by platform (from the path: shopify, square,
lightspeed, or other), HTTP status and result. The count is taken by the server's access-log
hook rather than in the application, because some answers never reach the application:
aiohttp answers a request it cannot parse (400) itself.

    200  accepted, ignored, dead_letter (the receiver's own), ok (/healthz)
    400  bad_request: malformed HTTP, or a body that breaks its own framing
    401  bad_signature
    404  not_configured (the platform's secret is not set here), not_found (no such path)
    405  method_not_allowed
    408  timeout: the body came slower than the body timeout allows
    413  too_large: the body is over the cap
    500  error: a fault of the receiver's own, logged once with its traceback, which the
         client never sees
    503  unavailable: Redis did not take the write in time

The handlers tag their answers with the result; the middleware turns every exception into a
JSON answer and tags it from its status.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_log import AccessLogger
from aiohttp.web_request import BaseRequest
from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger("adapters.webhooks")


class Result(enum.StrEnum):
    ACCEPTED = "accepted"
    IGNORED = "ignored"
    DEAD_LETTER = "dead_letter"
    OK = "ok"
    BAD_REQUEST = "bad_request"
    BAD_SIGNATURE = "bad_signature"
    NOT_CONFIGURED = "not_configured"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    ERROR = "error"
    UNAVAILABLE = "unavailable"
    OTHER = "other"


RESULT = web.ResponseKey("result", Result)
_BY_STATUS = {
    200: Result.OK,
    400: Result.BAD_REQUEST,
    401: Result.BAD_SIGNATURE,
    404: Result.NOT_FOUND,
    405: Result.METHOD_NOT_ALLOWED,
    408: Result.TIMEOUT,
    413: Result.TOO_LARGE,
    500: Result.ERROR,
    503: Result.UNAVAILABLE,
}
PLATFORMS = {
    "/webhooks/shopify": "shopify",
    "/webhooks/square": "square",
    "/webhooks/lightspeed": "lightspeed",
}


class WebhookMetrics:
    """The receiver's own metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "omnistock_webhook_requests_total",
            "Answers by platform (shopify, square, lightspeed, other), HTTP status and result",
            ["platform", "status", "result"],
            registry=self.registry,
        )
        self.events = Counter(
            "omnistock_webhook_events_total",
            "Stock events written to the ingest stream",
            ["platform"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "omnistock_webhook_seconds",
            "Time from a request's head to its answer, by platform",
            ["platform"],
            registry=self.registry,
        )

    def answered(self, path: str, response: web.StreamResponse, seconds: float) -> None:
        platform = PLATFORMS.get(path, "other")
        result = response.get(RESULT) or _BY_STATUS.get(response.status, Result.OTHER)
        self.requests.labels(platform, str(response.status), result.value).inc()
        self.seconds.labels(platform).observe(seconds)


def answer(result: Result, status: int = 200, **more: object) -> web.Response:
    """A JSON answer, tagged with its result."""
    response = web.json_response({"result": result.value, **more}, status=status)
    response[RESULT] = result
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_as_answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP errors (404, 405, 408, 413, ...) as JSON answers; anything unexpected as a 500,
    logged here once, with no traceback for the client."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return _answer_of(exc)
    except Exception:
        log.exception("%s %s failed: answered 500", request.method, request.path)
        return answer(Result.ERROR, 500, error="internal error")


def _answer_of(exc: web.HTTPException) -> web.Response:
    result = _BY_STATUS.get(exc.status, Result.OTHER)
    response = answer(result, exc.status, error=exc.text or exc.reason)
    response.headers.extend(_kept(exc.headers))  # such as a 405's Allow
    return response


def _kept(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    dropped = {"content-type", "content-length"}
    return [(name, value) for name, value in headers.items() if name.lower() not in dropped]


def answer_counter(metrics: WebhookMetrics) -> type[AbstractAccessLogger]:
    """The access-log class that counts every answer sent into `metrics` (aiohttp builds it
    itself, so it is made for the metrics it counts into), and still writes the access log."""

    class AnswerCounter(AccessLogger):
        @property
        def enabled(self) -> bool:
            return True  # counted whatever the access log's level

        def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
            metrics.answered(request.path, response, time)
            if self.logger.isEnabledFor(logging.INFO):
                super().log(request, response, time)

    return AnswerCounter
