"""`python -m bench.cluster [--nodes 3] [--replicas 0]`: a real local Redis Cluster on
loopback (each primary with that many replicas), for pointing a server or a benchmark at
(`--server-arg=--redis-url=<url>`); it prints the URL of a node and runs until interrupted.
Its data lives in a temporary directory, removed at the end."""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path

from engine.store.localcluster import LocalCluster


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--nodes", type=int, default=3, help="primaries (default 3)")
    parser.add_argument("--replicas", type=int, default=0, help="replicas of each (default 0)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="omnistock-cluster-") as state:
        cluster = LocalCluster(Path(state), size=args.nodes, replicas=args.replicas)
        cluster.start()
        print(cluster.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
