"""The gRPC server itself: its limits, its edge (engine/api/edge.py), its services, health,
reflection, TLS, and where it may listen. Without an auth file the server is open (every
caller may do everything), so it listens on loopback only; anything else needs principals
and TLS, or `--insecure` said out loud."""

from __future__ import annotations

import ipaddress
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from engine.api.availability import AvailabilityService
from engine.api.edge import Edge, Limits
from engine.api.operator import OperatorService
from engine.api.reservations import ReservationService
from engine.api.sourcing import SourcingService
from engine.api.stock import StockService
from engine.domain.auth import Principals
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc
from engine.settings import Settings

log = logging.getLogger(__name__)
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
SERVICES = tuple(s.full_name for s in pb.DESCRIPTOR.services_by_name.values())
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class Health:
    """grpc.health.v1, for the server as a whole ("") and for each service alike."""

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()

    async def set(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse
        for name in ("", *SERVICES):
            await self.servicer.set(name, status.SERVING if serving else status.NOT_SERVING)

    async def shutdown(self) -> None:
        """NOT_SERVING for good: the server is going away."""
        await self.servicer.enter_graceful_shutdown()


def add_services(
    server: grpc.aio.Server,
    health: Health,
    availability: AvailabilityService,
    reservations: ReservationService,
    sourcing: SourcingService,
    stock: StockService,
    operator: OperatorService,
) -> None:
    pb_grpc.add_AvailabilityServiceServicer_to_server(availability, server)
    pb_grpc.add_ReservationServiceServicer_to_server(reservations, server)
    pb_grpc.add_SourcingServiceServicer_to_server(sourcing, server)
    pb_grpc.add_StockServiceServicer_to_server(stock, server)
    pb_grpc.add_OperatorServiceServicer_to_server(operator, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    enable_reflection(server, (*SERVICES, HEALTH, reflection.SERVICE_NAME))


def grpc_server(settings: Settings, edge: Edge) -> grpc.aio.Server:
    """Over `max_concurrent_calls` calls under way, a new one is answered RESOURCE_EXHAUSTED
    (which a client may retry), never left to grpc's default queue of 1,000 calls not yet
    picked up, whose overflow it answers CANCELLED. (No cap on streams per connection: over
    one, grpc clients do not wait, they fail the call UNAVAILABLE.) Each stream's HTTP/2
    window stays at 64 KiB (no bandwidth probing): a client writing faster than its stream
    is read is held back there, not buffered in this process (20 event streams of 5,000
    events a message took it to 220 MB before, 140 MB since)."""
    limit = settings.max_concurrent_calls
    return grpc.aio.server(
        interceptors=[edge],
        maximum_concurrent_rpcs=limit,
        options=[
            ("grpc.server.max_pending_requests", limit * 4),
            ("grpc.server.max_pending_requests_hard_limit", limit * 8),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", 64 * 1024),
        ],
    )


def limits_of(settings: Settings) -> Limits:
    return Limits(
        rate=settings.rate_limit,
        streams=settings.max_streams_per_principal,
        request_bytes=settings.request_bytes_rate,
    )


def load_principals(settings: Settings) -> Principals | None:
    return Principals.load(settings.auth_file) if settings.auth_file else None


def enable_reflection(server: grpc.aio.Server, names: tuple[str, ...]) -> None:
    """Reflection v1alpha, and v1: grpcio-reflection ships only v1alpha, whose messages are
    v1's byte for byte (the same proto in another package), so one servicer serves both."""
    servicer = reflection.aio.ReflectionServicer((*names, REFLECTION_V1))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    info = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": info}),)
    )


class ListenRefused(SystemExit):
    pass


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or '' / 0.0.0.0 / [::]: every interface


def listen(server: grpc.aio.Server, settings: Settings) -> int:
    """Binds the port, with TLS when a certificate is given; refuses an address beyond
    loopback unless the server has principals and TLS, or --insecure."""
    secured = bool(settings.auth_file) and bool(settings.tls_cert)
    if not is_loopback(settings.listen) and not secured and not settings.insecure:
        raise ListenRefused(
            f"refusing to listen on {settings.listen}: beyond loopback the server needs "
            "--auth-file and --tls-cert/--tls-key (or --insecure, to accept the risk)"
        )
    if not settings.auth_file:
        log.warning(
            "no --auth-file: the server is OPEN, every caller may do everything "
            "(read, hold, commit, zero a store's stock); fine on loopback for a demo only"
        )
    if not settings.tls_cert:
        return int(server.add_insecure_port(settings.listen))
    return int(server.add_secure_port(settings.listen, _credentials(settings)))


def _credentials(settings: Settings) -> grpc.ServerCredentials:
    assert settings.tls_cert is not None and settings.tls_key is not None  # settings.check
    key = settings.tls_key.read_bytes()
    chain = settings.tls_cert.read_bytes()
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def serving(target: str, timeout: float = 0.5) -> bool:
    """Whether the server at `target` answers its health check SERVING (blocking)."""
    with grpc.insecure_channel(target) as channel:
        try:
            got = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(got.status == health_pb2.HealthCheckResponse.SERVING)
