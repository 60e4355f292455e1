"""The one exception tree of omnistock.

    OmnistockError
    ├── InvalidArgument      bad input; names the field and why        -> INVALID_ARGUMENT
    ├── NotFound             no such reservation or location            -> NOT_FOUND
    ├── AlreadyExists        a reservation id reused with other lines   -> ALREADY_EXISTS
    ├── FailedPrecondition   the state forbids it (commit after expiry) -> FAILED_PRECONDITION
    ├── Unavailable          the store (Redis) cannot be reached        -> UNAVAILABLE
    ├── Unauthenticated      no valid token or client certificate       -> UNAUTHENTICATED
    ├── PermissionDenied     outside the caller's role or locations     -> PERMISSION_DENIED
    └── ResourceExhausted    over a per-principal cap or rate (retry)   -> RESOURCE_EXHAUSTED

Redis errors become these at the storage seam (engine.store.storage); these become gRPC status
codes in one place (engine.api.rpc). Insufficient stock is not an error: it is an answer.
"""


class OmnistockError(Exception):
    """Base of every error omnistock raises on purpose."""


class InvalidArgument(OmnistockError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(OmnistockError):
    pass


class AlreadyExists(OmnistockError):
    pass


class FailedPrecondition(OmnistockError):
    pass


class Unavailable(OmnistockError):
    pass


class Unauthenticated(OmnistockError):
    pass


class PermissionDenied(OmnistockError):
    pass


class ResourceExhausted(OmnistockError):
    pass
