"""The exit statuses of every ``headwater`` command, and the one way a command fails.

Owns the status numbers, :data:`EXIT_STATUS_TABLE` (the epilog of ``headwater --help``; the
README's "Command line" section repeats it and a test compares the two) and :func:`fail`. A
command never exits with a status that is not in the table, and never ends with a traceback:
every error is one line on standard error.
"""

from __future__ import annotations

import signal
import sys
from typing import Final, NoReturn

__all__ = [
    "EXIT_FAILURE",
    "EXIT_FORBIDDEN",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_STATUS_TABLE",
    "EXIT_USAGE",
    "fail",
]

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


def fail(message: str, status: int = EXIT_USAGE) -> NoReturn:
    """Print ``headwater: MESSAGE`` on standard error and exit with ``status``."""
    print(f"headwater: {message}", file=sys.stderr)
    raise SystemExit(status)
