"""A real Redis Cluster on loopback, made of embedded valkey servers (engine/store/embedded.py):
for tests and benchmarks (`python -m bench.cluster`). The service itself is pointed at any
cluster by REDIS_URL; it never starts one."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.store.embedded import EmbeddedRedis


class LocalCluster:
    """A real Redis Cluster on loopback, for tests and benchmarks: `size` primaries of the
    embedded kind, sharing the 16,384 slots evenly, each with `replicas` replicas of its
    own. (The service itself is pointed at any cluster by REDIS_URL; it never starts one.)"""

    SLOTS = 16384

    def __init__(self, state_dir: Path, size: int = 3, replicas: int = 0) -> None:
        self.size = size
        self.nodes = [
            # a local test cluster: no password (its nodes would need masterauth and more)
            EmbeddedRedis(state_dir / f"node-{i}", cluster=True, password=False)
            for i in range(size * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def primaries(self) -> list[EmbeddedRedis]:
        """The nodes started as primaries, node i with the slots of the i-th share."""
        return self.nodes[: self.size]

    def replicas_of(self, i: int) -> list[EmbeddedRedis]:
        return self.nodes[self.size + i :: self.size]

    def start(self, timeout: float = 60.0) -> None:
        import redis

        for node in self.nodes:
            node.start()
        clients = [
            redis.Redis(port=node.port, socket_timeout=5, decode_responses=True)
            for node in self.nodes
        ]
        try:
            for i, client in enumerate(clients[: self.size]):
                if int(client.cluster("info")["cluster_slots_assigned"]) == 0:  # a new node
                    lo, hi = i * self.SLOTS // self.size, (i + 1) * self.SLOTS // self.size - 1
                    client.cluster("ADDSLOTSRANGE", lo, hi)
            for node in self.nodes[1:]:
                meet = ("MEET", "127.0.0.1", node.port, node.cluster_port)
                clients[0].cluster(*meet)
            self._wait_ok(clients, timeout)
            self._replicate(clients, timeout)
        finally:
            for client in clients:
                client.close()

    def _replicate(self, clients: list[Any], timeout: float) -> None:
        """Makes each replica node follow its primary (unless it does already) and waits
        until every one is in sync."""
        for i in range(self.size):
            primary = clients[i].cluster("myid")
            for replica in self.replicas_of(i):
                client = clients[self.nodes.index(replica)]
                if client.info("replication")["role"] != "slave":
                    client.cluster("REPLICATE", primary)
        for i in range(self.size):
            for replica in self.replicas_of(i):
                _wait_for(replica.in_sync, timeout, f"replica {replica.port} in sync")

    def _wait_ok(self, clients: list[Any], timeout: float) -> None:
        deadline, infos = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            infos = [client.cluster("info") for client in clients]
            if all(
                info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == len(clients)
                for info in infos
            ):
                return
            time.sleep(0.1)
        seen = [
            (node.port, info["cluster_state"], info["cluster_known_nodes"])
            for node, info in zip(self.nodes, infos, strict=True)
        ]
        raise RuntimeError(f"local cluster not ready after {timeout}s: (port, state, known) {seen}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _wait_for(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout}s: {what}")
        time.sleep(0.05)
