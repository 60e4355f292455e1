"""Every call's frame: times it, keeps its answer within the caller's deadline, and maps
every exception to a status code: ours to theirs (the one place that does), an unexpected
one to INTERNAL (logged once), never UNKNOWN."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from engine.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OmnistockError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from engine.metrics import Metrics

log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]

# Kept back from a call's deadline to send the answer: a tenth of it, 50-250 ms.
_REPLY_MARGIN = (0.05, 0.1, 0.25)

_CODES: tuple[tuple[type[OmnistockError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def _margin(remaining: float) -> float:
    low, share, high = _REPLY_MARGIN
    return min(high, max(low, remaining * share))


def status_of(exc: OmnistockError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _failure(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str] | None:
    """The status a handler's exception is answered with; None: let it through (an abort
    the handler made itself, a cancel)."""
    if isinstance(exc, OmnistockError):
        return status_of(exc), str(exc)
    if isinstance(exc, TimeoutError):
        # The time went waiting on the store: say so while the caller still listens.
        return (
            grpc.StatusCode.UNAVAILABLE,
            f"{method}: the store did not answer within the deadline",
        )
    if isinstance(exc, grpc.aio.AbortError) or not isinstance(exc, Exception):
        return None
    log.error("%s failed unexpectedly", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"{method}: internal error (logged on the server)"


def _budget(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else max(remaining - _margin(remaining), 0.001)


class _Answering:
    """Times a call, and answers every exception of it with its status (see `rpc`). A
    class, not a generator-based context manager: it wraps every call, and this costs
    less per call."""

    __slots__ = ("context", "method", "metrics", "start", "stream")

    def __init__(
        self, method: str, metrics: Metrics, context: grpc.aio.ServicerContext, stream: bool
    ) -> None:
        self.method, self.metrics, self.context, self.stream = method, metrics, context, stream

    async def __aenter__(self) -> None:
        self.start = time.perf_counter()

    async def __aexit__(self, kind: type[BaseException] | None, exc: Any, tb: Any) -> bool:
        code, answer, swallow = self._outcome(exc)
        # Counted before the answer goes: whoever sees the answer sees the call counted.
        self.metrics.observe_rpc(self.method, _code_name(code), time.perf_counter() - self.start)
        if answer is not None:
            await self.context.abort(code, answer)  # raises
        return swallow

    def _outcome(self, exc: BaseException | None) -> tuple[grpc.StatusCode, str | None, bool]:
        """The call's code, the details to answer it with (None: nothing to send here),
        and whether its exception ends here."""
        if exc is None:
            return grpc.StatusCode.OK, None, False
        if isinstance(exc, GeneratorExit | asyncio.CancelledError):
            return grpc.StatusCode.CANCELLED, None, False
        context = self.context
        if self.stream and (context.cancelled() or _answer_undeliverable(exc)):
            return grpc.StatusCode.CANCELLED, None, True  # the caller is gone: no one to answer
        failure = _failure(exc, self.method)
        if failure is None:
            return context.code() or grpc.StatusCode.CANCELLED, None, False
        return failure[0], failure[1], False


def rpc(method: str) -> Callable[[Handler[Req, Resp]], Handler[Req, Resp]]:
    """Times the call, honours its deadline, and maps every exception to a status code:
    ours to theirs, an unexpected one to INTERNAL (logged once), never UNKNOWN."""

    def wrap(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
        @functools.wraps(handler)
        async def run(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
            async with _Answering(method, self.metrics, context, stream=False):
                async with asyncio.timeout(_budget(context)):
                    return await handler(self, request, context)
            raise AssertionError("unreachable: a failure is answered by abort, which raises")

        return run

    return wrap


StreamHandler = Callable[[Any, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]]


def rpc_stream(method: str) -> Callable[[StreamHandler[Req, Resp]], StreamHandler[Req, Resp]]:
    """`rpc` for a handler that streams its answers: the stream's life is timed, its
    failure answered the same way (or not at all, once its caller has gone)."""

    def wrap(handler: StreamHandler[Req, Resp]) -> StreamHandler[Req, Resp]:
        @functools.wraps(handler)
        async def run(
            self: Any, request: Req, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Resp]:
            async with _Answering(method, self.metrics, context, stream=True):
                async for answer in handler(self, request, context):
                    yield answer

        return run

    return wrap


def _answer_undeliverable(exc: BaseException) -> bool:
    """grpc's own error when a status cannot be sent because the call has ended (the
    caller went away as the stream was closing); its class is not public."""
    return type(exc).__name__ == "ExecuteBatchError"


def _code_name(code: object) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else str(code)
