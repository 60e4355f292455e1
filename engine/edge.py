"""What every call meets before its servicer. Request bytes that are not the method's
message are refused with INVALID_ARGUMENT: left to grpc, the parser's exception would reach
the caller as UNKNOWN. A servicer never sees such a request: a unary call is refused before
its servicer runs; in a request stream the bad message raises UndecodableRequest where the
servicer reads it, and the call is refused from the servicer's own task (an abort from
another task, such as StreamEvents' reader, would race the answers being sent)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from engine.errors import InvalidArgument


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def run(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return run


class UndecodableRequest(InvalidArgument):
    """A request's bytes are not the method's message. An InvalidArgument, so a servicer
    that maps our errors (engine.service) answers it as it answers any bad input."""

    def __init__(self, method: str, error: str) -> None:
        super().__init__(
            "request", f"the bytes are not a {method.rsplit('/', 1)[-1]} request ({error})"
        )


def _wrap(
    behavior: Callable[..., Any],
    check: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
) -> Callable[..., Any]:
    """`behavior` called with its request (or request stream) checked first; a wrapper of
    the same kind (coroutine or async generator function), as grpc runs a handler by kind.
    An UndecodableRequest that reaches it (from a servicer that does not map our errors)
    is answered INVALID_ARGUMENT."""
    if inspect.isasyncgenfunction(behavior):

        async def gen(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in behavior(await check(request, context), context):
                    yield item
            except UndecodableRequest as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        return gen

    async def coro(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(await check(request, context), context)
        except UndecodableRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    return coro


class DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method: str = details.method

        async def one(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                raise UndecodableRequest(method, request.error)
            return request

        async def stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            async def checked() -> AsyncIterator[Any]:
                async for request in requests:
                    yield await one(request, context)

            return checked()

        kind = _kind(handler)
        wrapped = _wrap(getattr(handler, kind), stream if handler.request_streaming else one)
        return handler._replace(
            request_deserializer=_tolerant(handler.request_deserializer), **{kind: wrapped}
        )


def _kind(handler: grpc.RpcMethodHandler) -> str:
    request = "stream" if handler.request_streaming else "unary"
    response = "stream" if handler.response_streaming else "unary"
    return f"{request}_{response}"
