"""Redis with a replica and three sentinels on loopback, for the failover tests and the
benchmark's replica scenario: a primary, a replica and three sentinels, each in its own
directory under the stack's work directory, on free ports.

Each redis-server runs without persistence, as the tests' single Redis does, and without
min-replicas-to-write: smsq's own WAIT (SMSQ_REDIS_MIN_REPLICAS) is what is tested.
"""

from __future__ import annotations

import signal
from pathlib import Path

import redis

from ops.stack import START_TIMEOUT_S, Proc, RedisServer, StackError, free_port, wait_for

MASTER_NAME = "smsq"
# Sentinels call a primary down after this long without an answer, and agree in 2 of 3.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


class Sentinel:
    """One redis-server --sentinel on a free port, watching MASTER_NAME."""

    def __init__(self, workdir: Path, number: int, primary_port: int) -> None:
        self.dir = workdir / f"sentinel-{number}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = self.dir / "sentinel.conf"
        # Sentinel rewrites its file as it learns the topology: it must be its own.
        self.conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f'dir "{self.dir}"\n'
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self.proc: Proc | None = None

    def start(self) -> Sentinel:
        argv = ["redis-server", str(self.conf), "--sentinel"]
        self.proc = Proc("sentinel", argv, {}, self.dir / "sentinel.log").start()
        client = redis.Redis(port=self.port)
        try:
            wait_for(lambda: bool(client.ping()), START_TIMEOUT_S, "a sentinel")
        finally:
            client.close()
        return self

    def primary(self) -> tuple[str, int] | None:
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            found = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        finally:
            client.close()
        return (found[0], int(found[1])) if found else None

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


class RedisHA:
    """A primary, a replica and three sentinels; kill_primary() and bring_back() act out a
    failover and the old primary's return."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.primary = RedisServer(workdir / "primary")
        self.replica = RedisServer(
            workdir / "replica", extra=["--replicaof", "127.0.0.1", str(self.primary.port)]
        )
        self.sentinels = [Sentinel(workdir, n, self.primary.port) for n in range(3)]
        self.old_primary: RedisServer | None = None

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, self.replica]

    def start(self) -> RedisHA:
        self.primary.start()
        self.replica.start()
        wait_for(lambda: self._replica_online(self.primary), START_TIMEOUT_S, "the replica")
        for sentinel in self.sentinels:
            sentinel.start()
        # Each sentinel must know the replica and the others before a failover can happen.
        wait_for(self._sentinels_ready, START_TIMEOUT_S, "the sentinels to see each other")
        return self

    def settings_env(self, min_replicas: int = 1) -> dict[str, str]:
        """The SMSQ_ variables that make smsq find the primary through the sentinels."""
        return {
            "SMSQ_REDIS_URL": "redis://127.0.0.1:6379/0",  # only its database counts here
            "SMSQ_REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels),
            "SMSQ_REDIS_MASTER_NAME": MASTER_NAME,
            "SMSQ_REDIS_MIN_REPLICAS": str(min_replicas),
        }

    def primary_port(self) -> int:
        """The primary's port as the sentinels report it."""
        for sentinel in self.sentinels:
            found = sentinel.primary()
            if found:
                return found[1]
        raise StackError("no sentinel names a primary")

    def current(self) -> RedisServer:
        port = self.primary_port()
        return next(s for s in self.servers if s.port == port)

    def kill_primary(self) -> RedisServer:
        """SIGKILL the primary (a lost host); returns it."""
        victim = self.current()
        if victim.proc:
            victim.proc.stop(signal.SIGKILL)
        self.old_primary = victim
        return victim

    def wait_for_failover(self, timeout_s: float = 30.0) -> RedisServer:
        """Until the sentinels name the other server primary and it accepts writes."""
        old = self.old_primary
        assert old is not None
        wait_for(lambda: self.primary_port() != old.port, timeout_s, "the sentinels' failover")
        new = self.current()
        client = new.client()
        try:
            wait_for(lambda: client.role()[0] == b"master", timeout_s, "the new primary")
        finally:
            client.close()
        return new

    def bring_back(self, timeout_s: float = 60.0) -> RedisServer:
        """Start the killed primary again (empty, as without persistence): the sentinels make
        it a replica of the new primary; returns once it is one and in sync. A sentinel turns
        it into a replica only after it has reported itself a primary for 8 s, and its INFO
        refresh comes every 10 s: beside other test stacks on 2 cores, once more than 30 s."""
        old = self.old_primary
        assert old is not None
        old.start()
        client = old.client()
        try:
            wait_for(
                lambda: client.role()[0] == b"slave" and client.info("replication").get(
                    "master_link_status") == "up",
                timeout_s, "the old primary to rejoin as a replica",
            )  # fmt: skip
        finally:
            client.close()
        return old

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()

    @staticmethod
    def _replica_online(server: RedisServer) -> bool:
        client = server.client()
        try:
            info = client.info("replication")
            return bool(info.get("connected_slaves")) and info["slave0"]["state"] == "online"
        finally:
            client.close()

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            client = redis.Redis(port=sentinel.port, socket_timeout=1)
            try:
                state = client.sentinel_master(MASTER_NAME)
            finally:
                client.close()
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True
