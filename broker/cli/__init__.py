"""The ``headwater`` command line: :func:`main`, the console script's entry point.

Exit status: one table for every command, :data:`EXIT_STATUS_TABLE` (also the epilog of
``headwater --help`` and the README's "Command line" section). Every error is one line on
standard error, never a traceback.

This package assembles the parser; each subcommand lives in its own private module:

- ``_run``: ``headwater run`` (config, event loop, signals, the data directory's pid file)
- ``_passwd``: ``headwater passwd``
- ``_streams``: ``headwater streams ...`` (stream API client)
- ``_deploy``: ``headwater deploy ...`` (deployment client)
- ``_client_options``: ``--url``, ``--json``, ``--topic-prefix`` of the client commands
- ``_output``: JSON lines, tables, sizes, timestamps and payloads as the client commands print them
- ``_exits``: the exit statuses and the one-line failure

Building the parser imports no broker, plugin, store or client code: each command imports what
it needs when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from headwater.broker.cli._deploy import add_deploy_command
from headwater.broker.cli._exits import EXIT_INTERRUPTED, EXIT_STATUS_TABLE
from headwater.broker.cli._passwd import add_passwd_command
from headwater.broker.cli._run import add_run_command
from headwater.broker.cli._streams import add_streams_command

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["EXIT_STATUS_TABLE", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``headwater`` command; each subcommand sets ``handler``."""
    parser = argparse.ArgumentParser(
        prog="headwater",
        description="Headwater: an MQTT edge hub with durable streams, AWS uploaders\n"
        "and docker compose deployments.",
        epilog="Run 'headwater COMMAND --help' for a command's options.\n\n" + EXIT_STATUS_TABLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"headwater {_installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_command(commands)
    add_passwd_command(commands)
    add_streams_command(commands)
    add_deploy_command(commands)
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
