"""Tests for headwater.broker.passwords against real files in tmp_path."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import argon2
import pytest

from headwater.broker.passwords import PasswordFile, PasswordFileError, delete_user, set_password

# Hashing is the slow part of these tests: hash once per module with the real parameters.
HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
ALICE_HASH = HASHER.hash("alice-secret")
BOB_HASH = HASHER.hash("bob-secret")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- load and verify ----------------------------------------------------------------------


def test_load_and_verify(tmp_path: Path) -> None:
    path = write(tmp_path / "pw", f"# users\n\nalice:{ALICE_HASH}\r\nbob:{BOB_HASH}")
    passwords = PasswordFile.load(path)
    assert passwords.usernames == ("alice", "bob")
    assert passwords.path == path
    assert "alice" in passwords
    assert "carol" not in passwords
    assert len(passwords) == 2
    assert passwords.verify("alice", "alice-secret")
    assert not passwords.verify("alice", "bob-secret")
    assert not passwords.verify("alice", "")
    assert not passwords.verify("carol", "alice-secret")
    assert ALICE_HASH not in repr(passwords)


def test_empty_file_has_no_users(tmp_path: Path) -> None:
    passwords = PasswordFile.load(write(tmp_path / "pw", ""))
    assert passwords.usernames == ()
    assert not passwords.verify("alice", "x")


def test_unknown_user_costs_a_verification(tmp_path: Path) -> None:
    passwords = PasswordFile.load(write(tmp_path / "pw", f"alice:{ALICE_HASH}\n"))

    def fastest(username: str) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            passwords.verify(username, "wrong")
            times.append(time.perf_counter() - start)
        return min(times)

    # Both should be one argon2 run; without the dummy hash the unknown user would return at once.
    assert fastest("nobody") > 0.25 * fastest("alice")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(PasswordFileError, match="does not exist") as info:
        PasswordFile.load(path)
    assert str(info.value).startswith(f"{path}: ")
    assert info.value.path == path


def test_unreadable_file(tmp_path: Path) -> None:
    # A folder cannot be read as a file, even by root (which ignores mode bits).
    with pytest.raises(PasswordFileError, match="cannot read the password file"):
        PasswordFile.load(tmp_path)


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("alice\n", 1, "expected 'user:hash'"),
        (f"# ok\nalice:{ALICE_HASH}\nbob:plaintext-password\n", 3, "not an argon2 PHC string"),
        ("alice:\n", 1, "not an argon2 PHC string"),
        (f":{ALICE_HASH}\n", 1, "invalid username: must not be empty"),
        (f"al ice:{ALICE_HASH}\n", 1, "invalid username: must not contain whitespace"),
        (f"al\x07ice:{ALICE_HASH}\n", 1, "invalid username: must not contain control"),
        (f"anonymous:{ALICE_HASH}\n", 1, "reserved"),
        (f"alice:{ALICE_HASH}\nbob:{BOB_HASH}\nalice:{BOB_HASH}\n", 3, "already defined on line 1"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = write(tmp_path / "pw", text)
    with pytest.raises(PasswordFileError) as info:
        PasswordFile.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: ")
    assert reason in message
    assert info.value.line == line
    assert "\n" not in message
    # Neither the hash nor what might be a pasted password is echoed.
    assert ALICE_HASH not in message
    assert BOB_HASH not in message
    assert "plaintext-password" not in message


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(f"alice:{ALICE_HASH}\n".encode() + b"b\xffb:x\n")
    with pytest.raises(PasswordFileError, match=r":2: not valid UTF-8"):
        PasswordFile.load(path)


# --- set_password -------------------------------------------------------------------------


def test_set_password_creates_the_file_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    set_password(path, "alice", "s3cret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [line] = path.read_text(encoding="utf-8").splitlines()
    username, hash_ = line.split(":")
    assert username == "alice"
    assert hash_.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert "s3cret" not in line
    assert PasswordFile.load(path).verify("alice", "s3cret")
    assert [entry.name for entry in tmp_path.iterdir()] == ["pw"]


def test_set_password_replaces_and_keeps_other_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "pw", f"# header\nalice:{ALICE_HASH}\n\nbob:{BOB_HASH}\n")
    path.chmod(0o640)
    set_password(path, "alice", "new-secret")
    set_password(path, "carol", "carol-secret")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# header"
    assert lines[1].startswith("alice:$argon2id$")
    assert lines[1] != f"alice:{ALICE_HASH}"
    assert lines[2:4] == ["", f"bob:{BOB_HASH}"]
    assert lines[4].startswith("carol:$argon2id$")
    assert len(lines) == 5
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    passwords = PasswordFile.load(path)
    assert passwords.verify("alice", "new-secret")
    assert not passwords.verify("alice", "alice-secret")
    assert passwords.verify("bob", "bob-secret")
    assert passwords.verify("carol", "carol-secret")
    assert [entry.name for entry in tmp_path.iterdir()] == ["pw"]


def test_set_password_follows_a_symlink(tmp_path: Path) -> None:
    real = write(tmp_path / "real", f"bob:{BOB_HASH}\n")
    link = tmp_path / "link"
    link.symlink_to(real)
    set_password(link, "alice", "s3cret")
    assert link.is_symlink()
    assert PasswordFile.load(real).usernames == ("bob", "alice")


@pytest.mark.parametrize(
    ("username", "reason"),
    [
        ("", "must not be empty"),
        ("a:b", "must not contain ':'"),
        ("a b", "must not contain whitespace"),
        ("a\tb", "must not contain whitespace"),
        ("a\u00a0b", "must not contain whitespace"),
        ("a\x1bb", "U+001B"),
        ("a\u200bb", "U+200B"),
        ("#admin", "must not start with '#'"),
        ("anonymous", "reserved"),
    ],
)
def test_set_password_refuses_bad_usernames(tmp_path: Path, username: str, reason: str) -> None:
    path = tmp_path / "pw"
    with pytest.raises(PasswordFileError, match="invalid username") as info:
        set_password(path, username, "s3cret")
    assert reason in str(info.value)
    assert not path.exists()


def test_set_password_accepts_unicode_usernames(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    set_password(path, "jürgen/日本", "s3cret")
    assert PasswordFile.load(path).verify("jürgen/日本", "s3cret")


def test_set_password_refuses_an_empty_password(tmp_path: Path) -> None:
    with pytest.raises(PasswordFileError, match="empty password"):
        set_password(tmp_path / "pw", "alice", "")


def test_set_password_leaves_a_malformed_file_alone(tmp_path: Path) -> None:
    text = f"alice:{ALICE_HASH}\nbroken line\n"
    path = write(tmp_path / "pw", text)
    with pytest.raises(PasswordFileError, match=":2: expected 'user:hash'"):
        set_password(path, "bob", "s3cret")
    assert path.read_text(encoding="utf-8") == text


def test_set_password_reports_a_failed_write(tmp_path: Path) -> None:
    with pytest.raises(PasswordFileError, match="cannot write the password file"):
        set_password(tmp_path / "no-such-folder" / "pw", "alice", "s3cret")


# --- delete_user --------------------------------------------------------------------------


def test_delete_user(tmp_path: Path) -> None:
    path = write(tmp_path / "pw", f"# header\nalice:{ALICE_HASH}\nbob:{BOB_HASH}\n")
    before = path.stat().st_mtime_ns
    assert not delete_user(path, "carol")
    assert path.stat().st_mtime_ns == before
    assert delete_user(path, "alice")
    assert path.read_text(encoding="utf-8") == f"# header\nbob:{BOB_HASH}\n"
    assert not delete_user(path, "alice")


def test_delete_user_from_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PasswordFileError, match="does not exist"):
        delete_user(tmp_path / "pw", "alice")
