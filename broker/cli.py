"""The ``headwater`` command line.

Exit status: 0 success; 1 a runtime failure (broker could not start, storage error);
2 bad usage or bad config (one line naming the key, no traceback); 3 a command that is not
implemented yet; 130/143 when a second SIGINT/SIGTERM forces an immediate exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from headwater.broker.config import ConfigError, load_config
from headwater.broker.logs import setup_logging
from headwater.broker.passwords import PasswordFileError, delete_user, set_password
from headwater.clients.connection import DEFAULT_URL, ENV_URL, InvalidURLError, resolve_url

if TYPE_CHECKING:
    from collections.abc import Sequence

    from headwater.broker.config import HeadwaterConfig

__all__ = ["main"]

logger = logging.getLogger("headwater")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_IMPLEMENTED = 3


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
    setup_logging(log_format=args.log_format, level=args.log_level)
    runner_factory = _event_loop_factory(use_uvloop=not args.no_uvloop)
    with asyncio.Runner(loop_factory=runner_factory) as runner:
        return runner.run(_serve(config))


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
    from headwater.broker.plugins import builtin_plugins  # noqa: PLC0415
    from headwater.plugins.streams.store import StorageError  # noqa: PLC0415

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
    app = Headwater(config, plugins=builtin_plugins(config))
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
        if settings.allow_anonymous:
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
            _fail("passwords do not match", EXIT_FAILURE)
        return first
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def _cmd_passwd(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        if args.delete:
            if not delete_user(path, args.user):
                _fail(f"{path}: no user {args.user!r}", EXIT_FAILURE)
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


def _cmd_not_implemented(args: argparse.Namespace) -> int:
    try:
        settings = resolve_url(args.url)
    except InvalidURLError as exc:
        _fail(f"--url: {exc}")
    command = f"{args.command} {args.action}"
    _fail(f"{command}: not implemented yet (would talk to {settings.display_url})", EXIT_NOT_IMPLEMENTED)


# --- parser ----------------------------------------------------------------------------------


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help=f"broker URL mqtt[s]://[user[:password]@]host[:port] (default: ${ENV_URL}, else {DEFAULT_URL})",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(handler=_cmd_not_implemented)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headwater",
        description="Headwater: an MQTT edge hub with durable streams, AWS uploaders "
        "and docker compose deployments.",
        epilog="Run 'headwater COMMAND --help' for a command's options.",
    )
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

    streams = commands.add_parser("streams", help="list, read and append to durable streams")
    stream_actions = streams.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_client_options(stream_actions.add_parser("ls", help="list streams"))
    describe = stream_actions.add_parser("describe", help="storage and export state of one stream")
    describe.add_argument("name", metavar="NAME")
    _add_client_options(describe)
    read = stream_actions.add_parser("read", help="read records")
    read.add_argument("name", metavar="NAME")
    read.add_argument("--from", dest="from_sequence", type=int, metavar="SEQ", help="first sequence number")
    read.add_argument("--max", type=int, metavar="N", help="stop after N records")
    read.add_argument("--follow", action="store_true", help="keep waiting for new records")
    _add_client_options(read)
    append = stream_actions.add_parser("append", help="append one record")
    append.add_argument("name", metavar="NAME")
    source = append.add_mutually_exclusive_group(required=True)
    source.add_argument("-m", "--message", metavar="TEXT")
    source.add_argument("-f", "--file", metavar="FILE")
    _add_client_options(append)

    deploy = commands.add_parser("deploy", help="run docker compose apps through retained messages")
    deploy_actions = deploy.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = deploy_actions.add_parser("up", help="deploy or update APP from a compose file")
    up.add_argument("app", metavar="APP")
    up.add_argument("-f", "--file", required=True, metavar="COMPOSE_FILE")
    up.add_argument("--pull", choices=("always", "missing", "never"))
    up.add_argument("--force", action="store_true", help="recreate containers even if nothing changed")
    _add_client_options(up)
    down = deploy_actions.add_parser("down", help="remove APP")
    down.add_argument("app", metavar="APP")
    _add_client_options(down)
    status = deploy_actions.add_parser("status", help="show deployment status")
    status.add_argument("app", nargs="?", metavar="APP")
    status.add_argument("--watch", action="store_true", help="keep printing changes")
    _add_client_options(status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``headwater`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return int(args.handler(args))
    return 128 + signal.SIGINT
