"""What the tests that start a local cluster of their own share: the cluster, stopped and
cleaned up after, and names chosen by the node their slot lives on."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from redis.crc import key_slot

from engine.store.localcluster import LocalCluster


@contextlib.contextmanager
def local_cluster(state_dir: Path, replicas: int = 0) -> Iterator[LocalCluster]:
    """A started cluster of three primaries; afterwards every node is thawed (a test may
    have frozen one) and stopped, and the connections redis-py dropped are collected."""
    made = LocalCluster(state_dir, replicas=replicas)
    made.start()
    try:
        yield made
    finally:
        for node in made.nodes:
            with contextlib.suppress(ProcessLookupError, OSError):
                os.kill(node.pid, signal.SIGCONT)
        made.stop()
        forget_dropped_connections()


def forget_dropped_connections() -> None:
    """redis-py's cluster client, finding a node gone, maps the cluster again and drops its
    old node objects with their connections open: collected here, their complaints are not
    this suite's (they would surface as unraisable warnings at the end of the session)."""
    complaints: list[object] = []
    before = sys.unraisablehook
    sys.unraisablehook = complaints.append
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
    finally:
        sys.unraisablehook = before


def on_node(cluster: LocalCluster, index: int, key: str) -> bool:
    """Whether `key` hashes into the slots LocalCluster gave its primary `index`."""
    size = cluster.size
    lo, hi = index * LocalCluster.SLOTS // size, (index + 1) * LocalCluster.SLOTS // size - 1
    return lo <= key_slot(key.encode()) <= hi


def named(prefix: str, fits: Callable[[str], bool], count: int) -> list[str]:
    """The first `count` names `prefix<n>` that fit."""
    return [n for n in (f"{prefix}{i}" for i in range(10_000)) if fits(n)][:count]
