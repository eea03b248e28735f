"""The ``headwater`` command line.

Exit status: one table for every command, :data:`EXIT_STATUS_TABLE` (also the epilog of
``headwater --help`` and the README's "Command line" section). Every error is one line on
standard error, never a traceback.

``headwater run`` owns ``<data_dir>/headwater.pid``: it holds an exclusive ``flock`` on that file
while it runs and writes its pid in it. The lock, not the file's existence, says "running": the
kernel drops it when the process dies, even by ``kill -9``, so a stale file never blocks a start,
and a second instance on the same data directory is told which pid holds it before it touches
RocksDB. The file is removed at a clean exit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import errno
import fcntl
import getpass
import json
import logging
import os
import queue
import signal
import sys
import threading
from dataclasses import replace
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

from headwater.broker.logs import setup_logging
from headwater.broker.passwords import PasswordFileError, delete_user, set_password
from headwater.clients.connection import DEFAULT_URL, ENV_URL, InvalidURLError
from headwater.core.config import ConfigError, load_config

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from headwater.clients.deploy import DeployClient
    from headwater.clients.streams import StreamClient
    from headwater.core.config import HeadwaterConfig
    from headwater.wire.deploy import DeploymentStatus
    from headwater.wire.streams import StorageInfo, StreamRecord

__all__ = ["main"]

logger = logging.getLogger("headwater")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_FORBIDDEN = 4
EXIT_INTERRUPTED = 128 + signal.SIGINT

#: The exit statuses of every command (``headwater --help`` prints it; the README repeats it).
EXIT_STATUS_TABLE: Final = f"""\
exit status (every command):
  {EXIT_OK}    success
  {EXIT_FAILURE}    runtime failure: Headwater unreachable, no answer in time, the connection
       dropped, a deployment failed or is degraded, Headwater could not start (port
       taken, storage error, already running on that data directory)
  {EXIT_USAGE}    usage or config error: bad arguments, an invalid config file, URL or name,
       an input file that cannot be read, a request Headwater found invalid
  {EXIT_NOT_FOUND}    not found: no such stream, export, app status, or user in a password file
  {EXIT_FORBIDDEN}    forbidden: the broker's ACL refused the operation
  {EXIT_INTERRUPTED}  interrupted by Ctrl-C (streams read --follow and deploy status --watch
       end with Ctrl-C: 0)
  128+N  headwater run got signal N a second time and exited at once (130, 143)
"""


def _fail(message: str, status: int = EXIT_USAGE) -> NoReturn:
    print(f"headwater: {message}", file=sys.stderr)
    raise SystemExit(status)


# --- run -------------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> HeadwaterConfig:
    try:
        config = load_config(Path(args.config) if args.config else None)
    except ConfigError as exc:
        _fail(f"config error: {exc}")
    if args.data_dir:
        config = replace(config, data_dir=Path(args.data_dir).absolute())
    return config


def _cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.check_config:
        print(f"{config.source}: OK")
        return EXIT_OK
    pid_file = PidFile(config.data_dir)
    try:
        pid_file.acquire()
    except AlreadyRunningError as exc:
        _fail(str(exc), EXIT_FAILURE)
    except OSError as exc:
        _fail(f"cannot write {pid_file.path}: {exc.strerror or exc}", EXIT_FAILURE)
    try:
        setup_logging(log_format=args.log_format, level=args.log_level)
        runner_factory = _event_loop_factory(use_uvloop=not args.no_uvloop)
        with asyncio.Runner(loop_factory=runner_factory) as runner:
            return runner.run(_serve(config))
    finally:
        pid_file.release()


PID_FILE_NAME: Final = "headwater.pid"


class AlreadyRunningError(Exception):
    """Another process holds the lock of the data directory's pid file."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        shown = f" (pid {pid})" if pid is not None else ""
        super().__init__(f"Headwater is already running on {data_dir}{shown}")
        self.pid = pid


class PidFile:
    """``<data_dir>/headwater.pid``, locked for as long as this process runs (module docstring)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.absolute()
        self.path = self.data_dir / PID_FILE_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Lock the file and write our pid; raise :class:`AlreadyRunningError` or ``OSError``."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                pid = _read_pid(fd)
                os.close(fd)
                if exc.errno in {errno.EWOULDBLOCK, errno.EAGAIN}:
                    raise AlreadyRunningError(self.data_dir, pid) from None
                raise
            # The previous holder may have removed the file between our open and our lock: a
            # lock on that orphan protects nothing, so lock the file now at the path instead.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the file, then drop the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # empty: its holder has not written it yet


def _same_file(fd: int, path: Path) -> bool:
    try:
        at_path = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (at_path.st_dev, at_path.st_ino)


def _event_loop_factory(*, use_uvloop: bool) -> type[asyncio.AbstractEventLoop] | None:
    if not use_uvloop:
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up, measured in bench/ingest.py
    except ImportError:
        return None
    return uvloop.Loop


async def _serve(config: HeadwaterConfig) -> int:
    from headwater.broker.app import Headwater  # noqa: PLC0415 - keeps `headwater passwd` light
    from headwater.broker.plugins import builtin_plugins, builtin_reserved_topics  # noqa: PLC0415
    from headwater.core.store import StorageError  # noqa: PLC0415

    _warn_about_exposure(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            logger.warning("second %s: exiting at once", signal.Signals(signum).name)
            os._exit(128 + signum)
        logger.info("%s received: shutting down (send it again to exit at once)", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    app = Headwater(config, plugins=builtin_plugins(config), reserved_topics=builtin_reserved_topics(config))
    logger.info("starting Headwater with %s, data in %s", config.source, config.data_dir)
    try:
        await app.start()
    except StorageError as exc:
        logger.error("cannot start: %s", exc)  # noqa: TRY400 - one line, the cause is in the message
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - amqtt wraps every start failure in BrokerError
        logger.error("cannot start: %s", exc.__cause__ or exc)  # noqa: TRY400
        return EXIT_FAILURE
    await stop.wait()
    await app.stop()
    return EXIT_OK


def _warn_about_exposure(config: HeadwaterConfig) -> None:
    settings = config.broker
    for listener in settings.listeners:
        if listener.is_loopback:
            continue
        if settings.allow_anonymous if listener.allow_anonymous is None else listener.allow_anonymous:
            logger.warning(
                "listener %s (%s:%d) accepts anonymous clients from the network (allow_anonymous: true)",
                listener.name,
                listener.host,
                listener.port,
            )
        if settings.password_file is not None and listener.tls is None:
            logger.warning(
                "listener %s (%s:%d) has no TLS: passwords cross the network in clear text",
                listener.name,
                listener.host,
                listener.port,
            )


# --- passwd ----------------------------------------------------------------------------------


def _read_password(username: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"Password for {username}: ")
        second = getpass.getpass("Repeat password: ")
        if first != second:
            _fail("passwords do not match", EXIT_USAGE)
        return first
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def _cmd_passwd(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        if args.delete:
            if not delete_user(path, args.user):
                _fail(f"{path}: no user {args.user!r}", EXIT_NOT_FOUND)
            print(f"removed {args.user} from {path}")
            return EXIT_OK
        set_password(path, args.user, _read_password(args.user))
    except PasswordFileError as exc:
        _fail(str(exc), EXIT_FAILURE)
    except OSError as exc:
        _fail(f"{path}: {exc.strerror or exc}", EXIT_FAILURE)
    print(f"password set for {args.user} in {path}")
    return EXIT_OK


# --- client commands ---------------------------------------------------------------------------


# --- streams ---------------------------------------------------------------------------------


def _stream_client(args: argparse.Namespace) -> StreamClient:
    from headwater.clients.streams import StreamClient  # noqa: PLC0415 - keeps `headwater run` light

    return StreamClient.connect(args.url, topic_prefix=args.topic_prefix, timeout=args.timeout)


def _cmd_streams(args: argparse.Namespace) -> int:
    """Run one ``headwater streams ACTION`` against the broker; errors become exit statuses."""
    from headwater.clients.streams import (  # noqa: PLC0415
        ForbiddenError,
        InvalidStreamRequestError,
        StreamClientError,
        StreamNotFoundError,
    )

    actions = {
        "ls": _streams_ls,
        "describe": _streams_describe,
        "read": _streams_read,
        "append": _streams_append,
        "pause": _streams_pause_or_resume,
        "resume": _streams_pause_or_resume,
    }
    payload = _append_payload(args) if args.action == "append" else b""
    try:
        with _stream_client(args) as client:
            return actions[args.action](client, args, payload)
    except InvalidURLError as exc:
        _fail(f"--url: {exc}")
    except InvalidStreamRequestError as exc:
        _fail(str(exc))
    except StreamNotFoundError as exc:
        _fail(str(exc), EXIT_NOT_FOUND)
    except ForbiddenError as exc:
        _fail(str(exc), EXIT_FORBIDDEN)
    except StreamClientError as exc:
        _fail(str(exc), EXIT_FAILURE)
    except BrokenPipeError:
        # The reader went away (`| head`): not an error. Keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _append_payload(args: argparse.Namespace) -> bytes:
    if args.message is not None:
        return str(args.message).encode()
    if args.file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(args.file).read_bytes()
    except OSError as exc:
        _fail(f"{args.file}: {exc.strerror or exc}", EXIT_USAGE)


def _print_json(value: object) -> None:
    print(json.dumps(value, ensure_ascii=False), flush=True)


def _human_size(size: int) -> str:
    """``216B``, ``1.5KiB``, ``256.0MiB``: for people; ``--json`` has the exact byte count."""
    if size < 1024:  # noqa: PLR2004 - one KiB
        return f"{size}B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":  # noqa: PLR2004
            break
    return f"{value:.1f}{unit}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]


def _sequences(storage: StorageInfo) -> str:
    if storage.oldest_sequence is None or storage.newest_sequence is None:
        return "-"
    return f"{storage.oldest_sequence}..{storage.newest_sequence}"


def _streams_ls(client: StreamClient, args: argparse.Namespace, _payload: bytes) -> int:
    descriptions = client.list()
    if args.json:
        for description in descriptions:
            _print_json(description.to_json_dict())
        return EXIT_OK
    if not descriptions:
        print("no streams")
        return EXIT_OK
    rows = [
        (
            d.name,
            d.persistence,
            str(d.storage.record_count),
            _human_size(d.storage.total_bytes),
            _sequences(d.storage),
            str(len(d.exports)),
        )
        for d in descriptions
    ]
    print("\n".join(_table(("NAME", "PERSISTENCE", "RECORDS", "SIZE", "SEQUENCES", "EXPORTS"), rows)))
    return EXIT_OK


def _streams_describe(client: StreamClient, args: argparse.Namespace, _payload: bytes) -> int:
    description = client.describe(args.name)
    if args.json:
        _print_json(description.to_json_dict())
        return EXIT_OK
    storage = description.storage
    lines = [
        f"stream       {description.name}",
        f"persistence  {description.persistence}",
        f"state        {description.state}"
        + (f" ({description.last_error})" if description.last_error else ""),
        f"records      {storage.record_count} (sequences {_sequences(storage)})",
        f"size         {_human_size(storage.total_bytes)} ({storage.total_bytes} bytes)",
        (
            f"dropped      {storage.dropped_oldest} oldest (full), {storage.rejected_new} new (full), "
            f"{storage.expired} expired (ttl)"
        ),
    ]
    if not description.exports:
        lines.append("exports      none")
    else:
        lines.append("exports")
        rows = [
            (
                export.id,
                export.type,
                str(export.priority),
                export.state,
                "-" if export.last_exported_sequence is None else str(export.last_exported_sequence),
                "-" if export.last_export_time is None else _timestamp(export.last_export_time),
                str(export.exported_records),
                f"{export.lag_records} ({_human_size(export.lag_bytes)})",
                str(export.dead_lettered),
                str(export.lost_records),
                export.last_error or "",
            )
            for export in description.exports
        ]
        header = (
            "ID",
            "TYPE",
            "PRIO",
            "STATE",
            "LAST SEQ",
            "LAST EXPORT",
            "EXPORTED",
            "LAG",
            "DEAD",
            "LOST",
            "LAST ERROR",
        )
        lines += [f"  {line}" for line in _table(header, rows)]
    print("\n".join(lines))
    return EXIT_OK


def _timestamp(milliseconds: int) -> str:
    moment = datetime.fromtimestamp(milliseconds / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{milliseconds % 1000:03d}Z"


def _printable(payload: bytes) -> str:
    """A payload on one line: text with control characters escaped, else ``base64:...``."""
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(payload).decode()
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _streams_read(client: StreamClient, args: argparse.Namespace, _payload: bytes) -> int:
    page = 1000 if args.max is None else min(args.max, 1000)
    records = client.iter_records(
        args.name, from_sequence=args.from_sequence, follow=args.follow, page_size=page
    )
    if args.follow:
        records = _interruptible(client, records)
    printer = _RecordPrinter(as_json=args.json)
    try:
        for record in records:
            printer.print(record)
            if args.max is not None and printer.printed >= args.max:
                break
    except KeyboardInterrupt:
        if not args.follow:
            raise
        # Ctrl-C is how --follow ends. Closing the connection must not keep the terminal: if
        # it has not finished within a few seconds, say so and exit anyway.
        _exit_after(_CLOSE_GRACE, "the connection did not close after Ctrl-C; exiting anyway")
    return EXIT_OK


_CLOSE_GRACE: Final = 5.0


def _exit_after(seconds: float, message: str) -> None:
    """Exit the process (status 0) after ``seconds`` unless it has ended by then."""

    def expire() -> None:
        print(f"headwater: {message}", file=sys.stderr, flush=True)
        os._exit(EXIT_OK)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


class _RecordPrinter:
    """Prints records as ``streams read`` shows them (a header first in text mode)."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self.printed = 0

    def print(self, record: StreamRecord) -> None:
        if self.as_json:
            _print_json(record.to_json_dict())
        else:
            if not self.printed:
                print("SEQ  TIME  TOPIC  PAYLOAD")
            line = f"{record.sequence}  {_timestamp(record.timestamp_ms)}  {record.topic}  "
            print(line + _printable(record.payload), flush=True)
        self.printed += 1


def _interruptible(client: StreamClient, records: Iterator[StreamRecord]) -> Iterator[StreamRecord]:
    """Iterate ``records`` in a worker thread, so that Ctrl-C only ever interrupts this thread.

    A KeyboardInterrupt raised in the middle of paho's ``publish`` (the main thread's long-poll
    requests) can leave paho's locks inconsistent and hang the exit; here the main thread only
    waits on a queue and prints. On Ctrl-C the client is closed, which ends the worker.
    """
    handoff: queue.Queue[StreamRecord | BaseException | None] = queue.Queue(maxsize=1000)

    def pump() -> None:
        try:
            for record in records:
                handoff.put(record)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
            handoff.put(exc)
        else:
            handoff.put(None)

    worker = threading.Thread(target=pump, name="headwater-follow", daemon=True)
    worker.start()
    try:
        while (item := handoff.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        client.close()
        worker.join(timeout=5)


def _streams_pause_or_resume(client: StreamClient, args: argparse.Namespace, _payload: bytes) -> int:
    # Headwater answers an unknown export as an invalid request; for the exit status (not found)
    # and a useful message, look first.
    exports = [export.id for export in client.describe(args.name).exports]
    if args.export not in exports:
        listed = ", ".join(exports) or "none"
        _fail(f"stream {args.name!r} has no export {args.export!r} (its exports: {listed})", EXIT_NOT_FOUND)
    if args.action == "pause":
        export = client.pause_export(args.name, args.export)
    else:
        export = client.resume_export(args.name, args.export)
    if args.json:
        _print_json(export.to_json_dict())
    else:
        print(f"export {export.id} of stream {args.name}: {export.state}")
    return EXIT_OK


def _streams_append(client: StreamClient, args: argparse.Namespace, payload: bytes) -> int:
    sequence = client.append(args.name, payload, topic=args.topic)
    if args.json:
        _print_json({"stream": args.name, "sequence": sequence})
    else:
        print(f"appended to {args.name} at sequence {sequence}")
    return EXIT_OK


# --- deploy ----------------------------------------------------------------------------------

_DEPLOY_HELP = """\
Deploy, update and remove docker compose apps on a Headwater gateway. The desired state of app
APP is the retained message on <prefix>/deploy/APP; Headwater runs docker compose and reports
on <prefix>/deploy/APP/status (docs/deploy.md).

  headwater deploy up web -f compose.yml            deploy or update, wait until it runs
  headwater deploy up web -f compose.yml --pull never --force
  headwater deploy down web                         remove, wait until it is gone
  headwater deploy status                           every app, as a table
  headwater deploy status web --watch               one app, then its changes until Ctrl-C

The same works with nothing but mosquitto: mosquitto_pub -r -t headwater/deploy/web -f compose.yml
"""


def _deploy_client_options(
    parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int]
) -> None:
    _add_client_options(parser, handler)
    parser.add_argument(
        "--topic-prefix",
        default="headwater",
        metavar="PREFIX",
        help="the broker's topic_prefix (default: headwater)",
    )


def _add_deploy_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    deploy = commands.add_parser(
        "deploy",
        help="run docker compose apps through retained messages",
        description=_DEPLOY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    deploy_actions = deploy.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = deploy_actions.add_parser(
        "up",
        help="deploy or update APP from a compose file",
        description="Publish COMPOSE_FILE as the retained desired state of APP, then print its status "
        "changes until it is running (exit 0), degraded or failed (exit 1).",
    )
    up.add_argument(
        "app", metavar="APP", help="app name: 1-63 of a-z 0-9 _ -, starting with a letter or digit"
    )
    up.add_argument(
        "-f", "--file", required=True, metavar="COMPOSE_FILE", help="the compose file ('-': standard input)"
    )
    up.add_argument(
        "--pull",
        choices=("always", "missing", "never"),
        help="image pull policy for this app (default: the gateway's deploy.pull); never = offline",
    )
    up.add_argument("--force", action="store_true", help="recreate the containers even if nothing changed")
    up.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable for ${NAME} in the compose file (repeatable)",
    )
    up.add_argument(
        "--registry-auth",
        action="append",
        default=[],
        metavar="NAME",
        help="use the gateway's registry credential NAME (deploy.registries; repeatable)",
    )
    _add_wait_options(up)
    _deploy_client_options(up, _cmd_deploy)
    down = deploy_actions.add_parser(
        "down",
        help="remove APP",
        description="Publish the empty retained message for APP (its containers and networks go, named "
        "volumes stay), then wait until it is removed.",
    )
    down.add_argument("app", metavar="APP")
    _add_wait_options(down)
    _deploy_client_options(down, _cmd_deploy)
    status = deploy_actions.add_parser(
        "status",
        help="show deployment status",
        description="Show the status of every app (or of APP) from the retained status topics.",
    )
    status.add_argument("app", nargs="?", metavar="APP")
    status.add_argument("--watch", action="store_true", help="then print every change until Ctrl-C")
    _deploy_client_options(status, _cmd_deploy)


def _add_wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for the outcome (default: 600)",
    )
    parser.add_argument("--no-wait", action="store_true", help="publish and exit without waiting")


def _cmd_deploy(args: argparse.Namespace) -> int:
    """Run one ``headwater deploy ACTION``; errors become exit statuses."""
    from headwater.clients.deploy import (  # noqa: PLC0415 - keeps `headwater run` light
        DeployClient,
        DeployClientError,
        DeployForbiddenError,
        DeployTimeoutError,
        InvalidDeployRequestError,
        app_topic_problem,
    )
    from headwater.wire.deploy import app_name_problem  # noqa: PLC0415

    # Only a deployment needs a valid name: a refused one must stay removable and readable.
    check = app_name_problem if args.action == "up" else app_topic_problem
    if args.app is not None and (problem := check(args.app)) is not None:
        _fail(problem)
    payload = _compose_payload(args) if args.action == "up" else b""
    try:
        with DeployClient.connect(args.url, topic_prefix=args.topic_prefix) as client:
            if args.action == "status":
                return _deploy_status(client, args)
            return _deploy_change(client, args, payload)
    except InvalidURLError as exc:
        _fail(f"--url: {exc}")
    except InvalidDeployRequestError as exc:
        _fail(str(exc))
    except DeployTimeoutError as exc:
        _fail(str(exc), EXIT_FAILURE)
    except DeployForbiddenError as exc:
        _fail(str(exc), EXIT_FORBIDDEN)
    except DeployClientError as exc:
        _fail(str(exc), EXIT_FAILURE)


def _compose_payload(args: argparse.Namespace) -> bytes:
    from headwater.clients.deploy import InvalidDeployRequestError, build_payload  # noqa: PLC0415

    if args.file == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            _fail(f"{args.file}: {exc.strerror or exc}", EXIT_USAGE)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        _fail(f"{args.file}: not UTF-8 text")
    env: dict[str, str] = {}
    for item in args.env:
        name, equals, value = item.partition("=")
        if not equals or not name:
            _fail(f"--env: expected NAME=VALUE, got {item!r}")
        env[name] = value
    try:
        return build_payload(
            text, pull=args.pull, force=args.force, env=env, registry_auth=tuple(args.registry_auth)
        )
    except InvalidDeployRequestError as exc:
        _fail(f"{args.file}: {exc}")


def _deploy_change(client: DeployClient, args: argparse.Namespace, payload: bytes) -> int:
    """``up`` and ``down``: publish, then follow the app's statuses to the end."""
    revision = client.publish(args.app, payload)
    what = f"revision {revision} ({len(payload)} bytes)" if revision else "removal"
    if args.no_wait:
        if args.json:
            _print_json({"app": args.app, "revision": revision, "published": True})
        else:
            print(f"{args.app}: published {what}")
        return EXIT_OK
    if not args.json:
        print(
            f"{args.app}: published {what}; waiting for Headwater (Ctrl-C stops waiting, not the deployment)"
        )

    def show(status: DeploymentStatus) -> None:
        if args.json:
            _print_json(status.to_json_dict())
        else:
            print(_status_line(status), flush=True)

    def still_waiting(seconds: float, last: DeploymentStatus | None) -> None:
        if not args.json:
            state = last.state if last is not None else "no status yet"
            print(f"{args.app}: still waiting after {seconds:.0f}s ({state})", flush=True)

    final = client.wait(
        args.app, revision=revision, timeout=args.timeout, on_status=show, on_quiet=still_waiting
    )
    if not args.json:
        for line in _status_details(final):
            print(line, file=sys.stderr if final.state == "failed" else sys.stdout)
    return EXIT_OK if final.state in {"running", "removed"} else EXIT_FAILURE


def _status_line(status: DeploymentStatus) -> str:
    """``10:15:00.123  web  running  rev 3f2a...  web=running api=running(healthy)``."""
    moment = status.updated_at[11:23] if len(status.updated_at) >= 23 else status.updated_at  # noqa: PLR2004
    parts = [moment, status.app, status.state]
    if status.revision:
        parts.append(f"rev {status.revision}")
    if status.services:
        parts.append(_services_summary(status))
    if status.error and status.state != "failed":
        parts.append(f"({status.error})")
    return "  ".join(parts)


def _services_summary(status: DeploymentStatus) -> str:
    shown = []
    for service in status.services:
        text = f"{service.name}={service.state}"
        if service.health:
            text += f"({service.health})"
        shown.append(text)
    return " ".join(shown) or "-"


def _status_details(status: DeploymentStatus) -> list[str]:
    lines = []
    if status.error:
        lines.append(f"{status.app}: {status.state}: {status.error}")
    if status.output:
        lines.append("docker compose said:")
        lines += [f"  {line}" for line in status.output]
    for service in status.services:
        if service.ports:
            lines.append(f"  {service.name}: {', '.join(service.ports)}")
    return lines


def _deploy_status(client: DeployClient, args: argparse.Namespace) -> int:
    statuses, plugin = client.statuses(args.app)
    if args.json:
        if args.app is None and plugin is not None:
            _print_json({"plugin": plugin})
        for app in sorted(statuses):
            _print_json(statuses[app].to_json_dict())
    else:
        print("\n".join(_status_table(args.app, statuses, plugin)))
    if args.watch:
        with contextlib.suppress(KeyboardInterrupt):
            for update in client.watch(args.app):
                if update.status is None:
                    continue
                if args.json:
                    _print_json(update.status.to_json_dict())
                else:
                    print(_status_line(update.status), flush=True)
        return EXIT_OK
    return EXIT_NOT_FOUND if args.app is not None and args.app not in statuses else EXIT_OK


def _status_table(
    app: str | None, statuses: dict[str, DeploymentStatus], plugin: Mapping[str, object] | None
) -> list[str]:
    lines = []
    if plugin is not None and app is None:
        detail = plugin.get("error") or (
            f"Docker {plugin.get('engine_version')} at {plugin.get('docker_host')}, "
            f"docker compose {plugin.get('compose')}"
        )
        lines.append(f"deploy: {plugin.get('state', '?')} ({detail})")
    if statuses:
        rows = [
            (
                name,
                status.state,
                status.revision or "-",
                _services_summary(status),
                status.updated_at or "-",
                (status.error or "")[:80],
            )
            for name, status in sorted(statuses.items())
        ]
        lines += _table(("APP", "STATE", "REVISION", "SERVICES", "UPDATED", "ERROR"), rows)
    elif app is not None:
        lines.append(f"{app}: no status (not deployed here, removed, or you may not read it)")
    else:
        lines.append("no apps")
    return lines


# --- parser ----------------------------------------------------------------------------------


def _add_client_options(
    parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int]
) -> None:
    parser.add_argument(
        "--url",
        help=f"broker URL mqtt[s]://[user[:password]@]host[:port] (default: ${ENV_URL}, else {DEFAULT_URL})",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(handler=handler)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"expected a whole number of at least 1, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _sequence(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        msg = f"expected a sequence number (0 or more), got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        msg = f"expected a number of seconds greater than 0, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _add_stream_options(parser: argparse.ArgumentParser) -> None:
    _add_client_options(parser, _cmd_streams)
    parser.add_argument(
        "--topic-prefix",
        default="headwater",
        metavar="PREFIX",
        help="the broker's topic_prefix (default: headwater)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="wait this long for each answer (default: 10)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headwater",
        description="Headwater: an MQTT edge hub with durable streams, AWS uploaders\n"
        "and docker compose deployments.",
        epilog="Run 'headwater COMMAND --help' for a command's options.\n\n" + EXIT_STATUS_TABLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"headwater {_installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run the broker with all plugins", description="Run the Headwater broker."
    )
    run.add_argument(
        "-c", "--config", metavar="FILE", help="YAML config (default: the embedded default config)"
    )
    run.add_argument(
        "--data-dir", metavar="DIR", help="where streams and retained messages live (overrides data_dir)"
    )
    run.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log line format (default: text)"
    )
    run.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default: INFO"
    )
    run.add_argument(
        "--no-uvloop", action="store_true", help="use asyncio's default event loop instead of uvloop"
    )
    run.add_argument("--check-config", action="store_true", help="validate the config, print OK and exit")
    run.set_defaults(handler=_cmd_run)

    passwd = commands.add_parser(
        "passwd",
        help="add or replace a user in a password file",
        description="Add or replace USER in FILE (argon2id hashes, mode 0600). On a terminal the password is "
        "asked twice; otherwise one line is read from standard input.",
    )
    passwd.add_argument("file", metavar="FILE")
    passwd.add_argument("user", metavar="USER")
    passwd.add_argument("-D", "--delete", action="store_true", help="remove USER instead")
    passwd.set_defaults(handler=_cmd_passwd)

    streams = commands.add_parser(
        "streams",
        help="list, read and append to durable streams",
        description="Talk to Headwater's stream API over MQTT (docs/stream-api.md).",
    )
    stream_actions = streams.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_stream_options(stream_actions.add_parser("ls", help="list streams"))
    describe = stream_actions.add_parser("describe", help="storage and export state of one stream")
    describe.add_argument("name", metavar="NAME")
    _add_stream_options(describe)
    read = stream_actions.add_parser("read", help="read records")
    read.add_argument("name", metavar="NAME")
    read.add_argument(
        "--from",
        dest="from_sequence",
        type=_sequence,
        metavar="SEQ",
        help="first sequence number (default: oldest)",
    )
    read.add_argument("--max", type=_positive_int, metavar="N", help="stop after N records")
    read.add_argument("--follow", action="store_true", help="keep waiting for new records (until Ctrl-C)")
    _add_stream_options(read)
    append = stream_actions.add_parser("append", help="append one record")
    append.add_argument("name", metavar="NAME")
    source = append.add_mutually_exclusive_group(required=True)
    source.add_argument("-m", "--message", metavar="TEXT")
    source.add_argument("-f", "--file", metavar="FILE", help="the payload's bytes ('-': standard input)")
    append.add_argument("--topic", help="the record's topic (default: the API's request topic)")
    _add_stream_options(append)
    for action, what in (("pause", "pause an export (nothing is sent; persisted)"), ("resume", "resume it")):
        switch = stream_actions.add_parser(action, help=what)
        switch.add_argument("name", metavar="NAME")
        switch.add_argument("export", metavar="EXPORT", help="the export's id")
        _add_stream_options(switch)

    _add_deploy_commands(commands)
    return parser


def _installed_version() -> str:
    try:
        return version("headwater")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``headwater`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return int(args.handler(args))
    return EXIT_INTERRUPTED
