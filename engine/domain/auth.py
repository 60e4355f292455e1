"""Who may do what: principals, their roles and locations, and the rights of each role.
Pure: the gRPC side (engine/api/edge.py) finds the caller's principal; this module says what
it may do.

Principals are read from a TOML file (`--auth-file`), for example

    [[principal]]
    name = "till-london-0001"
    role = "pos"
    locations = ["store-london-0001"]   # omitted: every location
    channels = ["store"]                # omitted: any sales channel; else these, the first
                                        # for a call that names none
    token_sha256 = "<hex SHA-256 of the bearer token>"   # omitted: mutual TLS only

A caller is the principal whose token_sha256 is the SHA-256 of its bearer token
(`authorization: Bearer <token>`), or, over mutual TLS, the principal named by the common
name of its client certificate. Tokens are never stored in clear. The file is read again on
SIGHUP and when it changes; a file that does not load leaves the principals as they were.

Roles (docs/security.md has the whole table):
    storefront  reads, watch, nearby; cart holds (capped units, a shorter longest TTL)
    pos         reads; holds, commits, releases; stock events and counts: its locations only
    fulfilment  reads; Allocate; holds anywhere; sees every reservation
    ingest      stock events, counts and mappings (for its locations, or all)
    admin       everything, including locations, safety stock and the operators' calls
                (rows with their holds, locations, alerts; sources and dead letters, which
                ingest may also call)
Future supply and transfers (issue 17): every reader asks GetPromise; ingest (an ERP's
feed) and admin set supply; fulfilment, ingest and admin create and cancel transfers, and
ship and receive them, as a till (pos) does at its own store: ships from it, receives at it.
Each acts only at its locations (both ends of a transfer it creates or cancels).
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.domain.errors import InvalidArgument, PermissionDenied
from engine.domain.model import check_id


class Role(enum.StrEnum):
    STOREFRONT = "storefront"
    POS = "pos"
    FULFILMENT = "fulfilment"
    INGEST = "ingest"
    ADMIN = "admin"


_READERS = frozenset({Role.STOREFRONT, Role.POS, Role.FULFILMENT, Role.ADMIN})
_HOLDERS = frozenset({Role.STOREFRONT, Role.POS, Role.FULFILMENT, Role.ADMIN})
_WRITERS = frozenset({Role.POS, Role.INGEST, Role.ADMIN})
_TRANSFERS = frozenset({Role.FULFILMENT, Role.INGEST, Role.ADMIN})

# Each RPC of omnistock.v1, by its method name, and the roles that may call it.
RIGHTS: Mapping[str, frozenset[Role]] = {
    "GetAvailability": _READERS,
    "FindNearby": _READERS,
    "WatchAvailability": _READERS,
    "GetNetworkAvailability": _READERS,
    "Reserve": _HOLDERS,
    "Commit": _HOLDERS,
    "Release": _HOLDERS,
    "Extend": _HOLDERS,
    "GetReservation": _HOLDERS,
    "MoveLine": _HOLDERS,
    "Allocate": frozenset({Role.FULFILMENT, Role.ADMIN}),
    "UpsertLocations": frozenset({Role.ADMIN}),
    "SetSafetyStock": frozenset({Role.ADMIN}),
    "ApplyEvents": _WRITERS,
    "StreamEvents": _WRITERS,
    "ReconcileCount": _WRITERS,
    "SetMappings": frozenset({Role.INGEST, Role.ADMIN}),
    "SetChannelRules": frozenset({Role.ADMIN}),
    "SetPool": frozenset({Role.ADMIN}),
    "SetStockBands": frozenset({Role.ADMIN}),
    "SetCustomerLimits": frozenset({Role.ADMIN}),
    "UpsertNetworks": frozenset({Role.ADMIN}),
    "SetBundles": frozenset({Role.ADMIN}),
    # a till takes a return at its own stores (whoever sold the units); feeds and admins too
    "RecordReturn": _WRITERS,
    "SetReturnRules": frozenset({Role.ADMIN}),
    "GetRow": frozenset({Role.ADMIN}),
    "GetLocation": frozenset({Role.ADMIN}),
    "ListAlerts": frozenset({Role.ADMIN}),
    "ListSources": frozenset({Role.INGEST, Role.ADMIN}),
    "ListDeadLetters": frozenset({Role.INGEST, Role.ADMIN}),
    "DeleteDeadLetters": frozenset({Role.INGEST, Role.ADMIN}),
    "GetPromise": _READERS,
    "UpsertSupply": frozenset({Role.INGEST, Role.ADMIN}),
    "CreateTransfer": _TRANSFERS,
    "ShipTransfer": _TRANSFERS | {Role.POS},
    "ReceiveTransfer": _TRANSFERS | {Role.POS},
    "CancelTransfer": _TRANSFERS,
}
# Roles that see and settle every reservation, not only their own.
SEE_ALL = frozenset({Role.FULFILMENT, Role.ADMIN})


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role
    locations: frozenset[str] | None = None  # None: every location
    channels: tuple[str, ...] | None = None  # None: any sales channel; else these, the first
    # for a call that names none (so a web shop's token cannot leave its rules by naming none)

    def may_call(self, method: str) -> bool:
        return self.role in RIGHTS.get(method, frozenset())

    def require_locations(self, locations: Iterable[str], field: str) -> None:
        """PERMISSION_DENIED naming the first location outside this principal's."""
        if self.locations is None:
            return
        for location in locations:
            if location not in self.locations:
                raise PermissionDenied(
                    f"{field}: principal {self.name} may not act at location {location}"
                )

    def channel_for(self, asked: str, field: str = "channel") -> str:
        """The sales channel a call acts as: the one asked for, if this principal may act
        as it (a principal bound to channels: its first when none is asked for)."""
        if self.channels is None:
            return asked
        if not asked:
            return self.channels[0]
        if asked not in self.channels:
            raise PermissionDenied(
                f"{field}: principal {self.name} may not act as channel {asked!r} "
                f"(only {', '.join(self.channels)})"
            )
        return asked

    def owns(self, owner: str) -> bool:
        """Whether a reservation made by `owner` is this principal's to see and settle."""
        return self.role in SEE_ALL or owner == self.name

    def making_for(self, customer: str) -> str:
        """Who makes a reservation, as its fingerprint and its directory entry take it: this
        principal, and the customer it holds for after a tab (write_dir, _prelude.lua,
        splits them)."""
        return f"{self.name}\t{customer}" if customer else self.name


# The server without an auth file: one principal that may do everything (loopback only).
OPEN = Principal("", Role.ADMIN)

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal", default=OPEN)


def current() -> Principal:
    """The principal of the call being served (OPEN outside any call)."""
    return _current.get()


def act_as(principal: Principal) -> None:
    """Makes `principal` the caller for the rest of this call (its task)."""
    _current.set(principal)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AuthFileError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Principals:
    by_token: Mapping[str, Principal]  # SHA-256 hex -> principal
    by_name: Mapping[str, Principal]

    def by_bearer(self, token: str) -> Principal | None:
        # Looked up by the token's SHA-256: what a lookup's timing could leak is about
        # digests, from which no token can be learnt, so no constant-time scan of every
        # principal (which would cost each call in proportion to the tills) is needed.
        return self.by_token.get(token_digest(token))

    @classmethod
    def load(cls, path: Path) -> Principals:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise AuthFileError(f"{path}: {exc}") from exc
        entries = data.get("principal", [])
        if not isinstance(entries, list) or not entries:
            raise AuthFileError(f"{path}: no [[principal]] entries")
        by_token: dict[str, Principal] = {}
        by_name: dict[str, Principal] = {}
        for i, entry in enumerate(entries):
            principal, digest = _principal(entry, f"{path}: principal[{i}]")
            if principal.name in by_name:
                raise AuthFileError(f"{path}: principal {principal.name} is named twice")
            by_name[principal.name] = principal
            if digest:
                if digest in by_token:
                    raise AuthFileError(f"{path}: two principals share one token")
                by_token[digest] = principal
        return cls(by_token, by_name)


def _principal(entry: Any, where: str) -> tuple[Principal, str]:
    if not isinstance(entry, dict):
        raise AuthFileError(f"{where}: must be a table")
    unknown = set(entry) - {"name", "role", "locations", "channels", "token_sha256"}
    if unknown:
        raise AuthFileError(f"{where}: unknown keys {sorted(unknown)}")
    try:
        name = check_id(str(entry.get("name", "")), "name")
        role = Role(str(entry.get("role", "")))
    except ValueError as exc:
        raise AuthFileError(f"{where}: {exc}; role is one of {[r.value for r in Role]}") from exc
    except InvalidArgument as exc:
        raise AuthFileError(f"{where}: {exc}") from exc
    locations = entry.get("locations")
    if locations is not None and (
        not isinstance(locations, list) or not all(isinstance(x, str) for x in locations)
    ):
        raise AuthFileError(f"{where}: locations must be a list of location ids")
    digest = str(entry.get("token_sha256", "")).lower()
    if digest and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
        raise AuthFileError(f"{where}: token_sha256 must be 64 hex digits (SHA-256 of the token)")
    scope = None if locations is None else frozenset(locations)
    return Principal(name, role, scope, _channels(entry.get("channels"), where)), digest


def _channels(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
        raise AuthFileError(f"{where}: channels must be a non-empty list of channel names")
    try:
        return tuple(check_id(x, "channels") for x in value)
    except InvalidArgument as exc:
        raise AuthFileError(f"{where}: {exc}") from exc
