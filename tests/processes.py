"""`python server.py` as a child process, for fault tests that kill or stop it.

The service listens on a free loopback port; `start` returns once its health check answers
SERVING. Its logs go to files next to its state, so a failing test can show their tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.store.loopback import free_port

from .grpc_helpers import Stubs

ROOT = Path(__file__).resolve().parents[1]
SERVING = health_pb2.HealthCheckResponse.SERVING


async def health_status(port: int, within: float = 0.5) -> int | None:
    """The overall health status, or None when the server does not answer."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            got = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=within
            )
        except grpc.aio.AioRpcError:
            return None
        return int(got.status)


def _clean_env() -> dict[str, str]:
    """Only the flags configure the child: no REDIS_URL or OMNISTOCK_* from the caller."""
    env = {
        k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("OMNISTOCK_")
    }
    env["GRPC_VERBOSITY"] = "ERROR"
    return env


class ServerProcess:
    """One `python server.py` child. `logs` is a directory for its stdout and stderr."""

    def __init__(self, logs: Path, *args: str, keep_port: bool = False) -> None:
        """keep_port: every start listens on the port of the first (as a deployment does),
        instead of a new free one."""
        self.logs = logs
        self.args = args
        self.keep_port = keep_port
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._starts = 0
        self._stderr: Path | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, within: float = 20.0) -> None:
        """Starts the service and waits until it answers SERVING (a taken port: next port)."""
        for _ in range(3):
            self.launch()
            if await self._wait_serving(within):
                return
            if self.process is not None and self.process.poll() is None:
                await self.kill()
                raise AssertionError(f"server not SERVING after {within}s:\n{self.log_tail()}")
        raise AssertionError(f"server would not start:\n{self.log_tail()}")

    def launch(self) -> None:
        """Starts the process and returns at once (`start` also waits until it serves)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self._starts += 1
        if not (self.keep_port and self.port):
            self.port = free_port()
        out = self.logs / f"stdout.{self._starts}.log"
        err = self.logs / f"stderr.{self._starts}.log"
        self._stderr = err
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "server.py", "--listen", f"127.0.0.1:{self.port}", *self.args],
                cwd=ROOT,
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )

    async def _wait_serving(self, within: float) -> bool:
        """True once SERVING; False when the process exited first or the time ran out."""
        deadline = time.monotonic() + within
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if await health_status(self.port) == SERVING:
                return True
            await asyncio.sleep(0.05)
        return False

    def log_tail(self, chars: int = 3000) -> str:
        path = self._stderr
        return path.read_text(errors="replace")[-chars:] if path and path.exists() else ""

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait(self, within: float) -> int | None:
        """The exit code, or None if the process is still running after `within` seconds."""
        assert self.process is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.02)
        return self.process.poll()

    async def kill(self) -> None:
        """SIGKILL: no draining, no cleanup."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        await self.wait(within=10.0)

    async def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited after `grace`; the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
        code = await self.wait(within=grace)
        if code is None:
            await self.kill()
        return code

    async def close(self) -> None:
        """For fixture teardown: whatever state it is in, it is gone afterwards."""
        with contextlib.suppress(ProcessLookupError):
            await self.stop(grace=5.0)


def listening(port: int) -> bool:
    """True once a TCP connection to the loopback port is taken."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def redis_pid(state_dir: Path) -> int:
    """The embedded store's pid, from the pidfile it writes in the state directory."""
    return int((state_dir / "redis.pid").read_text().strip())


def redis_port(pid: int) -> int:
    """The embedded store's port, from its command line: `--port <n>` as started, or the
    `<host>:<port>` that redis and valkey put in their process title once running."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
    if b"--port" in argv:
        return int(argv[argv.index(b"--port") + 1])
    return int(next(arg for arg in reversed(argv) if b":" in arg).rsplit(b":", 1)[1])


def alive(pid: int) -> bool:
    """True while a process with this pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_gone(pid: int, within: float) -> bool:
    """True once the process is gone, False if it is still there after `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(pid):
            break
        await asyncio.sleep(0.02)
    return not alive(pid)


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Stubs(channel)


async def eventually(check: Callable[[], bool | Awaitable[bool]], within: float) -> bool:
    """Polls `check` every 20 ms until it holds or `within` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        held = check()
        if held if isinstance(held, bool) else await held:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)


async def timed(call: Awaitable[object]) -> tuple[grpc.StatusCode, float]:
    """The status code a call ends with, and how long it took (s)."""
    start = time.perf_counter()
    try:
        await call
        code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as err:
        code = err.code()
    return code, time.perf_counter() - start
