"""A Redis Cluster of 3 masters on loopback ports, for the tests (tests/conftest.py
``redis_cluster``) and the benchmarks.

Each master is a ``redis-server --cluster-enabled yes`` on a free port (its cluster bus on
port + 10000), append-only with ``appendfsync always`` in a directory of its own, so a
master restarted on the same port comes back with every acknowledged write. ``redis-cli
--cluster create … --cluster-replicas 0`` assigns the slots evenly. Every process is
stopped by its pid.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def _free_pair() -> int:
    """A port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@dataclass
class Node:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, binary: str) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", "2000", "--dir", str(self.directory),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always",
             "--maxmemory-policy", "noeviction"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1,
                           decode_responses=True)


@dataclass
class RedisCluster:
    """Three masters; ``url`` is ``redis+cluster://127.0.0.1:<first port>``."""

    directory: Path
    nodes: list[Node] = field(default_factory=list)
    binary: str = ""

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self, masters: int = 3) -> RedisCluster:
        binary = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if not binary or not cli:
            raise RuntimeError("redis-server and redis-cli must be on the PATH")
        self.binary = binary
        for n in range(masters):
            directory = self.directory / f"node{n}"
            directory.mkdir(parents=True)
            node = Node(_free_pair(), directory)
            node.start(binary)
            self.nodes.append(node)
        try:
            for node in self.nodes:
                self._wait_ping(node)
            subprocess.run(
                [cli, "--cluster", "create",
                 *(f"127.0.0.1:{node.port}" for node in self.nodes),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, capture_output=True, timeout=60)
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ping(self, node: Node, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        client = node.client()
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cluster node {node.port} did not start") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node says cluster_state:ok and knows every other node."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for node in self.nodes:
                client = node.client()
                try:
                    info = client.cluster("info")
                    states.append(info.get("cluster_state") == "ok"
                                  and int(info.get("cluster_known_nodes", 0)) == len(self.nodes))
                except redis.RedisError:
                    states.append(False)
                finally:
                    client.close()
            if all(states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def restart(self, index: int, *, down_seconds: float = 1.0, kill: bool = False) -> None:
        """Stop one master (SIGTERM: a graceful shutdown; or SIGKILL), wait, start it again
        on its port with its append-only file and nodes.conf, and wait for the cluster."""
        node = self.nodes[index]
        node.stop(kill=kill)
        time.sleep(down_seconds)
        node.start(self.binary)
        self._wait_ping(node)
        self.wait_ok()

    def flush(self) -> None:
        for node in self.nodes:
            client = node.client()
            try:
                client.flushall()
                client.script_flush()
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
