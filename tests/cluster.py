"""A Redis Cluster of the test's own: ``redis-server`` processes in cluster mode (Debian's
``redis-server`` package), on free loopback ports, in a temporary directory.

``LocalCluster(root).start()`` starts the nodes, joins them with ``redis-cli --cluster
create ... --cluster-replicas 1`` (the first third of the nodes become masters), and waits
until every node says ``cluster_state:ok``, knows every other, and every replica's link
to its master is up. ``cluster-node-timeout`` is short (1 s by default), so a master
killed with :meth:`LocalCluster.kill` is replaced by its replica within a few seconds.
:meth:`LocalCluster.stop` kills every node. Nothing here sleeps to synchronise: it polls
with a deadline.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

HOST = "127.0.0.1"
REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
MISSING = (
    None
    if REDIS_SERVER and REDIS_CLI
    else "redis-server and redis-cli (Debian's redis-server package) are not installed: "
    "no Redis Cluster to test against"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def poll(check: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    """Return once ``check()`` is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what()}")
        time.sleep(0.05)


class PortTaken(AssertionError):
    """A node could not listen: its port was taken between choosing it and starting."""


@dataclass
class Node:
    """One ``redis-server`` of the cluster."""

    port: int
    bus_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(HOST, self.port, socket_timeout=5, socket_connect_timeout=5)

    def log(self, since: int = 0) -> str:
        """The end of its log (of what it logged past byte ``since``)."""
        path = self.dir / "redis.log"
        return path.read_bytes()[since:].decode(errors="replace")[-4000:] if path.exists() else ""

    def log_size(self) -> int:
        path = self.dir / "redis.log"
        return path.stat().st_size if path.exists() else 0


class LocalCluster:
    """See the module docstring."""

    def __init__(self, root: Path, nodes: int = 6, replicas: int = 1, node_timeout: int = 1000):
        assert MISSING is None, MISSING
        self.replicas = replicas
        self.node_timeout = node_timeout
        self.nodes = []
        for i in range(nodes):
            directory = root / f"node{i}"
            directory.mkdir(parents=True)
            self.nodes.append(Node(free_port(), free_port(), directory))

    @property
    def url(self) -> str:
        """Any node's URL: the first one's (a relay finds the others by itself)."""
        return self.nodes[0].url

    def start(self) -> LocalCluster:
        for node in self.nodes:
            for attempt in range(5):
                try:
                    self.start_node(node)
                    break
                except PortTaken:  # someone took the free port meanwhile: another one
                    if attempt == 4:
                        raise
                    node.port, node.bus_port = free_port(), free_port()
        addresses = [n.address for n in self.nodes]
        assert REDIS_CLI is not None
        created = subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        self.wait_healthy()
        return self

    def start_node(self, node: Node) -> None:
        """Start (or start again, after :meth:`kill`) one node, and wait until it answers."""
        assert REDIS_SERVER is not None
        assert node.proc is None or node.proc.poll() is not None
        logged = node.log_size()
        args = ["--port", str(node.port), "--bind", HOST, "--dir", str(node.dir)]
        args += ["--cluster-enabled", "yes", "--cluster-port", str(node.bus_port)]
        args += ["--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", str(self.node_timeout)]
        args += ["--save", "", "--appendonly", "no", "--logfile", "redis.log"]
        # Replicas sync at once (not after 5 s), and show in CLUSTER SLOTS within a second:
        # Redis 7 lists a replica once its replication offset moved, which the master's
        # pings do every repl-ping-replica-period (10 s by default) when nothing is written.
        args += ["--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1"]
        node.proc = subprocess.Popen(
            [REDIS_SERVER, *args],
            cwd=node.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def answers() -> bool:
            assert node.proc is not None
            if node.proc.poll() is not None:
                text = node.log(logged)
                if "Address already in use" in text:
                    raise PortTaken(text)
                raise AssertionError(f"redis-server on {node.port} exited:\n{text}")
            with contextlib.suppress(redis.RedisError), node.client() as client:
                return bool(client.ping())
            return False

        poll(answers, 30, lambda: f"redis-server on {node.port}: {node.log()}")

    def kill(self, node: Node) -> None:
        """SIGKILL: the node is gone at once, as in a crash."""
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait(timeout=30)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(timeout=30)

    def alive(self) -> list[Node]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def masters(self) -> list[Node]:
        """The live nodes that are masters now (as each says of itself)."""
        found = []
        for node in self.alive():
            with node.client() as client:
                if client.info("replication").get("role") == "master":
                    found.append(node)
        return found

    def master_of(self, key: str) -> Node:
        """The node that owns ``key``'s slot now (as the first live node's map says)."""
        with self.alive()[0].client() as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no master owns the slot of {key!r}")

    def wait_healthy(self, timeout: float = 60) -> None:
        """Every live node says the cluster is ok and agrees on its masters, each with as
        many replicas as asked and their links up."""
        last: list[str] = []

        def healthy() -> bool:
            last.clear()
            alive = self.alive()
            masters = len(alive) // (self.replicas + 1)
            for node in alive:
                try:
                    with node.client() as client:
                        info = client.cluster("info")
                        slots = client.execute_command("CLUSTER", "SLOTS")
                        role = client.info("replication")
                except redis.RedisError as exc:
                    last.append(f"{node.port}: {exc}")
                    return False
                state = (info.get("cluster_state"), int(info.get("cluster_known_nodes", 0)))
                owners = {int(entry[2][1]) for entry in slots}
                replicas = {len(entry) - 3 for entry in slots}
                link = role.get("master_link_status", "up")
                if state != ("ok", len(self.nodes)) or len(owners) != masters:
                    last.append(f"{node.port}: {state}, masters {sorted(owners)}")
                    return False
                if replicas != {self.replicas} or link != "up":
                    last.append(f"{node.port}: replicas {replicas}, link {link}")
                    return False
            return True

        poll(healthy, timeout, lambda: f"a healthy cluster: {last}")
