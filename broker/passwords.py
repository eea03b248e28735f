"""The password file: what ``headwater passwd FILE USER`` writes and the broker checks at CONNECT.

Owns the file format, reading it, rewriting it, and verifying a password against it. It must
never log or echo a hash or a password, not even in an error message, and never keep a
plaintext password beyond the call that received it.

Format (UTF-8, like mosquitto's password file, but with argon2 hashes)::

    # comment lines and blank lines are kept as they are
    alice:$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>

One ``user:hash`` line per user. The hash is an argon2 PHC string as argon2-cffi's
``PasswordHasher`` writes it. Usernames are non-empty and hold no ``:``, whitespace or
control/format characters, do not start with ``#`` (that would read as a comment) and are not
``anonymous`` (the ACL key for clients without a username). A user appears at most once.

Cost: argon2id with ``time_cost=2``, ``memory_cost=19456`` KiB (19 MiB), ``parallelism=1``:
OWASP's minimum for argon2id. One :meth:`PasswordFile.verify` takes milliseconds (the same for
a wrong password and for an unknown user; docs/benchmarks.md has the measurement). That is CPU
time holding a core (the GIL is released meanwhile), so the broker must call it off the event loop
(``await asyncio.to_thread(passwords.verify, username, password)``); 19 MiB per concurrent
verification is the memory price.

Rewrites (:func:`set_password`, :func:`delete_user`) are atomic: a temporary file in the same
folder, fsynced, then ``os.replace`` and an fsync of the folder, so a crash leaves either the
old file or the new one. A new file gets mode 0600; an existing one keeps its mode and owner.
A symlink is followed: the file it points to is replaced. Two concurrent rewrites of one file
are not coordinated: the last one wins.

Exceptions::

    ValueError
     └── PasswordFileError      unreadable or malformed file, bad username, empty password,
                                failed write; ``str()`` is ``FILE:LINE: reason`` / ``FILE: reason``
"""

from __future__ import annotations

import functools
import os
import stat
import tempfile
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = [
    "PasswordFile",
    "PasswordFileError",
    "delete_user",
    "set_password",
]

# OWASP's minimum for argon2id (m=19 MiB, t=2, p=1): a CONNECT costs tens of milliseconds.
_HASHER = argon2.PasswordHasher(
    time_cost=2,
    memory_cost=19456,
    parallelism=1,
    hash_len=32,
    salt_len=16,
    type=argon2.Type.ID,
)
_RESERVED_USERNAME = "anonymous"
_NEW_FILE_MODE = 0o600
# Unicode categories refused in usernames: control, format (invisible: U+200B, U+FEFF, ...),
# surrogates (cannot be written as UTF-8).
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


class PasswordFileError(ValueError):
    """A password file cannot be read, parsed or written, or an argument is refused.

    ``path`` and ``line`` (1-based) say where, when known; ``reason`` says what. The message
    never contains a hash or a password.
    """

    def __init__(self, reason: str, *, path: Path | None = None, line: int | None = None) -> None:
        self.reason = reason
        self.path = path
        self.line = line
        if path is None:
            message = reason
        elif line is None:
            message = f"{path}: {reason}"
        else:
            message = f"{path}:{line}: {reason}"
        super().__init__(message)


def _username_problem(username: str) -> str | None:
    """Say why ``username`` is not allowed in a password file, or ``None`` if it is."""
    if not username:
        return "must not be empty"
    if username == _RESERVED_USERNAME:
        return f"{_RESERVED_USERNAME!r} is reserved for clients without a username"
    if username.startswith("#"):
        return "must not start with '#' (the line would read as a comment)"
    return next((problem for char in username if (problem := _character_problem(char))), None)


def _character_problem(char: str) -> str | None:
    if char == ":":
        return "must not contain ':'"
    if char.isspace():
        return "must not contain whitespace"
    if unicodedata.category(char) in _REFUSED_CATEGORIES:
        return f"must not contain control or format characters (U+{ord(char):04X})"
    return None


@dataclass(frozen=True, slots=True)
class _Line:
    """One line of the file as read: its text, and the user it defines (``None``: comment)."""

    text: str
    username: str | None = None
    hash: str = ""


def _read_lines(path: Path, *, missing_ok: bool = False) -> list[_Line]:
    """Read and parse ``path``; an absent file is empty when ``missing_ok``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        if missing_ok:
            return []
        raise PasswordFileError("cannot read the password file: it does not exist", path=path) from exc
    except OSError as exc:
        raise PasswordFileError(f"cannot read the password file: {exc.strerror or exc}", path=path) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PasswordFileError("not valid UTF-8", path=path, line=line) from exc

    raw_lines = text.split("\n")
    if raw_lines[-1] == "":
        # The newline ending the last line does not start another one.
        raw_lines.pop()
    lines: list[_Line] = []
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(raw_lines, start=1):
        raw_text = raw.removesuffix("\r")
        content = raw_text.strip()
        if not content or content.startswith("#"):
            lines.append(_Line(raw_text))
            continue
        username, hash_ = _parse_user_line(content, path=path, number=number)
        if username in first_seen:
            raise PasswordFileError(
                f"user {username!r} is already defined on line {first_seen[username]}",
                path=path,
                line=number,
            )
        first_seen[username] = number
        lines.append(_Line(raw_text, username, hash_))
    return lines


def _parse_user_line(content: str, *, path: Path, number: int) -> tuple[str, str]:
    """Split a ``user:hash`` line and check both parts; return (username, hash)."""
    # No part of the line goes into a message: it may be a pasted plaintext password.
    username, colon, hash_ = content.partition(":")
    if not colon:
        raise PasswordFileError("expected 'user:hash'", path=path, line=number)
    problem = _username_problem(username)
    if problem is not None:
        raise PasswordFileError(f"invalid username: {problem}", path=path, line=number)
    try:
        argon2.extract_parameters(hash_)
    except InvalidHashError as exc:
        raise PasswordFileError(
            "the hash is not an argon2 PHC string (write it with `headwater passwd`)",
            path=path,
            line=number,
        ) from exc
    return username, hash_


@functools.cache
def _dummy_hash() -> str:
    """Return a hash with the current parameters, verified when the user is unknown."""
    return _HASHER.hash("headwater: no such user")


class PasswordFile:
    """The users and hashes of one password file, as loaded; immutable.

    Reload (call :meth:`load` again) to see later changes to the file.
    """

    __slots__ = ("_hashes", "_path")

    def __init__(self, path: Path, hashes: Mapping[str, str]) -> None:
        self._path = path
        self._hashes = dict(hashes)

    @classmethod
    def load(cls, path: Path) -> PasswordFile:
        """Read ``path``; raise :class:`PasswordFileError` (naming file and line) if it is bad.

        Also prepares the dummy hash that :meth:`verify` checks for unknown users (one hash
        computation, on the first load only).
        """
        lines = _read_lines(path)
        _dummy_hash()
        return cls(path, {line.username: line.hash for line in lines if line.username is not None})

    @property
    def path(self) -> Path:
        """The file this was loaded from."""
        return self._path

    @property
    def usernames(self) -> tuple[str, ...]:
        """The users defined in the file, in file order."""
        return tuple(self._hashes)

    def __contains__(self, username: object) -> bool:
        return username in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def __repr__(self) -> str:
        return f"PasswordFile(path={str(self._path)!r}, users={len(self._hashes)})"

    def verify(self, username: str, password: str) -> bool:
        """Tell whether ``password`` is ``username``'s password.

        CPU-heavy (one argon2 verification, see the module docstring): call it off the event
        loop. An unknown user costs the same verification, against a dummy hash, so response
        times do not reveal which users exist. The comparison inside argon2 is constant-time.
        """
        stored = self._hashes.get(username)
        try:
            if stored is None:
                _HASHER.verify(_dummy_hash(), password)
                return False
            return _HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            # VerifyMismatchError (a wrong password) is a VerificationError; a malformed hash
            # cannot get past load(), but if it did it must still not let anyone in.
            return False


def _check_username(path: Path, username: str) -> None:
    problem = _username_problem(username)
    if problem is not None:
        raise PasswordFileError(f"invalid username {username!r}: {problem}", path=path)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, lines: list[str]) -> None:
    """Replace ``path`` with ``lines``; keep its mode and owner, or create it with 0600."""
    data = "".join(f"{line}\n" for line in lines).encode("utf-8")
    try:
        try:
            previous: os.stat_result | None = path.stat()
        except FileNotFoundError:
            previous = None
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        replaced = False
        try:
            with os.fdopen(fd, "wb") as file:
                if previous is None:
                    os.fchmod(file.fileno(), _NEW_FILE_MODE)
                else:
                    os.fchmod(file.fileno(), stat.S_IMODE(previous.st_mode))
                    mine = os.fstat(file.fileno())
                    if (mine.st_uid, mine.st_gid) != (previous.st_uid, previous.st_gid):
                        # Fails unless we may chown: then the old file stays, untouched.
                        os.fchown(file.fileno(), previous.st_uid, previous.st_gid)
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            Path(temporary).replace(path)
            replaced = True
        finally:
            if not replaced:
                Path(temporary).unlink(missing_ok=True)
        _fsync_directory(path.parent)
    except OSError as exc:
        raise PasswordFileError(f"cannot write the password file: {exc.strerror or exc}", path=path) from exc


def set_password(path: Path, username: str, password: str) -> None:
    """Add ``username`` with ``password`` to the file at ``path``, or replace their hash.

    Creates the file (mode 0600) if it is missing; keeps every other line, in order. Raises
    :class:`PasswordFileError` for a bad username, an empty password, an existing file that
    does not parse (it is left untouched) or a failed write. CPU-heavy (one argon2 hash).
    """
    _check_username(path, username)
    if not password:
        raise PasswordFileError("refusing an empty password", path=path)
    target = Path(os.path.realpath(path))
    lines = _read_lines(target, missing_ok=True)
    new_line = f"{username}:{_HASHER.hash(password)}"
    texts = [new_line if line.username == username else line.text for line in lines]
    if all(line.username != username for line in lines):
        texts.append(new_line)
    _write_atomically(target, texts)


def delete_user(path: Path, username: str) -> bool:
    """Remove ``username`` from the file at ``path``; return whether they were there.

    The file is rewritten only when the user was found. Raises :class:`PasswordFileError` when
    the file is missing, does not parse, or cannot be written.
    """
    target = Path(os.path.realpath(path))
    lines = _read_lines(target)
    kept = [line.text for line in lines if line.username != username]
    if len(kept) == len(lines):
        return False
    _write_atomically(target, kept)
    return True
