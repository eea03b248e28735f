"""``headwater run``: load the config, take the data directory's pid-file lock, serve until a signal.

Owns the ``run`` subcommand, the event loop choice (uvloop unless ``--no-uvloop``), the signal
handling (the first SIGINT/SIGTERM stops cleanly, a second one exits at once with 128+N), the
warnings about listeners exposed to the network, and the pid file.

``headwater run`` owns ``<data_dir>/headwater.pid``: it holds an exclusive ``flock`` on that file
while it runs and writes its pid in it. The lock, not the file's existence, says "running": the
kernel drops it when the process dies, even by ``kill -9``, so a stale file never blocks a start,
and a second instance on the same data directory is told which pid holds it before it touches
RocksDB. The file is removed at a clean exit.

The broker, the plugins and the store (amqtt, rocksdict) are imported only once ``run`` serves,
so that building the parser and every other command stay light.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Final

from headwater.broker.cli._exits import EXIT_FAILURE, EXIT_OK, fail
from headwater.broker.logs import setup_logging
from headwater.core.config import ConfigError, load_config

if TYPE_CHECKING:
    from headwater.core.config import HeadwaterConfig

__all__ = ["PID_FILE_NAME", "AlreadyRunningError", "PidFile", "add_run_command"]

logger = logging.getLogger("headwater")

PID_FILE_NAME: Final = "headwater.pid"


def add_run_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``headwater run`` to the subcommands."""
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


def _load(args: argparse.Namespace) -> HeadwaterConfig:
    try:
        config = load_config(Path(args.config) if args.config else None)
    except ConfigError as exc:
        fail(f"config error: {exc}")
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
        fail(str(exc), EXIT_FAILURE)
    except OSError as exc:
        fail(f"cannot write {pid_file.path}: {exc.strerror or exc}", EXIT_FAILURE)
    try:
        setup_logging(log_format=args.log_format, level=args.log_level)
        runner_factory = _event_loop_factory(use_uvloop=not args.no_uvloop)
        with asyncio.Runner(loop_factory=runner_factory) as runner:
            return runner.run(_serve(config))
    finally:
        pid_file.release()


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
