"""`server.py --workers N`: N server processes on one port, each with its own event loop,
so that the engine uses more than one core. The kernel spreads connections over them
(SO_REUSEPORT, which grpc sets); every call is served whole by the process its connection
reached. This process only supervises: it starts the embedded store (when there is no
--redis-url) so that every worker uses the same one, starts worker 0 first (it loads the
demo data, if asked) and the others once it serves, restarts a worker that dies, forwards
SIGHUP (auth reload) to the workers that handle it, and on SIGTERM or SIGINT stops them
all, then the store.

The workers share nothing but the store: the sweeper and saga recovery run in each, and
are safe to (each expiry and recovery is a script that checks again). Rate and stream
limits are per process (docs/security.md), so per principal they are N times theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from engine.api.listener import serving
from engine.app import store_of
from engine.settings import Settings, as_environment
from engine.store.embedded import EmbeddedRedis
from engine.store.loopback import free_port

log = logging.getLogger("omnistock.workers")
SERVER = Path(__file__).resolve().parents[1] / "server.py"
RESTART_PAUSE = 1.0  # seconds before a worker that died is started again
START_WITHIN = 300.0  # worker 0 may load the demo data first


class Workers:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded: EmbeddedRedis | None = None
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * settings.workers
        self.stopping = False

    async def run(self) -> None:
        stop = on_signals(lambda: self._forward(signal.SIGHUP))
        url, self.embedded = await store_of(self.settings)
        host, port = self.settings.listen.rsplit(":", 1)
        self.listen = f"{host}:{port if int(port) else free_port()}"
        self.url = url
        tasks = []
        if self.embedded is not None:
            tasks.append(asyncio.create_task(self.embedded.supervise(lambda: None)))
        try:
            self._start(0)
            await self._serving()
            for i in range(1, len(self.procs)):
                self._start(i)
            log.info("%d workers serving on %s", len(self.procs), self.listen)
            tasks.append(asyncio.create_task(self._keep_alive()))
            await stop.wait()
        finally:
            self.stopping = True
            for task in tasks:
                task.cancel()
            await asyncio.to_thread(self._stop_all)
            if self.embedded is not None:
                await asyncio.to_thread(self.embedded.stop)

    def _start(self, i: int) -> None:
        metrics = self.settings.metrics_port + i if self.settings.metrics_port else 0
        env = os.environ | as_environment(
            self.settings,
            workers=1,
            redis_url=self.url,
            listen=self.listen,
            metrics_port=metrics,
            demo=self.settings.demo and i == 0,
        )
        self.procs[i] = subprocess.Popen([sys.executable, str(SERVER)], env=env)
        log.info("worker %d started: pid %d", i, self.procs[i].pid)  # type: ignore[union-attr]

    async def _serving(self) -> None:
        deadline = time.monotonic() + START_WITHIN
        while not await asyncio.to_thread(serving, self.listen):
            first = self.procs[0]
            if first is not None and first.poll() is not None:
                raise SystemExit(f"worker 0 exited during start ({first.returncode})")
            if time.monotonic() > deadline:
                raise SystemExit(f"worker 0 did not serve within {START_WITHIN:g} s")
            await asyncio.sleep(0.1)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(RESTART_PAUSE)
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None and not self.stopping:
                    log.warning("worker %d (pid %d) exited (%d): restarting it", i, proc.pid,
                                proc.returncode)  # fmt: skip
                    self._start(i)

    def _forward(self, sig: int) -> None:
        """A reload goes only to a worker that has taken SIGHUP as its own (its default
        action would end one still starting, which reads the file as it starts anyway)."""
        for proc in self.procs:
            if proc is None or proc.poll() is not None:
                continue
            if sig != signal.SIGHUP or catches(proc.pid, sig):
                proc.send_signal(sig)

    def _stop_all(self) -> None:
        self._forward(signal.SIGTERM)
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(Exception):
                    proc.wait(timeout=5)


def on_signals(reload: Callable[[], None]) -> asyncio.Event:
    """Takes this process's signals on the running loop: SIGTERM and SIGINT set the event
    answered (stop), SIGHUP calls `reload`. Called first, before anything that takes
    time: SIGHUP's default action would end a process a reload reached as it started."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    return stop


def handling(pid: int, sig: int) -> str:
    """How the process takes `sig` now: 'caught' (a handler of its own), 'ignored' or
    'default' (SigCgt and SigIgn in its /proc status on Linux); 'unknown' where that cannot
    be told."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "unknown"
    masks = dict(row.split(":", 1) for row in status.splitlines() if row.startswith("Sig"))
    if "SigCgt" not in masks or "SigIgn" not in masks:
        return "unknown"
    bit = 1 << (sig - 1)
    if int(masks["SigCgt"], 16) & bit:
        return "caught"
    return "ignored" if int(masks["SigIgn"], 16) & bit else "default"


def catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler of its own for `sig`; True where that cannot be
    told."""
    return handling(pid, sig) in ("caught", "unknown")
