"""`vestnik wrap alert.toml`: run one alert program and keep it running.

Three cooperating tasks per run of the alert, the first to fail ends the run:

- main (this module): start the alert in its own process group, watch its exit, its
  heartbeat and our stop signal; restart per policy with exponential backoff; report a
  crash loop once to the admins; on SIGTERM/SIGINT close stdin, wait `grace`, kill.
- alert watcher (`notice_writer.NoticeWriter`): stdout → notices in `vn:notices`.
- notify watcher (`feed.Feed` + `pump`): snapshot and live settings and entities →
  the coalescing mailbox → stdin.

stderr is logged line by line under the alert's name. Exit codes: see EXIT_*.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from vestnik.streams import logs
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.keys import Keys
from vestnik.streams.ops_http import flag_check, redis_check, serve_ops
from vestnik.streams.redis import RETRYABLE, connect, redacted, wait_ready
from vestnik.streams.schemas import IN_APP, ChannelMap, ChannelTarget, NoticeIn, notice_fields
from vestnik.wrapper.config import AlertConfig
from vestnik.wrapper.feed import Feed, SettingsView
from vestnik.wrapper.lines import LineSplitter, Oversized
from vestnik.wrapper.metrics import LINES_OUT, RESTARTS, STDERR_LINES, UP
from vestnik.wrapper.notice_writer import NoticeWriter
from vestnik.wrapper.protocol import encode
from vestnik.wrapper.stdin_queue import StdinQueue

log = logging.getLogger("vestnik.wrapper")

EXIT_OK = 0  # the alert ended with 0 and is not restarted, or we were stopped in time
EXIT_ALERT_FAILED = 1  # the alert failed and the restart policy says not to restart it
EXIT_CONFIG = 2  # bad alert.toml (raised as ConfigError; the CLI exits 2)
EXIT_REDIS = 3  # Redis unreachable at start
EXIT_KILLED = 4  # stopped by a signal; the alert outlived the grace period and was killed

LEVELS = {b"E!": logging.ERROR, b"W!": logging.WARNING, b"I!": logging.INFO, b"D!": logging.DEBUG}
STDIN_BATCH = 512
STDERR_MAX = 16 * 1024
# the only variables an alert inherits unasked; everything else (VESTNIK_*, Redis URLs,
# tokens, cloud credentials) only when its alert.toml lists it under `env`
INHERITED = ("PATH", "HOME", "LANG", "TZ")


def kit_folder(tmp: Path) -> str:
    """A folder from which any python3 imports `vestnik.wrapper.kit` (stdlib only): a copy
    of the kit under `vestnik/wrapper/`, and nothing else of this process's packages. The
    folder above this package would not do: in a source checkout `wrapper/` is not inside
    `vestnik/` (the wheel maps it there), and in a venv it would hand the alert all of
    site-packages."""
    pkg = tmp / "vestnik" / "wrapper"
    pkg.mkdir(parents=True)
    (tmp / "vestnik" / "__init__.py").write_bytes(b"")
    (pkg / "__init__.py").write_bytes(b"")
    shutil.copyfile(Path(__file__).resolve().parent / "kit.py", pkg / "kit.py")
    return str(tmp)


def version() -> str:
    try:
        from importlib.metadata import version as dist_version

        return dist_version("vestnik")
    except Exception:  # not installed as a distribution: it still runs
        return "0"


@dataclass
class RunEnd:
    code: int | None  # the alert's exit status (negative: killed by that signal)
    reason: str  # exited | hung | stopped | feed-failed | spawn-failed
    seconds: float
    killed: bool = False  # we had to SIGKILL it after the grace period


class Wrapper:
    def __init__(self, cfg: AlertConfig, *, env: dict[str, str] | None = None,
                 metrics_port: int | None = None, metrics_host: str = "127.0.0.1",
                 redis_timeout: float = 30.0) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.keys = Keys.of(cfg)
        self.base_env = dict(os.environ if env is None else env)
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.redis_timeout = redis_timeout
        self.version = version()
        self.stop = asyncio.Event()
        self.failures = 0
        self.notified = False
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=10)
        self.log = logging.getLogger(f"vestnik.alert.{cfg.name}")
        self.redis: Redis | None = None
        self.writer: NoticeWriter | None = None
        self.kit_path = ""  # set by run(): see kit_folder
        self.alert_up = False  # readiness (/readyz): the alert process runs

    # entry --------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        server = None
        kit = tempfile.TemporaryDirectory(prefix="vestnik-kit-")
        self.kit_path = kit_folder(Path(kit.name))
        try:
            self.redis = connect(self.cfg.redis_url or "", name=f"vestnik-wrap-{self.name}",
                                 timeout=self.cfg.redis_timeout or 2.0)
            if self.metrics_port is not None:
                checks = {"redis": redis_check(self.redis),
                          "alert": flag_check(lambda: self.alert_up, "not running")}
                try:
                    server = await serve_ops(self.metrics_host, self.metrics_port, checks)
                except OSError as e:
                    log.error("%s: metrics port %d: %s", self.name, self.metrics_port, e)
                    return EXIT_CONFIG
            ready = asyncio.create_task(wait_ready(self.redis, timeout=self.redis_timeout))
            stopped = asyncio.create_task(self.stop.wait())
            await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not ready.done():  # a signal while Redis is still away: nothing was started
                ready.cancel()
                return EXIT_OK
            try:
                ready.result()
            except RETRYABLE as e:
                log.error("%s: Redis at %s unreachable: %s", self.name,
                          redacted(self.cfg.redis_url or ""), e)
                return EXIT_REDIS
            return await self._supervise()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if server is not None:
                server.close()
            if self.redis is not None:
                await self.redis.aclose()
            kit.cleanup()

    def _on_signal(self, sig: int) -> None:
        if not self.stop.is_set():
            log.info("%s: %s: stopping the alert (grace %.3gs)", self.name,
                     signal.Signals(sig).name, self.cfg.grace)
        self.stop.set()

    async def _supervise(self) -> int:
        policy = self.cfg.restart
        while True:
            end = await self._run_once()
            if self.stop.is_set():
                return EXIT_KILLED if end.killed else EXIT_OK
            failed = end.reason != "exited" or end.code != 0
            if policy.policy == "never" or (policy.policy == "on-failure" and not failed):
                log.info("%s: alert %s with %s; not restarting (policy %s)", self.name,
                         end.reason, end.code, policy.policy)
                return EXIT_ALERT_FAILED if failed else EXIT_OK
            if failed:
                self.failures += 1
                if self.failures >= policy.crash_loop and not self.notified:
                    await self._crash_loop(end)
                delay = min(policy.backoff_min * 2 ** (self.failures - 1), policy.backoff_max)
            else:
                delay = policy.backoff_min
            RESTARTS.labels(self.name, end.reason if failed else "exited-0").inc()
            log.warning("%s: alert %s (code %s) after %.2fs; restart %d in %.2fs", self.name,
                        end.reason, end.code, end.seconds, self.failures, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
            if self.stop.is_set():
                return EXIT_OK

    # one run of the alert --------------------------------------------------------------
    def _child_env(self) -> dict[str, str]:
        """A clean environment: the alert must not see the wrapper's secrets (its Redis
        URL, service tokens, a cloud role's keys) unless its alert.toml hands them over."""
        base, listed = self.base_env, self.cfg.env
        env = {k: base[k] for k in INHERITED if k in base}
        if isinstance(listed, list):
            env.update({k: base[k] for k in listed if k in base})
        else:
            env.update(listed)
        env["VESTNIK_ALERT"] = self.name
        env.setdefault("PYTHONUNBUFFERED", "1")
        # the optional Python kit (`from vestnik.wrapper.kit import Alert`) is importable by
        # any python3 the alert uses, without installing Vestnik there
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{path}{os.pathsep}{self.kit_path}" if path else self.kit_path
        log.debug("%s: the alert's environment: %s (values not logged)", self.name,
                  ", ".join(sorted(env)))
        return env

    async def _run_once(self) -> RunEnd:
        assert self.redis is not None
        cfg = self.cfg
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *cfg.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=cfg.cwd, env=self._child_env(),
                start_new_session=True, limit=1024 * 1024, preexec_fn=_die_with_parent)
        except OSError as e:
            log.error("%s: cannot start %s: %s", self.name, cfg.command, e)
            self.stderr_tail.append(f"cannot start: {e}")
            return RunEnd(None, "spawn-failed", 0.0)
        log.info("%s: started pid %d: %s", self.name, proc.pid, " ".join(cfg.command))
        UP.labels(self.name).set(1)
        self.alert_up = True
        assert proc.stdin and proc.stdout and proc.stderr
        view = SettingsView(self.name)
        mailbox = StdinQueue(cfg.queue_size)
        writer = self.writer = NoticeWriter(cfg, self.redis, self.keys, view)
        feed = Feed(cfg, self.redis, self.keys, view, mailbox, self.version)
        tasks = {
            "writer": asyncio.create_task(writer.run(proc.stdout), name=f"{self.name}-stdout"),
            "stderr": asyncio.create_task(self._stderr(proc.stderr), name=f"{self.name}-stderr"),
            "feed": asyncio.create_task(feed.run(), name=f"{self.name}-feed"),
            "pump": asyncio.create_task(pump(self.name, mailbox, proc.stdin),
                                        name=f"{self.name}-stdin"),
        }
        exited = asyncio.create_task(proc.wait())
        stopping = asyncio.create_task(self.stop.wait())
        reason, killed = "exited", False
        try:
            while True:
                hb = writer.heartbeat
                timeout = min(0.25, hb / 4) if hb else 0.5
                watch = {exited, stopping, tasks["feed"]}
                if not tasks["writer"].done():  # an alert may close stdout and keep running
                    watch.add(tasks["writer"])
                await asyncio.wait(watch, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if exited.done():
                    break
                if stopping.done():
                    reason = "stopped"
                    killed = await self._terminate(proc, exited, tasks["pump"], cfg.grace)
                    break
                feed_task = tasks["feed"]
                if feed_task.done():
                    err = feed_task.exception()
                    if err is None:
                        raise RuntimeError("notify watcher ended")  # a bug: it never returns
                    if not isinstance(err, RETRYABLE):
                        raise err
                    log.error("%s: cannot read settings and entities: %s", self.name, err)
                    reason = "feed-failed"
                    await self._terminate(proc, exited, tasks["pump"], 0)
                    break
                writer_task = tasks["writer"]
                if writer_task.done() and writer_task.exception() is not None:
                    raise writer_task.exception()  # type: ignore[misc]
                if hb and writer.silent_for() > hb:
                    log.error("%s: no output for %.1fs (heartbeat %.3gs): restarting a hung "
                              "alert", self.name, writer.silent_for(), hb)
                    reason = "hung"
                    await self._terminate(proc, exited, tasks["pump"], 0)
                    break
                if self.failures and time.monotonic() - started >= cfg.restart.stable_after:
                    log.warning("%s: alert recovered: up %.1fs after %d failed runs",
                                self.name, time.monotonic() - started, self.failures)
                    self.failures, self.notified = 0, False
        finally:
            UP.labels(self.name).set(0)
            self.alert_up = False
            _killpg(proc.pid)  # whatever the alert left in its group goes with it
            if not exited.done():
                await exited
            stopping.cancel()
            for name in ("feed", "pump"):
                tasks[name].cancel()
            # the rest of stdout and stderr: EOF now that the whole group is gone
            _, pending = await asyncio.wait({tasks["writer"], tasks["stderr"]}, timeout=10)
            for t in pending:
                t.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            if proc.stdin is not None:
                proc.stdin.close()
        code = proc.returncode
        log.log(logging.INFO if reason == "stopped" or code == 0 else logging.WARNING,
                "%s: alert pid %d ended (%s, exit %s)", self.name, proc.pid, reason, code)
        return RunEnd(code, reason, time.monotonic() - started, killed)

    async def _terminate(self, proc: asyncio.subprocess.Process, exited: asyncio.Task,
                         pump_task: asyncio.Task, grace: float) -> bool:
        """Close stdin (EOF: the alert's cue to finish), wait `grace`, then kill the group.
        Returns True when the kill was needed."""
        pump_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump_task
        if proc.stdin is not None:
            proc.stdin.close()
        if grace > 0:
            try:
                await asyncio.wait_for(asyncio.shield(exited), grace)
                return False
            except TimeoutError:
                log.warning("%s: alert still running %.3gs after stdin closed; killing it",
                            self.name, grace)
        _killpg(proc.pid)
        await exited
        return True

    async def _stderr(self, stderr: asyncio.StreamReader) -> None:
        """The alert's log: one record per line under its name, `E!`/`W!`/`I!`/`D!` level."""
        splitter = LineSplitter(STDERR_MAX)
        logger = self.log
        while True:
            chunk = await stderr.read(65536)
            for _, line in splitter.feed(chunk) if chunk else splitter.end():
                if isinstance(line, Oversized):
                    line = line.sample + b"... (%d bytes)" % line.size
                level = LEVELS.get(line[:2], logging.INFO)
                text = line[2:].lstrip() if line[:2] in LEVELS else line
                msg = text.decode(errors="replace").rstrip()
                STDERR_LINES.labels(self.name, logging.getLevelName(level).lower()).inc()
                self.stderr_tail.append(msg)
                logger.log(level, "%s", msg)
            if not chunk:
                return

    async def _crash_loop(self, end: RunEnd) -> None:
        """One notice per crash loop (and a dedup key, should two wrappers race)."""
        self.notified = True
        cfg = self.cfg
        tail = list(self.stderr_tail)[-5:]
        log.error("%s: crash loop: %d failed runs in a row (last exit %s)", self.name,
                  self.failures, end.code)
        if not cfg.admins:
            log.error("%s: no admins configured to tell about the crash loop", self.name)
            return
        body = (f"{self.failures} failed runs in a row, the last one ended with exit code "
                f"{end.code} after {end.seconds:.1f}s. The wrapper keeps restarting it with "
                f"backoff up to {cfg.restart.backoff_max:g}s.")
        if tail:
            body += "\n\nLast stderr lines:\n" + "\n".join(tail)
        created = now_ms()
        notice = NoticeIn(
            alert=self.name, id=ulid(created), created_at=created, severity="critical",
            title=f"Alert {self.name} is crash-looping", body=body,
            recipients=list(cfg.admins),
            channels=ChannelMap({IN_APP: ChannelTarget(users=tuple(cfg.admins))}),
            dedup_key=f"wrapper:{self.name}:crash-loop",
            data={"failures": self.failures, "exit_code": end.code, "command": cfg.command},
        )
        assert self.redis is not None
        try:
            stream = self.keys.ingest_stream(
                self.keys.ingest_partition(notice.alert, notice.dedup_key))
            await self.redis.xadd(stream, notice_fields(notice))
        except RETRYABLE as e:
            log.error("%s: cannot send the crash-loop notice: %s", self.name, e)


async def pump(name: str, mailbox: StdinQueue, stdin: asyncio.StreamWriter) -> None:
    """StdinQueue → stdin in batches; `drain()` is the backpressure."""
    counters: dict[str, object] = {}
    buf = bytearray()
    while True:
        msgs = await mailbox.get_batch(STDIN_BATCH)
        buf.clear()
        kinds: dict[str, int] = {}
        for m in msgs:
            buf += encode(m)
            buf += b"\n"
            tag = type(m).__struct_config__.tag  # type: ignore[attr-defined]
            kinds[tag] = kinds.get(tag, 0) + 1
        try:
            stdin.write(bytes(buf))
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            log.info("%s: the alert closed its stdin", name)
            return
        for tag, n in kinds.items():
            c = counters.get(tag)
            if c is None:
                c = counters[tag] = LINES_OUT.labels(name, tag)
            c.inc(n)  # type: ignore[attr-defined]


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _die_with_parent() -> None:
    """In the child: SIGKILL when the wrapper dies, even by SIGKILL (Linux prctl)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        except OSError:
            pass


def run(cfg: AlertConfig, *, metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1") -> int:
    """Run the wrapper until it is stopped or the alert ends for good; the exit code.
    `metrics_port`: serve /healthz, /readyz and /metrics there. Every line it logs, the
    alert's stderr included, carries `alert`; its Redis password is masked in them."""
    logs.add_secrets(logs.url_secrets(cfg.redis_url))
    wrapper = Wrapper(cfg, metrics_port=metrics_port, metrics_host=metrics_host)
    with logs.context(alert=cfg.name):  # the loop's tasks copy this context
        try:
            import uvloop

            return uvloop.run(wrapper.run())
        except ImportError:
            return asyncio.run(wrapper.run())
