"""Starts an omnistock server process for a bench run (fresh embedded store) and stops it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.domain.auth import token_digest
from engine.store.embedded import EmbeddedRedis
from engine.store.loopback import free_port

ROOT = Path(__file__).resolve().parents[1]


class BenchServer:
    def __init__(self, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.state = tempfile.mkdtemp(prefix="omnistock-bench-")
        self.extra = extra or []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OMNISTOCK_", "REDIS_URL"))}
        cmd = [sys.executable, str(ROOT / "server.py"), "--listen", self.target]
        cmd += ["--state-dir", self.state, "--metrics-port", "0", "--log-level", "WARNING"]
        self.process = subprocess.Popen(
            [*cmd, *self.extra], cwd=ROOT, env=env, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError("the bench server exited during start")
                try:
                    got = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    if got.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    time.sleep(0.1)
        raise RuntimeError(f"the bench server did not serve within {timeout}s")

    def stop(self, remove_state: bool = True) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if remove_state:
            shutil.rmtree(self.state, ignore_errors=True)


def principals_file(path: Path, tokens: dict[str, str]) -> Path:
    """An --auth-file of admin principals, one per name, with these bearer tokens."""
    path.write_text(
        "".join(
            f'[[principal]]\nname = "{name}"\nrole = "admin"\n'
            f'token_sha256 = "{token_digest(token)}"\n\n'
            for name, token in tokens.items()
        )
    )
    return path


def bearer(token: str) -> tuple[tuple[str, str], ...] | None:
    """The metadata of a call made with this bearer token (none: "")."""
    return (("authorization", f"Bearer {token}"),) if token else None


def attach_replica(server: BenchServer) -> EmbeddedRedis:
    """A replica of the bench server's embedded store, started in a state dir of its own
    and in sync before it is returned (for `--durability replica` runs)."""
    primary = urlsplit((Path(server.state) / "redis.url").read_text().strip())
    replica = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="omnistock-replica-")), password=False)
    replica.start()
    try:
        replica.follow(primary.hostname or "127.0.0.1", primary.port or 0, primary.password or "")
    except BaseException:
        replica.stop()
        raise
    return replica
