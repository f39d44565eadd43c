"""`vestnik` — one console script, one subcommand per part."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from vestnik.streams.config import Config, ConfigError, load

if TYPE_CHECKING:
    from vestnik.streams.center import Ingest

log = logging.getLogger("vestnik")

Command = Callable[[argparse.Namespace, Config], int]
COMMANDS: dict[str, tuple[Command, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help: str, args: Callable[[argparse.ArgumentParser], None] = lambda p: None
            ) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = (fn, args, help)
        return fn

    return register


def _redis_ready(config: Config, command: str, hint: str = "") -> None:
    """A long-running part's start: a Redis URL is set and Redis answers (wait_ready's
    bound, 15 x VESTNIK_REDIS_TIMEOUT); else ConfigError or RETRYABLE, one line in main."""
    from vestnik.app.cli_redis import ready

    if not config.redis_url:
        raise ConfigError(f"VESTNIK_REDIS_URL: required by `vestnik {command}`{hint}")
    asyncio.run(ready(config, command))


def _listen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="interface to listen on (VESTNIK_HOST)")
    p.add_argument("--port", type=int, help="port to listen on (VESTNIK_PORT)")


def _with_listen(args: argparse.Namespace, config: Config) -> Config:
    changes = {k: getattr(args, k) for k in ("host", "port") if getattr(args, k, None) is not None}
    return msgspec.structs.replace(config, **changes) if changes else config


def serve(config: Config) -> None:
    """Run the api in this process with uvicorn (uvloop + httptools)."""
    from vestnik.app.api import create_app
    from vestnik.app.server import make_server, run

    run(make_server(create_app(config), config).serve())


@command("api", "serve the HTTP API, SSE streams and the web pages", _listen_args)
def cmd_api(args: argparse.Namespace, config: Config) -> int:
    config = _with_listen(args, config)
    _redis_ready(config, "api", " (or use `vestnik up`)")
    serve(config)
    return 0


def _up_args(p: argparse.ArgumentParser) -> None:
    _listen_args(p)
    p.add_argument("--demo", action="store_true", help="seed demo users, VMs and an alert")


@command("up", "everything in one process, with a private Redis when none is configured",
         _up_args)
def cmd_up(args: argparse.Namespace, config: Config) -> int:
    from vestnik.app.up import run_up

    return run_up(_with_listen(args, config), demo=args.demo)


def _ops_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=int,
                   help="serve /healthz, /readyz and /metrics on this port "
                        "(VESTNIK_METRICS_PORT; unset: none)")


def _ops_port(args: argparse.Namespace, config: Config) -> int | None:
    return args.metrics_port if args.metrics_port is not None else config.metrics_port


@command("bridge", "turn Redis key changes (keyspace notifications) into topic events",
         _ops_args)
def cmd_bridge(args: argparse.Namespace, config: Config) -> int:
    from vestnik.streams.keys import Keys
    from vestnik.streams.notifier import Bridge, BridgeError
    from vestnik.streams.ops_http import flag_check, ops_listener, redis_check
    from vestnik.streams.redis import connect, wait_ready

    _redis_ready(config, "bridge")

    async def main() -> None:
        redis = connect(config.redis_url, name="vestnik-bridge", timeout=config.redis_timeout)
        bridge = Bridge(config.redis_url, redis, Keys.of(config),
                        config.keyspace_patterns, maxlen=config.topic_maxlen)
        checks = {"redis": redis_check(redis), "subscribed": flag_check(bridge.ready.is_set)}
        async with ops_listener(config.host, _ops_port(args, config), checks):
            await wait_ready(redis)
            await bridge.run()

    try:
        asyncio.run(_until_stopped("bridge", main()))
    except BridgeError as e:
        print(f"vestnik bridge: {e}", file=sys.stderr)
        return 2
    return 0


async def _until_stopped(part: str, main: Coroutine[Any, Any, None]) -> None:
    """Run `main` until SIGTERM or SIGINT cancels it: a clean stop (exit 0), as the api's
    and the center's, not a death by signal."""
    import signal

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await main
    except asyncio.CancelledError:
        log.info("%s stopped", part)


def _publish_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("topic", help="topic name: 1-100 of letters, digits, `_`, `.`, `-`")
    p.add_argument("--op", choices=["create", "update", "delete"], default="update",
                   help="what happened to the entity (default: update)")
    p.add_argument("--id", required=True, dest="entity_id", help="the entity's id")
    p.add_argument("--data", help="the whole entity as a JSON object")
    p.add_argument("--src", default="cli", help="who published it (the event's `src`)")


@command("publish", "publish one entity event to a topic", _publish_args)
def cmd_publish(args: argparse.Namespace, config: Config) -> int:
    from vestnik.streams.errors import BadInput
    from vestnik.streams.keys import Keys
    from vestnik.streams.notifier import check_topic, publish
    from vestnik.streams.redis import connect
    from vestnik.streams.schemas import TopicEvent, convert

    if not config.redis_url:
        raise ConfigError("VESTNIK_REDIS_URL: required by `vestnik publish`")
    try:
        check_topic(args.topic)
    except BadInput as e:
        raise BadInput(f"topic {args.topic!r}: {e.detail}", field="topic") from None
    data = _json_arg(args, "data")
    event = convert({"op": args.op, "id": args.entity_id, "data": data, "src": args.src},
                    TopicEvent)

    async def main() -> str:
        redis = connect(config.redis_url, name="vestnik-publish", timeout=config.redis_timeout)
        try:
            keys = Keys.of(config)
            return await publish(redis, keys, args.topic, event,
                                 maxlen=config.topic_maxlen, via="cli")
        finally:
            await redis.aclose()

    print(asyncio.run(main()))
    return 0


def _token_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", required=True, help="user id (the token's `sub`)")
    p.add_argument("--ttl", type=int, default=86400, help="seconds until it expires")
    p.add_argument("--roles", default="", help="comma-separated roles (for topic ACLs)")
    p.add_argument("--any-user", action="store_true",
                   help="issue it even if the `user` topic has records and none is this user")


@command("token", "issue a user token (JWT HS256) for development", _token_args)
def cmd_token(args: argparse.Namespace, config: Config) -> int:
    from vestnik.app.tokens import issue_token

    if config.redis_url and not args.any_user:
        from vestnik.app.cli_redis import check_user

        asyncio.run(check_user(config, args.user))
    roles = [r for r in args.roles.split(",") if r]
    print(issue_token(config, args.user, args.ttl, roles))
    return 0


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="fewer rounds and smaller loads (<2 min)")
    p.add_argument("--json", dest="json_path", help="write every figure and the machine here")
    p.add_argument("--only", action="append", default=[], help="run only B1, B2, ... (repeat)")
    p.add_argument("--peer", choices=["alertmanager"],
                   help="also run B7's load against this peer (prometheus-alertmanager)")
    p.add_argument("--redis-cluster", type=int, metavar="N",
                   help="run C1: B1's load on a local N-master Redis Cluster (N >= 3) beside "
                        "one Redis, with each master's share of the Redis CPU (with --only: "
                        "those rows too)")


@command("bench", "measure the hot paths against same-run ceilings", _bench_args)
def cmd_bench(args: argparse.Namespace, config: Config) -> int:
    try:
        from vestnik.app.bench.run import main as bench_main
    except ModuleNotFoundError as e:  # rich is the bench extra's, not a runtime dependency
        if (e.name or "").partition(".")[0] != "rich":
            raise
        print("vestnik bench: needs the bench extra (rich is not installed): "
              "pip install 'vestnik[bench]'", file=sys.stderr)
        return 2
    return bench_main(args.quick, args.only, args.json_path, args.peer, args.redis_cluster)


def _minutes(value: str) -> float:
    try:
        minutes = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 < minutes <= 24 * 60:  # (nan fails too)
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1440, not {value}")
    return minutes


def _count(low: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {n}")
        return n

    return parse


def _soak_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=_minutes, required=True,
                   help="how long the load and the faults run (a fraction is allowed: 0.5); "
                        "the stack's start, the drain and the accounting come on top")
    p.add_argument("--seed", type=_count(0),
                   help="the random seed of the faults and the load (default: a new one, "
                        "printed first); the same seed injects the same faults at the same "
                        "planned times")
    p.add_argument("--json", dest="json_path", metavar="PATH",
                   help="write the summary here: the seed, the faults with their times and "
                        "every figure of the accounting")
    p.add_argument("--users", type=_count(1), default=50,
                   help="users the load sends to (default 50)")
    p.add_argument("--sse-clients", type=_count(0), default=200,
                   help="SSE clients following the users' /me/stream (default 200)")
    p.add_argument("--sentinel", action="store_true",
                   help="Redis as a primary, a replica and three sentinels, writes acknowledged "
                        "once replicated (WAIT 1); a Redis kill is then the primary's, with a "
                        "failover")


@command("soak", "run everything under load and random faults, then account for every notice",
         _soak_args)
def cmd_soak(args: argparse.Namespace, config: Config) -> int:
    from importlib.util import find_spec

    if find_spec("aiosmtpd") is None:  # the SMTP sink: a test dependency, not a runtime one
        print("vestnik soak: needs aiosmtpd (the SMTP sink): pip install aiosmtpd",
              file=sys.stderr)
        return 2
    from vestnik.app.soak.run import main as soak_main

    return soak_main(args.minutes, args.seed, args.json_path, users=args.users,
                     sse_clients=args.sse_clients, sentinel=args.sentinel)


def _wrap_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("alert_config", metavar="alert.toml", help="the alert's TOML file")
    _ops_args(p)


@command("wrap", "run one alert program: settings and entities in, notices out", _wrap_args)
def cmd_wrap(args: argparse.Namespace, config: Config) -> int:
    from vestnik.wrapper.config import load as load_alert
    from vestnik.wrapper.supervisor import run as run_wrapper

    return run_wrapper(load_alert(args.alert_config), metrics_port=_ops_port(args, config),
                       metrics_host=config.host)


@command("forwarder", "run forward jobs alone (more forwarders = more send throughput)",
         _ops_args)
def cmd_forwarder(args: argparse.Namespace, config: Config) -> int:
    from vestnik.app.server import run
    from vestnik.streams.forward import run_forwarder

    _redis_ready(config, "forwarder")

    run(_until_stopped("forwarder", run_forwarder(config, ops_port=_ops_port(args, config))))
    return 0


def _center_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--burst", action="store_true",
                   help="stop once the notice stream is drained (tests, batch jobs)")
    p.add_argument("--consumer", help="consumer name in the group (default: host-pid)")
    p.add_argument("--no-forward", action="store_true",
                   help="do not run the forward worker in this process")
    _ops_args(p)


@command("center", "store notices per user, push them live, schedule forwards", _center_args)
def cmd_center(args: argparse.Namespace, config: Config) -> int:
    from vestnik.app.server import run
    from vestnik.streams.center import run_center

    _redis_ready(config, "center")
    run(run_center(config, consumer=args.consumer, burst=args.burst,
                   forward=not args.no_forward, handle_signals=True,
                   ops_port=_ops_port(args, config)))
    return 0


def _send_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alert", required=True, help="alert (setting) name")
    p.add_argument("--title", required=True, help="one line a user reads first")
    p.add_argument("--severity", default="info", help="info | warning | critical")
    p.add_argument("--body", default="", help="the notice's text under its title")
    p.add_argument("--recipients", help="comma-separated user ids (default: from the setting)")
    p.add_argument("--data", help="the alert's payload as a JSON object")
    p.add_argument("--metric", help="JSON object")
    p.add_argument("--channels", help="JSON object, like a setting's `channel`")
    p.add_argument("--entity", help='JSON object {"topic": ..., "id": ...}')
    p.add_argument("--link", help="URL the notice opens")
    p.add_argument("--setting-id", help="the setting it belongs to (default: by --alert)")
    p.add_argument("--dedup-key", help="incident key: repeats fold into one open incident")
    p.add_argument("--forward-after", type=float,
                   help="seconds unread before it is forwarded (default: the setting's)")
    p.add_argument("--id", dest="notice_id", help="notice id (default: a new ULID)")


@command("send", "send one notice (XADD to the ingest stream)", _send_args)
def cmd_send(args: argparse.Namespace, config: Config) -> int:
    from vestnik.streams.schemas import NoticeIn, convert

    if not config.redis_url:
        raise ConfigError("VESTNIK_REDIS_URL: required by `vestnik send`")
    obj: dict[str, object] = {"alert": args.alert, "title": args.title,
                              "severity": args.severity, "body": args.body}
    for name in ("link", "setting_id", "dedup_key", "forward_after"):
        if getattr(args, name) is not None:
            obj[name] = getattr(args, name)
    if args.notice_id:
        obj["id"] = args.notice_id
    if args.recipients:
        obj["recipients"] = [r.strip() for r in args.recipients.split(",") if r.strip()]
    for name in ("data", "metric", "channels", "entity"):
        if getattr(args, name) is not None:
            obj[name] = _json_arg(args, name)
    notice = convert(obj, NoticeIn)
    print(_ingest(config, "send", lambda ingest: ingest.send(notice, via="cli")))
    return 0


def _resolve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alert", required=True, help="alert (setting) name")
    p.add_argument("--dedup-key", required=True, help="the incident's key")
    p.add_argument("--setting-id", help="only this setting's incident (default: every one)")
    p.add_argument("--at", type=int, help="when it ended, ms (default: now)")


@command("resolve", "resolve an incident (an `op resolve` entry on the ingest stream)",
         _resolve_args)
def cmd_resolve(args: argparse.Namespace, config: Config) -> int:
    from vestnik.streams.schemas import ResolveIn, convert

    if not config.redis_url:
        raise ConfigError("VESTNIK_REDIS_URL: required by `vestnik resolve`")
    obj = {name: value for name in ("alert", "dedup_key", "setting_id", "at")
           if (value := getattr(args, name)) is not None}
    resolve = convert(obj, ResolveIn)
    print(_ingest(config, "resolve", lambda ingest: ingest.resolve(resolve)))
    return 0


def _json_arg(args: argparse.Namespace, name: str) -> object:
    """The JSON value of option `--name` (None when not given); bad JSON names the option."""
    from vestnik.streams.errors import BadInput

    raw = getattr(args, name)
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as e:
        option = "--" + name.replace("_", "-")
        raise BadInput(f"{option} is not valid JSON: {e}", field=f"$.{name}") from None


def _ingest(config: Config, command: str,
            call: Callable[[Ingest], Awaitable[str]]) -> str:
    """`call` with an Ingest on a connection of its own (`vestnik send`, `vestnik resolve`):
    the stream id of what it added."""
    from vestnik.streams.center import Ingest
    from vestnik.streams.coalesce import Appends, Replication
    from vestnik.streams.keys import Keys
    from vestnik.streams.redis import connect

    async def main() -> str:
        redis = connect(config.redis_url or "", name=f"vestnik-{command}",
                        timeout=config.redis_timeout)
        try:
            appends = Appends(redis, Replication.of(config.redis_wait_replicas,
                                                    config.redis_timeout))
            return await call(Ingest(redis, Keys.of(config), appends))
        finally:
            await redis.aclose()

    return asyncio.run(main())


DEVELOPMENT = ("bench", "soak")  # listed apart in `vestnik --help`: not for a production box
EXIT_OTHER = 1  # anything unexpected (a bug): one line, the traceback at log level debug
EXIT_INPUT = 2  # bad input or configuration (argparse's own code for a bad command line)
EXIT_REDIS = 3  # Redis did not answer within VESTNIK_REDIS_TIMEOUT (as `vestnik wrap`)
UVICORN_STARTUP_FAILURE = 3  # uvicorn.config.STARTUP_FAILURE (not imported: wrap has no uvicorn)


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (and exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INPUT, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def version() -> str:
    """`vestnik 0.1.0 (Python 3.11.2, redis-py 5.3.0)`: what a bug report needs."""
    import platform
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    def of(name: str) -> str:
        try:
            return installed(name)
        except PackageNotFoundError:
            return "unknown"

    return (f"vestnik {of('vestnik')} (Python {platform.python_version()}, "
            f"redis-py {of('redis')})")


def _health_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="readiness URL to ask (default: /readyz on "
                                 "VESTNIK_METRICS_PORT when set, else on VESTNIK_PORT)")
    p.add_argument("--timeout", type=float, default=2.0,
                   help="seconds to wait for the answer (default 2: inside the image's "
                        "HEALTHCHECK --timeout=3s, so a slow answer is reported, not killed)")


@command("health", "exit 0 when this container's process is ready (Docker HEALTHCHECK)",
         _health_args)
def cmd_health(args: argparse.Namespace, config: Config) -> int:
    from vestnik.app.health import probe, readyz_url

    url = args.url or readyz_url(config)
    ok, why = probe(url, args.timeout)
    if not ok:
        print(f"vestnik health: {why}", file=sys.stderr)
    return 0 if ok else 1


def parser() -> argparse.ArgumentParser:
    dev = "\n".join(f"  {name:<10} {COMMANDS[name][2]}" for name in DEVELOPMENT)
    p = _Parser(prog="vestnik", description=__doc__,
                epilog=f"development commands (not for production):\n{dev}\n\n"
                       f"exit codes: 0 done, {EXIT_INPUT} bad input or configuration, "
                       f"{EXIT_REDIS} Redis unreachable, {EXIT_OTHER} anything else",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=version(),
                   help="print the version of vestnik, Python and redis-py")
    config_help = "TOML configuration file (VESTNIK_CONFIG)"
    p.add_argument("--config", help=config_help)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           title="commands")
    for name, (_, add_args, help) in COMMANDS.items():
        listed = {} if name in DEVELOPMENT else {"help": help}
        cmd = sub.add_parser(name, description=help, **listed)
        # also after the subcommand; SUPPRESS keeps one given before it
        cmd.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
        add_args(cmd)
    return p


def _fail(message: str, code: int) -> int:
    from vestnik.streams.logs import redact

    print(redact(message), file=sys.stderr)
    return code


def _redis_failed(e: BaseException) -> bool:
    """Redis did not answer (refused, reset, timed out, loading), as opposed to another OS
    error such as a port already in use, which is no reason to blame Redis."""
    from redis.exceptions import BusyLoadingError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(e, (RedisConnectionError, RedisTimeoutError, BusyLoadingError,
                          ConnectionError, TimeoutError))


def _bug(name: str, e: BaseException, config: Config | None) -> int:
    """A bug: one line, the traceback first only at log level debug."""
    level = config.log_level if config else os.environ.get("VESTNIK_LOG_LEVEL", "")
    hint = " (VESTNIK_LOG_LEVEL=debug shows the traceback)"
    if level.lower() == "debug":
        _fail("".join(traceback.format_exception(e)).rstrip(), EXIT_OTHER)
        hint = ""
    return _fail(f"{name}: unexpected error: {type(e).__name__}: {e}{hint}", EXIT_OTHER)


def main(argv: list[str] | None = None) -> int:
    from vestnik.streams import logs
    from vestnik.streams.errors import NotReplicated, VestnikError
    from vestnik.streams.redis import redacted

    args = parser().parse_args(argv)
    name = f"vestnik {args.command}"
    config: Config | None = None
    try:
        config = load(path=args.config)
        logs.add_secrets(logs.config_secrets(config))
        logs.setup(config.log_level, config.log_format)
        return COMMANDS[args.command][0](args, config)
    except ConfigError as e:
        return _fail(f"vestnik: configuration error: {e}", EXIT_INPUT)
    except VestnikError as e:  # bad input: the message names the option or field
        if isinstance(e, NotReplicated):  # too few replicas: as good as Redis unreachable
            return _fail(f"{name}: {e.detail}", EXIT_REDIS)
        if e.status >= 500:
            return _bug(name, e, config)
        return _fail(f"{name}: {e.detail}", EXIT_INPUT)
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:
        # uvicorn exits 3 after a startup failure it has logged (a port in use); 3 is
        # "Redis unreachable" here
        if e.code == UVICORN_STARTUP_FAILURE:
            return EXIT_OTHER
        raise
    except Exception as e:
        if _redis_failed(e):
            url = redacted(config.redis_url or "") if config else "Redis"
            after = ("; what was sent may still be applied when it does"
                     if args.command in ONE_SHOT_WRITES else "")
            return _fail(f"{name}: Redis at {url} did not answer ({type(e).__name__}: {e})"
                         f"{after}", EXIT_REDIS)
        if isinstance(e, OSError):  # the box's doing (a port in use, a permission): say so
            return _fail(f"{name}: {type(e).__name__}: {e}", EXIT_OTHER)
        return _bug(name, e, config)


ONE_SHOT_WRITES = ("publish", "send", "resolve")


if __name__ == "__main__":
    sys.exit(main())
