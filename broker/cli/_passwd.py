"""``headwater passwd FILE USER [-D]``: add, replace or remove a user in a password file.

Owns the subcommand and how the password is read (asked twice on a terminal, else one line of
standard input). The file format and the atomic rewrite belong to
:mod:`headwater.broker.passwords`; this module must never print or log a password.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from headwater.broker.cli._exits import EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, fail
from headwater.broker.passwords import PasswordFileError, delete_user, set_password

__all__ = ["add_passwd_command"]


def add_passwd_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``headwater passwd`` to the subcommands."""
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


def _read_password(username: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"Password for {username}: ")
        second = getpass.getpass("Repeat password: ")
        if first != second:
            fail("passwords do not match", EXIT_USAGE)
        return first
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def _cmd_passwd(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        if args.delete:
            if not delete_user(path, args.user):
                fail(f"{path}: no user {args.user!r}", EXIT_NOT_FOUND)
            print(f"removed {args.user} from {path}")
            return EXIT_OK
        set_password(path, args.user, _read_password(args.user))
    except PasswordFileError as exc:
        fail(str(exc), EXIT_FAILURE)
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}", EXIT_FAILURE)
    print(f"password set for {args.user} in {path}")
    return EXIT_OK
