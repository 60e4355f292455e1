"""The peer a retailer would otherwise pick: stock in PostgreSQL, holds under row locks.

`PrivatePostgres` starts a throwaway server from Debian's binaries (initdb into a temp dir,
pg_ctl start on a free loopback port, its unix socket in the temp dir too) and deletes it
all at stop. Durability settings are PostgreSQL's defaults (fsync on, synchronous_commit on):
a committed hold survives a crash of the machine.

`PgStock` is the storage code, shaped like Saleor's warehouse tables: stock rows
(location, sku, on_hand, reserved, safety_stock), a reservation table and its lines. A hold is
one transaction: SELECT ... FOR UPDATE on the stock rows of the lines (in id order, so two
holds never deadlock), check available >= qty for each, INSERT the reservation and its lines,
UPDATE reserved, COMMIT. Style "transaction" sends those statements one by one, as an
application's data layer does (6 round trips); style "function" runs the same steps in one
PL/pgSQL call (1 round trip), PostgreSQL's best case.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from engine.store.loopback import free_port

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were found neither on PATH nor "
    "under /usr/lib/postgresql/*/bin; install Debian's package: apt-get install postgresql"
)
SUPERUSER = "bench"


class PostgresMissing(RuntimeError):
    pass


def find_bin_dir() -> Path:
    """The directory holding initdb, pg_ctl and postgres: PATH first, then the newest
    /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH)."""
    candidates: list[Path] = []
    for name in ("initdb", "pg_ctl"):
        found = shutil.which(name)
        if found:
            candidates.append(Path(found).resolve().parent)
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1,
        reverse=True,
    )
    for directory in [*candidates, *versions]:
        if all((directory / n).is_file() for n in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise PostgresMissing(INSTALL_HINT)


def _run_as() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: then it runs as the postgres (or nobody) user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


class PrivatePostgres:
    def __init__(self, settings: Sequence[str] = (), max_connections: int = 100) -> None:
        self.bin = find_bin_dir()
        self.settings = [*settings, f"max_connections={max_connections}"]
        self.port = free_port()
        self.user = _run_as()
        self.tmp: Path | None = None

    @property
    def data(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def version(self) -> str:
        return self._pg("postgres", "--version").strip()

    def _pg(self, program: str, *args: str) -> str:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        done = subprocess.run(
            [str(self.bin / program), *args],
            cwd=self.tmp or "/",
            env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "TZ": "UTC"},
            capture_output=True,
            text=True,
            check=False,
            **kwargs,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}")
        return str(done.stdout)

    def start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="omnistock-pg-"))
        if self.user is not None:
            os.chown(self.tmp, self.user.pw_uid, self.user.pw_gid)
        # --no-sync skips only initdb's own final flush of the new files; the server's
        # fsync and synchronous_commit stay at their defaults.
        self._pg(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = ["-c", "listen_addresses=127.0.0.1", "-p", str(self.port), "-k", str(self.tmp)]
        for setting in self.settings:
            options += ["-c", setting]
        self._pg(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.tmp / "postgres.log"),
            "-w",
            "-t",
            "60",
            "-o",
            shlex.join(options),
            "start",
        )

    def stop(self) -> None:
        if self.tmp is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


SCHEMA = """
CREATE TABLE stock (
    id bigserial PRIMARY KEY,
    location text NOT NULL,
    sku text NOT NULL,
    on_hand integer NOT NULL,
    reserved integer NOT NULL DEFAULT 0,
    safety_stock integer NOT NULL DEFAULT 0,
    UNIQUE (location, sku)
);
CREATE TABLE reservation (
    id text PRIMARY KEY,
    state text NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE reservation_line (
    id bigserial PRIMARY KEY,
    reservation_id text NOT NULL REFERENCES reservation (id),
    stock_id bigint NOT NULL REFERENCES stock (id),
    qty integer NOT NULL CHECK (qty > 0)
);
CREATE INDEX reservation_line_reservation ON reservation_line (reservation_id);
CREATE INDEX reservation_line_stock ON reservation_line (stock_id);

-- The same hold in one call: returns the lines that fall short (none: held).
CREATE FUNCTION hold(p_id text, p_locations text[], p_skus text[], p_qtys integer[],
                     p_ttl_s double precision)
RETURNS TABLE (location text, sku text, requested integer, available integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM 1 FROM stock s
        JOIN unnest(p_locations, p_skus) AS w(location, sku)
          ON s.location = w.location AND s.sku = w.sku
        ORDER BY s.id FOR UPDATE OF s;
    RETURN QUERY
        SELECT w.location, w.sku, w.qty,
               greatest(coalesce(s.on_hand - s.reserved - s.safety_stock, 0), 0)
        FROM unnest(p_locations, p_skus, p_qtys) AS w(location, sku, qty)
        LEFT JOIN stock s ON s.location = w.location AND s.sku = w.sku
        WHERE coalesce(s.on_hand - s.reserved - s.safety_stock, 0) < w.qty;
    IF FOUND THEN
        RETURN;
    END IF;
    INSERT INTO reservation (id, state, expires_at)
        VALUES (p_id, 'HELD', now() + p_ttl_s * interval '1 second');
    INSERT INTO reservation_line (reservation_id, stock_id, qty)
        SELECT p_id, s.id, w.qty
        FROM unnest(p_locations, p_skus, p_qtys) AS w(location, sku, qty)
        JOIN stock s ON s.location = w.location AND s.sku = w.sku;
    UPDATE stock s SET reserved = s.reserved + w.qty
        FROM unnest(p_locations, p_skus, p_qtys) AS w(location, sku, qty)
        WHERE s.location = w.location AND s.sku = w.sku;
END
$$;
"""

_LOCK = """
SELECT s.id, s.location, s.sku, s.on_hand, s.reserved, s.safety_stock
FROM stock s JOIN unnest($1::text[], $2::text[]) AS w(location, sku)
  ON s.location = w.location AND s.sku = w.sku
ORDER BY s.id FOR UPDATE OF s
"""
_INSERT_RESERVATION = """
INSERT INTO reservation (id, state, expires_at)
VALUES ($1, 'HELD', now() + $2::float8 * interval '1 second')
"""
_INSERT_LINES = """
INSERT INTO reservation_line (reservation_id, stock_id, qty)
SELECT $1, w.stock_id, w.qty FROM unnest($2::bigint[], $3::integer[]) AS w(stock_id, qty)
"""
_UPDATE_RESERVED = """
UPDATE stock s SET reserved = s.reserved + w.qty
FROM unnest($1::bigint[], $2::integer[]) AS w(stock_id, qty) WHERE s.id = w.stock_id
"""


@dataclass(frozen=True, slots=True)
class PgLine:
    location: str
    sku: str
    qty: int


@dataclass(frozen=True, slots=True)
class PgShort:
    location: str
    sku: str
    requested: int
    available: int


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Pool release without asyncpg's default RESET ALL round trip: the hold changes no
    session state, and the pool still rolls back a transaction left open."""


class PgStock:
    """Stock and reservations in PostgreSQL, over a pool of asyncpg connections."""

    def __init__(self, pool: asyncpg.Pool, style: str = "transaction") -> None:
        if style not in ("transaction", "function"):
            raise ValueError(f"style must be 'transaction' or 'function', not {style!r}")
        self.pool = pool
        self.style = style

    @classmethod
    async def open(cls, dsn: str, connections: int, style: str) -> PgStock:
        pool = await asyncpg.create_pool(
            dsn, min_size=connections, max_size=connections, reset=_keep_session
        )
        return cls(pool, style)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), 10)
        except TimeoutError:  # a connection still busy after an interruption
            self.pool.terminate()

    async def create_schema(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(SCHEMA)

    async def set_on_hand(self, location: str, sku: str, on_hand: int) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO stock (location, sku, on_hand) VALUES ($1, $2, $3) "
                "ON CONFLICT (location, sku) DO UPDATE SET on_hand = excluded.on_hand",
                location,
                sku,
                on_hand,
            )

    async def hold(
        self, reservation_id: str, lines: Sequence[PgLine], ttl_s: float
    ) -> list[PgShort]:
        """Holds every line or none; answers the lines that fell short (empty: held)."""
        if self.style == "function":
            return await self._hold_function(reservation_id, lines, ttl_s)
        return await self._hold_transaction(reservation_id, lines, ttl_s)

    async def _hold_transaction(
        self, reservation_id: str, lines: Sequence[PgLine], ttl_s: float
    ) -> list[PgShort]:
        async with self.pool.acquire() as conn, conn.transaction():
            locked = await conn.fetch(
                _LOCK, [ln.location for ln in lines], [ln.sku for ln in lines]
            )
            rows = {(r["location"], r["sku"]): r for r in locked}
            short, ids = [], []
            for ln in lines:
                row = rows.get((ln.location, ln.sku))
                available = 0 if row is None else _available(row)
                if available < ln.qty:
                    short.append(PgShort(ln.location, ln.sku, ln.qty, available))
                elif row is not None:
                    ids.append(row["id"])
            if short:
                return short  # nothing written: the transaction commits empty
            qtys = [ln.qty for ln in lines]
            await conn.execute(_INSERT_RESERVATION, reservation_id, ttl_s)
            await conn.execute(_INSERT_LINES, reservation_id, ids, qtys)
            await conn.execute(_UPDATE_RESERVED, ids, qtys)
            return []

    async def _hold_function(
        self, reservation_id: str, lines: Sequence[PgLine], ttl_s: float
    ) -> list[PgShort]:
        async with self.pool.acquire() as conn:
            got = await conn.fetch(
                "SELECT * FROM hold($1, $2, $3, $4, $5)",
                reservation_id,
                [ln.location for ln in lines],
                [ln.sku for ln in lines],
                [ln.qty for ln in lines],
                ttl_s,
            )
        return [PgShort(r["location"], r["sku"], r["requested"], r["available"]) for r in got]

    async def check(self, location: str, sku: str) -> dict[str, int]:
        """The row and the sum of its HELD reservation lines, for the invariant check."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT id, on_hand, reserved, safety_stock FROM stock "
                "WHERE location = $1 AND sku = $2",
                location,
                sku,
            )
            held = await conn.fetchrow(
                "SELECT count(*) AS n, coalesce(sum(l.qty), 0) AS units FROM reservation_line l "
                "JOIN reservation r ON r.id = l.reservation_id "
                "WHERE r.state = 'HELD' AND l.stock_id = $1",
                row["id"],
            )
        return {
            "on_hand": row["on_hand"],
            "reserved": row["reserved"],
            "safety_stock": row["safety_stock"],
            "held_lines": held["n"],
            "held_units": held["units"],
        }


def _available(row: asyncpg.Record) -> int:
    return max(0, int(row["on_hand"]) - int(row["reserved"]) - int(row["safety_stock"]))
