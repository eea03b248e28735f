"""What a new user meets in the first hour of Headwater.

``--version``, one exit-status table, one instance per data directory, and a README whose
examples can be run as they are.

Every exit status of the table is checked with the real ``headwater`` command against a real
``headwater run`` subprocess (``tests/fixtures/broker.py``).
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest

from headwater.broker.cli import EXIT_STATUS_TABLE
from tests.fixtures.broker import HeadwaterProcess, headwater_executable
from tests.fixtures.mosquitto import free_port, mosquitto_pub

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

StartProcess = Callable[..., HeadwaterProcess]


def headwater(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [headwater_executable(), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        check=False,
    )


# --- --version and the help ----------------------------------------------------------------------


def test_version_comes_from_the_package_metadata() -> None:
    result = headwater("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"headwater {version('headwater')}\n"


def test_help_ends_with_the_exit_status_table() -> None:
    result = headwater("--help")
    assert result.returncode == 0
    assert EXIT_STATUS_TABLE.strip() in result.stdout


def _table_codes(text: str) -> list[str]:
    return re.findall(r"^  (\d+|128\+N)\s", text, flags=re.MULTILINE)


def test_the_readme_has_the_same_exit_status_table() -> None:
    section = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    readme_codes = re.findall(r"^\| `?(\d+|128\+N)`? \|", section, flags=re.MULTILINE)
    assert readme_codes == _table_codes(EXIT_STATUS_TABLE) == ["0", "1", "2", "3", "4", "130", "128+N"]


# --- one instance per data directory --------------------------------------------------------------


def test_a_second_instance_on_the_same_data_dir_names_the_first(
    headwater_process: StartProcess, tmp_path: Path
) -> None:
    first = headwater_process()
    assert first.process is not None
    data_dir = tmp_path / "data"
    pid_file = data_dir / "headwater.pid"
    assert pid_file.read_text() == f"{first.process.pid}\n"

    second = headwater("run", "-c", str(first.config_path))
    assert second.returncode == 1
    assert second.stderr == (
        f"headwater: Headwater is already running on {data_dir} (pid {first.process.pid})\n"
    )
    assert pid_file.read_text() == f"{first.process.pid}\n"  # the loser leaves it alone

    mosquitto_pub(first.port, "still/here", "x", qos=1)  # the first one is unharmed
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    assert not pid_file.exists(), "a clean exit removes the pid file"


def test_a_killed_instance_leaves_a_stale_pid_file_that_does_not_block(
    headwater_process: StartProcess, tmp_path: Path
) -> None:
    process = headwater_process()
    assert process.process is not None
    killed = process.process.pid
    process.kill()
    pid_file = tmp_path / "data" / "headwater.pid"
    assert pid_file.read_text() == f"{killed}\n"  # kill -9: nothing ran to remove it

    process.start()
    assert process.process.pid != killed
    assert pid_file.read_text() == f"{process.process.pid}\n"


# --- the exit-status table, row by row ------------------------------------------------------------

USERS = {"operator": "op-secret", "stranger": "st-secret"}


@pytest.fixture
def gateway(headwater_process: StartProcess, tmp_path: Path) -> HeadwaterProcess:
    """A ``headwater run`` with a stream and two users (one may do anything, one nothing).

    No deploy plugin: nobody answers a deployment, so ``deploy up`` keeps waiting.
    """
    passwords = tmp_path / "passwd"
    for user, password in USERS.items():
        created = headwater("passwd", str(passwords), user, stdin=f"{password}\n")
        assert created.returncode == 0, created.stderr
    return headwater_process(
        {
            "broker": {
                "password_file": str(passwords),
                "acl": {
                    "operator": {
                        "publish": ["#"],
                        "subscribe": ["#"],
                        "streams": {"read": ["*"], "append": ["*"], "admin": ["*"]},
                    },
                    "stranger": {"publish": [], "subscribe": []},
                },
            },
            "streams": {"telemetry": {"topics": ["sensors/+/telemetry"]}},
            "deploy": {"enabled": False},
        }
    )


def url(gateway: HeadwaterProcess, user: str = "operator") -> str:
    return f"mqtt://{user}:{USERS[user]}@127.0.0.1:{gateway.port}"


def test_exit_0_success(gateway: HeadwaterProcess) -> None:
    for args in (
        ("streams", "ls"),
        ("streams", "append", "telemetry", "-m", "x"),
        ("streams", "describe", "telemetry"),
        ("deploy", "status"),
    ):
        result = headwater(*args, "--url", url(gateway))
        assert result.returncode == 0, (args, result.stderr)


def test_exit_1_runtime_failure(gateway: HeadwaterProcess, tmp_path: Path) -> None:
    nobody = f"mqtt://127.0.0.1:{free_port()}"
    for args in (("streams", "ls", "--url", nobody), ("deploy", "status", "--url", nobody)):
        result = headwater(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith(f"headwater: cannot connect to {nobody}: "), result.stderr
    compose = tmp_path / "compose.yml"
    compose.write_text("services: {web: {image: busybox}}\n")
    waited = headwater("deploy", "up", "web", "-f", str(compose), "--timeout", "1", "--url", url(gateway))
    assert waited.returncode == 1, waited.stderr  # the deploy plugin is off: no status in time
    assert "did not finish within 1s" in waited.stderr
    already = headwater("run", "-c", str(gateway.config_path))
    assert already.returncode == 1
    assert "Headwater is already running on " in already.stderr


def test_exit_2_usage_or_config_error(gateway: HeadwaterProcess, tmp_path: Path) -> None:
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("broker: {listners: {}}\n")
    compose = tmp_path / "compose.yml"
    compose.write_text("services: {web: {image: busybox}}\n")
    operator = ("--url", url(gateway))
    cases = {
        ("run", "-c", str(bad_config)): "config error: broker.listners: unknown key",
        ("streams", "read", "telemetry", "--max", "0", *operator): "--max: expected a whole number",
        ("streams", "ls", "--url", "http://127.0.0.1"): "--url: unsupported URL scheme 'http'",
        ("streams", "append", "telemetry", "-m", "x", "--topic", "a/+", *operator): "topic: ",
        ("streams", "append", "telemetry", "-f", str(tmp_path / "nope"), *operator): "No such file",
        ("deploy", "up", "Bad_Name", "-f", str(compose), *operator): "invalid app name 'Bad_Name'",
        ("deploy", "up", "web", "-f", str(tmp_path / "nope.yml"), *operator): "No such file",
        ("deploy", "down", "a/+", *operator): "invalid app name 'a/+'",
        ("streams",): "the following arguments are required",
    }
    for args, message in cases.items():
        result = headwater(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_exit_3_not_found(gateway: HeadwaterProcess, tmp_path: Path) -> None:
    operator = ("--url", url(gateway))
    cases = {
        ("streams", "describe", "NOPE", *operator): "headwater: no stream named 'NOPE'\n",
        ("streams", "read", "NOPE", *operator): "headwater: no stream named 'NOPE'\n",
        ("streams", "pause", "telemetry", "NOPE", *operator): (
            "headwater: stream 'telemetry' has no export 'NOPE' (its exports: none)\n"
        ),
        ("streams", "resume", "NOPE", "archive", *operator): "headwater: no stream named 'NOPE'\n",
        ("passwd", "-D", str(tmp_path / "passwd"), "nobody"): (
            f"headwater: {tmp_path / 'passwd'}: no user 'nobody'\n"
        ),
    }
    for args, stderr in cases.items():
        result = headwater(*args)
        assert (result.returncode, result.stderr) == (3, stderr), args
    status = headwater("deploy", "status", "nope", *operator)
    assert status.returncode == 3, status.stderr
    assert status.stdout == "nope: no status (not deployed here, removed, or you may not read it)\n"


def test_exit_4_forbidden(gateway: HeadwaterProcess) -> None:
    stranger = ("--url", url(gateway, "stranger"))
    for args in (("streams", "describe", "telemetry", *stranger), ("deploy", "status", *stranger)):
        result = headwater(*args)
        assert result.returncode == 4, (args, result.stderr)
        assert "stranger" in result.stderr, result.stderr


def test_exit_130_interrupted(gateway: HeadwaterProcess, tmp_path: Path) -> None:
    compose = tmp_path / "compose.yml"
    compose.write_text("services: {web: {image: busybox}}\n")
    waiting = subprocess.Popen(
        [headwater_executable(), "deploy", "up", "web", "-f", str(compose), "--url", url(gateway)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stdout is not None
        first_line = waiting.stdout.readline()  # printed once it published: it waits now
        assert "waiting for Headwater" in first_line, first_line
        waiting.send_signal(signal.SIGINT)
        assert waiting.wait(30) == 130
    finally:
        waiting.kill()
        waiting.communicate()


# --- the README's examples ---------------------------------------------------------------------


def _shell_blocks(markdown: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", markdown, flags=re.DOTALL)


def test_files_the_readme_examples_name_exist() -> None:
    named = [
        path
        for block in _shell_blocks(README.read_text())
        for path in re.findall(r"(?:-f|-c) ((?:examples|config|docs)/\S+)", block)
    ]
    assert named, "the README's examples name files"
    assert [path for path in named if not (REPO / path).exists()] == []


def test_the_readme_never_kills_every_headwater_on_the_host() -> None:
    text = README.read_text()
    assert "pkill" not in text
    assert 'kill -9 "$(cat headwater-data/headwater.pid)"' in text
