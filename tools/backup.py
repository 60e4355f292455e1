"""python -m tools.backup: a snapshot of the store, and a state directory restored from one.

    python -m tools.backup snapshot --redis-url URL --to FILE
    python -m tools.backup restore --from FILE --state-dir DIR

snapshot: BGSAVE (scheduled behind an AOF rewrite under way, if any), waits for it to end
well, and copies the RDB file it wrote to FILE (written aside, fsynced, then renamed). The
snapshot is one point in time of the whole store: every Lua script is atomic, so no change
of stock or reservations is in it by half. The RDB file is read from the server's own
directory (CONFIG GET dir), so this runs on the store's host (the embedded store, or a Redis
whose directory it can read); elsewhere `redis-cli --rdb FILE` fetches the same snapshot
over the network. The URL's user needs BGSAVE, INFO and CONFIG GET (the engine's own ACL
user has none of them: use the store's admin user; the embedded store's URL, in
`state/redis.url`, is one).

restore: makes DIR (which must hold no store yet) a state directory whose append-only file
holds exactly the snapshot: it starts the store's binary on DIR with the append-only file
off, so that it loads the RDB file, turns the append-only file on (the store writes it from
memory, the documented way from an RDB file to an AOF), waits for that to end well, stops
it, and starts it once more the way the service does, to check that the append-only file
gives back every key. Then `python server.py --state-dir DIR` serves on it.
(A store started with its append-only file on ignores an RDB file beside it and starts
empty: copying a dump.rdb into a state directory restores nothing.)

docs/operations.md says when to take them and what a restore loses; tests/test_backup.py
runs these two commands against a server holding stock and reservations.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from engine.store.embedded import EmbeddedRedis

RDB_MAGIC = (b"REDIS", b"VALKEY")  # the first bytes of an RDB file (Redis, Valkey 8.1+)


class BackupError(Exception):
    """A snapshot or restore that did not complete; nothing it names is to be trusted."""


def snapshot(url: str, to: Path, timeout: float = 600.0) -> dict[str, Any]:
    """BGSAVE on the store at `url`, then its RDB file copied to `to`; what was saved."""
    with redis.Redis.from_url(url, socket_timeout=30) as store:
        before = int(store.info("persistence")["rdb_saves"])
        keys = int(store.dbsize())
        store.execute_command("BGSAVE", "SCHEDULE")
        done = _wait(store, lambda p: _saved_since(p, before), timeout, "BGSAVE")
        if done["rdb_last_bgsave_status"] != "ok":
            raise BackupError(f"BGSAVE failed: {done}; see the store's log")
        directory, name = (store.config_get(k)[k] for k in ("dir", "dbfilename"))
    source = Path(directory) / name
    try:
        with source.open("rb") as rdb:  # one inode: a later BGSAVE renames a new file over it
            size = _copy(rdb, to)
    except OSError as exc:
        raise BackupError(
            f"cannot read {source} ({exc}): run this on the store's host, or fetch the "
            "snapshot with `redis-cli --rdb FILE`"
        ) from exc
    saved_at = int(done["rdb_last_save_time"])
    return {"file": str(to), "bytes": size, "saved_at": saved_at, "keys_before": keys}


def restore(source: Path, state_dir: Path, timeout: float = 600.0) -> dict[str, Any]:
    """A state directory at `state_dir` whose append-only file holds the snapshot `source`."""
    _check_rdb(source)
    if state_dir.exists() and any(state_dir.iterdir()):
        raise BackupError(f"{state_dir} is not empty: restore into a new directory")
    state_dir.mkdir(parents=True, exist_ok=True)
    rdb = state_dir / "dump.rdb"
    shutil.copyfile(source, rdb)
    loader = _RdbLoader(state_dir, password=False)
    loader.start(timeout)
    try:
        with redis.Redis(port=loader.port, socket_timeout=30) as store:
            loaded = int(store.dbsize())
            store.config_set("appendonly", "yes")  # written from memory: the new AOF's base
            _wait(store, _aof_written, timeout, "the AOF rewrite")
    finally:
        loader.stop()
    rdb.unlink()  # ignored from now on (the AOF is loaded): gone, so nobody is misled by it
    from_aof = _keys_at(state_dir)  # fewer only by keys whose time ran out meanwhile
    if loaded and not from_aof:
        raise BackupError(f"the AOF in {state_dir} gives back no key of the {loaded} loaded")
    return {"state_dir": str(state_dir), "keys": loaded, "keys_from_aof": from_aof}


class _RdbLoader(EmbeddedRedis):
    """The embedded store's binary and settings, but with the AOF off: it loads dump.rdb."""

    def config(self) -> list[str]:
        args = super().config()
        args[args.index("--appendonly") + 1] = "no"
        return args


def _saved_since(persistence: dict[str, Any], saves: int) -> bool:
    """A BGSAVE began after `saves` (rdb_saves counts them as they begin) and has ended."""
    return int(persistence["rdb_saves"]) > saves and not persistence["rdb_bgsave_in_progress"]


def _aof_written(persistence: dict[str, Any]) -> bool:
    if persistence["aof_last_bgrewrite_status"] != "ok":
        raise BackupError(f"the AOF rewrite failed: {persistence}; see redis.log")
    busy = persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"]
    return bool(persistence["aof_enabled"]) and not busy


def _keys_at(state_dir: Path) -> int:
    """Starts the store on `state_dir` as the service would (AOF on), and counts its keys."""
    store = EmbeddedRedis(state_dir, password=False)
    store.start()
    try:
        with redis.Redis(port=store.port, socket_timeout=30) as client:
            return int(client.dbsize())
    finally:
        store.stop()


def _wait(
    store: redis.Redis, done: Callable[[dict[str, Any]], bool], timeout: float, what: str
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        persistence: dict[str, Any] = store.info("persistence")
        if done(persistence):
            return persistence
        if time.monotonic() > deadline:
            raise BackupError(f"{what} did not end within {timeout}s: {persistence}")
        time.sleep(0.05)


def _copy(rdb: Any, to: Path) -> int:
    """Copies the open file to `to`: written beside it, fsynced, then renamed into place."""
    to.parent.mkdir(parents=True, exist_ok=True)
    partial = to.with_name(to.name + ".partial")
    with partial.open("wb") as out:
        shutil.copyfileobj(rdb, out)
        out.flush()
        os.fsync(out.fileno())
    _check_rdb(partial)
    os.replace(partial, to)
    return to.stat().st_size


def _check_rdb(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(9)
    if not head.startswith(RDB_MAGIC):
        raise BackupError(f"{path} is not an RDB file (it starts {head!r})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.backup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    save = commands.add_parser("snapshot", help="BGSAVE and copy the RDB file")
    save.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", ""),
        help="the store, as a user allowed BGSAVE, INFO and CONFIG GET (env REDIS_URL)",
    )
    save.add_argument("--to", type=Path, required=True, help="the snapshot file to write")
    back = commands.add_parser("restore", help="a new state directory from a snapshot")
    back.add_argument("--from", dest="source", type=Path, required=True, help="a snapshot")
    back.add_argument("--state-dir", type=Path, required=True, help="a new, empty directory")
    for command in (save, back):
        command.add_argument("--timeout", type=float, default=600.0, help="seconds (600)")
    args = parser.parse_args(argv)
    try:
        if args.command == "snapshot":
            if not args.redis_url:
                parser.error("--redis-url (or REDIS_URL) is needed")
            done = snapshot(args.redis_url, args.to, args.timeout)
        else:
            done = restore(args.source, args.state_dir, args.timeout)
    except (BackupError, redis.RedisError, OSError, RuntimeError) as exc:
        print(f"{args.command} failed: {exc}", file=sys.stderr)
        return 1
    print(f"{args.command}: " + ", ".join(f"{k} {v}" for k, v in done.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
