"""What every call meets before its servicer, in this order:

1. who calls: the principal of its bearer token or of its client certificate
   (UNAUTHENTICATED without one, when the server has principals); health is open to all;
2. whether its role may call the method (PERMISSION_DENIED), whether it is within its rate,
   and, for a streaming call, within its open streams (RESOURCE_EXHAUSTED, retryable); a
   unary call whose principal sent more request bytes than its rate waits (grpc has parsed
   the request by then: a flood of big requests costs the event loop their parsing, so a
   principal's closed-loop clients are slowed to its byte rate);
3. whether the request bytes are the method's message (INVALID_ARGUMENT; left to grpc, the
   parser's exception would reach the caller as UNKNOWN). A unary call is refused before its
   servicer runs; in a request stream the bad message raises UndecodableRequest where the
   servicer reads it, and the call is refused from the servicer's own task (an abort from
   another task, such as StreamEvents' reader, would race the answers being sent).

The principal is then the call's `engine.domain.auth.current()`. A servicer never sees a request
that failed any of these.
"""

from __future__ import annotations

import contextvars
import inspect
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from engine.domain.auth import OPEN, Principal, Principals, act_as
from engine.domain.errors import (
    InvalidArgument,
    OmnistockError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from engine.metrics import Metrics
from engine.throttle import Rate

OPEN_SERVICES = ("/grpc.health.v1.Health/",)
REFLECTION = "/grpc.reflection."
LIGHT_REQUEST = 64 * 1024  # bytes: a request this small never waits for the byte rate
# The size of the request the call's task parsed last (a unary call's own: grpc parses it
# in the task that then runs the servicer).
_received: contextvars.ContextVar[int] = contextvars.ContextVar("received", default=0)


@dataclass(frozen=True, slots=True)
class Limits:
    rate: float  # calls per second per principal (a burst of one second's worth); 0: none
    streams: int  # streaming calls open at once per principal
    request_bytes: float = 0.0  # unary request bytes per second per principal; 0: none


class Gate:
    """Identifies callers and keeps each principal within its limits, in this process."""

    def __init__(self, principals: Principals | None, limits: Limits) -> None:
        self.principals = principals
        self.limits = limits
        self.calls = Rate(limits.rate)
        self.request_bytes = Rate(limits.request_bytes)
        self.streams: Counter[str] = Counter()

    def identify(self, context: grpc.aio.ServicerContext) -> Principal:
        """The call's principal: by its bearer token, else by its client certificate."""
        if self.principals is None:
            return OPEN
        token = _bearer(context.invocation_metadata() or ())
        if token is not None:
            principal = self.principals.by_bearer(token)
            if principal is None:
                raise Unauthenticated("the bearer token is not known")
            return principal
        common_names = _common_names(context)
        for name in common_names:
            principal = self.principals.by_name.get(name)
            if principal is not None:
                return principal
        if common_names:
            raise Unauthenticated(f"no principal is named {common_names[0]!r}")
        raise Unauthenticated(
            "a bearer token (metadata 'authorization: Bearer <token>') or a client "
            "certificate is required"
        )

    def permit(self, principal: Principal, method: str) -> None:
        """PERMISSION_DENIED outside the role (reflection: any principal)."""
        name = method.rsplit("/", 1)[-1]
        if not method.startswith(REFLECTION) and not principal.may_call(name):
            raise PermissionDenied(
                f"principal {principal.name} (role {principal.role}) may not call {name}"
            )

    def within_rate(self, principal: Principal) -> None:
        if not self.calls.try_take(principal.name):
            raise ResourceExhausted(
                f"principal {principal.name or 'open'} is over its {self.limits.rate:g} "
                "calls per second; retry later"
            )

    def open_stream(self, principal: Principal) -> None:
        if self.streams[principal.name] >= self.limits.streams:
            raise ResourceExhausted(
                f"principal {principal.name or 'open'} has {self.limits.streams} streams open, "
                "its most; close one first"
            )
        self.streams[principal.name] += 1

    def close_stream(self, principal: Principal) -> None:
        self.streams[principal.name] -= 1
        if self.streams[principal.name] <= 0:
            del self.streams[principal.name]


def _bearer(metadata: Sequence[tuple[str, Any]]) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization must be 'Bearer <token>'")
            return token.strip()
    return None


def _common_names(context: grpc.aio.ServicerContext) -> list[str]:
    names = context.auth_context().get("x509_common_name", [])
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


class UndecodableRequest(InvalidArgument):
    """A request's bytes are not the method's message. An InvalidArgument, so a servicer
    that maps our errors (engine.api.rpc) answers it as it answers any bad input."""

    def __init__(self, method: str, error: str) -> None:
        super().__init__(
            "request", f"the bytes are not a {method.rsplit('/', 1)[-1]} request ({error})"
        )


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def run(data: bytes) -> Any:
        _received.set(len(data))
        try:
            return deserialize(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return run


class Edge(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, gate: Gate, metrics: Metrics) -> None:
        self.gate = gate
        self.metrics = metrics
        # method -> its handler behind the gate, made on its first call: the servicers'
        # methods are fixed, so this holds one entry per method served
        self._guarded: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = details.method
        guarded = self._guarded.get(method)
        if guarded is not None:
            return guarded
        handler = await continuation(details)
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        kind = _kind(handler)
        streaming = handler.request_streaming or handler.response_streaming
        wrapped = self._guard(getattr(handler, kind), method, streaming, handler.request_streaming)
        guarded = handler._replace(
            request_deserializer=_tolerant(handler.request_deserializer), **{kind: wrapped}
        )
        self._guarded[method] = guarded
        return guarded

    async def _enter(
        self, method: str, streaming: bool, context: grpc.aio.ServicerContext
    ) -> Principal:
        gate = self.gate
        try:
            principal = gate.identify(context)
        except Unauthenticated as exc:
            await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, exc, "unauthenticated")
        try:
            gate.permit(principal, method)
        except PermissionDenied as exc:
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, exc, "permission")
        try:
            gate.within_rate(principal)
        except ResourceExhausted as exc:
            await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, exc, "rate")
        size = 0 if streaming else _received.get()
        if size > LIGHT_REQUEST:
            waited = await gate.request_bytes.take(principal.name, size)
            if waited:
                self.metrics.request_bytes_paced.inc(waited)
        if streaming:
            try:
                gate.open_stream(principal)
            except ResourceExhausted as exc:
                await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, exc, "streams")
        act_as(principal)
        return principal

    async def _refuse(
        self,
        context: grpc.aio.ServicerContext,
        code: grpc.StatusCode,
        exc: OmnistockError,
        reason: str,
    ) -> None:
        self.metrics.refused.labels(reason).inc()
        await context.abort(code, str(exc))

    def _guard(
        self, behavior: Callable[..., Any], method: str, streaming: bool, request_streaming: bool
    ) -> Callable[..., Any]:
        """`behavior` behind the gate, its request (or each request of its stream) checked; a
        wrapper of the same kind (coroutine or async generator function), as grpc runs a
        handler by its kind."""

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await _checked(request, context, method, request_streaming)

        if inspect.isasyncgenfunction(behavior):

            async def gen(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                principal = await self._enter(method, streaming, context)
                try:
                    async for item in behavior(await checked(request, context), context):
                        yield item
                except UndecodableRequest as exc:  # from a servicer that does not map it
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                finally:
                    if streaming:
                        self.gate.close_stream(principal)

            return gen

        async def coro(request: Any, context: grpc.aio.ServicerContext) -> Any:
            principal = await self._enter(method, streaming, context)
            try:
                return await behavior(await checked(request, context), context)
            except UndecodableRequest as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            finally:
                if streaming:
                    self.gate.close_stream(principal)

        return coro


async def _decoded(request: Any, context: grpc.aio.ServicerContext, method: str) -> Any:
    if isinstance(request, _Undecodable):
        raise UndecodableRequest(method, request.error)
    return request


async def _checked(
    request: Any, context: grpc.aio.ServicerContext, method: str, streaming: bool
) -> Any:
    """The request checked; or, for a request stream, a stream that checks each request."""
    if not streaming:
        return await _decoded(request, context, method)

    async def each() -> AsyncIterator[Any]:
        async for item in request:
            yield await _decoded(item, context, method)

    return each()


def _kind(handler: grpc.RpcMethodHandler) -> str:
    request = "stream" if handler.request_streaming else "unary"
    response = "stream" if handler.response_streaming else "unary"
    return f"{request}_{response}"
