"""The options every client command takes (``headwater streams ...``, ``headwater deploy ...``).

Owns ``--url``, ``--json`` and ``--topic-prefix``, and the ``SECONDS`` argument type. Client
commands reach Headwater over MQTT with :mod:`headwater.clients` only: they must not import the
broker, the plugins or the store.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from headwater.clients.connection import DEFAULT_URL, ENV_URL

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["add_client_options", "seconds"]


def add_client_options(parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int]) -> None:
    """Add ``--url``, ``--json`` and ``--topic-prefix`` to ``parser``, which runs ``handler``."""
    parser.add_argument(
        "--url",
        help=f"broker URL mqtt[s]://[user[:password]@]host[:port] (default: ${ENV_URL}, else {DEFAULT_URL})",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument(
        "--topic-prefix",
        default="headwater",
        metavar="PREFIX",
        help="the broker's topic_prefix (default: headwater)",
    )
    parser.set_defaults(handler=handler)


def seconds(text: str) -> float:
    """The argument type of ``--timeout SECONDS``: a number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        msg = f"expected a number of seconds greater than 0, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value
