"""Start and stop a private `redis-server` on a free port (for `vestnik up`, tests, bench)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A `redis-server` child process with its data in `data_dir` (AOF on by default).

    `restart()` keeps the port and the data, so clients reconnect to the same URL.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        extra: list[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        return [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "redis.log"),
            "--maxclients", "20000",
            *self.extra,
        ]

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # own session (a Ctrl-C in our terminal is ours to handle), dies with us (prctl)
        self.proc = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {log}")
            if self._answers_ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, as in a crash."""
        self.stop(signal.SIGKILL)

    def restart(self, *, kill: bool = False) -> None:
        self.stop(signal.SIGKILL if kill else signal.SIGTERM)
        self.start()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, even by SIGKILL (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` every 50 ms until it is true; RuntimeError naming `what` after
    `timeout` seconds (a deployment's start and failovers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class SentinelDeployment:
    """A primary, its replicas and the sentinels watching them, all on free loopback ports
    (tests/faults, `vestnik soak --sentinel`): `url` is the `redis+sentinel://` address
    every Vestnik process takes. Failover is tuned fast (primary down after
    `down_after_ms`), so a test sees one in seconds."""

    def __init__(self, data_dir: str | Path, *, replicas: int = 2, sentinels: int = 3,
                 name: str = "vestnik", down_after_ms: int = 1000,
                 appendfsync: str = "everysec") -> None:
        base = Path(data_dir).resolve()
        self.name = name
        self.down_after_ms = down_after_ms
        self.servers = [RedisServer(base / f"redis-{i}", appendfsync=appendfsync)
                        for i in range(1 + replicas)]
        self.sentinel_dirs = [base / f"sentinel-{i}" for i in range(sentinels)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinel_procs: list[subprocess.Popen[bytes] | None] = [None] * sentinels

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{nodes}/{self.name}/0"

    def start(self, timeout: float = 15.0) -> SentinelDeployment:
        primary = self.servers[0].start()
        # replicas sync at once (the default waits 5 s for more replicas to share a dump)
        if _ask(primary.port, "CONFIG", "SET", "repl-diskless-sync-delay", "0") is None:
            raise RuntimeError("the primary does not answer")
        for replica in self.servers[1:]:
            replica.extra = [*replica.extra, "--replicaof", "127.0.0.1", str(primary.port)]
            replica.start()
        # a replica that has not finished its first sync would be promoted empty
        _wait_for(self._replicas_synced, timeout, "the replicas' first sync")
        quorum = len(self.sentinel_ports) // 2 + 1
        for i, port in enumerate(self.sentinel_ports):
            d = self.sentinel_dirs[i]
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "sentinel.conf"  # sentinel rewrites its file: one of its own
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\nlogfile {d / 'sentinel.log'}\n"
                f"sentinel monitor {self.name} 127.0.0.1 {primary.port} {quorum}\n"
                f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.name} {max(self.down_after_ms * 3, 3000)}\n"
                f"sentinel parallel-syncs {self.name} 1\n")
            self.start_sentinel(i)
        _wait_for(lambda: self._sentinels_agree(), timeout, "sentinels to see the primary")
        return self

    def start_sentinel(self, i: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.sentinel_procs[i] = subprocess.Popen(
            [binary, str(self.sentinel_dirs[i] / "sentinel.conf"), "--sentinel"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent)

    def primary_port(self) -> int | None:
        """The primary's port as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            found = self.primary_port_of(port)
            if found is not None:
                return found
        return None

    def primary(self) -> RedisServer:
        port = self.primary_port()
        return next(s for s in self.servers if s.port == port)

    def _replicas_synced(self) -> bool:
        for replica in self.servers[1:]:
            info = _ask(replica.port, "INFO", "replication")  # parsed into a dict
            if not isinstance(info, dict) or info.get("master_link_status") != "up":
                return False
        return True

    def _sentinels_agree(self) -> bool:
        want = len(self.servers) - 1
        return all(self.primary_port_of(p) == self.servers[0].port
                   and len(_ask(p, "SENTINEL", "REPLICAS", self.name) or []) == want
                   for p in self.sentinel_ports)


    def wait_failover(self, old: int, timeout: float = 30.0) -> int:
        """Wait until every sentinel names a primary other than port `old`; its port."""
        def moved() -> bool:
            seen = {self.primary_port_of(p) for p in self.sentinel_ports}
            return len(seen) == 1 and None not in seen and old not in seen
        _wait_for(moved, timeout, "a failover")
        port = self.primary_port()
        assert port is not None
        return port

    def primary_port_of(self, sentinel_port: int) -> int | None:
        reply = _ask(sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        return int(reply[1]) if reply and len(reply) == 2 else None

    def stop(self) -> None:
        for i, proc in enumerate(self.sentinel_procs):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            self.sentinel_procs[i] = None
        for server in self.servers:
            server.stop()

    def __enter__(self) -> SentinelDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _low_port(tries: int = 100) -> int:
    """A free port a cluster node may take: Redis refuses one above 55535 (its bus port
    would be 10000 above)."""
    for _ in range(tries):
        port = free_port()
        if port <= 55535:
            return port
    raise RuntimeError("no free port at or below 55535 for a cluster node")


class ClusterDeployment:
    """A Redis Cluster of `masters` masters (and `replicas` replicas each) on free loopback
    ports (tests with `--redis-cluster`, `vestnik bench --redis-cluster N`): `url` is the
    `redis+cluster://` address every Vestnik process takes. The slots are spread by
    `redis-cli --cluster create`, as an operator would; `start` returns once every node
    says `cluster_state:ok`, so the first command of a test never meets CLUSTERDOWN.
    Failover is tuned fast (`node_timeout_ms`)."""

    def __init__(self, data_dir: str | Path, *, masters: int = 3, replicas: int = 0,
                 node_timeout_ms: int = 1000, appendfsync: str = "everysec") -> None:
        if masters < 3:
            raise ValueError("masters: redis-cli --cluster create needs at least 3")
        base = Path(data_dir).resolve()
        self.masters = masters
        self.replicas = replicas
        self.servers: list[RedisServer] = []
        for i in range(masters * (1 + replicas)):
            d = base / f"node-{i}"
            self.servers.append(RedisServer(d, port=_low_port(), appendfsync=appendfsync,
                                            extra=[
                "--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf"),
                "--cluster-port", str(free_port()),
                "--cluster-node-timeout", str(node_timeout_ms),
                # replicas sync at once (the default waits 5 s for more to share a dump)
                "--repl-diskless-sync-delay", "0"]))

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{s.port}" for s in self.servers[:self.masters])
        return f"redis+cluster://{nodes}"

    def start(self, timeout: float = 30.0) -> ClusterDeployment:
        try:
            for server in self.servers:
                server.start()
            cli = shutil.which("redis-cli")
            if cli is None:
                raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
            made = subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in self.servers),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
            if made.returncode != 0:
                raise RuntimeError("redis-cli --cluster create failed: "
                                   + made.stdout.decode(errors="replace")[-2000:])
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node says `cluster_state:ok` (after start, or a node's pause)."""
        _wait_for(self._ready, timeout, "cluster_state:ok on every node")

    def _ready(self) -> bool:
        """Every node says the cluster is ok and knows every other node, and every replica
        has finished its first sync (a WAIT before that would count none)."""
        for server in self.servers:
            info = _ask(server.port, "CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info or "")
            if ("cluster_state:ok" not in text
                    or f"cluster_known_nodes:{len(self.servers)}" not in text):
                return False
            replication = _ask(server.port, "INFO", "replication")
            if not isinstance(replication, dict) or (
                    replication.get("role") == "slave"
                    and replication.get("master_link_status") != "up"):
                return False
        return True

    def primary_of(self, key: str) -> RedisServer:
        """The running master that serves `key`'s slot now (the others answer MOVED)."""
        for server in self.servers:
            if server.proc is not None and _ask(server.port, "EXISTS", key) is not None:
                return server
        raise RuntimeError(f"no running master serves {key!r}")

    def wait_failover(self, old: int, key: str, timeout: float = 30.0) -> int:
        """Wait until a replica took over `key`'s slot from the master on port `old` and
        every running node says `cluster_state:ok`; the new master's port."""
        def moved() -> bool:
            for server in self.servers:
                if server.proc is None:
                    continue
                info = _ask(server.port, "CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info or "")
                if "cluster_state:ok" not in text:
                    return False
            try:
                return self.primary_of(key).port != old
            except RuntimeError:
                return False
        _wait_for(moved, timeout, f"a replica to take over {key!r}")
        return self.primary_of(key).port

    def master_ports(self) -> list[int]:
        """The ports of the nodes that are masters now (after a failover: promoted ones)."""
        ports = []
        for server in self.servers:
            if server.proc is None:
                continue
            info = _ask(server.port, "INFO", "replication")
            if isinstance(info, dict) and info.get("role") == "master":
                ports.append(server.port)
        return ports

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> ClusterDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ask(port: int, *command: str) -> Any:
    """One command to the server or sentinel at 127.0.0.1:`port` (None when it does not
    answer)."""
    import redis

    client = redis.Redis(port=port, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        return client.execute_command(*command)
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
